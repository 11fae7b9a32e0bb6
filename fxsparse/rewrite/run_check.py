"""Run a freshly built model once on the example inputs, so a model that would crash in its
first forward is reported when it is built, naming the op that fails and its constants.

Used by ``export`` (the physically smaller model) and by ``SparseModel`` (the capacity
model): a constant size that still names a removed channel count surfaces here as an
:class:`~fxsparse.core.errors.ExportError`, never later in the user's training loop.
"""
from __future__ import annotations

import traceback

import torch
import torch.fx as fx

from fxsparse.core.errors import ExportError
from fxsparse.rules.context import where
from fxsparse.core.tracing import untouched


def _failing_node(gm: fx.GraphModule, exc: BaseException) -> fx.Node | None:
    """The graph node whose generated line raised (the innermost frame of fx's generated code)."""
    names = {n.name: n for n in gm.graph.nodes}
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if not frame.filename.startswith("<eval_with_key"):
            continue
        lhs = (frame.line or "").split("=", 1)[0].strip()
        for name in (part.strip() for part in lhs.split(";")[0].split(",")):
            if name in names:
                return names[name]
    return None


def _constants(node: fx.Node) -> str:
    """The non-tensor arguments of ``node`` (sizes, dims), as written in the graph."""
    consts = []
    for a in list(node.args) + list(node.kwargs.values()):
        if not isinstance(a, fx.Node):
            consts.append(repr(a))
    return ", ".join(consts)


def describe_failure(gm: fx.GraphModule, exc: BaseException) -> str:
    node = _failing_node(gm, exc)
    first = str(exc).splitlines()[0] if str(exc) else ""
    if node is None:
        return f"{type(exc).__name__}: {first}"
    target = getattr(node.target, "__name__", str(node.target))
    consts = _constants(node)
    return (f"node '{node.name}' ({target} at {where(node)}{'; constant arguments: ' + consts if consts else ''}) "
            f"raises {type(exc).__name__}: {first}")


def inputs_on_device_of(module: torch.nn.Module, inputs) -> tuple:
    """The example inputs moved to the device of ``module``'s first parameter (the model may
    have moved since it was analysed)."""
    param = next((p for p in module.parameters() if p.device.type != "meta"), None)
    if param is None:
        return tuple(inputs)
    return tuple(x.to(param.device) if isinstance(x, torch.Tensor) else x for x in inputs)


def check_runs(run, gm: fx.GraphModule, what: str) -> None:
    """Call ``run()`` (a forward of ``gm`` on the example inputs) without gradients, leaving
    buffers and the RNG state as they were; turn any failure into an ExportError."""
    try:
        with untouched(gm):
            run()
    except Exception as exc:
        raise ExportError(
            f"{what} fails on the example inputs: {describe_failure(gm, exc)}. A size or index in the model still "
            "names a channel count that pruning changed; this is an fxsparse bug (the analysis should rewrite that "
            "constant or keep the channels it names): please report it with the model. Until then, keep the group "
            "whole (leave it out of the keep mask) or make the module that holds the op a leaf "
            "(analyze(..., leaf_modules=[...]))."
        ) from exc
