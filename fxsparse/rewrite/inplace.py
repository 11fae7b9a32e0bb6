"""``fxsparse.prune``: the user's own model, sliced in place.

Where :func:`fxsparse.export` returns a new ``torch.fx.GraphModule``, ``prune`` keeps the
model object: each module's parameters and buffers are replaced by their kept slices (new,
smaller ``nn.Parameter``s; BatchNorm statistics sliced alike) and the size attributes its
code reads are recomputed (:mod:`fxsparse.rewrite.size_attributes`), so the class, its
methods, hooks, ``generate()`` of a ``transformers`` model and ``isinstance`` checks stay.

The model's own forward then runs on the example inputs and must give what the masked
reference gives (:mod:`fxsparse.rewrite.reference`). It fails where the code pins a size
that pruning changed (a reshape to a constant, a size read from somewhere fxsparse does not
update): every change is then undone, and ``prune`` either returns the ``GraphModule`` of
``fxsparse.export`` with a warning naming the module and why (``fallback="graphmodule"``)
or raises :class:`~fxsparse.core.errors.PruneCheckError` (``fallback="raise"``).
"""
from __future__ import annotations

import os
import traceback
import warnings

import torch
import torch.nn as nn

from fxsparse.analysis.graph import ChannelGraph
from fxsparse.analysis.masks import kept_indices, normalize_keep
from fxsparse.core.errors import ExportError, PruneCheckError
from fxsparse.core.tracing import eval_mode, untouched
from fxsparse.rewrite.export import export
from fxsparse.rewrite.first_divergence import OutputHooks, first_divergence, module_calls, record_reference
from fxsparse.rewrite.recipe import dense_factory, record
from fxsparse.rewrite.reference import masked_reference
from fxsparse.rewrite.reference_check import output_tensors
from fxsparse.rewrite.run_check import inputs_on_device_of
from fxsparse.rewrite.size_attributes import SlicedDim, block_changes, config_changes, layer_changes

__all__ = ["prune", "tensor_owners"]

FALLBACKS = ("graphmodule", "raise")


class _Journal:
    """Every change made to the model, undone in reverse order when the check fails."""

    def __init__(self):
        self.undo_log = []

    def set_tensor(self, module: nn.Module, name: str, value):
        table = module._parameters if name in module._parameters else module._buffers
        self.undo_log.append(lambda t=table, n=name, old=table[name]: t.__setitem__(n, old))
        table[name] = value

    def set_attr(self, obj, name: str, value):
        had, old = hasattr(obj, name), getattr(obj, name, None)
        self.undo_log.append(lambda: setattr(obj, name, old) if had else delattr(obj, name))
        setattr(obj, name, value)

    def undo(self):
        for step in reversed(self.undo_log):
            step()
        self.undo_log.clear()


