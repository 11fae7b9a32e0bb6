"""export(): state_dict round-trips, torch.export works, keep masks as index tensors, and
the SparseModel form export(sparse)."""
import warnings

import torch

import fxsparse
from fxsparse import zoo


def _setup(name="resnet20"):
    torch.manual_seed(0)
    model = zoo.create(name).eval()
    x = torch.randn(2, 3, 32, 32)
    graph = fxsparse.analyze(model, x)
    keep = fxsparse.random_keep(graph, 0.5, torch.Generator().manual_seed(0))
    return model, x, graph, keep


def test_state_dict_roundtrip(tmp_path):
    model, x, graph, keep = _setup()
    small = fxsparse.export(model, graph, keep).eval()
    path = tmp_path / "small.pt"
    torch.save(small.state_dict(), path)
    other = fxsparse.export(zoo.create("resnet20"), fxsparse.analyze(zoo.create("resnet20").eval(), x), keep).eval()
    other.load_state_dict(torch.load(path))
    assert torch.equal(other(x), small(x))


def test_torch_export_of_exported_model():
    model, x, graph, keep = _setup()
    small = fxsparse.export(model, graph, keep).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prog = torch.export.export(small, (x,))
    assert torch.allclose(prog.module()(x), small(x), atol=1e-5)


def test_keep_as_index_tensor_and_sparse_model_form():
    model, x, graph, keep = _setup()
    as_index = {gid: m.nonzero().flatten() for gid, m in keep.items()}
    a = fxsparse.export(model, graph, keep).eval()
    b = fxsparse.export(model, graph, as_index).eval()
    assert torch.equal(a(x), b(x))
    sp = fxsparse.compile(model, x, keep=0.5, compile=False, graph=graph)
    sp.masks = keep
    c = fxsparse.export(sp, None).eval()
    assert torch.equal(a(x), c(x))


def test_topk_keep_picks_highest_scores():
    model, x, graph, _ = _setup()
    scores = {g.id: torch.arange(g.size, dtype=torch.float) for g in graph.prunable_groups}
    keep = fxsparse.topk_keep(graph, scores, 0.25)
    for g in graph.prunable_groups:
        k = max(1, round(0.25 * g.size))
        assert keep[g.id].nonzero().flatten().tolist() == list(range(g.size - k, g.size))


def test_topk_keep_ties_go_to_the_lower_index():
    """The methods' tie rule (``fxsparse.analysis.masks.top_mask``): exactly k channels, ties at the
    boundary to the lower channel index, whatever order torch.topk returns them in."""
    model, x, graph, _ = _setup()
    for pattern in ("zeros", "boundary"):
        scores = {}
        for g in graph.prunable_groups:
            s = torch.zeros(g.size)
            if pattern == "boundary":  # one winner at the end, the rest tied
                s[-1] = 2.0
            scores[g.id] = s
        keep = fxsparse.topk_keep(graph, scores, 0.5)
        for g in graph.prunable_groups:
            k = max(1, round(0.5 * g.size))
            want = list(range(k)) if pattern == "zeros" else list(range(k - 1)) + [g.size - 1]
            assert keep[g.id].nonzero().flatten().tolist() == sorted(want), (pattern, g.id)
