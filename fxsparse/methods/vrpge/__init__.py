"""VR-PGE (Zhou et al., NeurIPS 2021), the structure search (``--method vrpge``), in one package:

* :mod:`.estimator`: the math (budget projection, Bernoulli sampling, score functions, the
  variance-reduced estimate), plain torch, no model code;
* :mod:`.learner`: :class:`StructureLearner`, the search over a :class:`fxsparse.SparseModel`;
* :mod:`.method`: :class:`VRPGE`, the registered method (``fxsparse train --method vrpge``)
  that runs the search as its own phase through the :class:`fxsparse.methods.Method` hooks;
* :mod:`.options`: :func:`check_options`, the options checked and resolved for a setting
  (their defaults: :mod:`fxsparse.methods.defaults`);
* :mod:`.experimental`: the switches benchmarks measure, kept off the public surface.
"""
from .estimator import (project_budget, reinforce_gradient, sample_grouped_mask, sample_mask, score_function,
                        signal_to_noise, vrpge_gradient)
from .learner import StructureLearner, policy_gradient, spearman
from .options import check_options
from .method import VRPGE

__all__ = ["VRPGE", "StructureLearner", "check_options", "policy_gradient", "spearman", "project_budget",
           "reinforce_gradient", "sample_grouped_mask", "sample_mask", "score_function", "signal_to_noise",
           "vrpge_gradient"]
