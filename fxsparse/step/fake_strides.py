"""Fake (meta) versions of a few ATen activation backwards whose strides match the real kernels'.

torch.compile traces the step with fake tensors, and AOT autograd writes a ``view`` where a
fake tensor is contiguous. For these ops torch (2.13) takes the fake strides from their
Python decompositions, ``torch.where(condition on x, ...)``, whose result is laid out as the
activation's input ``x``; the eager CPU and CUDA kernels lay the result out as the incoming
gradient. When the gradient arrives transposed (``softplus(x).transpose(1, 2)``, as in a
Mamba block) the two differ, and a backend that runs the eager kernels on the traced graph
(``aot_eager``) fails in the backward: "view size is not compatible with input tensor's size
and stride". Inductor is not affected (it decomposes these ops before their fakes are asked),
and neither are these fakes' values: only shapes, dtypes and strides come from them.

Importing this module registers, for each op below, a fake whose output is laid out as
``grad_output + x`` (the layout TensorIterator gives a binary op over the gradient first,
which is how the eager kernels are built), and lists the op with the Python metas so that
the fake tensor mode takes that fake instead of the decomposition."""
from __future__ import annotations

import torch
from torch._decomp import meta_table, register_decomposition

aten = torch.ops.aten

# (grad_output, ..., x, ...) -> grad_input, computed by a TensorIterator over (grad_output, x)
GRADIENT_FIRST_OPS = (aten.softplus_backward.default, aten.hardswish_backward.default,
                      aten.hardsigmoid_backward.default, aten.hardtanh_backward.default,
                      aten.elu_backward.default, aten.logit_backward.default)


def _laid_out_as_eager(grad_output, *args, **kwargs):
    x = next(a for a in args if isinstance(a, torch.Tensor))  # the activation's input (elu: or output)
    return torch.empty_like(grad_output + x)


def _register():
    for op in GRADIENT_FIRST_OPS:
        if op not in meta_table:  # a torch with a meta of its own for it keeps that
            register_decomposition(op, type="meta")(_laid_out_as_eager)  # taken before the decomposition
            torch.library.register_fake(op, _laid_out_as_eager)


_register()
