"""VR-PGE's options checked and resolved in one place: the defaults of the setting
(:mod:`fxsparse.methods.defaults`) updated with the caller's, every value checked. The
method (:class:`.VRPGE`) and the search (:class:`.StructureLearner`) both check through here."""
from __future__ import annotations

import math

from ..defaults import VRPGE_CHOICES, vrpge_defaults
from ..options import check_choice, check_choices, check_number
from ..options import check_options as check_names
from .experimental import ExperimentSwitches

BUDGETS = ("channels", "flops")


def check_budget(budget) -> None:
    check_choice("vrpge", "budget", budget, BUDGETS)


def check_options(options: dict, trained: bool = False) -> dict:
    """VR-PGE's options for the setting (``trained``: from trained weights): the defaults
    updated with ``options``, each checked (ValueError naming the option, the value and what
    it may be). ``options["experimental"]`` (a dict or :class:`ExperimentSwitches`, see
    :mod:`.experimental`) comes back as :class:`ExperimentSwitches`."""
    out = check_names("vrpge", options, {**vrpge_defaults(trained), "experimental": None})
    out["experimental"] = ExperimentSwitches.of(out["experimental"])
    check_choices("vrpge", **{name: (out[name], choices) for name, choices in VRPGE_CHOICES.items()})
    samples, units, score_lr = out["samples"], out["width_units"], out["score_lr"]
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 2:
        raise ValueError(f"the VR-PGE estimate needs at least 2 samples per step, got {samples!r}")
    if units is not None and (isinstance(units, bool) or not isinstance(units, int) or units < 2):
        raise ValueError(f"width_units must be an integer >= 2 (or None: one unit per channel), got {units!r}")
    if score_lr is not None and (isinstance(score_lr, bool) or not isinstance(score_lr, (int, float))
                                 or not score_lr > 0 or math.isinf(score_lr)):
        raise ValueError(f"--score-lr must be a positive number, got {score_lr!r}")
    check_number("vrpge", "budget_ramp", out["budget_ramp"], lo=0, hi=1)
    check_number("vrpge", "min_width", out["min_width"], lo=0, hi=1)
    if out["min_width"] >= 1:
        raise ValueError(f"vrpge: min_width must be below 1 (a floor of every width), got {out['min_width']!r}")
    # min_width bounds widths only (granularity "width", and the widths stage of "width+channel"):
    # a per-channel score may go to 0, that is how a channel is pruned
    # weight_every: a weight step every that many search steps (0: every step forward-only)
    check_number("vrpge", "weight_every", out["weight_every"], lo=0, integer=True)
    check_number("vrpge", "final_tries", out["final_tries"], lo=1, integer=True)
    check_number("vrpge", "final_batches", out["final_batches"], lo=1, integer=True)
    check_choice("vrpge", "weight_average", out["weight_average"], (False, True))
    if out["weight_average"] and out["weight_every"] != 1:
        raise ValueError("vrpge: weight_average trains the weights every step; it needs weight_every=1")
    return out
