"""Each method's ``fxsparse train`` flags, as plain data: ``fxsparse train --help`` lists them
without importing torch or the methods. One entry per method that takes flags, under its
registered name: (flags, argparse keywords), each keyword set's ``dest`` the option's name;
the CLI passes the flags given as the method's ``method_options``, and
:func:`fxsparse.methods.register_method` sets the entry as the class's ``cli_options``."""
from __future__ import annotations

# None: VR-PGE compiles the search step's optimizer update only for searches of at least this
# many steps (one more graph per capacity set, ~25 s cold on this CPU, saves ~7-10 ms per
# VGG-11 step: it pays after ~3000 steps)
COMPILE_UPDATE_STEPS = 3000

# the search's flags (fxsparse.methods.vrpge)
VRPGE = (
    (("--score-lr",), dict(dest="score_lr", type=float, default=None, help="Adam learning rate of the scores, "
                            "cosine over the search (default: 0.3 / sqrt(search steps); the authors use 0.012 for "
                            "a 300-epoch search)")),
    (("--granularity",), dict(dest="granularity", choices=["width", "channel", "width+channel"], default="width",
                              help="what the search learns: one keep ratio per layer group (width; channels by L1 "
                              "order), one score per channel (channel, the paper), or widths then channels within "
                              "(default %(default)s)")),
    (("--final",), dict(dest="final", choices=["topk", "sample"], default="topk",
                        help="final mask: the top of the scores meeting the budget (topk), or the authors' best of "
                        "sampled masks (sample) (default %(default)s)")),
    (("--form",), dict(dest="form", choices=["exact", "preconditioned"], default="exact",
                       help="Bernoulli score form (default %(default)s)")),
    (("--width-units",), dict(dest="width_units", type=int, default=None,
                              help="widths: draw each layer's width in this many equal units, so that wide and "
                              "narrow layers are perturbed alike (default: one unit per channel; with --init: 16)")),
    (("--samples",), dict(dest="samples", type=int, default=2, help="masks per score step (default %(default)s)")),
    (("--weight-masks",), dict(dest="weight_masks", choices=["mean", "sampled"], default="mean",
                               help="what the weights train on during the search: the policy's typical "
                               "sub-network while fresh samples only score (mean), or the first sampled mask "
                               "(sampled, the paper) (default %(default)s)")),
    (("--no-reuse-loss",), dict(dest="reuse_loss", action="store_false", default=True,
                                help="two fresh score forwards instead of reusing the weight step's loss")),
    (("--weight-average",), dict(dest="weight_average", action="store_true", default=False,
                                 help="the authors' weight step: mean gradient over --samples sub-networks, whose "
                                 "losses feed the score step")),
    (("--compile-update",), dict(dest="compile_update", action="store_const", const=True, default=None,
                                 help="compile the search step's optimizer update (default: for searches of "
                                 f"{COMPILE_UPDATE_STEPS}+ steps)")),
    (("--no-compile-update",), dict(dest="compile_update", action="store_const", const=False,
                                    help="keep the search step's optimizer update eager")),
)

FLAGS = {"vrpge": VRPGE}
