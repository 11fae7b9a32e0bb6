"""torch.export's aten ops as the torch-level calls the channel rules are keyed on
(``aten.linear`` -> ``F.linear``, ``aten.view`` -> ``.view``, ``aten.select`` -> indexing ...).

The training IR of ``torch.export`` is a small, closed set of high-level aten ops; mapping
each one onto the torch function or method with the same meaning lets one rule set serve
both capture paths (the aten_to_torch pass rewrites the graph with :func:`torch_level_call`).
An aten op with no entry stays as it is: it has no rule, so channels entering it stay
unpruned. A new op reaches models captured by torch.export through :func:`register_aten`
(see :mod:`fxsparse.rules.contract`).
"""
from __future__ import annotations

import operator

import torch
import torch.fx as fx
import torch.nn.functional as F

aten = torch.ops.aten


def _same(fn):
    """Same positional arguments and keywords."""
    return lambda args, kwargs: (fn, args, kwargs)


def _method(name):
    return lambda args, kwargs: (name, args, kwargs)


def _first(fn, n):
    """Only the first ``n`` positional arguments carry over (the rest are aten-only flags)."""
    return lambda args, kwargs: (fn, args[:n], {})


def _embedding(args, kwargs):
    weight, indices = args[:2]
    padding_idx = args[2] if len(args) > 2 and args[2] != -1 else None
    return F.embedding, (indices, weight), ({"padding_idx": padding_idx} if padding_idx is not None else {})


def _batch_norm(args, kwargs):
    x, w, b, mean, var, training, momentum, eps = args[:8]
    return F.batch_norm, (x, mean, var, w, b, training, momentum, eps), {}


def _softmax(args, kwargs):  # methods, not torch.softmax: passes pass targets on as graph arguments
    return "softmax", (args[0], args[1]), {}


def _mean(args, kwargs):
    x, dims = args[:2]
    keepdim = args[2] if len(args) > 2 else kwargs.get("keepdim", False)
    extra = {"dtype": kwargs["dtype"]} if kwargs.get("dtype") is not None else {}
    return "mean", (x, dims, keepdim), extra


def _reduce(name):
    """``aten.sum.dim_IntList(x, dims, keepdim)`` / ``aten.amax`` -> ``x.sum(dims, keepdim)``."""
    def convert(args, kwargs):
        x, dims = args[0], args[1] if len(args) > 1 else kwargs.get("dim")
        if dims is None:
            return None
        keepdim = args[2] if len(args) > 2 else kwargs.get("keepdim", False)
        extra = {"dtype": kwargs["dtype"]} if kwargs.get("dtype") is not None else {}
        return name, (x, dims, keepdim), extra
    return convert


def _upsample(mode, has_align_corners):
    """``aten.upsample_*.vec(x, output_size, [align_corners,] scale_factors)`` -> ``F.interpolate``."""
    def convert(args, kwargs):
        x, size = args[0], args[1]
        align = args[2] if has_align_corners else None
        scale = args[3] if has_align_corners else args[2]
        kw = {"size": size, "scale_factor": scale, "mode": mode}
        if has_align_corners:
            kw["align_corners"] = align
        return F.interpolate, (x,), kw
    return convert


def _to(args, kwargs):
    """``x.to(...)`` takes dtype / device but not aten's layout / pin_memory flags."""
    kw = {k: v for k, v in kwargs.items() if k in ("dtype", "device", "non_blocking", "copy", "memory_format")}
    return "to", tuple(args), kw


def _expand(args, kwargs):
    return "expand", (args[0], *args[1]), {}


def _sdpa(args, kwargs):
    names = ["attn_mask", "dropout_p", "is_causal"]
    kw = {name: value for name, value in zip(names, args[3:])}
    kw.update(kwargs)
    return F.scaled_dot_product_attention, tuple(args[:3]), kw


def _binary(fn):
    def convert(args, kwargs):
        if kwargs.get("alpha", 1) != 1:
            return None
        return fn, tuple(args[:2]), {}
    return convert


