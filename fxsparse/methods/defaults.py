"""The method ``fxsparse train`` runs without ``--method``, per setting (plain names: the
CLI's help reads them without importing torch or the methods)."""
from __future__ import annotations

DEFAULT_METHOD = "vrpge"          # training from scratch
# compressing trained weights (``fxsparse train --init``): uniform L1 filter pruning, the best
# at equal wall time on all three models of benchmarks/compress.py (README; one seed so far)
DEFAULT_METHOD_TRAINED = "l1_filter"


def default_method(trained: bool) -> str:
    """The method ``fxsparse train`` runs without ``--method``: the one the README's tables
    show best for the setting (from scratch, or from trained weights)."""
    return DEFAULT_METHOD_TRAINED if trained else DEFAULT_METHOD
