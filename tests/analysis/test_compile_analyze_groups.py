"""``fxsparse.compile`` and ``fxsparse.analyze`` give the same groups for the same model and
inputs, whichever runs first: over the zoo and every third-party model the tests build (the
sets of tests/thirdparty/survey.py: the mirrored torchvision/timm models, transformers,
real timm models, the MoE / state-space / audio families). A keep pattern built from
``analyze``'s groups applies to the compiled model. Analysis only: ``compile=False`` builds the
capacity model without an inductor compile. One model per kind in the fast lane."""
import warnings

import numpy as np
import pytest
import torch

import fxsparse
from captures import SET_NAMES, captured, models  # each model captured once per session (other files read it too)
from lanes import fast_subset

pytestmark = pytest.mark.usefixtures("single_thread")

FAST = {"zoo:resnet20", "zoo:vit_tiny", "vendored:timm_levit", "vendored:tv_shufflenet_v2",
        "transformers:llama_gqa"}

# the zoo and the third-party models the README reports on (tests/thirdparty/survey.py)
NAMES = sorted(f"{set_name}:{name}" for set_name in SET_NAMES for name in models(set_name))


def signature(graph):
    """Everything a keep pattern depends on: per group (in order) its size, prunability and
    reason, and every member's parameter, dim and per-channel indices."""
    return [(g.size, g.prunable, g.reason,
             tuple((m.param, m.dim, tuple(tuple(np.asarray(ix).tolist()) for ix in m.index)) for m in g.members))
            for g in graph.groups]


def first_difference(a, b) -> str:
    if len(a) != len(b):
        return f"{len(a)} groups vs {len(b)}"
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return f"group {i}: {x[:3]} {[m[:2] for m in x[3]][:4]} vs {y[:3]} {[m[:2] for m in y[3]][:4]}"
    return "none"


@pytest.mark.reads_capture("")  # its names are whole keys ("timm:resnet18")
@pytest.mark.parametrize("name", fast_subset(NAMES, FAST & set(NAMES)))
def test_compile_and_analyze_give_the_same_groups(name):
    # analyze's graph, shared with the other tests of the model; compile (compile=False) and
    # analyze leave the model as it was
    shared = captured(name)
    model, inputs, first = shared.model, shared.inputs, shared.graph
    before = signature(first)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sparse = fxsparse.compile(model, inputs, keep=0.5, compile=False)
        # analyze again after compile (order independence) for one model per kind: a third
        # capture of every model would be a third of this file's time for the same code path
        after = fxsparse.analyze(model, inputs) if name in FAST else first
    compiled = signature(sparse.channel_graph)
    assert compiled == before, f"compile vs analyze before it: {first_difference(compiled, before)}"
    assert signature(after) == before, f"analyze after compile vs before: {first_difference(signature(after), before)}"
    if after.prunable_groups:  # a mask from analyze's groups applies to the compiled model
        sparse.masks = fxsparse.random_keep(after, 0.5, torch.Generator().manual_seed(0))
