"""Graph capture: ``torch.fx.symbolic_trace`` first, ``torch.export`` (non-strict) where it fails.

Why two frontends, in this order:

* ``symbolic_trace`` keeps modules as ``call_module`` nodes, so ``leaf_modules=[...]``
  works and every model fxsparse analysed so far keeps exactly the graph (and group ids)
  it had. It cannot see through code that inspects its inputs: ``if`` on a size,
  ``x.dim()`` asserts, ``torch.fx.wrap``-ed helpers, keyword-only decorators and the
  output objects of the ``transformers`` library (``ModelOutput``; with transformers 5
  every model's top-level forward fails to trace).
* ``torch.export.export(strict=False)`` runs the model's Python for real, so all of that
  is seen through: the result is the training IR, a small closed set of high-level aten
  ops (``aten.linear``, ``aten.layer_norm``, ``aten.scaled_dot_product_attention``,
  views...). Parameters stay ``get_attr`` nodes named by their module path (the state
  dict keeps its names) and the graph's pytree codegen returns the model's own output
  structure. The aten_to_torch pass maps those ops onto the torch-level calls the channel
  rules are written for (the table: :mod:`fxsparse.rules.aten_ops`), so one rule set serves
  both frontends (:mod:`fxsparse.rules.contract`: how a new op reaches both).
  The batch, sequence and image dims of the inputs are captured as dynamic (the exported
  model runs at any batch size, sequence length and image size the model's code allows); a
  dim the code pins is named in a warning (:mod:`fxsparse.analysis.dynamic_dims`, which also
  says why windowed models keep their image size).

Dynamo capture (``torch.compile``'s frontend) was not chosen: it splits a model into
several graphs at every unsupported construct, where ``torch.export`` either gives one
graph or a precise error.
"""
from __future__ import annotations

import builtins
import contextlib
import math
import operator

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from fxsparse.analysis.dynamic_dims import (COST, FAILED, GRAPH, IMAGE_GUARD_BUDGET, LEVELS, dropped_dims,
                                            dynamic_shapes, guard_budget, over_budget, pinned_dims)
from fxsparse.analysis.size_probe import sizes_the_graph_fixes
from fxsparse.core.errors import TraceError
from fxsparse.core.tracing import eval_mode
from fxsparse.passes.pipelines import to_torch_level
from fxsparse.rules.registry import lookup

_KNOWN_MODULES = ("torch", "operator", "_operator", "builtins", "math", "_functools", "functools")


def is_transformers_model(model: nn.Module) -> bool:
    """Whether ``model`` is a ``transformers.PreTrainedModel`` (read off its class MRO, so
    transformers is never imported): torch.fx cannot trace their forwards, so they go to
    torch.export directly."""
    return any(cls.__name__ == "PreTrainedModel" and cls.__module__.startswith("transformers.")
               for cls in type(model).__mro__)


_CONV_FORWARDS = {nn.Conv1d: F.conv1d, nn.Conv2d: F.conv2d, nn.Conv3d: F.conv3d}


def weight_transformed_convs(model: nn.Module, skip=()) -> dict[str, type]:
    """{path: class} of the convs whose class overrides ``forward`` as ``conv(x, f(params))``:
    ``x`` goes straight into the one conv call and the weight is computed from parameters
    only (weight standardisation, timm's StdConv2d / ScaledStdConv2d). They are traced as
    leaves with :data:`fxsparse.rules.layers.WEIGHT_TRANSFORMED_CONV` (their channels prune;
    traced into, the computed weight would block them)."""
    found = {}
    for path, module in model.named_modules():
        base = next((b for b in _CONV_FORWARDS if type(module) is not b and isinstance(module, b)), None)
        if base is None or type(module).forward is base.forward or module.groups != 1 or path in skip:
            continue
        try:
            graph = fx.symbolic_trace(module).graph
        except Exception:
            continue
        inputs = [n for n in graph.nodes if n.op == "placeholder"]
        convs = [n for n in graph.nodes if n.op == "call_function" and n.target is _CONV_FORWARDS[base]]
        if len(inputs) != 1 or len(convs) != 1 or list(inputs[0].users) != convs[0:1] or convs[0].args[0] is not inputs[0]:
            continue
        seen, stack = set(), [a for a in convs[0].all_input_nodes if a is not inputs[0]]
        while stack:  # the weight, bias...: computed from parameters, never from the input
            n = stack.pop()
            if n is inputs[0]:
                break
            if n not in seen:
                seen.add(n)
                stack += n.all_input_nodes
        else:
            found[path] = type(module)
    return found


