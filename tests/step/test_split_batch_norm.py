"""The split batch norm of dynamic capacities (passes/split_batch_norm.py): compiled, it is
F.batch_norm's output, gradients and running statistics; the pass rewrites modules and calls."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from fxsparse.passes.split_batch_norm import SplitBatchNorms, batch_norm, module_batch_norm


@pytest.mark.parametrize("channels_last", [False, True])
def test_compiled_split_matches_batch_norm(channels_last):
    torch.manual_seed(0)
    x = torch.randn(4, 6, 5, 5, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w, b = torch.randn(6, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    g = torch.randn(4, 6, 5, 5, dtype=torch.float64)
    results = []
    for fn in (lambda *a: F.relu(F.batch_norm(*a[:5], True, 0.1, 1e-5)),
               torch.compile(lambda *a: F.relu(module_batch_norm(*a, True, 0.1, 1e-5)), backend="aot_eager",
                             dynamic=True)):
        xi, wi, bi = (t.clone().requires_grad_() for t in (x, w, b))
        rm, rv, count = torch.zeros(6, dtype=torch.float64), torch.ones(6, dtype=torch.float64), torch.tensor(0)
        y = fn(xi, rm, rv, wi, bi, count) if len(results) else fn(xi, rm, rv, wi, bi)
        results.append((y, *torch.autograd.grad(y, (xi, wi, bi), g), rm, rv))
    for a, c in zip(*results):
        torch.testing.assert_close(a, c)
    assert int(count) == 1


def test_pass_rewrites_modules_and_calls():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = nn.BatchNorm2d(3)
            self.plain = nn.BatchNorm2d(3, momentum=None)  # a cumulative average stays a module
            self.register_buffer("rm", torch.zeros(3))
            self.register_buffer("rv", torch.ones(3))

        def forward(self, x):
            return F.batch_norm(self.plain(self.bn(x)), self.rm, self.rv, training=True)

    gm = torch.fx.symbolic_trace(M())
    assert SplitBatchNorms()(gm).modified
    targets = [n.target for n in gm.graph.nodes if n.op in ("call_function", "call_module")]
    assert targets == [module_batch_norm, "plain", batch_norm]
    x = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(gm(x), M()(x))  # eager: F.batch_norm itself
    assert int(gm.bn.num_batches_tracked) == 1