def _index_select_like(kind):
    """aten.select / aten.slice -> ``x[..., i]`` / ``x[..., a:b:s]`` (the indexing rule's form)."""

    def convert(args, kwargs, ndim):
        x, dim = args[0], args[1] if len(args) > 1 else kwargs.get("dim", 0)
        dim %= ndim
        if kind == "select":
            item = args[2]
        else:
            start = args[2] if len(args) > 2 else kwargs.get("start")
            end = args[3] if len(args) > 3 else kwargs.get("end")
            step = args[4] if len(args) > 4 else kwargs.get("step", 1)
            open_end = isinstance(end, int) and end >= 2 ** 62  # a symbolic end (a Node) is a real bound
            item = slice(start, None if open_end else end, None if step == 1 else step)
        return operator.getitem, (x, (slice(None),) * dim + (item,)), {}
    return convert


_TABLE = {
    aten.linear.default: _same(F.linear),
    aten.conv1d.default: _same(F.conv1d),
    aten.conv2d.default: _same(F.conv2d),
    aten.conv3d.default: _same(F.conv3d),
    aten.layer_norm.default: _first(F.layer_norm, 5),
    aten.group_norm.default: _first(F.group_norm, 5),
    aten.batch_norm.default: _batch_norm,
    aten.embedding.default: _embedding,
    aten.scaled_dot_product_attention.default: _sdpa,
    aten.matmul.default: _same(torch.matmul),
    aten.addmm.default: _first(torch.addmm, 3),
    aten.bmm.default: _same(torch.bmm),
    aten.view.default: _method("view"),
    aten.reshape.default: _same(torch.reshape),
    aten.expand.default: _expand,
    aten.permute.default: _same(torch.permute),
    aten.transpose.int: _same(torch.transpose),
    aten.t.default: _same(torch.t),
    aten.unsqueeze.default: _same(torch.unsqueeze),
    aten.squeeze.dim: _same(torch.squeeze),
    aten.squeeze.dims: _same(torch.squeeze),
    aten.flatten.using_ints: _same(torch.flatten),
    aten.unflatten.int: _same(torch.unflatten),
    aten.cat.default: _same(torch.cat),
    aten.stack.default: _same(torch.stack),
    aten.chunk.default: _same(torch.chunk),
    aten.split.Tensor: _same(torch.split),
    aten.split_with_sizes.default: _same(torch.split),
    aten.unbind.int: _same(torch.unbind),
    aten.narrow.default: _same(torch.narrow),
    aten.roll.default: _same(torch.roll),
    aten.flip.default: _same(torch.flip),
    aten.pad.default: _same(F.pad),
    aten.add.Tensor: _binary(operator.add),
    aten.add.Scalar: _binary(operator.add),
    aten.sub.Tensor: _binary(operator.sub),
    aten.sub.Scalar: _binary(operator.sub),
    aten.mul.Tensor: _binary(operator.mul),
    aten.mul.Scalar: _binary(operator.mul),
    aten.div.Tensor: _binary(operator.truediv),
    aten.div.Scalar: _binary(operator.truediv),
    aten.rsub.Scalar: _binary(torch.rsub),
    aten.pow.Tensor_Scalar: _same(torch.pow),
    aten.neg.default: _same(torch.neg),
    aten.rsqrt.default: _same(torch.rsqrt),
    aten.sqrt.default: _same(torch.sqrt),
    aten.exp.default: _same(torch.exp),
    aten.tanh.default: _same(torch.tanh),
    aten.sigmoid.default: _same(torch.sigmoid),
    aten.relu.default: _same(F.relu),
    aten.relu_.default: _same(F.relu),
    aten.gelu.default: _same(F.gelu),
    aten.silu.default: _same(F.silu),
    aten.hardswish.default: _same(F.hardswish),
    aten.hardsigmoid.default: _same(F.hardsigmoid),
    aten.erf.default: _same(torch.erf),
    aten.dropout.default: _first(F.dropout, 3),
    aten.dropout_.default: _first(F.dropout, 3),
    aten.softmax.int: _softmax,
    aten._softmax.default: _softmax,
    aten.mean.dim: _mean,
    aten.clone.default: _first(torch.clone, 1),
    aten.contiguous.default: _method("contiguous"),
    aten.alias.default: _first(torch.clone, 1),
    aten.type_as.default: _method("type_as"),
    aten.to.dtype: _to,
    aten.to.device: _to,
    aten.to.dtype_layout: _to,
    aten._to_copy.default: _to,
    aten.adaptive_avg_pool1d.default: _same(F.adaptive_avg_pool1d),
    aten.adaptive_avg_pool2d.default: _same(F.adaptive_avg_pool2d),
    aten.avg_pool2d.default: _same(F.avg_pool2d),
    aten.max_pool2d.default: _same(F.max_pool2d),
    aten.sym_size.int: _method("size"),
    aten.swapaxes.default: _same(torch.transpose),
    aten.einsum.default: lambda args, kwargs: (torch.einsum, (args[0], *args[1]), {}),
    aten.sum.dim_IntList: _reduce("sum"),
    aten.amax.default: _reduce("amax"),
    aten.linalg_vector_norm.default: _same(torch.linalg.vector_norm),
    aten.clamp.default: _same(torch.clamp),
    aten.clamp_min.default: _same(torch.clamp_min),
    aten.clamp_max.default: _same(torch.clamp_max),
    aten.expand_as.default: _method("expand_as"),
    aten.upsample_nearest1d.vec: _upsample("nearest", False),
    aten.upsample_nearest2d.vec: _upsample("nearest", False),
    aten.upsample_linear1d.vec: _upsample("linear", True),
    aten.upsample_bilinear2d.vec: _upsample("bilinear", True),
    aten.upsample_bicubic2d.vec: _upsample("bicubic", True),
}
def _elu(args, kwargs):
    """``aten.elu(x, alpha, scale, input_scale)``: ``F.elu(x, alpha)`` where both scales are 1
    (F.elu's third argument is ``inplace``)."""
    alpha, scale, input_scale = (list(args[1:4]) + [1.0, 1.0, 1.0][len(args) - 1:])[:3]
    if scale != 1 or input_scale != 1:
        return None
    return F.elu, (args[0], alpha), {}