def _library_function(target) -> bool:
    if target in (getattr, operator.getitem) or isinstance(target, type(builtins.len)) and target.__module__ in (None, "builtins"):
        return True
    module = getattr(target, "__module__", None) or ""
    return module.split(".")[0] in _KNOWN_MODULES or target in vars(math).values()


def opaque_calls(gm: fx.GraphModule, rules=None) -> list[fx.Node]:
    """The call_function nodes of a traced graph that call a function torch.fx did not trace
    into (a ``torch.fx.wrap``-ed user or library function) and that no rule (registered or
    per call) describes: every channel entering one would be left unpruned."""
    modules = dict(gm.named_modules())
    return [node for node in gm.graph.nodes
            if node.op == "call_function" and not _library_function(node.target)
            and lookup(node, modules, rules) is None]


# Modules symbolic tracing keeps as one node although torch.export sees through them into ops
# the rules prune: nn.MultiheadAttention packs q/k/v in one parameter and needs embed_dim ==
# its input width, so as a module it blocks the residual stream around it; decomposed
# (linear, views, SDPA) the stream and its projections prune.
_EXPORT_SEES_THROUGH = (nn.MultiheadAttention,)


def modules_export_sees_through(gm: fx.GraphModule) -> list[fx.Node]:
    """The call_module nodes of a traced graph better captured by ``torch.export``: those of
    :data:`_EXPORT_SEES_THROUGH`, and parametrized modules (``torch.nn.utils.parametrize``:
    weight norm), whose weight is computed in their forward, where the symbolic trace cannot
    see it (the rules then refuse them: their channels would stay)."""
    modules = dict(gm.named_modules())
    return [node for node in gm.graph.nodes
            if node.op == "call_module" and (isinstance(modules.get(node.target), _EXPORT_SEES_THROUGH)
                                             or torch.nn.utils.parametrize.is_parametrized(modules.get(node.target)))]


@contextlib.contextmanager
def _without_kv_cache(model: nn.Module):
    """A ``transformers`` model returns its key/value cache (an object torch.export cannot
    flatten): it is inference state, never trained, so capture without it."""
    config = getattr(model, "config", None)
    old = getattr(config, "use_cache", None)
    if old:
        config.use_cache = False
    try:
        yield
    finally:
        if old:
            config.use_cache = old


@contextlib.contextmanager
def _capturable_experts(model: nn.Module):
    """A ``transformers`` mixture-of-experts layer in its "eager" form loops over the experts
    the batch happens to hit (a data-dependent loop torch.export cannot capture); its
    "grouped_mm" form computes the same with the routing in tensors: capture that one."""
    switched = []
    for module in model.modules():
        config = getattr(module, "config", None)
        if getattr(config, "_experts_implementation", None) == "eager" and all(config is not c for c in switched):
            config._experts_implementation = "grouped_mm"
            switched.append(config)
    try:
        yield
    finally:
        for config in switched:
            config._experts_implementation = "eager"


@contextlib.contextmanager
def _stack_traces(record: bool):
    """Whether FX records each node's Python stack (torch.fx.config is process-wide)."""
    old = torch.fx.config.do_not_emit_stack_traces
    torch.fx.config.do_not_emit_stack_traces = not record
    try:
        yield
    finally:
        torch.fx.config.do_not_emit_stack_traces = old


_MODULE_INTERNALS = frozenset(vars(nn.Module()))  # _parameters, _buffers, _modules, hooks, training...


