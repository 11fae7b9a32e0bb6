"""SubnetFlops against FlopCounterMode on the exported model (masks), and against the
Monte-Carlo mean over sampled masks (probabilities)."""
import pytest
import torch

import fxsparse
from fxsparse import zoo
from fxsparse.analysis.flops import SubnetFlops
from fxsparse.analysis.graph import count_flops


@pytest.mark.parametrize("name,shape", [("lenet5", (1, 1, 28, 28)), ("resnet20", (1, 3, 32, 32)),
                                        ("mobilenetv2", (1, 3, 32, 32)), ("densenet_bc_100", (1, 3, 32, 32))])
def test_mask_flops_equal_flop_counter_on_export(name, shape, single_thread):
    torch.manual_seed(0)
    model = zoo.create(name, num_classes=10, in_chans=shape[1]).eval()
    x = torch.randn(shape)
    graph = fxsparse.analyze(model, (x,))
    counter = SubnetFlops(graph)
    dense, _ = count_flops(model, (x,))
    assert counter.dense == pytest.approx(dense, rel=1e-12)
    for seed, keep in [(1, 0.3), (2, 0.7)]:
        masks = fxsparse.random_keep(graph, keep, torch.Generator().manual_seed(seed))
        true, _ = count_flops(fxsparse.export(model, graph, masks), (x,))
        assert float(counter(counter.flat(masks))) == pytest.approx(true, rel=1e-9)


def test_expected_flops_equal_monte_carlo_mean(single_thread):
    model = zoo.create("lenet5", num_classes=10, in_chans=1)
    graph = fxsparse.analyze(model, (torch.randn(1, 1, 28, 28),))
    counter = SubnetFlops(graph)
    g = torch.Generator().manual_seed(0)
    s = torch.rand(counter.num_channels, generator=g, dtype=torch.float64)
    samples = torch.stack([float(counter((torch.rand(len(s), generator=g, dtype=torch.float64) < s).double()))
                           * torch.ones(()) for _ in range(3000)])
    se = float(samples.std()) / len(samples) ** 0.5
    assert abs(float(samples.mean()) - float(counter(s))) < 4 * se


def test_bad_vector_length():
    model = zoo.create("lenet5", num_classes=10, in_chans=1)
    counter = SubnetFlops(fxsparse.analyze(model, (torch.randn(1, 1, 28, 28),)))
    with pytest.raises(ValueError, match="prunable channels"):
        counter(torch.ones(3))


def test_count_flops_sees_the_attention_fast_path():
    """nn.MultiheadAttention / nn.TransformerEncoderLayer in eval mode under no_grad run one
    fused op that FlopCounterMode does not count: count_flops must count what train mode
    counts (dropout 0: the same computation)."""
    layer = torch.nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
    x = torch.randn(2, 5, 16)
    train_flops, _ = fxsparse.count_flops(layer.train(), (x,))
    eval_flops, _ = fxsparse.count_flops(layer.eval(), (x,))
    assert train_flops > 0 and eval_flops == train_flops
    assert torch.backends.mha.get_fastpath_enabled()  # restored
