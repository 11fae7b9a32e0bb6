"""Element-wise ops.

Unary ops (activations, dropout, casts) pass channels through. N-ary ops (add, mul,
where...) align their operands position by position, with broadcasting:
- two channels that meet at the same position are coupled (a residual add, an SE gate);
- a channel broadcast over several channels (a [B,1,H,W] spatial gate) couples nothing
  and is itself unprunable (removing it would remove the gate from all of them);
- a channel that meets a tensor whose values along that dim are fixed (an input, a
  constant, an untracked op's output) is unprunable: removing it would change the other
  operand's shape.
"""
from __future__ import annotations

import math
import operator

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from fxsparse.core.broadcast import left_pad, padded_shape
from fxsparse.core.elements import NO_ELEMENT, varying_dims
from .aten_ops import register_aten
from .context import FreeRef, node_arg
from .outer import keep_one_axis
from .registry import register_rule

UNARY_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Hardtanh, nn.Softsign,
    nn.Tanhshrink, nn.LogSigmoid, nn.Threshold, nn.Hardshrink, nn.Softshrink,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout, nn.Identity,
    nn.RReLU,
)
UNARY_FUNCTIONS = (
    F.relu, F.relu_, F.relu6, F.leaky_relu, F.elu, F.selu, F.celu, F.gelu, F.silu, F.mish, F.hardswish,
    F.hardsigmoid, F.sigmoid, F.tanh, F.softplus, F.hardtanh, F.softsign, F.logsigmoid, F.threshold,
    F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout,
    torch.relu, torch.sigmoid, torch.tanh, torch.exp, torch.log, torch.sqrt, torch.rsqrt, torch.abs,
    torch.neg, torch.erf, torch.clamp, torch.clamp_min, torch.clamp_max, torch.clip, torch.square, torch.sign, torch.nan_to_num,
    operator.neg, operator.pos, torch.clone, torch.detach,
    # the functional forms of UNARY_MODULES that torch.export records (hardshrink is torch.hardshrink)
    F.hardshrink, F.softshrink, F.tanhshrink, torch.feature_dropout, torch.alpha_dropout, torch.feature_alpha_dropout,
    F.rrelu, torch.rrelu, operator.invert,
)
# Element-wise one-operand ops whose function ``torch.<name>``, method ``x.<name>()`` (and
# ``x.<name>_()`` where there is one) and aten op ``aten.<name>`` share a name. torch.sinc is
# left out: it is the rule contract's worked example (tests/rules/test_rule_contract.py).
SAME_NAME_UNARY = (
    "sin", "cos", "tan", "asin", "acos", "atan", "arcsin", "arccos", "arctan", "sinh", "cosh", "asinh", "acosh",
    "atanh", "reciprocal", "log1p", "expm1", "log2", "log10", "exp2", "erfc", "erfinv", "logit", "digamma", "lgamma",
    "i0", "floor", "ceil", "round", "trunc", "fix", "frac", "sgn", "deg2rad", "rad2deg", "positive",
    # results that are boolean masks of the same shape
    "signbit", "isnan", "isinf", "isfinite", "isposinf", "isneginf", "logical_not", "bitwise_not",
)
# ``torch.special.<name>``, recorded by torch.export as ``aten.special_<name>``
SPECIAL_UNARY = (
    "expit", "logit", "erfc", "erfcx", "erfinv", "expm1", "exp2", "log1p", "ndtr", "log_ndtr", "i0e", "i1", "i1e",
    "entr", "psi", "digamma", "gammaln", "round", "erf",
)
UNARY_METHODS = (
    "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "exp", "log", "abs", "neg", "clamp", "clamp_",
    "clip", "sqrt", "rsqrt", "square", "sign", "contiguous", "float", "half", "double", "bfloat16", "to",
    "type", "type_as", "detach", "clone", "requires_grad_", "exp_", "nan_to_num", "pow", "__pow__", "erf",
    "__invert__", "long", "int", "bool",  # casts: an integer or boolean tensor keeps its channels
)
BINARY_FUNCTIONS = (
    operator.add, operator.sub, operator.mul, operator.truediv, operator.iadd, operator.isub, operator.imul,
    operator.itruediv, operator.pow, torch.add, torch.sub, torch.mul, torch.div, torch.maximum, torch.minimum,
    torch.where, torch.lerp, torch.pow, torch.addcmul, torch.addcdiv, torch.true_divide, torch.rsub,
    operator.mod, operator.floordiv, torch.remainder, torch.fmod, torch.floor_divide, torch.atan2, torch.hypot,
    torch.copysign, torch.logaddexp, torch.fmax, torch.fmin, torch.xlogy,
    # comparisons and logic: a boolean mask with the channels of its operands (the condition of
    # torch.where / masked_fill then couples like any other operand)
    operator.gt, operator.lt, operator.ge, operator.le, operator.eq, operator.ne, operator.and_, operator.or_,
    operator.xor, torch.gt, torch.lt, torch.ge, torch.le, torch.eq, torch.ne, torch.greater, torch.less,
    torch.greater_equal, torch.less_equal, torch.not_equal, torch.logical_and, torch.logical_or, torch.logical_xor,
    torch.bitwise_and, torch.bitwise_or, torch.bitwise_xor, torch.masked_fill,
)
BINARY_METHODS = (
    "add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "maximum", "minimum", "masked_fill",
    "masked_fill_", "where", "lerp", "addcmul", "addcdiv", "__add__", "__radd__", "__mul__", "__rmul__",
    "__sub__", "__rsub__", "__truediv__", "remainder", "fmod", "floor_divide", "atan2", "hypot", "copysign",
    "logaddexp", "fmax", "fmin", "xlogy", "__mod__", "__floordiv__",
    "gt", "lt", "ge", "le", "eq", "ne", "greater", "less", "greater_equal", "less_equal", "not_equal",
    "__gt__", "__lt__", "__ge__", "__le__", "__eq__", "__ne__", "logical_and", "logical_or", "logical_xor",
    "bitwise_and", "bitwise_or", "bitwise_xor", "__and__", "__or__", "__xor__",
)


