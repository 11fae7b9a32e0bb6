"""The input sizes a torch.fx traced graph cannot follow, found by running it at other sizes.

Symbolic tracing records sizes as the code computes them (``x.shape``, ``-1`` in a reshape),
so a traced graph runs at any size its code allows; where the code fixes one (``view(2, -1)``,
``view(x.size(0), 64, 8, 8)``, a position table added to the tokens), the graph fails at other
sizes, or returns another batch than it was given. Which dims do is found here by running the
graph on the meta device (shapes only, no arithmetic: tens of milliseconds for a zoo CNN; fake
tensors take ten times longer) at other sizes, one dim group at a time where the run with all
of them changed fails:

* the batch (dim 0 of every input) grows by one;
* an image's height and width (a float input of rank >= 4, dims 2...) double (strides stay whole);
* a sequence (the other dims of an integer input, dim 1 of a rank-3 float input) shrinks by one
  (a position table has room for it).

Dims of the same kind and size change together (token ids and their attention mask).

A ``torch.export`` capture is probed too, for the dims it kept symbolic: its graph can still
hold a size of the example that torch.export specialised without narrowing the input's range
(a feature map of size 1, a comparison such as timm's "resample the position table unless the
grid is the old one").
"""
from __future__ import annotations

import contextlib
import io

import torch
import torch.fx as fx
from torch.func import functional_call

from fxsparse.analysis.dynamic_dims import CODE, FixedDim, asked_dims, record_fixed_dims, warn_fixed_sizes
from fxsparse.core.tracing import eval_mode

__all__ = ["dims_the_graph_fixes", "sizes_the_graph_fixes"]


def _kind(x: torch.Tensor, dim: int) -> str:
    if dim == 0:
        return "batch"
    if (x.is_floating_point() or x.is_complex()) and x.dim() >= 4:
        return "image"
    return "sequence"


_OTHER_SIZE = {"batch": lambda n: n + 1, "image": lambda n: 2 * n, "sequence": lambda n: n - 1 if n > 2 else n + 1}


def _groups(example_inputs, skip) -> dict[tuple[str, int], list[tuple[int, int]]]:
    """{(kind, size): [(input, dim), ...]}: the dims probed (not those of ``skip``), those that
    change together."""
    groups: dict[tuple[str, int], list[tuple[int, int]]] = {}
    for i, x in enumerate(example_inputs):
        if isinstance(x, torch.Tensor):
            for d in asked_dims(x, "image"):
                if (i, d) not in skip:
                    groups.setdefault((_kind(x, d), int(x.shape[d])), []).append((i, d))
    return groups


def _batch_sizes(out) -> list[int]:
    """Dim 0 of every tensor in a model output (nested tuples, lists and dicts)."""
    if isinstance(out, torch.Tensor):
        return [int(out.shape[0])] if out.dim() else [-1]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return [n for item in out for n in _batch_sizes(item)]
    return []


def _meta_batch_sizes(gm: fx.GraphModule, state: dict, example_inputs, changed: dict[tuple[int, int], int]):
    """The output's dim-0 sizes of ``gm`` run on the meta device (``state``: its parameters and
    buffers there) at the example's shapes with ``changed`` ({(input, dim): new size})
    applied; None where it fails."""
    inputs = []
    for i, x in enumerate(example_inputs):
        if isinstance(x, torch.Tensor):
            x = torch.empty([changed.get((i, d), n) for d, n in enumerate(x.shape)], dtype=x.dtype, device="meta")
        inputs.append(x)
    try:  # a GraphModule prints the traceback of a failing call to stderr: an expected failure here
        with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):
            return _batch_sizes(functional_call(gm, state, tuple(inputs)))
    except Exception:  # the graph cannot run at these sizes (or not on the meta device at all)
        return None


def dims_the_graph_fixes(gm: fx.GraphModule, example_inputs, skip=(), why: str = CODE) -> list[FixedDim] | None:
    """The input dims (but those of ``skip``: {(input, dim)}) at which the captured graph ``gm``
    fails or returns another batch when they change, fixed for ``why``; None where it does not
    even run on the meta device at the example sizes (an opaque leaf that reads values, a tensor
    made on the CPU: nothing can be told)."""
    groups = _groups(example_inputs, set(skip))
    if not groups:
        return []
    changed = {(i, d): _OTHER_SIZE[kind](size) for (kind, size), dims in groups.items() for i, d in dims}
    batch = {n for (kind, n) in groups if kind == "batch"}
    state = {name: t.to("meta") for name, t in [*gm.named_parameters(), *gm.named_buffers()]}
    got = _meta_batch_sizes(gm, state, example_inputs, changed)
    if got is not None and not batch & set(got):  # it ran, and no output kept the old batch: one run
        return []
    expected = _meta_batch_sizes(gm, state, example_inputs, {})
    if expected is None:
        return None

    def follows(dims) -> bool:
        got = _meta_batch_sizes(gm, state, example_inputs, {k: changed[k] for k in dims})
        grows = any(d == 0 for _, d in dims)
        return got == [n + 1 if grows and n in batch else n for n in expected]

    if follows(list(changed)):
        return []
    names = [n.name for n in gm.graph.nodes if n.op == "placeholder"]
    return [FixedDim(i, names[i] if i < len(names) else f"input_{i}", d, size, why)
            for (kind, size), dims in groups.items() if not follows(dims) for i, d in dims]


def sizes_the_graph_fixes(model_name: str, gm: fx.GraphModule, example_inputs, known=(), why: str = CODE):
    """Probe ``gm`` (captured from ``model_name``) for the dims ``known`` (the capture's own
    report) leaves out, record them all on it (the exported model checks them) and name them
    in a :class:`PinnedSizeWarning`."""
    with eval_mode(gm):
        found = dims_the_graph_fixes(gm, tuple(example_inputs), {(f.input, f.dim) for f in known}, why) or []
    fixed = list(known) + found
    record_fixed_dims(gm, fixed)
    warn_fixed_sizes(model_name, fixed)
    return fixed
