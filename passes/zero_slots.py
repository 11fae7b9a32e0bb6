"""Which tensors of the capacity model are exact zeros at their empty slots.

The compiled sparse step gathers kept channels into slots; empty slots hold exact zeros in
every parameter, so a layer's output (conv, linear, an affine norm) is zero there, and ops
with f(0) = 0 (relu, mul, a reshape) keep it. A sum over a channel dim of such a tensor
equals the exported model's; of a tensor some op made non-zero there (``h + 1``, ``exp``, a
comparison ``h <= 0.1``) it counts the empty slots (:class:`fxsparse.passes.masked_mixing.
MaskMixingOps` zero-fills that operand first). The analysis is conservative: an op it does
not know gives "not zero" (at worst a needless fill), never the reverse.
:meth:`ZeroSlots.unsafe_operands` names the zero operands of an element-wise op that would
turn them into inf or NaN (in the value or the gradient), which ``MaskMixingOps`` fills with
one; an in-place op, or an op whose operand is a non-zero value there, is not checked.

Writes no ``node.meta`` key; reads SHAPE.
"""
from __future__ import annotations

import operator

import torch
import torch.fx as fx
import torch.nn as nn

from fxsparse.core.broadcast import padded_shape
from fxsparse.rules import pointwise
from fxsparse.rules.meta_keys import SHAPE


def _name(target) -> str:
    return target if isinstance(target, str) else getattr(target, "__name__", "")


def _names(ops) -> frozenset:
    return frozenset(_name(t) for t in ops)


_ELEMENTWISE = (_names(pointwise.UNARY_FUNCTIONS + pointwise.UNARY_METHODS + pointwise.BINARY_FUNCTIONS
                       + pointwise.BINARY_METHODS) | frozenset(pointwise.SAME_NAME_UNARY)
                | frozenset(n + "_" for n in pointwise.SAME_NAME_UNARY) | frozenset(pointwise.SPECIAL_UNARY))
# ops that move or copy entries (an empty slot's entry stays in an empty slot): zero in, zero out
_MOVING = frozenset((
    "view", "reshape", "permute", "transpose", "flatten", "unflatten", "squeeze", "unsqueeze", "expand",
    "expand_as", "repeat", "tile", "contiguous", "getitem", "narrow", "select", "flip", "roll", "movedim",
    "moveaxis", "swapaxes", "swapdims", "t", "view_as", "reshape_as", "repeat_interleave", "index_select",
    "gather", "take_along_dim", "pixel_shuffle", "pixel_unshuffle", "channel_shuffle", "native_channel_shuffle",
    "interpolate", "upsample", "clone", "detach", "to", "type", "type_as", "float", "double", "half",
    "bfloat16", "long", "int", "bool", "split", "chunk", "unbind", "tensor_split", "split_with_sizes", "cat",
    "concat", "concatenate", "stack", "dropout", "identity",
    # reductions: over other dims, zeros reduce to zero; over a channel dim, the op is mixing
    # (masked) or summing (zero-filled when its operand is not zero), and its output has no
    # empty slot there
    "sum", "mean", "amax", "amin", "max", "min", "prod", "std", "var", "norm", "vector_norm", "nansum",
    "nanmean", "median", "cumsum", "cumprod", "cummax", "cummin", "var_mean", "std_mean", "any", "all",
    "count_nonzero", "normalize",
))
_POOLS = ("max_pool", "avg_pool", "adaptive_avg_pool", "adaptive_max_pool", "lp_pool", "fractional_max_pool")
_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
           nn.Linear, nn.Bilinear, nn.Embedding, nn.EmbeddingBag)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.InstanceNorm1d, nn.InstanceNorm2d,
          nn.InstanceNorm3d, nn.LayerNorm, nn.GroupNorm) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())
_MOVING_MODULES = (nn.Flatten, nn.Unflatten, nn.Upsample, nn.PixelShuffle, nn.PixelUnshuffle, nn.ChannelShuffle,
                   nn.PReLU, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)
_CONSTANT_PADS = (nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d, nn.ZeroPad2d)
# functional layers: (weight position, bias position); the output is zero at an empty output
# slot when the weight (and bias) are
_LAYER_FUNCTIONS = {"linear": (1, 2), "conv1d": (1, 2), "conv2d": (1, 2), "conv3d": (1, 2),
                    "conv_transpose1d": (1, 2), "conv_transpose2d": (1, 2), "conv_transpose3d": (1, 2),
                    "embedding": (1, None), "addmm": (2, 0), "batch_norm": (3, 4), "instance_norm": (3, 4),
                    "layer_norm": (2, 3), "group_norm": (2, 3), "rms_norm": (2, None)}
_PROBES = (1.5, -2.5)  # values another operand takes when testing that a zero operand gives zero