def passthrough(ctx, node):
    """Output carries the first tensor argument's channels (and its free parameters)."""
    src = node.args[0] if node.args else next(iter(node.kwargs.values()))
    ids, refs = ctx.ids(src), ctx.free(src)
    if ids is None and refs is not None:
        ctx.set_free(node, refs)
    return ids


for _t in UNARY_MODULES + UNARY_FUNCTIONS + UNARY_METHODS:
    register_rule(_t)(passthrough)


def _register_same_name_unary():
    aten = torch.ops.aten
    for name in SAME_NAME_UNARY:
        fn = getattr(torch, name)
        register_rule(fn, name)(passthrough)
        register_aten(getattr(aten, name).default, fn)
        if hasattr(torch.Tensor, name + "_"):
            register_rule(name + "_")(passthrough)
            register_aten(getattr(aten, name + "_").default, fn, in_place=True)
    for name in SPECIAL_UNARY:
        fn = getattr(torch.special, name)
        register_rule(fn)(passthrough)
        register_aten(getattr(aten, f"special_{name}").default, fn)


_register_same_name_unary()


def _right_aligned(refs, nd):
    return [FreeRef(r.qualname, (None,) * (nd - len(r.dims)) + tuple(r.dims)) for r in refs]


def combine(ctx, node, operands, out_shape, what="element-wise op"):
    """Couple the channels of ``operands`` (fx.Nodes or constants) position by position."""
    nd = len(out_shape)
    loc = f"{what} at {ctx.where(node)}"
    entries = []  # (name, shape aligned to nd, ids aligned or None, free refs or None)
    for op in operands:
        if op is None or isinstance(op, (bool, int, float, complex, str)):
            continue  # python number
        shape = ctx.shape(op)
        if shape is None or not isinstance(shape, tuple) or (shape and isinstance(shape[0], tuple)):
            continue
        shape = padded_shape(shape, nd)
        ids = ctx.ids(op)
        entries.append((getattr(op, "name", "a constant"), shape, None if ids is None else left_pad(ids, nd), ctx.free(op)))
    tracked = _outer_product(ctx, [e for e in entries if e[2] is not None], loc)

    # Free parameters (layer scale, positional embeddings) take the channels they meet.
    for _, shape, ids, refs in entries:
        if refs is None or ids is not None:
            continue
        for _, _, other, _ in tracked:
            for d in varying_dims(other):
                if shape[d] == 1:
                    continue  # broadcast: the parameter is shared by all channels
                line = np.moveaxis(other, d, 0).reshape(other.shape[d], -1)[:, 0]
                if not ctx.bind_free(_right_aligned(refs, nd), d, line):
                    ctx.unprunable(other, f"{loc}: meets a parameter view that cannot be sliced along dim {d}")

    # Channels that meet fixed (untracked) values along their own dim are unprunable.
    for name, shape, ids, refs in entries:
        if refs is not None and ids is None:
            continue
        for _, _, other, _ in tracked:
            if other is ids:
                continue
            for d in varying_dims(other):
                if shape[d] == 1:
                    continue  # this operand is broadcast along d: nothing fixed there
                reason = f"{loc}: combined with '{name}', whose values along dim {d} cannot be removed"
                if ids is None or d not in varying_dims(ids):
                    ctx.unprunable(other, reason)
                    break
                a, b = np.broadcast_arrays(ids, other)
                ctx.unprunable(b[(a < 0) & (b >= 0)], reason)

    # An operand of size 1 along a dim where another carries channels is broadcast over
    # them (a [B,1,H,W] spatial gate): its own channels cannot go, and it couples nothing.
    gates = []
    for idx, (name, shape, ids, _) in enumerate(tracked):
        spread_dims = [d for d in range(nd) if shape[d] == 1 and out_shape[d] > 1
                       and any(d in varying_dims(o[2]) for o in tracked if o[2] is not ids)]
        if spread_dims:
            ctx.unprunable(ids, f"{loc}: '{name}' is broadcast over the channels of dim {spread_dims[0]} (a gate)")
            gates.append(idx)
    live = [e for i, e in enumerate(tracked) if i not in gates]
    # Channels at the same position are coupled (repeated ids tie channels together, as
    # after a grouped conv: a gate must then be uniform across the groups too).
    for i in range(len(live)):
        for j in range(i + 1, len(live)):
            ctx.couple(*np.broadcast_arrays(live[i][2], live[j][2]))

    out = np.full((1,) * nd, NO_ELEMENT, dtype=np.int64)
    for _, _, ids, _ in live:
        o, s = np.broadcast_arrays(out, ids)
        out = np.where(o >= 0, o, s)
    return out


