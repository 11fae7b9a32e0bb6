"""Third-party style models (torchvision / timm coding style, scaled down): analyze must
give groups whose export equals the masked reference (torch.fx or torch.export capture)."""
import warnings

import pytest
import torch

import fxsparse
from captures import captured  # each model captured once per session (test_any_input_size.py reads them too)
from harness import check_export
from lanes import mirror_subset
from thirdparty import MODELS


@pytest.mark.reads_capture("vendored")
@pytest.mark.parametrize("name", mirror_subset(sorted(MODELS)))  # the 5-25 s ones in the full suite only
def test_thirdparty_model(name):
    # models torch.fx cannot trace (FX_TRACE_FAILS: an `if` on input sizes) are captured
    # with torch.export: every model must analyze
    shared = captured(f"vendored:{name}")
    model, inputs, graph = shared.model, shared.inputs, shared.graph
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_export(model, inputs, n_masks=2, ratios=(0.5, 0.3), graph=graph)
        assert graph.prunable_groups, f"{name}: nothing prunable"
        small = fxsparse.export(model, graph, fxsparse.random_keep(graph, 0.5, torch.Generator().manual_seed(0)))
    flops = _flops(small, inputs) / _flops(model, inputs)
    assert flops <= FLOPS_BOUND_EXCEPT.get(name, FLOPS_BOUND), f"{name}: FLOPs at keep 0.5: {flops:.2f}"


# FLOPs of the exported model at keep 0.5, as a fraction of dense (`python
# tests/thirdparty/survey.py --sets vendored` prints them all), and where an architecture keeps more
FLOPS_BOUND = 0.40
FLOPS_BOUND_EXCEPT = {
    "timm_mlp_mixer": 0.55,  # token-mixing MLPs run along the patch dim, not a channel
    "tv_shufflenet_v2": 0.55,  # channel shuffle + split: half of every block passes unpruned
}


def _flops(model, inputs):
    return fxsparse.count_flops(model, inputs)[0]


# both wrapped-function kinds seen through in the full suite; EfficientNet's stochastic depth in the fast lane
@pytest.mark.parametrize("name", [pytest.param("tv_swin_t", marks=pytest.mark.slow), "tv_efficientnet_b0"])
def test_wrapped_functions_are_seen_through(name):
    """torchvision's torch.fx.wrap-ed helpers (shifted_window_attention, the relative position
    bias, stochastic_depth) would be opaque traced nodes blocking their channels; analyze
    captures such a model with torch.export instead, so attention heads, the window MLPs and
    the residual stream prune: keep 0.5 reaches FLOPs <= 0.35 of dense (0.78 / 0.40 traced)."""
    shared = captured(f"vendored:{name}")
    model, inputs, graph = shared.model, shared.inputs, shared.graph
    assert not any(n.op == "call_function" and getattr(n.target, "__module__", "").startswith("thirdparty")
                   for n in graph.gm.graph.nodes)
    small = fxsparse.export(model, graph, fxsparse.random_keep(graph, 0.5, torch.Generator().manual_seed(0)))
    assert _flops(small, inputs) <= 0.35 * _flops(model, inputs)
