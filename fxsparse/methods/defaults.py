"""Defaults in one place, as plain data (the CLI's help reads them without importing torch
or the methods): the method ``fxsparse train`` runs without ``--method``, and VR-PGE's
options, each per setting: from scratch, or from trained weights (``fxsparse train --init``).
The Python API (:class:`fxsparse.methods.vrpge.VRPGE`,
:class:`fxsparse.methods.vrpge.StructureLearner`), the CLI's flags (:mod:`.flags`) and their
help all read them here, so changing a default is a one-line edit of this file."""
from __future__ import annotations

# training from scratch: fixed L1-filter masks matched or beat the structure search at equal wall time in every from-scratch table (README, 'Does the search learn a structure?')
DEFAULT_METHOD = "l1_filter"
# compressing trained weights (``fxsparse train --init``): uniform L1 filter pruning, the best
# at equal wall time on all three models of benchmarks/compress.py (README; one seed so far)
DEFAULT_METHOD_TRAINED = "l1_filter"

# VR-PGE's score learning rate when it is calibrated to the search (score_lr=None):
# lr = VRPGE_LR_SCALE / sqrt(search steps), so noise alone moves a score about this much
VRPGE_LR_SCALE = 0.3

# VR-PGE from scratch (README, "The default method", says why each)
VRPGE_FROM_SCRATCH = {
    "granularity": "width",       # one keep ratio per group, channels by L1 order ("channel": the paper's)
    "weight_masks": "mean",       # weights train on the policy's typical sub-network ("sampled": the paper's)
    "final": "topk",              # the top of the scores meeting the budget ("sample": the authors' best of tries)
    "samples": 2,                 # masks per score step (K)
    "score_lr": None,             # None: VRPGE_LR_SCALE / sqrt(search steps)
    "width_units": None,          # None: a width drawn per channel; u: in u equal units
    "min_width": 0.1,             # widths: the least fraction of its channels a group keeps (README)
    "budget_ramp": 0.0,           # the fraction of the search over which the budget tightens from dense
    "projection": "gradient",     # onto the budget along its gradient ("scale": every score by one factor)
    "weight_every": 1,            # a weight step every that many search steps (0: the weights stay fixed)
    "weight_average": False,      # the authors' weight step: the mean gradient over the samples
    "final_tries": 10,            # final="sample": masks tried ...
    "final_batches": 10,          # ... on this many training batches
}
# VR-PGE on trained weights (``--init``), from the pilot of benchmarks/compress.py (README,
# "Compressing a trained model"): at the target from the first step every sample of a
# 0.1-FLOPs model is at chance loss and the search shrinks the last layers toward a constant
# output, so the budget tightens from dense over the first half of the search; the budget
# scales every width by one factor; widths are drawn in 16 units; no width floor (the tables
# were measured without one)
VRPGE_FROM_TRAINED = {**VRPGE_FROM_SCRATCH, "projection": "scale", "budget_ramp": 0.5, "width_units": 16,
                      "min_width": 0.0}

# what VR-PGE's options may be (numbers are checked where the options are: methods/vrpge/options.py)
VRPGE_CHOICES = {
    "granularity": ("width", "channel", "width+channel"),
    "weight_masks": ("mean", "sampled"),
    "final": ("topk", "sample"),
    "projection": ("gradient", "scale"),
}


def default_method(trained: bool) -> str:
    """The method ``fxsparse train`` runs without ``--method``: the one the README's tables
    show best for the setting (from scratch, or from trained weights)."""
    return DEFAULT_METHOD_TRAINED if trained else DEFAULT_METHOD


def vrpge_defaults(trained: bool) -> dict:
    """VR-PGE's options for the setting (a copy)."""
    return dict(VRPGE_FROM_TRAINED if trained else VRPGE_FROM_SCRATCH)
