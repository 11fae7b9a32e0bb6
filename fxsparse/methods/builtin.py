"""Imports every built-in method module, each of which registers its methods
(``@register_method``); the registry imports this on its first look-up."""
from . import select  # noqa: F401  (shared helpers of the score-based methods)
from . import snip  # noqa: F401
from . import grasp  # noqa: F401
from . import synflow  # noqa: F401
from . import magnitude  # noqa: F401
from . import l1_filter  # noqa: F401
from . import slimming  # noqa: F401
from . import random_channels  # noqa: F401
from . import taylor, obd, allocation_search, l0_gates  # noqa: F401  (criteria for trained weights)
from . import dense, vrpge  # noqa: F401
from . import unstructured  # noqa: F401  (weight masks, ERK densities)
from . import dropback  # noqa: F401  (registers "dropback", "dropback_channel")
from . import set_method  # noqa: F401  (registers "set")
from . import rigl  # noqa: F401  (registers "rigl")