def _outer_product(ctx, tracked, loc):
    """Operands whose channels run along different dims, each broadcast along the other's
    (``dt[:, :, None] * B[:, None, :]``, a state-space model's inner channels times its state
    dim): one of them keeps its channels (``outer.keep_one_axis``), the other's stay."""
    for a in list(tracked):
        for b in list(tracked):
            # by identity: an entry's ids are arrays, which `in` / `remove` would compare by value
            # (ambiguous), as for the two operands of ``x * x``
            if a is b or not any(a is t for t in tracked) or not any(b is t for t in tracked):
                continue
            va, vb = set(varying_dims(a[2])), set(varying_dims(b[2]))
            if not va or not vb or va & vb:
                continue
            if all(a[1][d] == 1 for d in vb) and all(b[1][d] == 1 for d in va):
                lines = [np.moveaxis(e[2], min(v), 0).reshape(e[2].shape[min(v)], -1)[:, 0] for e, v in ((a, va), (b, vb))]
                kept = keep_one_axis(ctx, [(f"'{a[0]}' (dim {min(va)})", lines[0]), (f"'{b[0]}' (dim {min(vb)})", lines[1])], loc)
                gone = b if kept == 0 else a
                tracked = [t for t in tracked if t is not gone]
    return tracked


def nary(ctx, node):
    operands = list(node.args) + [v for k, v in node.kwargs.items() if k in ("other", "input", "weight", "value", "tensor1", "tensor2")]
    out_shape = ctx.shape(node)
    if out_shape is None:
        return None
    nodes = [a for a in operands if isinstance(a, fx.Node) and ctx.shape(a) is not None]
    if out_shape and isinstance(out_shape[0], tuple):  # torch.where(condition): the true entries' indices
        for a in nodes:
            ctx.unprunable(ctx.ids(a), f"{node.target} at {ctx.where(node)} returns indices of entries, not values")
        return None
    if nodes and all(ctx.ids(a) is None and ctx.free(a) is not None for a in nodes):
        # parameter (op) parameter: still a parameter view, bound where it meets channels
        ctx.set_free(node, [r for a in nodes for r in _right_aligned(ctx.free(a), len(out_shape))])
        return None
    return combine(ctx, node, operands, out_shape)


for _t in BINARY_FUNCTIONS + BINARY_METHODS:
    register_rule(_t)(nary)


def new_tensor(ctx, node):
    """``x.new_zeros(size)`` and alike: a fresh tensor of constant sizes; only ``x``'s dtype
    and device carry over, none of its channels."""
    return None


register_rule("new_zeros", "new_ones", "new_empty", "new_full")(new_tensor)


def prelu(ctx, node):
    mod = ctx.modules[node.target]
    ids = ctx.ids(node.args[0])
    if mod.num_parameters > 1:
        line = ctx.axis(node.args[0], 1, f"PReLU '{node.target}' needs channels on dim 1")
        if line is not None:
            ctx.member(f"{node.target}.weight", 0, line)
        return ctx.ids(node.args[0])
    return ids


def _prelu_export(ectx, node):
    mod = ectx.module(node.target)
    mod.num_parameters = mod.weight.shape[0]


register_rule(nn.PReLU, export=_prelu_export)(prelu)


@register_rule(torch.prelu)  # F.prelu; torch.export records nn.PReLU as aten.prelu
def prelu_function(ctx, node):
    """``F.prelu(x, weight)``: one slope for all channels, or one per channel of dim 1 (the
    weight's dim 0 is then a member of those channels)."""
    from .layers import param_dim

    x, w = node.args[0], node_arg(node, 1, "weight")
    ids, w_shape = ctx.ids(x), ctx.shape(w)
    if ids is None or w_shape is None or math.prod(w_shape) == 1:
        return ids
    line = ctx.axis(x, 1, f"prelu at {ctx.where(node)} needs channels on dim 1")
    if line is not None:
        pd = param_dim(ctx, w, 0)
        if pd is None:
            ctx.unprunable(line, f"prelu at {ctx.where(node)}: its weight is not a plain parameter")
        else:
            ctx.member(*pd, line)
    return ids
