"""The activation backwards of fxsparse.step.fake_strides: their fake (meta) outputs have the
strides of the real kernels' on a few layouts, and a gradient that arrives transposed through
them trains under a backend that runs the eager kernels (aot_eager) as it does eagerly."""
import pytest
import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode

from fxsparse.step.fake_strides import GRADIENT_FIRST_OPS

aten = torch.ops.aten
CALLS = {  # op: (grad_output, x) -> the op's call
    aten.softplus_backward.default: lambda g, x: aten.softplus_backward(g, x, 1.0, 20.0),
    aten.hardswish_backward.default: lambda g, x: aten.hardswish_backward(g, x),
    aten.hardsigmoid_backward.default: lambda g, x: aten.hardsigmoid_backward(g, x),
    aten.hardtanh_backward.default: lambda g, x: aten.hardtanh_backward(g, x, -1.0, 1.0),
    aten.elu_backward.default: lambda g, x: aten.elu_backward(g, 1.0, 1.0, 1.0, False, x),
    aten.logit_backward.default: lambda g, x: aten.logit_backward(g, x, None),
}
ACTIVATIONS = {"softplus": F.softplus, "hardswish": F.hardswish, "hardsigmoid": F.hardsigmoid,
               "hardtanh": F.hardtanh, "elu": F.elu, "logit": lambda y: torch.logit(torch.sigmoid(y))}


LAYOUTS = {  # name: (shape, the gradient's layout, the input's layout)
    "gradient transposed": ((2, 3, 20), "transposed", "contiguous"),
    "input transposed": ((2, 3, 20), "contiguous", "transposed"),
    "both transposed": ((2, 3, 20), "transposed", "transposed"),
    "gradient channels-last": ((2, 5, 3, 4), "channels-last", "contiguous"),
    "a size-1 dim": ((1, 3, 20), "transposed", "contiguous"),
}


def _tensor(shape, layout):
    """Values in (0, 1), where every op here is defined (logit); fake under a FakeTensorMode."""
    if layout == "transposed":
        t = torch.empty(shape[0], shape[2], shape[1]).transpose(1, 2)
    elif layout == "channels-last":
        t = torch.empty(shape).contiguous(memory_format=torch.channels_last)
    else:
        t = torch.empty(shape)
    return t.uniform_(0.1, 0.9)


def _call(op, layout):
    shape, grad_layout, x_layout = LAYOUTS[layout]
    return CALLS[op](_tensor(shape, grad_layout), _tensor(shape, x_layout))


def test_every_op_is_covered():
    assert set(CALLS) == set(GRADIENT_FIRST_OPS)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("op", CALLS, ids=lambda op: op.__name__)
def test_fake_strides_are_the_real_ones(op, layout):
    real = _call(op, layout)
    with FakeTensorMode():
        fake = _call(op, layout)
    assert (fake.shape, fake.stride(), fake.dtype) == (real.shape, real.stride(), real.dtype)


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_a_transposed_gradient_trains_under_aot_eager(name, single_thread):
    """The backward of a linear layer views its gradient as the fake promised it: contiguous
    (a Mamba block's ``softplus(dt_proj(dt)).transpose(1, 2)``)."""
    torch._dynamo.reset()
    linear = torch.nn.Linear(3, 8)
    x, w = torch.randn(2, 4, 3), torch.randn(2, 8, 4)

    def loss(x, w):
        return (ACTIVATIONS[name](linear(x)).transpose(1, 2) * w).sum()

    want = torch.autograd.grad(loss(x, w), list(linear.parameters()))
    got = torch.autograd.grad(torch.compile(loss, backend="aot_eager")(x, w), list(linear.parameters()))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