@contextlib.contextmanager
def python_state_kept(model: nn.Module):
    """The Python attributes of every module restored after the model ran: a forward may
    cache (timm's LeViT keeps its attention biases in a dict in eval mode), and a tensor
    cached by one capture (or by a failed attempt of it) would be a constant in the next
    one, cut from its parameters: the same model would give other groups each time."""
    saved = []
    for module in model.modules():
        own = {k: v for k, v in vars(module).items() if k not in _MODULE_INTERNALS}
        saved.append((module, own, {k: (type(v)(v) if isinstance(v, (dict, list, set)) else None)
                                    for k, v in own.items()}))
    try:
        yield
    finally:
        for module, own, copies in saved:
            for k in [k for k in vars(module) if k not in _MODULE_INTERNALS and k not in own]:
                delattr(module, k)  # attributes the forward created
            for k, v in own.items():
                vars(module)[k] = v
                if copies[k] is not None:  # a container refilled in place (others may hold it)
                    v.clear()
                    if isinstance(v, list):
                        v.extend(copies[k])
                    else:
                        v.update(copies[k])


def _export(model: nn.Module, example_inputs):
    """The program of the model in eval mode, and the input dims it fixes: Python-level
    training branches (stochastic depth, attention dropout decided in Python) are frozen into
    a captured graph, and their eval branch is the deterministic network, right for evaluation
    and export; dropout and batch norm ops then follow the captured module's mode
    (fxsparse.passes.training_mode). Batch, sequence and image sizes dynamic first (the image
    sizes within a guard budget), then batch and sequence, then the batch only, then static (a
    model whose code breaks on a symbolic size is still captured); returns the dims left fixed."""
    by_level = {level: dynamic_shapes(example_inputs, level) for level in LEVELS}
    attempts = []  # (dynamic shapes, guard budget): the budget only where the image level adds image dims
    for level, dynamic in by_level.items():
        if any(d is not None for d in dynamic) and dynamic not in [a for a, _ in attempts]:
            attempts.append((dynamic, IMAGE_GUARD_BUDGET if level == "image" and dynamic != by_level["sequence"]
                             else None))
    attempts.append((None, None))
    why_image = FAILED  # why the image dims are dropped where a later attempt is kept
    with eval_mode(model):
        for dynamic, budget in attempts:
            try:
                with python_state_kept(model), guard_budget(budget):  # a failed attempt leaves no cache for the next
                    program = torch.export.export(model, example_inputs, strict=False, dynamic_shapes=dynamic)
            except Exception as exc:  # the next attempt, or the error below
                last = exc
                continue
            if budget is not None and over_budget(program, budget):
                why_image = COST  # the next level keeps the image size
                continue
            return program, (pinned_dims(program, example_inputs, dynamic)
                             + dropped_dims(program, example_inputs, attempts[0][0], dynamic, by_level["sequence"],
                                            why_image))
    raise TraceError(
        f"neither torch.fx nor torch.export can capture the forward of {type(model).__name__}: "
        f"{type(last).__name__}: {str(last).splitlines()[0] if str(last) else ''}. Fix: make the "
        "untraceable code a submodule and pass it in leaf_modules=[...] (its channels are then "
        "left unpruned), or remove data-dependent control flow on tensor values."
    ) from last


def export_capture(model: nn.Module, example_inputs, stack_traces: bool = True) -> fx.GraphModule:
    """The model's graph from ``torch.export`` (non-strict), rewritten to torch-level ops,
    in the model's mode (``.train()`` / ``.eval()`` on it switch dropout and batch norm).
    ``stack_traces=False`` skips recording each node's Python stack (a third of the capture
    time of a 12-layer transformer); nodes then name their module path instead of file:line."""
    example_inputs = tuple(example_inputs)
    with _without_kv_cache(model), _capturable_experts(model), _stack_traces(stack_traces):
        program, fixed = _export(model, example_inputs)
    gm = program.module()
    to_torch_level(gm)
    # torch.export blocks train()/eval() on the module (its flags were frozen); now they follow it
    for name in ("train", "eval"):
        vars(gm).pop(name, None)
    gm.train(model.training)
    sizes_the_graph_fixes(type(model).__name__, gm, example_inputs, known=fixed, why=GRAPH)
    return gm
