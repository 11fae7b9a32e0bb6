"""Third-party style models through the sparse step (eager, float64): output, loss and kept
gradients equal the exported model's for the same masks; pruned state does not move."""
import warnings

import pytest
import torch
import torch.nn.functional as F

import fxsparse
from lanes import mirror_subset
from sparse_checks import check_steps
from thirdparty import MODELS


@pytest.mark.parametrize("name", mirror_subset(sorted(MODELS)))  # the 5-25 s ones in the full suite only
def test_thirdparty_sparse_step(name):
    model, inputs = MODELS[name]()
    target = torch.randint(0, 10, (inputs[0].shape[0],))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_steps(model, inputs, target, F.cross_entropy, steps=1, train=False, dtype=torch.float64, tol=1e-9)
