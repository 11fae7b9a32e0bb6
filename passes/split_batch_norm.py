"""Training-mode batch norms that torch.compile traces cheaply with symbolic channel counts.

Under dynamic capacities (symbolic sizes), dynamo, AOT autograd and inductor trace every op
of ``F.batch_norm``'s Python decomposition (forward and backward: about 40 ops per batch norm,
most of a CNN's graph) through sympy size expressions: ResNet-20's first compile took
1.3-1.4x the dense model's CPU time, the gap nearly all there. :class:`SplitBatchNorms`
rewrites the capacity model's batch norms to :func:`batch_norm`, which, while torch.compile
traces a training step on a CPU, is three parts:

- the batch statistics as one custom op (``fxsparse::batch_norm_stats``: ATen's
  ``batch_norm_update_stats``, the kernel native batch norm computes them with: mean,
  1/sqrt(var + eps), the new running statistics), opaque to the trace;
- the normalisation ``x * (invstd * w) + (b - mean * invstd * w)`` as plain ops, which
  inductor fuses with what follows (the ReLU), as it fuses its own decomposition;
- its backward, through an ``autograd.Function``, as the few plain ops of the closed form
  (the gradient through the batch statistics included), which inductor fuses with the ReLU's
  backward. ATen's ``native_batch_norm_backward`` as one more custom op would trace cheaper
  still (the first compile at the dense step's CPU time), but on channels-last activations
  with few channels it is slow: ResNet-20's steps took 1.10x as long.

ResNet-20's first dynamic compile (batch 8, one thread) then takes 1.23-1.25x the dense step's
CPU time instead of 1.3-1.4x, and its steps are as fast (1.01x, batch 32). Eager (not
compiling), in eval mode, on another device, or with mixed dtypes (autocast) it is
``F.batch_norm`` itself.
"""
from __future__ import annotations

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.fx.passes.infra.pass_base import PassBase, PassResult


@torch.library.custom_op("fxsparse::batch_norm_stats", mutates_args=())
def batch_norm_stats(x: torch.Tensor, running_mean: torch.Tensor, running_var: torch.Tensor, momentum: float,
                     eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean, invstd, new running mean, new running var) of a training-mode batch norm over
    ``x`` (channels in dim 1), the running statistics updated as native batch norm does."""
    running_mean, running_var = running_mean.clone(), running_var.clone()
    mean, var = torch.batch_norm_update_stats(x, running_mean, running_var, momentum)
    return mean, (var + eps).sqrt().reciprocal(), running_mean, running_var


@batch_norm_stats.register_fake
def _fake_stats(x, running_mean, running_var, momentum, eps):
    c = x.shape[1]
    return x.new_empty(c), x.new_empty(c), torch.empty_like(running_mean), torch.empty_like(running_var)


class _Normalise(torch.autograd.Function):
    """``x`` normalised by given batch statistics, scaled and shifted; the backward is batch
    norm's, through the statistics too, in plain ops (inductor fuses them with the ReLU's)."""

    @staticmethod
    def forward(ctx, x, weight, bias, mean, invstd):
        shape = [1, -1] + [1] * (x.dim() - 2)
        scale = invstd * weight
        ctx.save_for_backward(x, mean, invstd, scale)
        return x * scale.view(shape) + (bias - mean * scale).view(shape)

    @staticmethod
    def backward(ctx, grad):
        x, mean, invstd, scale = ctx.saved_tensors
        shape = [1, -1] + [1] * (x.dim() - 2)
        dims = [0] + list(range(2, x.dim()))
        centred = x - mean.view(shape)
        gb = grad.sum(dims)
        gw = (grad * centred).sum(dims) * invstd
        per = scale / -(x.numel() // x.shape[1])
        # x's gradient, native batch norm's: scale * (grad - mean(grad) - xhat * mean(grad * xhat))
        gx = torch.addcmul((gb * per).view(shape), centred, (gw * invstd * per).view(shape)) + grad * scale.view(shape)
        return gx, gw, gb, None, None


def _split(x, running_mean, running_var, weight, bias, training, momentum) -> bool:
    """Whether :func:`batch_norm` takes the split form (decided while tracing: all static)."""
    if not (training and torch.compiler.is_compiling() and momentum is not None and x.device.type == "cpu"):
        return False
    tensors = (x, running_mean, running_var, weight, bias)
    return all(t is not None and t.dtype == x.dtype for t in tensors) and x.dtype in (torch.float32, torch.float64) \
        and x.dim() >= 2


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5):
    """``F.batch_norm`` (same signature and results), in the split form of the module
    docstring where torch.compile traces it in training mode on a CPU."""
    if not _split(input, running_mean, running_var, weight, bias, training, momentum):
        return F.batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps)
    with torch.no_grad():  # the statistics' gradient is the backward op's
        mean, invstd, new_mean, new_var = torch.ops.fxsparse.batch_norm_stats(
            input, running_mean, running_var, momentum, eps)
        running_mean.copy_(new_mean)
        running_var.copy_(new_var)
    return _Normalise.apply(input, weight, bias, mean, invstd)


def module_batch_norm(input, running_mean, running_var, weight, bias, num_batches_tracked, training, momentum,
                      eps):
    """An ``nn.BatchNormNd`` module's forward (running statistics tracked, a momentum) with
    :func:`batch_norm`."""
    if training and num_batches_tracked is not None:
        num_batches_tracked.add_(1)
    return batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps)


_MODULES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


class SplitBatchNorms(PassBase):
    """Every ``F.batch_norm`` call and every ``nn.BatchNorm{1,2,3}d`` module (affine,
    tracking running statistics with a momentum) of the graph as a call to
    :func:`batch_norm` / :func:`module_batch_norm`; other batch norms stay as they are."""

    needs = frozenset()
    gives = frozenset()

    def ensures(self, graph_module):
        graph_module.graph.lint()

    def call(self, gm: fx.GraphModule) -> PassResult:
        modified = False
        for node in list(gm.graph.nodes):
            if node.op == "call_function" and node.target is F.batch_norm:
                node.target = batch_norm
                modified = True
            elif node.op == "call_module" and self._splittable(gm.get_submodule(node.target), node):
                with gm.graph.inserting_before(node):
                    attrs = [gm.graph.get_attr(f"{node.target}.{name}") for name in (
                        "running_mean", "running_var", "weight", "bias", "num_batches_tracked")]
                    # the module's own flag (a bool: create_node, as get_attr warns on what is no tensor)
                    attrs.append(gm.graph.create_node("get_attr", f"{node.target}.training"))
                    mod = gm.get_submodule(node.target)
                    new = gm.graph.call_function(module_batch_norm, (node.args[0], *attrs, mod.momentum, mod.eps))
                new.meta.update(node.meta)
                node.replace_all_uses_with(new)
                gm.graph.erase_node(node)
                modified = True
        if modified:
            gm.recompile()
        return PassResult(gm, modified)

    @staticmethod
    def _splittable(mod, node) -> bool:
        return type(mod) in _MODULES and mod.affine and mod.track_running_stats and mod.momentum is not None \
            and mod.num_batches_tracked is not None and len(node.args) == 1 and not node.kwargs