def _variance(name):
    """``aten.std.dim(x, dim, unbiased, keepdim)`` / ``aten.var.correction(x, dim, *,
    correction, keepdim)`` -> ``x.std(dim, correction=c, keepdim=k)`` (keywords: the reduction
    rule reads a positional third argument as keepdim)."""
    def convert(args, kwargs):
        x = args[0]
        dim = args[1] if len(args) > 1 else kwargs.get("dim")
        if "correction" in kwargs or len(args) <= 2:
            correction = kwargs.get("correction")
            correction = 1 if correction is None else correction
        else:
            correction = int(bool(args[2]))
        keepdim = args[3] if len(args) > 3 else kwargs.get("keepdim", False)
        return name, (x, dim), {"correction": correction, "keepdim": keepdim}
    return convert


def _dim_reduce(name):
    """``aten.max.dim(x, dim, keepdim)`` / ``aten.prod.dim_int(x, dim, keepdim, dtype=...)`` ->
    ``x.max(dim, keepdim)``; ``aten.sum.default(x)`` / ``aten.mean.default(x)`` -> ``x.sum()``."""
    def convert(args, kwargs):
        extra = {"dtype": kwargs["dtype"]} if kwargs.get("dtype") is not None else {}
        if len(args) == 1:
            return name, (args[0],), extra
        keepdim = args[2] if len(args) > 2 else kwargs.get("keepdim", False)
        return name, (args[0], args[1], keepdim), extra
    return convert


