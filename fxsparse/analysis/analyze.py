"""``fxsparse.analyze``: trace, normalise, propagate channels, group them."""
from __future__ import annotations

import warnings

import torch
import torch.nn as nn

from fxsparse.analysis.caches import tensor_caches, tensor_caches_emptied
from fxsparse.analysis.flops import flops_per_layer
from fxsparse.analysis.size_probe import sizes_the_graph_fixes
from fxsparse.analysis.graph import ChannelGraph, assign_flops, build_groups
from fxsparse.analysis.tied import couple_tied_members
from fxsparse.passes.pipelines import propagate_channels, record_shapes
from fxsparse.analysis.capture import (export_capture, python_state_kept, is_transformers_model, modules_export_sees_through, opaque_calls,
                                        weight_transformed_convs)
from fxsparse.rules.layers import WEIGHT_TRANSFORMED_CONV
from fxsparse.rules.meta_keys import FLOPS
from fxsparse.rules.registry import registered_targets
from fxsparse.core.errors import InputError, TraceError
from fxsparse.core.tracing import runs_eagerly, trace


def _capture(model, example_inputs, leaf_modules, flops, rules=None, rule_leaves=()):
    """The graph with shapes and FLOPs recorded: symbolic tracing first, torch.export where
    tracing fails, traces code that differs from what the model runs, or leaves a wrapped
    function without a rule opaque (see fxsparse.analysis.capture)."""
    if not leaf_modules and is_transformers_model(model):  # symbolic tracing always fails on them
        try:
            # the library's code lines say less than the module path: no stack traces (faster)
            return _export_graph(model, example_inputs, flops, stack_traces=False), []
        except TraceError as exc:
            if not _runs_eagerly(model, example_inputs):  # the inputs are the user's to fix
                raise InputError(f"{type(model).__name__} fails on the example inputs "
                                 f"{[tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__ for x in example_inputs]}"
                                 ". Pass inputs the model accepts (e.g. token ids [batch, sequence]).") from exc
            raise
    try:
        with warnings.catch_warnings(record=True) as leaf_warnings:
            warnings.simplefilter("always")
            gm, auto_leaves = trace(model, tuple(leaf_modules) + tuple(rule_leaves))
        record_shapes(gm, example_inputs, count_flops=flops)  # one forward gives shapes and FLOPs
    except (TraceError, InputError) as exc:
        if leaf_modules or (isinstance(exc, InputError) and not _runs_eagerly(model, example_inputs)):
            raise  # leaves only exist for symbolic tracing; inputs the model rejects are the user's to fix
        return _export_graph(model, example_inputs, flops, traced_error=exc), []
    if not leaf_modules and (auto_leaves or opaque_calls(gm, rules) or modules_export_sees_through(gm)):
        # an untraceable submodule, a torch.fx.wrap-ed function with no rule or an
        # nn.MultiheadAttention would block every channel it touches: torch.export runs its
        # Python and sees through it; where it cannot, the traced graph stays
        try:
            return _export_graph(model, example_inputs, flops), []
        except TraceError:
            pass
    for w in leaf_warnings:  # the traced graph stays: its opaque leaves are reported
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    sizes_the_graph_fixes(type(model).__name__, gm, example_inputs)  # sizes its code fixes: named, checked on export
    return gm, auto_leaves


def _runs_eagerly(model, example_inputs) -> bool:
    """:func:`runs_eagerly`, leaving no cache behind for the capture that may follow (a tensor
    the run cached would be a constant to torch.export, cut from its parameters)."""
    with python_state_kept(model):
        return runs_eagerly(model, example_inputs)


def _export_graph(model, example_inputs, flops, traced_error=None, stack_traces=True):
    try:
        gm = export_capture(model, example_inputs, stack_traces=stack_traces)
    except TraceError as exc:
        raise (exc if traced_error is None else _blame_capture(traced_error, exc)) from exc
    try:
        record_shapes(gm, example_inputs, count_flops=flops)
    except InputError as exc:
        raise _blame_capture(exc) from exc
    return gm


def _blame_capture(exc, export_exc=None):
    also = f" torch.export failed too: {export_exc}" if export_exc is not None else ""
    if isinstance(exc, TraceError):
        return TraceError(f"{exc}{also}", module_path=exc.module_path, location=exc.location)
    return TraceError(
        f"the model runs on the example inputs, but its captured graph does not: {exc.capture_failure}.{also} "
        "The capture recorded code that differs from what the model runs (an isinstance / is-tracing "
        "check, or an output object rebuilt as a plain dict). Fix: pass the module that holds that "
        "code in leaf_modules=[...] (its channels are then left unpruned), or report the model to "
        "fxsparse with this message.",
        location=exc.location,
    )


def _with_weight_transformed_convs(model, leaf_modules, rules):
    """The per-call rules with the weight-standardised convs' classes added (unless the user
    has a rule for them), and those convs' paths, traced as leaves."""
    found = weight_transformed_convs(model, skip={p for p in leaf_modules if isinstance(p, str)})
    classes = {cls for cls in found.values() if cls not in (rules or {}) and cls not in registered_targets()}
    if not classes:
        return rules, []
    return ({**{cls: WEIGHT_TRANSFORMED_CONV for cls in classes}, **(rules or {})},
            [p for p, cls in found.items() if cls in classes])


def analyze(model: nn.Module, example_inputs, *, leaf_modules=(), rules=None, flops=True) -> ChannelGraph:
    """Find the channel groups of ``model``.

    ``example_inputs``: a tensor or a tuple of tensors the model is called with.
    ``leaf_modules``: module paths or classes not to trace into (their channels stay).
    ``rules``: extra channel rules for this call only ({target: analyze_fn or Rule}); they
    are kept in the returned graph, so export, the masked reference and ``fxsparse.compile``
    use their export hooks and masked forms too.
    The model is not modified (mode, buffers and RNG state are as before).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"analyze() takes an nn.Module, got {type(model).__name__}")
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    example_inputs = tuple(example_inputs)
    rules, rule_leaves = _with_weight_transformed_convs(model, leaf_modules, rules)
    caches = tensor_caches(model)
    with python_state_kept(model):
        try:
            with tensor_caches_emptied(caches):  # computed from parameters, not cached constants
                gm, auto_leaves = _capture(model, example_inputs, leaf_modules, flops, rules, rule_leaves)
        except (TraceError, InputError):
            if not caches:
                raise
            gm, auto_leaves = _capture(model, example_inputs, leaf_modules, flops, rules, rule_leaves)
    ctx = propagate_channels(gm, rules)
    couple_tied_members(gm, ctx.members, ctx.elements)
    groups = build_groups(ctx.elements, ctx.members)
    per_module = flops_per_layer(gm)
    total = sum(node.meta.get(FLOPS, 0.0) for node in gm.graph.nodes)
    shapes = {name: tuple(ctx.param(name).shape) for name, _ in ctx.members}
    assign_flops(groups, per_module, total, shapes)
    return ChannelGraph(gm, ctx.elements, ctx.members, groups, ctx.mixing, auto_leaves,
                        flops={"total": total, "per_module": per_module}, example_inputs=example_inputs, rules=rules,
                        summing=ctx.summing)
