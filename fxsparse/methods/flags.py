"""Each method's ``fxsparse train`` flags, as plain data: ``fxsparse train --help`` lists them
without importing torch or the methods. One entry per method that takes flags, under its
registered name: (flags, argparse keywords), each keyword set's ``dest`` the option's name;
the CLI passes the flags given as the method's ``method_options``, and
:func:`fxsparse.methods.register_method` sets the entry as the class's ``cli_options``.
Every flag defaults to None (not given): the method's default for the run's setting applies,
and the help reads it from :mod:`.defaults`."""
from __future__ import annotations

from .defaults import VRPGE_CHOICES, VRPGE_FROM_SCRATCH, VRPGE_FROM_TRAINED, VRPGE_LR_SCALE

# how a default of None reads in the help
_NONE_SHOWN = {"score_lr": f"{VRPGE_LR_SCALE} / sqrt(search steps)", "width_units": "one unit per channel"}


def _shown(option: str, value) -> str:
    if value is None:
        return _NONE_SHOWN[option]
    return ("on" if value else "off") if isinstance(value, bool) else str(value)


def _vrpge_flag(names: tuple, option: str, text: str, **argparse_keywords) -> tuple:
    """One VR-PGE flag, its help ending with the defaults of both settings."""
    scratch, trained = VRPGE_FROM_SCRATCH[option], VRPGE_FROM_TRAINED[option]
    default = f"default: {_shown(option, scratch)}"
    if trained != scratch:
        default += f"; with --init: {_shown(option, trained)}"
    return names, dict(dest=option, default=None, help=f"{text} ({default})", **argparse_keywords)


# the search's flags (fxsparse.methods.vrpge); its experiment switches are no flags (vrpge/experimental.py)
VRPGE = (
    _vrpge_flag(("--score-lr",), "score_lr", "Adam learning rate of the scores, cosine over the search (the "
                "authors use 0.012 for a 300-epoch search)", type=float),
    _vrpge_flag(("--granularity",), "granularity", "what the search learns: one keep ratio per layer group (width; "
                "channels by L1 order), one score per channel (channel, the paper), or widths then channels within",
                choices=VRPGE_CHOICES["granularity"]),
    _vrpge_flag(("--final",), "final", "final mask: the top of the scores meeting the budget (topk), or the "
                "authors' best of sampled masks (sample)", choices=VRPGE_CHOICES["final"]),
    _vrpge_flag(("--width-units",), "width_units", "widths: draw each layer's width in this many equal units, so "
                "that wide and narrow layers are perturbed alike", type=int),
    _vrpge_flag(("--min-width",), "min_width", "widths: the least fraction of its channels each layer group "
                "keeps (a floor, so that no layer of a chain narrows to one channel; lowered, with a warning, where "
                "the budget cannot pay for it)", type=float),
    _vrpge_flag(("--samples",), "samples", "masks per score step", type=int),
    _vrpge_flag(("--weight-masks",), "weight_masks", "what the weights train on during the search: the policy's "
                "typical sub-network while fresh samples only score (mean), or the first sampled mask (sampled, "
                "the paper)", choices=VRPGE_CHOICES["weight_masks"]),
    _vrpge_flag(("--weight-average",), "weight_average", "the authors' weight step: mean gradient over --samples "
                "sub-networks, whose losses feed the score step", action="store_const", const=True),
)

FLAGS = {"vrpge": VRPGE}