class ZeroSlots:
    """``zero[node]``: True when ``node``'s output is an exact zero at every empty slot of its
    prunable dims. ``prunable_dims(node)``: those dims (a tensor without them is trivially
    zero there; None for a tuple of tensors). Parameters are zero there (gathered, empty
    slots zeroed); buffers are not (running statistics stay as gathered). ``mixing``: names
    of the nodes replaced by masked forms. Call :meth:`visit` on each node in graph order."""

    def __init__(self, gm: fx.GraphModule, prunable_dims, mixing=()):
        self.modules = dict(gm.named_modules())
        self.parameters = {n for n, _ in gm.named_parameters(remove_duplicate=False)}
        self.prunable_dims = prunable_dims
        self.mixing = set(mixing)
        self.zero: dict[fx.Node, bool] = {}

    def visit(self, node: fx.Node) -> bool:
        """Decides and records ``node``; an in-place op that breaks zeros breaks its input's too."""
        z = self._decide(node) or self._dims(node) == frozenset()
        self.zero[node] = z
        if not z and _in_place(node) and isinstance(node.args[0], fx.Node):
            self.zero[node.args[0]] = False
        return z

    def _dims(self, node):
        """The prunable dims of ``node``'s output; None for a tuple of tensors."""
        dims = self.prunable_dims(node) if isinstance(node, fx.Node) else ()
        return None if dims is None else frozenset(dims)

    def _z(self, arg) -> bool:
        return isinstance(arg, fx.Node) and self.zero.get(arg, False)

    def covers(self, arg, node) -> bool:
        """``arg`` is zero at every empty slot of ``node``'s output: zero at its own, and not
        broadcast along a prunable dim of the output (a [B, 1] operand is not zero there)."""
        if not self._z(arg):
            return False
        shape, out = arg.meta.get(SHAPE), node.meta.get(SHAPE)
        if not _plain(shape) or not _plain(out):
            return False
        shape, dims = padded_shape(shape, len(out)), self._dims(node)
        return dims is not None and all(shape[d] == out[d] for d in dims)

    def _decide(self, node) -> bool:
        if node.op == "get_attr":
            return node.target in self.parameters
        if node.op == "call_module":
            return self._module(node)
        if node.op not in ("call_function", "call_method") or node.name in self.mixing:
            return False
        name = _name(node.target)
        if "alpha_dropout" in name:  # a dropped zero becomes a fixed non-zero value, at random
            return False
        if name in _LAYER_FUNCTIONS:
            return self._layer_function(node, *_LAYER_FUNCTIONS[name])
        if name in ("where", "masked_fill", "masked_fill_"):
            return self._select(node, name)
        if (name in _MOVING or name.startswith(_POOLS)) and not _two_tensor_max(node, name):
            return self._moving(node)
        if name in _ELEMENTWISE:
            return self._elementwise(node)
        if name in ("matmul", "bmm", "__matmul__"):
            return self._matmul(node)
        if name == "einsum":
            return all(self._z(a) for a in _tensor_args(node))
        if name == "scaled_dot_product_attention":  # each output entry is a mix of v's at that slot
            return self._z(node.args[2] if len(node.args) > 2 else node.kwargs.get("value"))
        if name == "pad":
            return self._z(node.args[0]) and not _arg(node, 3, "value", 0)
        return False

    def unsafe_operands(self, node) -> list:
        """The operands of an element-wise ``node`` that are zero at its empty slots and make
        its value or gradient there inf or NaN (``log(h.abs())``, ``1 / h``, ``sqrt(h)``'s
        gradient): the next layer's zero weights would multiply them into NaN, which the
        exported model (no slot) never sees. Filling them with one there makes ``node`` finite
        with finite gradients (checked on probes); [] when nothing needs it or one does not help."""
        if node.op not in ("call_function", "call_method") or node.name in self.mixing or _in_place(node):
            return []
        if _name(node.target) not in _ELEMENTWISE:
            return []
        tensors = _tensor_args(node)
        zeros = [a for a in tensors if self.covers(a, node)]
        if not zeros or all(_finite_on_probes(node, tensors, zeros, 0.0)):
            return []
        return zeros if all(_finite_on_probes(node, tensors, zeros, 1.0)) else []

    def _module(self, node) -> bool:
        mod = self.modules[node.target]
        if isinstance(mod, _LAYERS):
            return True
        if isinstance(mod, _NORMS):  # weight zero at empty slots; without one, running statistics are not
            return getattr(mod, "weight", None) is not None
        if isinstance(mod, _MOVING_MODULES) or "Pool" in type(mod).__name__:
            return self._z(node.args[0])
        if isinstance(mod, _CONSTANT_PADS):
            return self._z(node.args[0]) and not mod.value
        if isinstance(mod, (nn.AlphaDropout, nn.FeatureAlphaDropout)):
            return False
        if isinstance(mod, pointwise.UNARY_MODULES):
            return self._z(node.args[0]) and _is_zero(lambda: mod(torch.zeros(1)))
        return False

    def _layer_function(self, node, w, b) -> bool:
        weight = _arg(node, w, "weight", None)
        bias = _arg(node, b, "bias", None) if b is not None else None
        if _name(node.target) == "addmm":
            weight, bias = node.args[2], node.args[0]
        return self._z(weight) and (bias is None or self._z(bias))

    def _select(self, node, name) -> bool:
        """``where(c, a, b)`` is zero where a and b are (or where c is False and b is zero);
        ``x.masked_fill(m, v)`` where x is and v is 0 or m is False."""
        def zero(a):
            return self.covers(a, node) or (not isinstance(a, fx.Node) and not a)
        if name == "where":
            if len(node.args) < 3:
                return False
            c, a, b = node.args[:3]
            return zero(b) and (zero(a) or self.covers(c, node))
        x, m = node.args[:2]
        v = _arg(node, 2, "value", 0)
        return self.covers(x, node) and (zero(v) or self.covers(m, node))

    def _elementwise(self, node) -> bool:
        """f(0, .., 0) = 0 with every tensor operand zero there, or f(.., 0, ..) = 0 whatever
        the others (mul, div by), evaluated on 0-d probes with the node's constants."""
        tensors = _tensor_args(node)
        if not tensors:
            return False
        covering = [self.covers(a, node) for a in tensors]
        if all(covering) and _is_zero(lambda: _call(node, {a: 0.0 for a in tensors})):
            return True
        return len(tensors) > 1 and any(
            c and all(_is_zero(lambda p=p: _call(node, {b: (0.0 if b is a else p) for b in tensors})) for p in _PROBES)
            for a, c in zip(tensors, covering))

    def _matmul(self, node) -> bool:
        """Zero at an empty row slot where a is, a column slot where b is, a batch slot where either is."""
        a, b = node.args[:2]
        dims, nd = self._dims(node) or frozenset(), len(node.meta[SHAPE])
        if self.covers(a, node) and self.covers(b, node):
            return True
        return (self.covers(a, node) and nd - 1 not in dims) or (self.covers(b, node) and nd - 2 not in dims)

    def _moving(self, node) -> bool:
        data = node.args[0] if node.args else next(iter(node.kwargs.values()), None)
        items = data if isinstance(data, (list, tuple)) else [data]
        return all(self._z(a) or not isinstance(a, fx.Node) for a in items) and any(
            isinstance(a, fx.Node) for a in items)


