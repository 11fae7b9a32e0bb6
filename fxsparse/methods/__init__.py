"""Training methods (``fxsparse train --method NAME``): one file per method, one interface
(:class:`Method`), one registry. VR-PGE is the default."""
from .base import TRAINER_PHASES, Method, PhaseSetup, RunContext, TrainState
from .registry import create, get_method, list_methods, register_method, unregister_method

DEFAULT_METHOD = "vrpge"          # training from scratch
# compressing trained weights (``fxsparse train --init``): uniform L1 filter pruning, the best
# at equal wall time on all three models of benchmarks/compress.py (README; one seed so far)
DEFAULT_METHOD_TRAINED = "l1_filter"


def default_method(trained: bool) -> str:
    """The method ``fxsparse train`` runs without ``--method``: the one the README's tables
    show best for the setting (from scratch, or from trained weights)."""
    return DEFAULT_METHOD_TRAINED if trained else DEFAULT_METHOD
from . import select  # noqa: E402,F401  (shared helpers of the score-based methods)
from . import snip  # noqa: E402,F401
from . import grasp  # noqa: E402,F401
from . import synflow  # noqa: E402,F401
from . import magnitude  # noqa: E402,F401
from . import l1_filter  # noqa: E402,F401
from . import slimming  # noqa: E402,F401
from . import random_channels  # noqa: E402,F401
from . import taylor, obd, allocation_search, l0_gates  # noqa: E402,F401  (criteria for trained weights)
from . import dense, vrpge  # noqa: F401,E402  (registration)
from . import unstructured  # noqa: E402,F401  (weight masks, ERK densities)
from . import dropback  # noqa: E402,F401  (registers "dropback", "dropback_channel")
from . import set_method  # noqa: E402,F401  (registers "set")
from . import rigl  # noqa: E402,F401  (registers "rigl")