def _log_softmax(args, kwargs):
    extra = {"dtype": kwargs["dtype"]} if kwargs.get("dtype") is not None else {}
    return "log_softmax", (args[0], args[1]), extra


def _cumulative(fn):
    """``aten.cumsum(x, dim, dtype=None)`` -> ``torch.cumsum(x, dim[, dtype=...])``."""
    def convert(args, kwargs):
        dtype = args[2] if len(args) > 2 else kwargs.get("dtype")
        return fn, (args[0], args[1]), ({"dtype": dtype} if dtype is not None else {})
    return convert


def _conv_transpose(fn):
    """``aten.conv_transposeNd(x, w, b, stride, padding, output_padding, groups, dilation)`` ->
    ``F.conv_transposeNd`` with the options as keywords (the conv rule reads ``groups`` by name)."""
    names = ("stride", "padding", "output_padding", "groups", "dilation")

    def convert(args, kwargs):
        kw = dict(zip(names, args[3:]))
        kw.update({k: v for k, v in kwargs.items() if k in names})
        return fn, tuple(args[:3]), kw
    return convert


def _instance_norm(args, kwargs):
    x, w, b, mean, var, use_input_stats, momentum, eps = args[:8]
    return F.instance_norm, (x, mean, var, w, b, use_input_stats, momentum, eps), {}


