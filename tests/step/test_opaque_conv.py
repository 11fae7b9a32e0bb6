"""The opaque convolution ops of the dynamic capacity model: the same values and gradients as
ATen's convolutions, and real outputs with exactly the strides their fake versions promise
(inductor compiles the code around the call from the fake ones)."""
import pytest
import torch
import torch.nn.functional as F

from fxsparse.passes.opaque_conv import convolution

CL = torch.channels_last
CASES = {  # name: (input, weight, bias, stride, padding, dilation, transposed, output_padding, groups, NHWC)
    "conv2d NCHW input": ((2, 6, 9, 9), (4, 6, 3, 3), True, [2, 2], [1, 1], [1, 1], False, [0, 0], 1, True),
    "conv2d channels-last input": ((2, 6, 9, 9), (4, 6, 3, 3), False, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, True),
    "conv2d run NCHW": ((2, 6, 9, 9), (4, 6, 3, 3), True, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, False),
    "1x1 conv to 1x1 output": ((3, 5, 1, 1), (7, 5, 1, 1), True, [1, 1], [0, 0], [1, 1], False, [0, 0], 1, True),
    "depthwise, groups from the input": ((2, 6, 8, 8), (6, 1, 3, 3), True, [1, 1], [1, 1], [1, 1], False, [0, 0], 0,
                                         True),
    "grouped": ((2, 6, 8, 8), (4, 3, 3, 3), False, [1, 1], [2, 2], [2, 2], False, [0, 0], 2, True),
    "transposed 2d": ((2, 6, 5, 5), (6, 3, 3, 3), True, [2, 2], [1, 1], [1, 1], True, [1, 1], 1, False),
    "conv1d": ((2, 6, 11), (4, 6, 3), True, [1], [1], [1], False, [0], 1, False),
}


def _inputs(case, channels_last_input):
    x_shape, w_shape, bias, *conv = CASES[case]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(x_shape, generator=g, dtype=torch.float64)
    if channels_last_input:
        x = x.contiguous(memory_format=CL)
    w = torch.randn(w_shape, generator=g, dtype=torch.float64)
    transposed, groups = conv[3], conv[5]
    b = torch.randn(w_shape[1] * (groups or 1) if transposed else w_shape[0], generator=g, dtype=torch.float64) \
        if bias else None
    return [x.requires_grad_(), w.requires_grad_(), b.requires_grad_() if b is not None else None, *conv]


def _reference(x, w, b, stride, padding, dilation, transposed, output_padding, groups, channels_last):
    groups = groups or x.shape[1] // w.shape[1]
    return torch.ops.aten.convolution(x, w, b, stride, padding, dilation, transposed, output_padding, groups)


@pytest.mark.parametrize("case", CASES)
def test_values_and_gradients_equal_atens(case):
    args = _inputs(case, channels_last_input="channels-last" in case)
    out = convolution(*args)
    ref = _reference(*args)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    tensors = [a for a in args[:3] if a is not None]
    grad = torch.randn_like(ref)
    got = torch.autograd.grad(out, tensors, grad)
    want = torch.autograd.grad(ref, tensors, grad)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("case", CASES)
def test_real_outputs_have_the_fake_strides(case):
    args = _inputs(case, channels_last_input="channels-last" in case)
    torch.library.opcheck(torch.ops.fxsparse.convolution.default, tuple(args))
    x, w, b, *conv = args
    grad = torch.randn_like(_reference(*args))
    for mask in ([True, True, b is not None], [False, True, False]):
        torch.library.opcheck(torch.ops.fxsparse.convolution_backward.default, (grad, x, w, *conv, mask),
                              test_utils=("test_schema", "test_faketensor"))


def test_2d_convolutions_run_channels_last():
    x = torch.randn(2, 6, 9, 9, requires_grad=True)
    w = torch.randn(4, 6, 3, 3, requires_grad=True)
    out = convolution(x, w, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, True)
    # NCHW in, NHWC out: the layout oneDNN computes in without reordering the activations
    assert out.is_contiguous(memory_format=CL) and not out.is_contiguous()
    gx, gw = torch.autograd.grad(out.sum(), [x, w])
    assert gx.stride() == x.stride() and gw.stride() == w.stride()  # gradients laid out as their inputs


def test_the_pass_runs_2d_convolutions_channels_last_only():
    import torch.fx as fx
    import torch.nn as nn
    from fxsparse.passes.opaque_conv import OpaqueConvolutions

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.up, self.conv1d = nn.Conv2d(3, 4, 3), nn.ConvTranspose2d(4, 4, 2), nn.Conv1d(4, 4, 1)

        def forward(self, x):
            y = self.up(self.conv(x))
            return self.conv1d(y.flatten(2))

    gm = fx.symbolic_trace(Net())
    x = torch.randn(2, 3, 8, 8)
    ref = gm(x)
    OpaqueConvolutions()(gm)
    layouts = [n.args[-1] for n in gm.graph.nodes if n.op == "call_function" and "convolution" in str(n.target)]
    assert layouts == [True, False, False]
    torch.testing.assert_close(gm(x), ref)


@pytest.mark.parametrize("in_channels", [3, 4, 7])
def test_strided_1x1_on_few_channels_has_right_gradients(in_channels, single_thread):
    """oneDNN's channels-last weight gradient of a strided 1x1 convolution over fewer input
    channels than its channel block writes past its workspace (uxlfoundation/oneDNN#6035:
    on an AVX2 CPU a crash with one thread, wrong gradients or a hang with more); the op runs
    that backward NCHW. float32, the dtype oneDNN computes (float64 never reaches it)."""
    g = torch.Generator().manual_seed(0)
    for _ in range(3):  # the overflow corrupts the heap: one call can survive it
        x = torch.randn(2, in_channels, 32, 32, generator=g, requires_grad=True)
        w = torch.randn(24, in_channels, 1, 1, generator=g, requires_grad=True)
        b = torch.randn(24, generator=g, requires_grad=True)
        out = convolution(x, w, b, [2, 2], [0, 0], [1, 1], False, [0, 0], 1, True)
        grad = torch.randn(out.shape, generator=g)
        got = torch.autograd.grad(out, [x, w, b], grad)
        ref = F.conv2d(x.double(), w.double(), b.double(), stride=2)
        want = torch.autograd.grad(ref, [x, w, b], grad.double())
        for a, e in zip(got, want):
            torch.testing.assert_close(a.double(), e.double(), rtol=1e-4, atol=1e-4)


def test_static_shapes_make_only_the_onednn_hazards_opaque():
    """Static capacities keep inductor's own convolutions except the strided 1x1 ones over
    fewer than 16 input channels, whose backward the op runs NCHW."""
    import torch.fx as fx
    import torch.nn as nn
    from fxsparse.passes.opaque_conv import OpaqueConvolutions

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.few, self.wide = nn.Conv2d(4, 32, 1, stride=2), nn.Conv2d(32, 16, 1, stride=2)
            self.unit_stride, self.three = nn.Conv2d(16, 8, 1), nn.Conv2d(8, 8, 3, stride=2)

        def forward(self, x):
            return self.three(self.unit_stride(self.wide(self.few(x))))

    gm = fx.symbolic_trace(Net())
    OpaqueConvolutions(only_onednn_hazards=True)(gm)
    opaque = [n.args[1].target for n in gm.graph.nodes if n.op == "call_function"]
    kept = [n.target for n in gm.graph.nodes if n.op == "call_module"]
    assert opaque == ["few.weight"] and kept == ["wide", "unit_stride", "three"]