def _two_tensor_max(node, name) -> bool:
    """``torch.max(a, b)``: element-wise, not a reduction."""
    return name in ("max", "min") and len(_tensor_args(node)) > 1


def _plain(shape) -> bool:
    return isinstance(shape, tuple) and not (shape and isinstance(shape[0], tuple))


def _arg(node, pos, key, default):
    if pos is not None and len(node.args) > pos:
        return node.args[pos]
    return node.kwargs.get(key, default)


def _tensor_args(node) -> list:
    found = []
    fx.node.map_arg((node.args, node.kwargs), found.append)
    return list(dict.fromkeys(found))


def _in_place(node) -> bool:
    name = _name(node.target)
    return (name.endswith("_") and not name.endswith("__")) or name.startswith("__i") or name in (
        "iadd", "isub", "imul", "itruediv")


def _call(node, values):
    """``node``'s op with its tensor arguments replaced by 0-d tensors of ``values``; float
    probes, else boolean ones (bitwise ops, ``~``)."""
    try:
        return _call_with(node, {a: torch.tensor(v, dtype=torch.float64) for a, v in values.items()})
    except (RuntimeError, TypeError):
        return _call_with(node, {a: torch.tensor(bool(v)) for a, v in values.items()})


def _call_with(node, tensors):
    args, kwargs = fx.node.map_arg((node.args, node.kwargs), lambda a: tensors[a])
    if node.op == "call_method":
        return getattr(args[0], node.target)(*args[1:], **kwargs)
    return node.target(*args, **kwargs)


def _finite_on_probes(node, tensors, filled, value):
    """Per probe (the other operands at each of :data:`_PROBES`, ``filled`` at ``value``):
    whether ``node``'s output and its gradients to every operand are finite there (True when
    the op cannot run on float probes: not a float op, nothing to fill)."""
    for p in _PROBES:
        probes = {a: torch.tensor(value if a in filled else p, dtype=torch.float64, requires_grad=True)
                  for a in tensors}
        try:
            out = _call_with(node, probes)
            if not isinstance(out, torch.Tensor) or not out.is_floating_point():
                yield True
                continue
            grads = torch.autograd.grad(out.sum(), list(probes.values()), allow_unused=True)
        except Exception:  # an op the probes cannot run (integer-only, shape-bound): nothing to decide
            yield True
            continue
        yield bool(torch.isfinite(out).all()) and all(g is None or bool(torch.isfinite(g).all()) for g in grads)


def _is_zero(compute) -> bool:
    """Whether ``compute()`` gives an all-zero tensor (False when it fails: unknown is not zero)."""
    try:
        with torch.no_grad():
            out = compute()
    except (RuntimeError, TypeError, ValueError):
        return False
    return isinstance(out, torch.Tensor) and not bool(out.detach().ne(0).any())


__all__ = ["ZeroSlots"]