def prune(model: nn.Module, graph: ChannelGraph, keep, *, example_inputs=None, fallback: str = "graphmodule",
          atol: float = 1e-4, rtol: float = 1e-4):
    """Slice ``model`` in place to the channels ``keep`` selects and return it (the same object).

    ``graph``: ``fxsparse.analyze(model, example_inputs)``. ``keep``: {group id: bool mask or
    index tensor} (groups not named stay whole). ``example_inputs``: what the check runs on
    (default: the graph's). The pruned model must match the masked reference there (outputs
    within ``atol``/``rtol`` of their scale); if it does not, the model is left as it was and
    ``fallback="graphmodule"`` returns ``fxsparse.export(model, graph, keep)`` with a warning
    naming the module that failed, ``fallback="raise"`` raises :class:`PruneCheckError`.

    After ``prune`` the graph describes the dense model: analyze the pruned model again to
    prune it further. The parameters are new objects: build the optimizer after pruning.
    """
    if hasattr(model, "channel_graph"):  # a SparseModel holds the dense model and its masks
        raise TypeError("prune() takes the model itself: for a SparseModel sp, fxsparse.prune(sp.model, "
                        "sp.channel_graph, sp.masks)")
    if not isinstance(graph, ChannelGraph):
        raise TypeError("prune(model, graph, keep): graph must be the ChannelGraph returned by fxsparse.analyze(model, ...)")
    if fallback not in FALLBACKS:
        raise ValueError(f"prune(..., fallback={fallback!r}): use 'graphmodule' (return fxsparse.export's model when "
                         "the model cannot be sliced in place) or 'raise'")
    inputs = graph.example_inputs if example_inputs is None else example_inputs
    inputs = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs or ())
    if not inputs:
        raise ValueError("prune() checks the pruned model on example inputs: pass example_inputs=(...) "
                         "(the graph holds none)")
    inputs = inputs_on_device_of(model, inputs)  # the model may have moved since it was analysed
    masks = normalize_keep(graph, keep or {})
    factory = dense_factory(model)  # before prune rewrites a transformers config
    with eval_mode(model, graph.gm), untouched(model):  # before slicing: a traced graph shares the modules
        reference = masked_reference(graph, masks, *inputs)
    journal = _Journal()
    try:
        _slice_in_place(model, graph, masks, journal)
        with eval_mode(model), untouched(model):
            try:
                out = model(*inputs)
            except Exception as exc:
                raise PruneCheckError(f"the pruned {type(model).__name__} fails on the example inputs in "
                                      f"{_failing_module(model, exc)}: {type(exc).__name__}: "
                                      f"{_first_line(exc)}") from exc
        mismatch = _compare(out, reference, atol, rtol, type(model).__name__)
        if mismatch:
            raise PruneCheckError(mismatch + _diverging_layer(model, graph, masks, inputs, journal, atol, rtol))
    except PruneCheckError as exc:
        journal.undo()
        why = str(exc).rstrip(".")
        if fallback == "raise":
            raise PruneCheckError(f"{why}. The model was left unchanged. {_HINT}") from exc
        warnings.warn(f"fxsparse.prune: {why}. The model was left unchanged; returning fxsparse.export's "
                      f"GraphModule instead. {_HINT}", stacklevel=2)
        return export(model, graph, masks)
    except BaseException:
        journal.undo()  # an fxsparse bug or an interrupt: the model as it was
        raise
    record(model, model, graph, masks, "prune", factory)  # what fxsparse.save writes
    return model


_HINT = ("Where the model's code pins a size that pruning changed (a constant in its forward, or an attribute "
         "fxsparse does not update), compute it from the input (x.shape, -1 in a reshape), keep that group whole, "
         "or use fxsparse.export.")


def _first_line(exc) -> str:
    text = str(exc)
    return text.splitlines()[0] if text else ""


def _slice_in_place(model: nn.Module, graph: ChannelGraph, masks, journal: _Journal):
    """Replace every member tensor by its kept slice (tied names stay one tensor) and apply
    the size attribute changes that follow from the new shapes."""
    kept = kept_indices(graph, masks)
    owners = tensor_owners(model)
    old_shapes = {}
    own_old: dict[nn.Module, dict] = {}  # per sliced module: {its attribute: old shape}
    for name, per_dim in kept.items():
        if name not in owners:
            raise ExportError(f"the model has no parameter or buffer '{name}' (the graph has it): prune(model, graph, "
                              "keep) needs the model the graph was built from")
        first_module, attr = owners[name][0]
        old = getattr(first_module, attr)
        old_shapes[name] = tuple(old.shape)
        new = old.detach()
        for dim in sorted(per_dim):
            new = torch.index_select(new, dim, per_dim[dim].to(new.device))
        new = nn.Parameter(new.clone(), requires_grad=old.requires_grad) if isinstance(old, nn.Parameter) else new.clone()
        for module, attr in owners[name]:
            journal.set_tensor(module, attr, new)
            own_old.setdefault(module, {})[attr] = old_shapes[name]
    changes = []
    for module, old in own_old.items():
        changes += layer_changes(module, old)
    dims = _sliced_dims(graph, owners, old_shapes)
    changes += block_changes(model, dims) + config_changes(model, dims)
    for obj, attr, value in changes:
        journal.set_attr(obj, attr, value)


def tensor_owners(model: nn.Module) -> dict[str, list[tuple[nn.Module, str]]]:
    """{name of a parameter or buffer: every (module, attribute) holding that tensor}."""
    by_tensor: dict[int, list] = {}
    names: dict[str, int] = {}
    for prefix, module in model.named_modules(remove_duplicate=False):
        for table in (module._parameters, module._buffers):
            for attr, t in table.items():
                if t is None:
                    continue
                by_tensor.setdefault(id(t), [])
                if (module, attr) not in by_tensor[id(t)]:
                    by_tensor[id(t)].append((module, attr))
                names[f"{prefix}.{attr}" if prefix else attr] = id(t)
    return {name: by_tensor[key] for name, key in names.items()}


