"""Graphs captured with torch.export follow ``.train()`` / ``.eval()`` like the model they
came from: dropout, batch norm and attention dropout are not frozen in the mode of the
capture (fxsparse.passes.training_mode). Reference: the original model itself, in each mode,
with the same random stream."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fxsparse

pytestmark = pytest.mark.usefixtures("single_thread")


class SizeCheckedNet(nn.Module):
    """torch.fx cannot trace it (an ``if`` on a size): analyze captures it with torch.export."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8))
        self.q, self.k, self.v, self.fc = (nn.Linear(8, n) for n in (8, 8, 8, 4))
        self.drop = nn.Dropout(0.3)

    def forward(self, x):
        if x.shape[-1] > 2:
            x = self.stem(x).relu()
        t = x.flatten(2).transpose(1, 2)  # [b, tokens, 8]
        shape = (t.shape[0], t.shape[1], 2, 4)
        q, k, v = (f(t).view(shape).transpose(1, 2) for f in (self.q, self.k, self.v))
        a = F.scaled_dot_product_attention(q, k, v)
        t = a.transpose(1, 2).reshape(t.shape)
        return self.fc(self.drop(t.mean(1)))


def everything_kept(graph):
    return {g.id: torch.ones(g.size, dtype=torch.bool) for g in graph.prunable_groups}


def run(model, x, seed):
    torch.manual_seed(seed)
    return model(x)


@pytest.mark.parametrize("capture_mode", ["train", "eval"])
def test_exported_model_follows_train_and_eval(capture_mode):
    torch.manual_seed(0)
    model = SizeCheckedNet()
    getattr(model, capture_mode)()
    x = torch.randn(4, 3, 6, 6)
    graph = fxsparse.analyze(model, x)
    assert not any(n.op == "call_module" for n in graph.gm.graph.nodes)  # captured by torch.export
    assert model.training == (capture_mode == "train")
    small = fxsparse.export(model, graph, everything_kept(graph))
    assert small.training == model.training  # the exported model starts in the model's mode

    model.eval(), small.eval()
    torch.testing.assert_close(small(x), model(x), rtol=0, atol=1e-6)
    assert torch.equal(small(x), small(x))  # no dropout outside training

    model.train(), small.train()
    out_model, out_small = run(model, x, 1), run(small, x, 1)
    torch.testing.assert_close(out_small, out_model, rtol=0, atol=1e-6)  # same dropout draws, batch statistics
    torch.testing.assert_close(small.get_buffer("stem.1.running_mean"), model.stem[1].running_mean)  # statistics updated alike
    assert not torch.equal(run(small, x, 2), out_small)  # dropout is on


def test_every_modules_mode_is_restored_after_capture():
    model = SizeCheckedNet().eval()
    model.drop.train()  # a user's mixed modes
    modes = {name: m.training for name, m in model.named_modules()}
    fxsparse.analyze(model, torch.randn(4, 3, 6, 6))
    assert {name: m.training for name, m in model.named_modules()} == modes


class PooledBatchNormNet(SizeCheckedNet):
    """Batch norm over one value per channel: training mode cannot run on a batch of one
    (the capture runs in eval mode, so it captures)."""

    def __init__(self):
        super().__init__()
        self.bn1d = nn.BatchNorm1d(4)

    def forward(self, x):
        return self.bn1d(super().forward(x))


def test_a_model_that_cannot_run_in_training_mode_is_captured():
    model = PooledBatchNormNet().train()
    x = torch.randn(1, 3, 6, 6)
    with pytest.raises(ValueError):  # training mode does not run
        model(x)
    model.eval()
    graph = fxsparse.analyze(model, x)
    small = fxsparse.export(model, graph, everything_kept(graph)).eval()
    torch.testing.assert_close(small(x), model(x), rtol=0, atol=1e-6)
    small.train()  # batch norm follows the mode: one value per channel is now an error, as in the model
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        small(x)


def test_a_transformers_model_drops_out_only_in_training():
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=64, n_positions=32,
                                     resid_pdrop=0.2, attn_pdrop=0.2, embd_pdrop=0.2, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).eval()
    ids = torch.randint(0, 64, (2, 8))
    graph = fxsparse.analyze(model, ids)
    small = fxsparse.export(model, graph, everything_kept(graph)).eval()
    torch.testing.assert_close(small(ids)["logits"] if isinstance(small(ids), dict) else small(ids).logits,
                               model(ids).logits, rtol=0, atol=1e-5)
    small.train()
    a, b = run(small, ids, 1), run(small, ids, 2)
    logits = (lambda out: out["logits"] if isinstance(out, dict) else out.logits)
    assert not torch.equal(logits(a), logits(b))


class StochasticDepthNet(SizeCheckedNet):
    """A residual branch dropped at random in training, decided in Python (timm's and
    transformers' drop_path): torch.export records one branch; fxsparse records the eval one."""

    def forward(self, x):
        y = super().forward(x)
        if self.training:
            keep = (torch.rand(y.shape[0], 1) > 0.5).to(y.dtype) / 0.5
            return y + self.fc.weight.sum() * keep
        return y + self.fc.weight.sum()


def test_python_training_branches_are_captured_in_their_eval_form():
    model = StochasticDepthNet().train()
    x = torch.randn(4, 3, 6, 6)
    graph = fxsparse.analyze(model, x)
    small = fxsparse.export(model, graph, everything_kept(graph))
    assert small.training
    model.eval(), small.eval()
    torch.testing.assert_close(small(x), model(x), rtol=0, atol=1e-6)  # exact in eval, as captured