# Ops whose torch-level rules (pointwise, spatial, norms, layers, scan) served only the
# symbolic trace: torch.export records them as these aten ops.
_TABLE.update({
    # element-wise, one operand
    aten.abs.default: _same(torch.abs),
    aten.log.default: _same(torch.log),
    aten.sign.default: _same(torch.sign),
    aten.square.default: _same(torch.square),
    aten.clip.default: _same(torch.clip),
    aten.nan_to_num.default: _same(torch.nan_to_num),
    aten.detach.default: _same(torch.detach),
    aten.leaky_relu.default: _same(F.leaky_relu),  # (x, negative_slope)
    aten.elu.default: _elu,
    aten.selu.default: _same(F.selu),
    aten.celu.default: _same(F.celu),  # (x, alpha)
    aten.softplus.default: _same(F.softplus),  # (x, beta, threshold)
    aten.mish.default: _same(F.mish),
    aten.hardtanh.default: _same(F.hardtanh),  # (x, min_val, max_val): also F.relu6
    aten.log_sigmoid.default: _same(F.logsigmoid),
    aten.threshold.default: _same(F.threshold),  # (x, threshold, value)
    aten.hardshrink.default: _same(F.hardshrink),
    aten.softshrink.default: _same(F.softshrink),
    aten.prelu.default: _same(torch.prelu),
    aten.feature_dropout.default: _same(torch.feature_dropout),  # (x, p, train)
    aten.alpha_dropout.default: _same(torch.alpha_dropout),
    aten.feature_alpha_dropout.default: _same(torch.feature_alpha_dropout),
    # element-wise, several operands
    aten.maximum.default: _same(torch.maximum),
    aten.minimum.default: _same(torch.minimum),
    aten.max.other: _same(torch.maximum),
    aten.min.other: _same(torch.minimum),
    aten.where.self: _same(torch.where),  # (condition, x, other)
    aten.where.ScalarOther: _same(torch.where),
    aten.where.ScalarSelf: _same(torch.where),
    aten.where.Scalar: _same(torch.where),
    aten.where.default: _same(torch.where),  # torch.where(condition): indices, blocked by its rule
    aten.lerp.Scalar: _same(torch.lerp),
    aten.lerp.Tensor: _same(torch.lerp),
    aten.addcmul.default: _same(torch.addcmul),  # value=
    aten.addcdiv.default: _same(torch.addcdiv),
    # scans, reductions, softmax
    aten.cumsum.default: _cumulative(torch.cumsum),
    aten.cumprod.default: _cumulative(torch.cumprod),
    aten.logsumexp.default: _same(torch.logsumexp),  # (x, dims, keepdim)
    aten.std.dim: _variance("std"),
    aten.std.correction: _variance("std"),
    aten.var.dim: _variance("var"),
    aten.var.correction: _variance("var"),
    aten.var_mean.dim: _variance(torch.var_mean),  # (variance, mean)
    aten.var_mean.correction: _variance(torch.var_mean),
    aten.std_mean.dim: _variance(torch.std_mean),
    aten.std_mean.correction: _variance(torch.std_mean),
    aten.amin.default: _reduce("amin"),
    aten.max.dim: _dim_reduce("max"),
    aten.min.dim: _dim_reduce("min"),
    aten.prod.dim_int: _dim_reduce("prod"),
    aten.sum.default: _dim_reduce("sum"),
    aten.mean.default: _dim_reduce("mean"),
    aten.any.dim: _dim_reduce("any"), aten.any.dims: _reduce("any"), aten.any.default: _dim_reduce("any"),
    aten.all.dim: _dim_reduce("all"), aten.all.dims: _reduce("all"), aten.all.default: _dim_reduce("all"),
    aten.log_softmax.int: _log_softmax,
    aten._log_softmax.default: _log_softmax,  # (x, dim, half_to_float)
    # spatial (aten.max_pool2d_with_indices and aten.adaptive_max_pool2d return (values, indices),
    # as F.max_pool2d_with_indices does)
    aten.pixel_shuffle.default: _same(F.pixel_shuffle),  # (x, upscale_factor)
    aten.pixel_unshuffle.default: _same(F.pixel_unshuffle),  # (x, downscale_factor)
    aten.channel_shuffle.default: _same(F.channel_shuffle),  # (x, groups): also nn.ChannelShuffle
    aten.native_channel_shuffle.default: _same(F.channel_shuffle),
    aten.max_pool1d.default: _same(F.max_pool1d),  # (x, kernel, stride, padding, dilation, ceil_mode)
    aten.max_pool3d.default: _same(F.max_pool3d),
    aten.max_pool2d_with_indices.default: _same(F.max_pool2d_with_indices),
    aten.max_pool3d_with_indices.default: _same(F.max_pool3d_with_indices),
    aten.avg_pool1d.default: _same(F.avg_pool1d),  # (x, kernel, stride, padding, ceil_mode, count_include_pad)
    aten.avg_pool3d.default: _same(F.avg_pool3d),  # ... divisor_override
    aten.adaptive_avg_pool3d.default: _same(F.adaptive_avg_pool3d),
    aten.adaptive_max_pool1d.default: _same(F.adaptive_max_pool1d_with_indices),
    aten.adaptive_max_pool2d.default: _same(F.adaptive_max_pool2d_with_indices),
    aten.adaptive_max_pool3d.default: _same(F.adaptive_max_pool3d_with_indices),
    aten.upsample_nearest3d.vec: _upsample("nearest", False),
    aten.upsample_trilinear3d.vec: _upsample("trilinear", True),
    aten._upsample_nearest_exact1d.vec: _upsample("nearest-exact", False),
    aten._upsample_nearest_exact2d.vec: _upsample("nearest-exact", False),
    aten._upsample_nearest_exact3d.vec: _upsample("nearest-exact", False),
    # layers
    aten.conv_transpose1d.default: _conv_transpose(F.conv_transpose1d),
    aten.conv_transpose2d.input: _conv_transpose(F.conv_transpose2d),
    aten.conv_transpose3d.input: _conv_transpose(F.conv_transpose3d),
    aten.instance_norm.default: _instance_norm,
    aten.rms_norm.default: _same(F.rms_norm),  # (x, normalized_shape, weight, eps): also nn.RMSNorm
})