def _sliced_dims(graph: ChannelGraph, owners, old_shapes) -> list[SlicedDim]:
    """Every member dim of every group, with its old and new size, for the block attributes."""
    dims = []
    for g in graph.groups:
        layers = frozenset(m.layer for m in g.members)
        for m in g.members:
            if m.param not in owners:
                continue
            module, attr = owners[m.param][0]
            new = getattr(module, attr).shape[m.dim]
            old = old_shapes.get(m.param, _old_shape_of(m.param, owners, old_shapes))
            old = old[m.dim] if old is not None else new
            blocks = {len(ix) for ix in m.index}
            dims.append(SlicedDim(m.layer, int(old), int(new), layers, blocks.pop() if len(blocks) == 1 else 0))
    return dims


def _old_shape_of(name, owners, old_shapes):
    """The old shape of a tied alias: recorded under the tensor's first name."""
    first = owners[name][0]
    for other, shape in old_shapes.items():
        if owners[other][0] == first:
            return shape
    return None


def _compare(out, reference, atol, rtol, what) -> str | None:
    """How the model's output differs from the masked reference's, or None."""
    got, want = output_tensors(out), output_tensors(reference)
    common = [k for k in want if k in got]
    if not common:
        return f"the pruned {what} returns {sorted(got)}, the masked reference {sorted(want)}: no output to compare"
    for key in common:
        a, b = got[key].detach().float(), want[key].detach().float()
        if a.shape != b.shape:
            return f"output {key} of the pruned {what} has shape {tuple(a.shape)}, the masked reference {tuple(b.shape)}"
        scale = max(1.0, float(b.abs().max())) if b.numel() else 1.0
        if not torch.allclose(a, b, atol=atol * scale, rtol=rtol):
            return (f"output {key} of the pruned {what} differs from the masked reference by "
                    f"{float((a - b).abs().max()):.3g} (scale {scale:.3g})")
    return None


def _diverging_layer(model, graph, masks, inputs, journal: _Journal, atol, rtol) -> str:
    """'; the first layer ... is PATH' for a model whose output differs without an error: the
    pruned model's layer outputs, then (undone, the traced graph shares its modules) the
    reference's. Empty where the graph has no module calls (torch.export)."""
    paths = module_calls(graph)
    if not paths:
        return ""
    hooks = OutputHooks(model, paths)
    try:
        with eval_mode(model), untouched(model):
            model(*inputs)
    finally:
        hooks.remove()
    journal.undo()
    with eval_mode(model, graph.gm), untouched(model):
        reference = record_reference(graph, masks, inputs)
    path = first_divergence(reference, paths, hooks.outputs, atol, rtol)
    if path is None:
        return ""
    caller = path.rpartition(".")[0]
    return (f"; the first layer whose output differs is module '{path}' ({type(model.get_submodule(path)).__name__}): "
            f"the code that computes its input, in the forward of {repr(caller) if caller else type(model).__name__}, "
            "pins a size")


def _failing_module(model: nn.Module, exc: BaseException) -> str:
    """"module PATH (Class.method at file:line)" of the innermost module code that raised, and
    the innermost forward of the user's own code (not torch's) above it where that differs."""
    paths = {id(m): p for p, m in model.named_modules()}
    frames = []  # (path, class, function, file, line), innermost first
    for frame, line in reversed(list(traceback.walk_tb(exc.__traceback__))):
        me = frame.f_locals.get("self")
        code = frame.f_code
        if isinstance(me, nn.Module) and id(me) in paths and code.co_name not in ("_call_impl", "_wrapped_call_impl"):
            frames.append((paths[id(me)] or "(the model)", type(me).__name__, code.co_name, code.co_filename, line))
    if not frames:
        return "the model's forward"

    def describe(f):
        return f"module '{f[0]}' ({f[1]}.{f[2]} at {f[3]}:{f[4]})"

    own = next((f for f in frames if not _in_torch(f[3])), None)
    if own is None or own is frames[0]:
        return describe(frames[0])
    return f"{describe(frames[0])}, called from {describe(own)}"


def _in_torch(filename: str) -> bool:
    return f"{os.sep}torch{os.sep}" in filename
