"""``fxsparse.compile`` and ``fxsparse.analyze`` give the same groups for the same model and
inputs, whichever runs first: over the zoo and every third-party model the tests build (the
sets of tests/thirdparty/survey.py: the mirrored torchvision/timm models, transformers,
real timm models, the MoE / state-space / audio families). A keep pattern built from
``analyze``'s groups applies to the compiled model. Analysis only: ``compile=False`` builds the
capacity model without an inductor compile. One model per kind in the fast lane.

Issue #32, the cost: ``fxsparse.compile`` without a graph runs the same ``analyze`` again, so the
check is a second capture of the model (the first is shared with the other files,
tests/captures.py): this file alone took 392 CPU s (one thread), 238 s with the subset below. What
can make two captures of one model in one process differ is (a) the model's own Python state
changing between them (timm's LeViT caches its attention biases in eval mode,
tests/analysis/test_analysis_repeatable.py) and (b) the analysis itself (an order that is not
deterministic), which depends on the op kinds and the capture path, not on the model. So the second
capture runs for ``SECOND_CAPTURE`` (one model per set, family and capture path: torch.fx and
torch.export, the windowed and the dynamic ones, MoE, state space, audio) and for every model whose
eager forward changes its Python state (found on each model here, by ``python_state`` before and
after a forward: such a model gets the full check whether or not it is listed). Every other model is
still checked on the shared capture: building the capacity model (``compile=False``) from analyze's
graph leaves the graph and the model as they were (its output equals the output before) and
analyze's mask applies."""
import warnings

import numpy as np
import pytest
import torch

import fxsparse
from captures import SET_NAMES, captured, models  # each model captured once per session (other files read it too)
from lanes import ZOO_FAST, fast_subset
from thirdparty.chain import first_tensor

pytestmark = pytest.mark.usefixtures("single_thread")

FAST = {"zoo:resnet20", "zoo:vit_tiny", "vendored:timm_levit", "vendored:tv_shufflenet_v2",
        "transformers:llama_gqa"}

# captured a second time whatever their forward does: each zoo family; per third-party set one
# model of each family and capture path (torch.export: the *_dynamic mirrors, tv_swin_t's wrapped
# functions, efficientvit_b0; LeViT's cache under both names), MoE, state space, audio
SECOND_CAPTURE = (FAST | {f"zoo:{n}" for n in ZOO_FAST}
                  | {f"vendored:{n}" for n in ("timm_levit", "timm_vit_dynamic", "timm_swin_dynamic", "tv_swin_t",
                                                "tv_resnet18", "tv_densenet", "timm_efficientnet", "timm_convnext",
                                                "timm_mlp_mixer", "tv_inception_v3")}
                  | {f"transformers:{n}" for n in ("gpt2", "bert", "vit", "swin", "convnext", "mamba", "qwen2_moe")}
                  | {f"timm:{n}" for n in ("levit_128s", "resnet18", "vit_tiny_patch16_224", "efficientvit_b0",
                                           "mobilevitv2_050")}
                  | {f"tests:{n}" for n in ("wav2vec2", "clip_vision_projection", "qwen3_moe")})

# the zoo and the third-party models the README reports on (tests/thirdparty/survey.py)
NAMES = sorted(f"{set_name}:{name}" for set_name in SET_NAMES for name in models(set_name))
# a renamed model would otherwise leave the list silently (a set whose library is missing has no names)
_UNKNOWN = {k for k in SECOND_CAPTURE - set(NAMES) if models(k.split(":")[0])}
if _UNKNOWN:
    raise ValueError(f"SECOND_CAPTURE names no model: {sorted(_UNKNOWN)}")


def signature(graph):
    """Everything a keep pattern depends on: per group (in order) its size, prunability and
    reason, and every member's parameter, dim and per-channel indices."""
    return [(g.size, g.prunable, g.reason,
             tuple((m.param, m.dim, tuple(tuple(np.asarray(ix).tolist()) for ix in m.index)) for m in g.members))
            for g in graph.groups]


def python_state(model):
    """What a forward could change in a model besides its tensors' values, independently of the
    library: per module, every attribute's name and, for a dict / list / set / tuple, its length
    and its items' identities, for any other object but a plain scalar or string its identity."""
    def of(v):
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        if isinstance(v, dict):
            return ("dict", tuple((k if isinstance(k, (str, int)) else id(k), id(x)) for k, x in v.items()))
        if isinstance(v, (list, tuple, set, frozenset)):
            return (type(v).__name__, len(v), tuple(sorted(id(x) for x in v)))
        return ("id", id(v))
    return {(name, attr): of(v) for name, m in model.named_modules() for attr, v in vars(m).items()}


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
    state = python_state(model)
    with torch.no_grad():
        dense = model(*inputs)
    stateful = python_state(model) != state  # a forward that caches: it could change the next capture
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if name in SECOND_CAPTURE or stateful:
            sparse = fxsparse.compile(model, inputs, keep=0.5, compile=False)  # a second capture
        else:  # a model whose forward leaves it as it was: the capture is the second one's code path
            sparse = fxsparse.compile(model, inputs, keep=0.5, compile=False, graph=first)
        # analyze again after compile (order independence) for one model per kind: a third
        # capture of every model would be a third of this file's time for the same code path
        after = fxsparse.analyze(model, inputs) if name in FAST else first
    compiled = signature(sparse.channel_graph)
    assert compiled == before, f"compile vs analyze before it: {first_difference(compiled, before)}"
    assert signature(after) == before, f"analyze after compile vs before: {first_difference(signature(after), before)}"
    with torch.no_grad():  # the model as it was: the same output (a tuple's or a model output's first tensor)
        out = model(*inputs)
    assert torch.equal(first_tensor(out), first_tensor(dense))
    if after.prunable_groups:  # a mask from analyze's groups applies to the compiled model
        sparse.masks = fxsparse.random_keep(after, 0.5, torch.Generator().manual_seed(0))
