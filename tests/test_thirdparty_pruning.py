"""Third-party style models (torchvision / timm coding style, scaled down): analyze must
give groups whose export equals the masked reference (torch.fx or torch.export capture)."""
import warnings

import pytest
import torch

import fxsparse
from harness import check_export
from thirdparty import MODELS


@pytest.mark.parametrize("name", sorted(MODELS))
def test_thirdparty_model(name):
    model, inputs = MODELS[name]()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # models torch.fx cannot trace (FX_TRACE_FAILS: an `if` on input sizes) are captured
        # with torch.export: every model must analyze
        graph = fxsparse.analyze(model, inputs)
        check_export(model, inputs, n_masks=2, ratios=(0.5, 0.3), graph=graph)
    assert graph.prunable_groups, f"{name}: nothing prunable"
