"""Dynamic capacities: one compiled graph per step function whose kept-channel counts are
symbolic sizes; every step runs at its mask's own counts and equals the exported model."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fxsparse
from fxsparse.methods.vrpge.learner import StructureLearner
from fxsparse.rewrite.shape_free import count_dependence
from sparse_checks import ConvBNNet, check_steps


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.c2, self.b2 = nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.c3, self.b3 = nn.Conv2d(16, 24, 3, padding=1, bias=False), nn.BatchNorm2d(24)
        self.fc = nn.Linear(24, 5)

    def forward(self, x):
        x = F.relu(self.b1(self.c1(x)))
        x = F.relu(x + self.b2(self.c2(x)))
        x = F.relu(self.b3(self.c3(x)))
        return self.fc(x.mean((2, 3)))


class FlattenByConstant(nn.Module):  # LeNet's way: the flattened width is a literal
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 8, 3)
        self.fc = nn.Linear(8 * 6 * 6, 5)

    def forward(self, x):
        return self.fc(F.relu(self.c(x)).view(-1, 8 * 6 * 6))


class Depthwise(nn.Module):  # MobileNet's way: as many groups as channels
    def __init__(self):
        super().__init__()
        self.c, self.dw, self.fc = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Linear(8, 5)

    def forward(self, x):
        return self.fc(self.dw(F.relu(self.c(x))).mean((2, 3)))


class FunctionalDepthwise(Depthwise):  # timm's way: F.conv2d with groups in the call
    def forward(self, x):
        x = F.relu(self.c(x))
        x = F.conv2d(x, self.dw.weight, self.dw.bias, 1, 1, 1, 8)
        return self.fc(x.mean((2, 3)))


class ChannelNorm(nn.Module):  # a LayerNorm over the pruned channels (ConvNeXt's way)
    def __init__(self):
        super().__init__()
        self.a, self.norm, self.b = nn.Linear(6, 16), nn.LayerNorm(16), nn.Linear(16, 5)

    def forward(self, x):
        return self.b(self.norm(F.relu(self.a(x))))


class Heads(nn.Module):  # an attention whose head count is a literal in its reshape (ViT's way)
    def __init__(self, dim=8, heads=4):
        super().__init__()
        self.heads, self.qkv, self.proj, self.fc = heads, nn.Linear(dim, 3 * dim * 2), nn.Linear(2 * dim, dim), \
            nn.Linear(dim, 5)

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, 4).permute(2, 0, 3, 1, 4).unbind(0)
        a = (q @ k.transpose(-2, -1) * 0.5).softmax(-1)
        y = (a @ v).transpose(1, 2).reshape(b, n, self.heads * 4)
        return self.fc(x + self.proj(y)).mean(1)


class UpDown(nn.Module):  # a U-Net's way up: transposed convolution, depthwise on the way
    def __init__(self):
        super().__init__()
        self.down, self.bn = nn.Conv2d(3, 12, 3, stride=2, padding=1), nn.BatchNorm2d(12)
        self.dw = nn.Conv2d(12, 12, 3, padding=1, groups=12)
        self.up = nn.ConvTranspose2d(12, 8, 2, stride=2)
        self.out = nn.Conv2d(8, 5, 1)

    def forward(self, x):
        x = F.relu(self.bn(self.down(x)))
        return self.out(F.relu(self.up(F.relu(self.dw(x))))).mean((2, 3))


def channel_shuffle(x, groups=2):
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class MobileStyle(nn.Module):
    """A residual block, a ShuffleNet unit (split, branch, concatenation, channel shuffle),
    depthwise, a LayerNorm over channels, a transposed conv."""
    def __init__(self):
        super().__init__()
        self.down, self.bn = nn.Conv2d(3, 12, 3, stride=2, padding=1), nn.BatchNorm2d(12)
        self.c, self.bc = nn.Conv2d(12, 12, 3, padding=1, bias=False), nn.BatchNorm2d(12)
        self.branch = nn.Conv2d(6, 6, 1)
        self.dw, self.norm = nn.Conv2d(12, 12, 3, padding=1, groups=12), nn.LayerNorm(12)
        self.up, self.out = nn.ConvTranspose2d(12, 8, 2, stride=2), nn.Conv2d(8, 5, 1)

    def forward(self, x):
        x = F.relu(self.bn(self.down(x)))
        x = F.relu(x + self.bc(self.c(x)))
        kept, branched = x.chunk(2, dim=1)
        x = self.dw(channel_shuffle(torch.cat((kept, F.relu(self.branch(branched))), 1)))
        x = self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.out(F.relu(self.up(x))).mean((2, 3))


class TwoWaySplit(nn.Module):  # ShuffleNet's way: a split into two separately pruned parts
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 6, 1), nn.Conv2d(3, 6, 1)
        self.c, self.d, self.fc = nn.Conv2d(6, 6, 1), nn.Conv2d(6, 6, 1), nn.Linear(12, 5)

    def forward(self, x):
        left, right = torch.cat([self.a(x), self.b(x)], 1).split([6, 6], 1)
        return self.fc(torch.cat([self.c(left), self.d(right)], 1).mean((2, 3)))


class Shuffle(nn.Module):  # a channel shuffle with no split: a permutation of the kept channels
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        return self.fc(F.relu(self.b(channel_shuffle(F.relu(self.a(x))))).mean((2, 3)))


class Narrowed(nn.Module):  # a narrow into pruned channels (its start and length are counts), shuffled
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 6, 1), nn.Conv2d(3, 6, 1)
        self.c, self.fc = nn.Conv2d(6, 6, 1), nn.Linear(6, 5)

    def forward(self, x):
        x = channel_shuffle(torch.cat([self.a(x), self.b(x)], 1))
        return self.fc(self.c(x.narrow(1, 6, 6)).mean((2, 3)))


def _data(shape=(8, 3, 8, 8), classes=5):
    g = torch.Generator().manual_seed(0)
    return torch.randn(*shape, generator=g), torch.randint(0, classes, (shape[0],), generator=g)


def _example(model):
    return torch.randn(2, 6) if isinstance(model, ChannelNorm) else torch.randn(2, 5, 8) \
        if isinstance(model, Heads) else torch.randn(2, 3, 8, 8)


@pytest.mark.parametrize("model, words", [(FlattenByConstant(), ("view", "288")), (Narrowed(), ("narrow", "6, 6"))])
def test_what_pins_a_count_is_named_and_the_default_falls_back_to_static(model, words):
    x = _example(model)
    graph = fxsparse.analyze(model, x)
    reason = count_dependence(model, graph)
    assert reason is not None and all(w in reason for w in words), reason
    sp = fxsparse.compile(model, x, compile=False, graph=graph)
    assert sp.capacity_mode == "auto" and sp.static_reason == reason
    with pytest.raises(ValueError, match="capacity=None"):
        fxsparse.compile(model, x, compile=False, capacity="dynamic", graph=graph)
    y = torch.randint(0, 5, (x.shape[0],))  # static capacities: every step equals the exported model
    sp = check_steps(model, (x,), y, F.cross_entropy, steps=2, dtype=torch.float64, tol=1e-9)
    assert sp.capacity_mode == "auto"


@pytest.mark.parametrize("model_class", [Residual, ConvBNNet, Depthwise, FunctionalDepthwise, ChannelNorm, Heads, UpDown,
                                         TwoWaySplit, Shuffle, MobileStyle], ids=lambda c: c.__name__)
@pytest.mark.parametrize("align", [1, 4])
def test_models_whose_counts_follow_their_shapes_default_to_dynamic(model_class, align):
    """Depthwise groups, a LayerNorm over pruned channels, a head count in a reshape, a
    transposed convolution, a split into pruned pieces and a channel shuffle follow the kept
    counts; every step equals the exported model (eager, float64, a new Bernoulli mask each
    step; align 4: counts rounded up, empty slots among the shuffled and split channels)."""
    torch.manual_seed(0)
    model = model_class()
    x = _example(model)
    assert count_dependence(model, fxsparse.analyze(model, x)) is None
    y = torch.randint(0, model(x).shape[-1], (x.shape[0],))
    sp = check_steps(model, (x,), y, F.cross_entropy, steps=3, align=align, dtype=torch.float64, tol=1e-9)
    assert sp.capacity_mode == "dynamic"


def _exported_loss(sp, x, y):
    small = sp.export().train()
    with torch.no_grad():
        return float(F.cross_entropy(small(x), y))


@pytest.mark.slow  # inductor compiles: ~10 s; the fast lane compiles in test_sparse_step.py
@pytest.mark.long
def test_compiled_dynamic_step_one_graph_per_function_at_every_count():
    """Keep probabilities from 0.15 to 0.95: the counts change every step, the step
    compiles once (forward + backward, update; the gather runs eagerly) and each loss equals the exported
    model's for that mask at the pre-step weights; the weights equal an eager twin's.
    A residual add, a split into pruned pieces, a channel shuffle, depthwise groups, a
    LayerNorm over channels and a transposed convolution all follow the counts."""
    torch.manual_seed(0)
    x, y = _data()
    model, twin = MobileStyle(), MobileStyle()
    twin.load_state_dict(model.state_dict())
    # align 1: every count runs as it is (the CPU default rounds 12 channels up to 16 or 8)
    sp = fxsparse.compile(model, x, keep=0.5, compile=True, seed=3, align=1)
    eager = fxsparse.compile(twin, x, keep=0.5, compile=False, seed=3, align=1)
    step = sp.make_train_step(F.cross_entropy, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    twin_step = eager.make_train_step(F.cross_entropy, torch.optim.SGD(twin.parameters(), lr=0.1, momentum=0.9))
    sp.train(), eager.train()
    seen = set()
    for i in range(9):
        masks = sp.sample_masks(0.15 + 0.1 * i)
        eager.masks = masks
        seen.add(tuple(sp.plan.block_counts(sp.current_masks)))
        ref = _exported_loss(sp, x, y)
        loss = float(step(x, y))
        assert abs(loss - ref) <= 1e-5 * max(1.0, abs(ref)), (i, loss, ref)
        assert abs(loss - float(twin_step(x, y))) <= 1e-5 * max(1.0, abs(ref))
    assert len(seen) == 9
    # gather, forward + backward, update: once each (twice at most: torch.compile's on-disk
    # caches have been seen to add one recompile)
    assert 3 <= sp.compilations <= 6, sp.compilations
    assert sp.rebuilds == 0
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        assert torch.allclose(p, q, rtol=1e-4, atol=1e-6), name
    for (name, b), c in zip(model.named_buffers(), twin.buffers()):
        assert torch.allclose(b.float(), c.float(), rtol=1e-4, atol=1e-6), name
    assert sp.compile_seconds > 0


@pytest.mark.slow  # 1,000 steps, each checked against an export: ~15 s
def test_a_search_whose_scores_move_compiles_each_function_once(aot_eager):
    """1,000 structure-search steps (score forwards + weight step) with the scores moving:
    one graph for the score forwards, one per training-step function (at most two); every training
    loss equals the exported model's for its mask. Graph counts are dynamo's and AOT autograd's
    (aot_eager); inductor's code for dynamic counts: the test above."""
    torch.manual_seed(0)
    x, y = _data((16, 3, 8, 8))
    model = Residual()
    sp = fxsparse.compile(model, x, keep=0.5, compile=True)
    step = sp.make_train_step(F.cross_entropy, torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9))
    learner = StructureLearner(sp, keep=0.5, budget="channels", lr=0.05, granularity="channel", steps=1000,
                               weight_masks="sampled")
    sp.train()
    start = learner.probs().clone()
    counts = set()

    def checked_step(*batch):
        counts.add(tuple(sp.plan.block_counts(sp.current_masks)))
        ref = _exported_loss(sp, x, y)
        loss = step(*batch)
        assert abs(float(loss) - ref) <= 1e-4 * max(1.0, abs(ref))
        return loss

    for _ in range(1000):
        learner.step(checked_step, F.cross_entropy, x, y)
    assert float((learner.probs() - start).abs().max()) > 0.3  # the scores moved
    assert len(counts) > 20  # many capacities visited
    assert sp.compilations <= 8, sp.compilations  # gather, forward + backward, update, score forwards: <= 2 each
    assert sp.rebuilds == 0
