"""Third-party style models (torchvision / timm coding style, scaled down): analyze must
give groups whose export equals the masked reference, or fail with a clear TraceError."""
import warnings

import pytest
import torch

import fxsparse
from harness import check_export
from thirdparty import FX_TRACE_FAILS, MODELS


@pytest.mark.parametrize("name", sorted(MODELS))
def test_thirdparty_model(name):
    model, inputs = MODELS[name]()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            graph = fxsparse.analyze(model, inputs)
        except fxsparse.TraceError as exc:
            # only models plain torch.fx cannot trace may fail, and then clearly
            assert name in FX_TRACE_FAILS, f"{name} traces with torch.fx but analyze failed: {exc}"
            assert "leaf_modules" in str(exc) and ".py:" in str(exc), str(exc)
            return
        check_export(model, inputs, n_masks=2, ratios=(0.5, 0.3), graph=graph)
    assert graph.prunable_groups, f"{name}: nothing prunable"