# In-place ops of the training IR (``x.silu_()``, ``result += input``) become their
# out-of-place form where nothing else reads the mutated tensor (then the two are the same).
_IN_PLACE = {
    aten.add_.Tensor: _binary(operator.add),
    aten.sub_.Tensor: _binary(operator.sub),
    aten.mul_.Tensor: _binary(operator.mul),
    aten.mul_.Scalar: _binary(operator.mul),
    aten.div_.Tensor: _binary(operator.truediv),
    aten.silu_.default: _same(F.silu),
    aten.gelu_.default: _same(F.gelu),
    aten.hardswish_.default: _same(F.hardswish),
    aten.hardsigmoid_.default: _same(F.hardsigmoid),
    aten.sigmoid_.default: _same(torch.sigmoid),
    aten.tanh_.default: _same(torch.tanh),
    aten.hardtanh_.default: _same(F.hardtanh),
    aten.leaky_relu_.default: _same(F.leaky_relu),
    aten.elu_.default: _elu,
    aten.celu_.default: _same(F.celu),
    aten.mish_.default: _same(F.mish),
    aten.threshold_.default: _same(F.threshold),
    aten.abs_.default: _same(torch.abs),
    aten.exp_.default: _same(torch.exp),
    aten.clamp_.default: _same(torch.clamp),
    aten.clamp_min_.default: _same(torch.clamp_min),
}


def _index(args, kwargs):
    """``aten.index(x, [None, idx])`` -> ``x[:, idx]`` (the same advanced-indexing rules)."""
    x, indices = args[:2]
    return operator.getitem, (x, tuple(slice(None) if i is None else i for i in indices)), {}


def _new_tensor(name):
    """``aten.new_zeros(x, size, dtype=...)`` -> ``x.new_zeros(size, dtype=...)`` (a fresh tensor)."""
    def convert(args, kwargs):
        kw = {k: v for k, v in kwargs.items() if k in ("dtype", "device", "requires_grad")}
        return name, tuple(args), kw
    return convert


def _like(fn):
    """``aten.zeros_like(x, dtype=..., pin_memory=...)`` -> ``torch.zeros_like(x, dtype=...)``."""
    def convert(args, kwargs):
        kw = {k: v for k, v in kwargs.items() if k in ("dtype", "device", "requires_grad", "memory_format")}
        return fn, tuple(args), kw
    return convert


def _sort(args, kwargs):
    """``aten.sort.stable(x, stable=..., dim=..., descending=...)`` -> ``torch.sort(x, dim, descending)``."""
    kw = {k: kwargs[k] for k in ("dim", "descending", "stable") if kwargs.get(k) is not None}
    return torch.sort, tuple(args), kw


_TABLE.update({aten.topk.default: _same(torch.topk), aten.sort.default: _same(torch.sort), aten.sort.stable: _sort,
               aten.argsort.default: _same(torch.argsort), aten.repeat_interleave.self_int: _first(torch.repeat_interleave, 3), aten.index_add.default: _same(torch.index_add),
               aten.zeros_like.default: _like(torch.zeros_like), aten.ones_like.default: _like(torch.ones_like),
               aten.empty_like.default: _like(torch.empty_like), aten.full_like.default: _like(torch.full_like)})
_IN_PLACE[aten.index_add_.default] = _same(torch.index_add)
_TABLE.update({aten.index.Tensor: _index, aten.new_zeros.default: _new_tensor("new_zeros"), aten.new_ones.default: _new_tensor("new_ones"),
               aten.new_empty.default: _new_tensor("new_empty"), aten.new_full.default: _new_tensor("new_full")})
# element-wise ops with several operands (one-operand ops: rules.pointwise.SAME_NAME_UNARY);
# comparisons and logic give boolean masks that carry their operands' channels
_TABLE.update({
    aten.masked_fill.Scalar: _same(torch.masked_fill),  # (x, mask, value)
    aten.masked_fill.Tensor: _same(torch.masked_fill),
    aten.rrelu.default: _same(torch.rrelu),  # (x, lower, upper, training)
    **{getattr(aten, name).Scalar: _same(op) for name, op in (
        ("gt", operator.gt), ("lt", operator.lt), ("ge", operator.ge), ("le", operator.le), ("eq", operator.eq),
        ("ne", operator.ne), ("remainder", operator.mod), ("fmod", torch.fmod), ("copysign", torch.copysign))},
    **{getattr(aten, name).Tensor: _same(op) for name, op in (
        ("gt", operator.gt), ("lt", operator.lt), ("ge", operator.ge), ("le", operator.le), ("eq", operator.eq),
        ("ne", operator.ne), ("remainder", operator.mod), ("fmod", torch.fmod), ("copysign", torch.copysign),
        ("bitwise_and", operator.and_), ("bitwise_or", operator.or_), ("bitwise_xor", operator.xor))},
    **{getattr(aten, name).default: _same(op) for name, op in (
        ("logical_and", torch.logical_and), ("logical_or", torch.logical_or), ("logical_xor", torch.logical_xor),
        ("floor_divide", torch.floor_divide), ("atan2", torch.atan2), ("hypot", torch.hypot),
        ("logaddexp", torch.logaddexp), ("fmax", torch.fmax), ("fmin", torch.fmin))},
    aten.xlogy.Tensor: _same(torch.xlogy),
    aten.__and__.Tensor: _same(operator.and_),  # ``a & b`` of two masks
    aten.__or__.Tensor: _same(operator.or_),
    aten.__xor__.Tensor: _same(operator.xor),
})
_IN_PLACE.update({aten.masked_fill_.Scalar: _same(torch.masked_fill), aten.masked_fill_.Tensor: _same(torch.masked_fill)})
_NEEDS_NDIM = {aten.select.int: _index_select_like("select"), aten.slice.Tensor: _index_select_like("slice"),
               # ``w.T``: every dim reversed
               aten.numpy_T.default: lambda args, kwargs, ndim: (torch.permute, (args[0], list(range(ndim))[::-1]), {})}
_SIDE_EFFECT_ONLY = {aten._assert_tensor_metadata.default}


def _ndim(node):
    val = node.meta.get("val") if isinstance(node, fx.Node) else None
    return getattr(val, "ndim", None)


def register_aten(overload, torch_target=None, *, convert=None, override=False, in_place=False):
    """Make the aten op ``overload`` (``torch.ops.aten.sinc.default``) the torch-level call
    rules know: ``torch_target`` (a function, or a method name) when the two take the same
    arguments, else ``convert(args, kwargs) -> (target, args, kwargs)``, or None to leave a
    node as it is. ``in_place=True``: ``overload`` mutates its first argument
    (``aten.sinc_``) and becomes the out-of-place call only where nothing else reads that
    tensor. Registering an op twice raises unless ``override=True``."""
    if (torch_target is None) == (convert is None):
        raise TypeError("register_aten: give either torch_target or convert")
    table = _IN_PLACE if in_place else _TABLE
    if overload in table and not override:
        raise ValueError(f"{overload} already has a torch-level form; pass override=True to replace it")
    table[overload] = convert or (_method(torch_target) if isinstance(torch_target, str) else _same(torch_target))


def torch_level_call(node: fx.Node):
    """``(target, args, kwargs)`` of the torch-level call that does what the aten node does
    (a str target is a method name), or None where there is none."""
    if node.target in _IN_PLACE and isinstance(node.args[0], fx.Node) and len(node.args[0].users) == 1:
        return _IN_PLACE[node.target](tuple(node.args), dict(node.kwargs))
    if node.target in _TABLE:
        return _TABLE[node.target](tuple(node.args), dict(node.kwargs))
    if node.target in _NEEDS_NDIM and _ndim(node.args[0]) is not None:
        return _NEEDS_NDIM[node.target](tuple(node.args), dict(node.kwargs), _ndim(node.args[0]))
    return None


def is_side_effect_only(node: fx.Node) -> bool:
    """An input guard or metadata assert of the export: it checks the example shapes, which
    pruning changes on purpose."""
    return node.target in _SIDE_EFFECT_ONLY


__all__ = ["register_aten", "torch_level_call", "is_side_effect_only"]
