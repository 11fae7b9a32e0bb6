"""One tiny model per channel rule (tests/rule_models.py): hand-derived groups, export ==
masked reference for 20 random masks, hand-built pruned models for the models where
zeroing a channel is not removing it, keep-mask validation, graph views, tracing errors
and user-registered rules."""
from __future__ import annotations

import inspect
import json
import warnings

import networkx as nx
import numpy as np
import pytest
import torch
import torch.nn as nn

import fxsparse
from fxsparse.rewrite.reference import masked_reference
from fxsparse.rules.pointwise import passthrough
from fxsparse.rules.registry import _RULES

from harness import check_export, expected_param_count
import rule_models as R


pytestmark = pytest.mark.usefixtures("single_thread")


# ----------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------
def _parse(spec: str):
    param, dim = spec.rsplit(":", 1)
    return param, int(dim)


def groups_with(graph, spec):
    """Groups that have the member ``param:dim``."""
    param, dim = _parse(spec)
    return [g for g in graph.groups if any(m.param == param and m.dim == dim for m in g.members)]


def member_of(group, spec):
    param, dim = _parse(spec)
    (m,) = [m for m in group.members if m.param == param and m.dim == dim]
    return m


def analyze_case(case, model=None):
    model = model if model is not None else R.build(case)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        graph = fxsparse.analyze(model, case.inputs())
    return model, graph, [w for w in caught if "fxsparse" in str(w.message)]


def kept_indices(graph, keep, param, dim, size):
    """Indices of ``param``'s ``dim`` that survive ``keep`` (from the groups' member indices)."""
    masks = fxsparse.normalize_keep(graph, keep)
    dropped = set()
    for g in graph.groups:
        for m in g.members:
            if m.param == param and m.dim == dim:
                for j in (~masks[g.id]).nonzero().flatten().tolist():
                    dropped.update(int(i) for i in m.index[j])
    return torch.tensor([i for i in range(size) if i not in dropped], dtype=torch.long)


def assert_close(a, b, atol=1e-5):
    assert a.shape == b.shape, (a.shape, b.shape)
    err = float((a - b).abs().max())
    assert err <= atol * max(1.0, float(b.abs().max())), f"max abs difference {err}"


def _cases(kind):
    out = []
    for c in R.CASES:
        reason = getattr(c, f"xfail_{kind}")
        out.append(pytest.param(c, id=c.name, marks=pytest.mark.xfail(strict=True, reason=reason) if reason else ()))
    return out


# ----------------------------------------------------------------------------------------
# every rule model: hand-derived groups, then export == masked reference
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", _cases("groups"))
def test_rule_groups(case):
    model, graph, warned = analyze_case(case)
    assert sorted(g.size for g in graph.prunable_groups) == sorted(case.prunable), graph.summary()
    assert sum(not g.prunable for g in graph.groups) == case.unprunable, graph.summary()
    assert graph.zero_preserving == case.zero_preserving
    assert all(g.reason for g in graph.groups if not g.prunable)
    assert all(not g.reason for g in graph.prunable_groups)
    # every group's members index every channel with the same number of entries per member
    for g in graph.groups:
        assert g.size >= 1 and len(g.classes) == g.size
        for m in g.members:
            assert len(m.index) == g.size
            flat = np.concatenate(m.index)
            assert len(np.unique(flat)) == len(flat), (g.id, m.param)
    for specs in case.same:
        common = set.intersection(*(set(g.id for g in groups_with(graph, s)) for s in specs))
        assert common, f"{specs} share no group:\n{graph.summary()}"
    for a, b in case.apart:
        assert not {g.id for g in groups_with(graph, a)} & {g.id for g in groups_with(graph, b)}, (a, b)
    for anchor, spec, expected in case.index:
        (g,) = groups_with(graph, anchor)
        got = [sorted(int(i) for i in ix) for ix in member_of(g, spec).index]
        assert got == expected, (anchor, spec, got)
    for spec, fragment in case.blocked:
        gs = groups_with(graph, spec)
        assert gs and all(not g.prunable for g in gs), spec
        assert all(fragment in g.reason for g in gs), [g.reason for g in gs]
    if case.warns is None:
        assert not warned, [str(w.message) for w in warned]
    else:
        assert len(warned) == 1 and case.warns in str(warned[0].message), [str(w.message) for w in warned]


@pytest.mark.parametrize("case", _cases("export"))
def test_rule_export_matches_masked_reference(case):
    model, graph, _ = analyze_case(case)
    # 20 random masks, keep ratios drawn uniformly from [0.2, 0.9]
    ratios = R.draw_ratios(graph, 20, seed=1)
    check_export(model, case.inputs(), n_masks=20, ratios=ratios, seed=1, graph=graph)


# ----------------------------------------------------------------------------------------
# hand-built pruned models (LayerNorm over channels, attention)
# ----------------------------------------------------------------------------------------
def _random_keeps(graph, n, seed=0):
    gen = torch.Generator().manual_seed(seed)
    for i in range(n):
        yield fxsparse.random_keep(graph, [0.3, 0.5, 0.75][i % 3], gen)


def _slice(t: torch.Tensor, *index):
    """t[index[0]][:, index[1]] ... with None meaning 'keep all' along that dim."""
    for d, ix in enumerate(index):
        if ix is not None:
            t = t.index_select(d, ix)
    return t.detach().clone()


def _load(model: nn.Module, tensors: dict):
    with torch.no_grad():
        for name, value in tensors.items():
            owner, _, attr = name.rpartition(".")
            mod = model.get_submodule(owner) if owner else model
            cur = getattr(mod, attr)
            assert cur.shape == value.shape, (name, cur.shape, value.shape)
            cur.copy_(value)
    return model


def _compare_hand_built(model, graph, keep, small, inputs, check_masked=True):
    exported = fxsparse.export(model, graph, keep).eval()
    with torch.no_grad():
        out = exported(*inputs)
        ref = small.eval()(*inputs)
    assert torch.isfinite(out).all()
    assert_close(out, ref)
    if check_masked:  # the masked reference agrees with the hand-built model too
        with torch.no_grad():
            assert_close(masked_reference(graph, keep, *inputs), ref)
    n = sum(p.numel() for p in exported.parameters())
    assert n == sum(p.numel() for p in small.parameters()) == expected_param_count(model, graph, keep)


def test_layer_norm_channels_last_hand_built():
    case = R.CASES_BY_NAME["layer_norm_channels_last"]
    model, graph, _ = analyze_case(case)
    assert not graph.zero_preserving
    inputs = case.inputs()
    P = dict(model.named_parameters())
    changed = 0
    for keep in _random_keeps(graph, 6):
        c = kept_indices(graph, keep, "stem.weight", 0, 8)
        h = kept_indices(graph, keep, "pw1.weight", 0, 16)
        assert len(c) < 8 and len(h) < 16
        small = R.ConvNeXtBlockNet(c=len(c), hidden=len(h), out=4)
        _load(small, {
            "stem.weight": _slice(P["stem.weight"], c), "stem.bias": _slice(P["stem.bias"], c),
            "dw.weight": _slice(P["dw.weight"], c), "dw.bias": _slice(P["dw.bias"], c),
            "norm.weight": _slice(P["norm.weight"], c), "norm.bias": _slice(P["norm.bias"], c),
            "pw1.weight": _slice(P["pw1.weight"], h, c), "pw1.bias": _slice(P["pw1.bias"], h),
            "pw2.weight": _slice(P["pw2.weight"], c, h), "pw2.bias": _slice(P["pw2.bias"], c),
            "gamma": _slice(P["gamma"], c), "head.weight": _slice(P["head.weight"], None, c),
            "head.bias": _slice(P["head.bias"]),
        })
        _compare_hand_built(model, graph, keep, small, inputs)
        # removing channels under a LayerNorm is not zeroing them: the plain zero-masked
        # dense model (LayerNorm statistics over all channels) must differ
        with torch.no_grad():
            changed += int(not torch.allclose(fxsparse.export(model, graph, keep)(*inputs), model(*inputs)))
    assert changed


class _MHAWrittenOut(nn.Module):
    """R.MHANet's computation written out (packed in-projection, heads of 4, SDPA) with the
    embedding width ``e``, ``heads`` heads, the out-projection width ``o`` and the hidden
    width ``h``."""

    def __init__(self, e, heads, o, h):
        super().__init__()
        self.heads = heads
        self.inp, self.out_proj = nn.Linear(6, e), nn.Linear(4 * heads, o)
        self.in_proj_weight = nn.Parameter(torch.empty(12 * heads, e))
        self.in_proj_bias = nn.Parameter(torch.empty(12 * heads))
        self.fc1, self.fc2 = nn.Linear(o, h), nn.Linear(h, 3)

    def forward(self, x):
        x = torch.relu(self.inp(x))
        B, N, _ = x.shape
        q, k, v = (t.reshape(B, N, self.heads, 4).transpose(1, 2)
                   for t in nn.functional.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, -1))
        a = nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, 4 * self.heads)
        return self.fc2(torch.relu(self.fc1(self.out_proj(a))))


def test_multihead_attention_hand_built():
    """nn.MultiheadAttention decomposed by torch.export: its heads (q, k and v of a head
    together), its input width and its output width prune."""
    case = R.CASES_BY_NAME["multihead_attention"]
    model, graph, _ = analyze_case(case)
    P = dict(model.named_parameters())
    for keep in _random_keeps(graph, 4):
        e = kept_indices(graph, keep, "inp.weight", 0, 8)
        c = kept_indices(graph, keep, "attn.out_proj.weight", 1, 8)  # the kept heads' channels
        o = kept_indices(graph, keep, "attn.out_proj.weight", 0, 8)
        h = kept_indices(graph, keep, "fc1.weight", 0, 12)
        assert len(c) % 4 == 0 and (len(e) < 8 or len(c) < 8 or len(o) < 8 or len(h) < 12)
        rows = torch.cat([c + 8 * part for part in range(3)])  # q, k and v rows of those heads
        small = _load(_MHAWrittenOut(len(e), len(c) // 4, len(o), len(h)), {
            "inp.weight": _slice(P["inp.weight"], e), "inp.bias": _slice(P["inp.bias"], e),
            "in_proj_weight": _slice(P["attn.in_proj_weight"], rows, e),
            "in_proj_bias": _slice(P["attn.in_proj_bias"], rows),
            "out_proj.weight": _slice(P["attn.out_proj.weight"], o, c), "out_proj.bias": _slice(P["attn.out_proj.bias"], o),
            "fc1.weight": _slice(P["fc1.weight"], h, o), "fc1.bias": _slice(P["fc1.bias"], h),
            "fc2.weight": _slice(P["fc2.weight"], None, h), "fc2.bias": _slice(P["fc2.bias"]),
        })
        _compare_hand_built(model, graph, keep, small, case.inputs())


@pytest.mark.parametrize("name", ["qkv_attention", "qkv_attention_sdpa", "qkv_attention_causal"])
def test_qkv_attention_hand_built(name):
    case = R.CASES_BY_NAME[name]
    model, graph, _ = analyze_case(case)
    P = dict(model.named_parameters())
    seen_heads = set()
    for keep in _random_keeps(graph, 6, seed=3):
        e = kept_indices(graph, keep, "embed.weight", 0, 8)
        inner = kept_indices(graph, keep, "q.weight", 0, 8)  # whole heads: blocks of 4
        assert len(inner) % 4 == 0
        heads = len(inner) // 4
        seen_heads.add(heads)
        small = R.QKVAttentionNet(embed=len(e), heads=heads, hd=4, sdpa=model.sdpa, causal=model.causal)
        tensors = {"embed.weight": _slice(P["embed.weight"], e), "embed.bias": _slice(P["embed.bias"], e),
                   "proj.weight": _slice(P["proj.weight"], e, inner), "proj.bias": _slice(P["proj.bias"], e),
                   "head.weight": _slice(P["head.weight"], None, e), "head.bias": _slice(P["head.bias"])}
        for n in "qkv":
            tensors[f"{n}.weight"] = _slice(P[f"{n}.weight"], inner, e)
            tensors[f"{n}.bias"] = _slice(P[f"{n}.bias"], inner)
        # (the masked reference is NaN for the causal model: REFERENCE_NAN_BUG)
        _compare_hand_built(model, graph, keep, _load(small, tensors), case.inputs(), check_masked=not model.causal)
    assert 1 in seen_heads


def test_se_gate_divide_hand_built():
    """x / gate: the export is right (the masked reference is not: REFERENCE_NAN_BUG)."""
    case = R.CASES_BY_NAME["se_gate_divide"]
    model, graph, _ = analyze_case(case)
    P = dict(model.named_parameters())
    for keep in _random_keeps(graph, 4, seed=7):
        c = kept_indices(graph, keep, "conv1.weight", 0, 8)
        r = kept_indices(graph, keep, "fc1.weight", 0, 4)
        small = R.SEGate(c=len(c), r=len(r), divide=True)
        _load(small, {"conv1.weight": _slice(P["conv1.weight"], c), "conv1.bias": _slice(P["conv1.bias"], c),
                      "fc1.weight": _slice(P["fc1.weight"], r, c), "fc1.bias": _slice(P["fc1.bias"], r),
                      "fc2.weight": _slice(P["fc2.weight"], c, r), "fc2.bias": _slice(P["fc2.bias"], c),
                      "conv2.weight": _slice(P["conv2.weight"], None, c), "conv2.bias": _slice(P["conv2.bias"])})
        _compare_hand_built(model, graph, keep, small, case.inputs(), check_masked=False)


def test_masked_reference_is_finite_for_inf_in_pruned_channels():
    case = R.CASES_BY_NAME["qkv_attention_causal"]
    model, graph, _ = analyze_case(case)
    keep = {g.id: torch.tensor([True, False]) for g in graph.prunable_groups if g.size == 2}  # drop head 1
    with torch.no_grad():
        assert torch.isfinite(masked_reference(graph, keep, *case.inputs())).all()


def _fused_attention(x, Wqkv, bqkv, Wp, bp, Wh, bh, heads, hd):
    B, N, _ = x.shape
    qkv = torch.nn.functional.linear(x, Wqkv, bqkv).reshape(B, N, 3, heads, hd).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    attn = torch.softmax((q @ k.transpose(-2, -1)) * hd ** -0.5, dim=-1)
    o = (attn @ v).transpose(1, 2).reshape(B, N, heads * hd)
    return torch.nn.functional.linear(torch.nn.functional.linear(o, Wp, bp), Wh, bh)


def test_fused_qkv_attention_hand_built():
    case = R.CASES_BY_NAME["fused_qkv_attention"]
    model, graph, _ = analyze_case(case)
    P = {k: v.detach() for k, v in model.named_parameters()}
    (x,) = case.inputs()
    with torch.no_grad():
        dense = _fused_attention(x, P["qkv.weight"], P["qkv.bias"], P["proj.weight"], P["proj.bias"],
                                 P["head.weight"], P["head.bias"], 2, 4)
        assert_close(model(x), dense)
    for keep in _random_keeps(graph, 4, seed=5):
        rows = kept_indices(graph, keep, "qkv.weight", 0, 24)
        heads = len(rows) // 12
        cols = kept_indices(graph, keep, "proj.weight", 1, 8)
        p = kept_indices(graph, keep, "proj.weight", 0, 8)
        assert len(cols) == 4 * heads
        exported = fxsparse.export(model, graph, keep)
        with torch.no_grad():
            ref = _fused_attention(x, P["qkv.weight"][rows], P["qkv.bias"][rows], P["proj.weight"][p][:, cols],
                                   P["proj.bias"][p], P["head.weight"][:, p], P["head.bias"], heads, 4)
            assert_close(exported(x), ref)


# ----------------------------------------------------------------------------------------
# bad keep masks and ratios
# ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def concat_graph():
    case = R.CASES_BY_NAME["concat"]
    model = R.build(case)
    return model, fxsparse.analyze(model, case.inputs()), case.inputs()


def _raises(fragments, fn, *args):
    with pytest.raises(fxsparse.KeepMaskError) as exc:
        fn(*args)
    for f in fragments:
        assert f in str(exc.value), (f, str(exc.value))
    assert isinstance(exc.value, ValueError) and isinstance(exc.value, fxsparse.FxsparseError)


def test_keep_mask_errors(concat_graph):
    model, graph, inputs = concat_graph
    g = graph.prunable_groups[0]
    fixed = [x for x in graph.groups if not x.prunable][0]
    n = len(graph.groups)
    bad = [
        ({g.id: torch.ones(g.size + 1, dtype=torch.bool)}, [f"group {g.id}", f"{g.size + 1} entries", f"{g.size} channels"]),
        ({g.id: torch.ones(g.size - 1, dtype=torch.bool)}, [f"{g.size - 1} entries"]),
        ({n + 5: torch.ones(3, dtype=torch.bool)}, [f"group {n + 5}", f"0..{n - 1}"]),
        ({-1: torch.ones(3, dtype=torch.bool)}, ["group -1"]),
        ({"0": torch.ones(g.size, dtype=torch.bool)}, ["group '0'"]),
        ({fixed.id: torch.tensor([False] + [True] * (fixed.size - 1))}, [f"group {fixed.id}", "not prunable", "keep all"]),
        ({fixed.id: torch.tensor([0])} if fixed.size > 1 else {fixed.id: torch.zeros(1, dtype=torch.bool)}, [f"group {fixed.id}"]),
        ({g.id: torch.zeros(g.size, dtype=torch.bool)}, [f"group {g.id}", "keeps no channel"]),
        ({g.id: torch.tensor([], dtype=torch.long)}, ["keeps no channel"]),
        ({g.id: torch.tensor([0, g.size])}, [f"group {g.id}", f"[0, {g.size})"]),
        ({g.id: torch.tensor([-1])}, [f"[0, {g.size})"]),
        ([torch.ones(g.size, dtype=torch.bool)], ["keep must map group id"]),
    ]
    for keep, fragments in bad:
        _raises(fragments, fxsparse.normalize_keep, graph, keep)
        _raises(fragments, fxsparse.export, model, graph, keep)
        _raises(fragments, masked_reference, graph, keep, *inputs)
    # the right forms are accepted: bool masks, index tensors, lists, all-kept unprunable groups
    ok = {g.id: torch.tensor([0]), fixed.id: torch.ones(fixed.size, dtype=torch.bool)}
    masks = fxsparse.normalize_keep(graph, ok)
    assert masks[g.id].tolist() == [True] + [False] * (g.size - 1) and masks[fixed.id].all()
    assert set(masks) == {x.id for x in graph.groups}
    assert fxsparse.normalize_keep(graph, {g.id: [True] * g.size})[g.id].all()
    small = fxsparse.export(model, graph, ok)
    assert sum(p.numel() for p in small.parameters()) == expected_param_count(model, graph, ok)


@pytest.mark.parametrize("ratio", [0, 0.0, 1.5, -0.3, float("nan"), float("inf"), "0.5", None])
def test_bad_ratio(concat_graph, ratio):
    _, graph, _ = concat_graph
    _raises(["keep ratio", "(0, 1]", repr(ratio)], fxsparse.random_keep, graph, ratio)
    scores = {g.id: torch.rand(g.size) for g in graph.prunable_groups}
    _raises(["keep ratio", "(0, 1]"], fxsparse.topk_keep, graph, scores, ratio)


def test_topk_keep_and_score_errors(concat_graph):
    model, graph, inputs = concat_graph
    scores = {g.id: torch.arange(g.size, dtype=torch.float) for g in graph.prunable_groups}
    keep = fxsparse.topk_keep(graph, scores, 0.5)
    for g in graph.prunable_groups:
        k = max(1, round(0.5 * g.size))
        assert keep[g.id].nonzero().flatten().tolist() == list(range(g.size - k, g.size))
    check_export(model, inputs, n_masks=1, graph=graph)
    g = graph.prunable_groups[0]
    _raises([f"group {g.id}", f"{g.size} channels"], fxsparse.topk_keep, graph, {**scores, g.id: torch.rand(g.size + 2)}, 0.5)
    missing = dict(scores)
    del missing[g.id]
    _raises([f"no scores for prunable group {g.id}"], fxsparse.topk_keep, graph, missing, 0.5)


def test_random_keep_ratio_one_keeps_everything(concat_graph):
    model, graph, inputs = concat_graph
    keep = fxsparse.random_keep(graph, 1.0, torch.Generator().manual_seed(0))
    assert all(m.all() for m in keep.values())
    small = fxsparse.export(model, graph, keep)
    assert sum(p.numel() for p in small.parameters()) == sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        assert_close(small(*inputs), model(*inputs))
    tiny = fxsparse.random_keep(graph, 0.01, torch.Generator().manual_seed(0))
    assert all(int(m.sum()) == 1 for m in tiny.values())  # at least one channel per group


# ----------------------------------------------------------------------------------------
# graph views
# ----------------------------------------------------------------------------------------
def test_graph_views(tmp_path):
    case = R.CASES_BY_NAME["concat"]
    model, graph, _ = analyze_case(case)
    text = graph.summary()
    for name in ("conv_a", "conv_b", "bn", "conv_c", "reaches the model output", "FLOPs touched"):
        assert name in text, name
    assert text.startswith(f"{len(graph.groups)} channel groups, {len(graph.prunable_groups)} prunable (10 prunable channels)")
    assert repr(graph) == f"ChannelGraph({len(graph.groups)} groups, 2 prunable)"
    assert len(graph) == len(graph.groups) and list(graph) == graph.groups and graph[0] is graph.groups[0]

    data = json.loads(graph.to_json())
    assert data["schema"] == "fxsparse.groups/2"
    assert data["zero_preserving"] is True and data["auto_leaves"] == []
    assert [g["size"] for g in data["groups"]] == [g.size for g in graph.groups]
    params = {m["param"] for g in data["groups"] for m in g["members"]}
    assert {"conv_a.weight", "conv_b.weight", "bn.weight", "conv_c.weight"} <= params
    b = [g for g in data["groups"] if any(m["param"] == "conv_b.weight" for m in g["members"])][0]
    assert [m for m in b["members"] if m["param"] == "bn.weight"][0] == {"param": "bn.weight", "dim": 0, "start": 4,
                                                                           "stride": 1, "block": 1}
    assert b["layers"] == ["conv_b", "bn", "conv_c"]
    assert "j" not in graph.to_json().replace("conv", "").replace("schema", "")  # no '4+1j' complex-looking patterns
    path = tmp_path / "g.json"
    graph.to_json(path)
    assert json.loads(path.read_text()) == data

    dot = graph.to_dot()
    assert dot.startswith("digraph dataflow {") and dot.rstrip().endswith("}")
    edges = [ln.split(" [")[0].strip() for ln in dot.splitlines() if " -> " in ln]
    assert edges == ['"input x" -> "conv_a"', '"input x" -> "conv_b"', '"conv_a" -> "bn"', '"conv_b" -> "bn"',
                     '"bn" -> "conv_c"', '"conv_c" -> "output"']  # the data flow, in graph order
    a, b_id = (next(g.id for g in graph.groups if any(m.param == f"{n}.weight" and m.dim == 0 for m in g.members))
               for n in ("conv_a", "conv_b"))
    assert f'"bn" -> "conv_c" [label="g{a} (4) + g{b_id} (6)"' in dot  # bn's output holds both groups
    assert "unprunable (grey)" in dot and "reaches the model output" in dot
    graph.to_dot(tmp_path / "g.dot")
    assert (tmp_path / "g.dot").read_text() == dot
    flow = graph.dataflow()
    assert list(flow.nodes) == ["input x", "conv_a", "conv_b", "bn", "conv_c", "output"]
    assert flow.nodes["bn"]["groups"] == [a, b_id]

    nxg = graph.networkx()
    assert isinstance(nxg, nx.MultiGraph)
    assert {"conv_a", "conv_b", "bn", "conv_c"} <= set(nxg.nodes)
    assert nxg.has_edge("conv_a", "conv_c") and nxg.has_edge("conv_b", "bn")
    assert not nxg.has_edge("conv_a", "conv_b")
    prunable_edges = [d for _, _, d in nxg.edges(data=True) if d["prunable"]]
    assert {d["size"] for d in prunable_edges} == {4, 6}


def _expand(member: dict) -> list:
    """Channel j's indices from the compact JSON member (the schema in ChannelGraph.to_json)."""
    if "index" in member:
        return [ix if isinstance(ix, list) else [ix] for ix in member["index"]]
    start, stride, block, n = member["start"], member["stride"], member["block"], member["size"]
    return [list(range(start + stride * j, start + stride * j + block)) for j in range(n)]


@pytest.mark.parametrize("name", ["concat", "flatten_linear", "chunk_swap_halves", "grouped_conv", "fused_qkv_attention"])
def test_json_members_expand_to_the_channel_indices(name):
    _, graph, _ = analyze_case(R.CASES_BY_NAME[name])
    data = json.loads(graph.to_json())
    forms = set()
    for grp, jg in zip(graph.groups, data["groups"]):
        assert jg["id"] == grp.id and jg["size"] == grp.size and len(jg["members"]) == len(grp.members)
        for m, jm in zip(grp.members, jg["members"]):
            assert (jm["param"], jm["dim"]) == (m.param, m.dim)
            forms.add("index" if "index" in jm else "range")
            assert _expand(dict(jm, size=grp.size)) == [ix.tolist() for ix in m.index], (m.param, jm)
    assert forms == ({"range"} if name in ("concat", "flatten_linear") else {"range", "index"}), forms


def test_graph_views_untraceable_and_mixing():
    _, graph, _ = analyze_case(R.CASES_BY_NAME["untraceable_child"])
    assert graph.auto_leaves == ["body.gate"]
    assert "untraceable submodules kept whole: body.gate" in graph.summary()
    assert json.loads(graph.to_json())["auto_leaves"] == ["body.gate"]
    _, graph, _ = analyze_case(R.CASES_BY_NAME["layer_norm_channels_last"])
    data = json.loads(graph.to_json())
    assert data["zero_preserving"] is False and data["mixing_nodes"]
    assert "norm" in graph.summary()


# ----------------------------------------------------------------------------------------
# tracing
# ----------------------------------------------------------------------------------------
def test_untraceable_child_leaf_modules():
    case = R.CASES_BY_NAME["untraceable_child"]
    model = R.build(case)
    for leaves in (["body.gate"], [R.DataDependentGate]):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no warning when the user names the leaf
            graph = fxsparse.analyze(model, case.inputs(), leaf_modules=leaves)
        assert graph.auto_leaves == []
        assert sorted(g.size for g in graph.prunable_groups) == [6]
    with pytest.raises(TypeError):
        fxsparse.analyze(model, case.inputs(), leaf_modules=[3])


def test_untraceable_top_level_raises():
    model = R.UntraceableTopNet()
    src, start = inspect.getsourcelines(R.UntraceableTopNet.forward)
    line = start + next(i for i, s in enumerate(src) if "UNTRACEABLE-TOP-LINE" in s)
    with pytest.raises(fxsparse.TraceError) as exc:
        fxsparse.analyze(model, torch.randn(2, 3, 8, 8))
    msg = str(exc.value)
    assert f"rule_models.py:{line}" in msg, msg
    assert "leaf_modules" in msg and "UntraceableTopNet" in msg
    assert exc.value.location.startswith(inspect.getsourcefile(R.UntraceableTopNet))
    assert isinstance(exc.value, fxsparse.FxsparseError)


_USER_NET = """
import torch
import torch.nn as nn


class Top(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        x = self.conv(x)
        if x.mean() > 0:  # line 13
            x = x * 2
        return x


class NoRule(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        x = torch.cumsum(self.a(x), 1)  # line 25
        return self.b(x)
"""


def test_locations_in_user_folders_named_like_packages(tmp_path):
    """A user's model under folders named fxsparse/, torch/ and passes/ (a clone named
    `fxsparse`) is still the user's code: errors and reasons name its file:line."""
    import importlib.util

    folder = tmp_path / "fxsparse" / "torch" / "passes"
    folder.mkdir(parents=True)
    path = folder / "user_net.py"
    path.write_text(_USER_NET)
    spec = importlib.util.spec_from_file_location("fxsparse_test_user_net", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    with pytest.raises(fxsparse.TraceError) as exc:
        fxsparse.analyze(mod.Top(), torch.randn(1, 3, 4, 4))
    assert exc.value.location.startswith(f"{path}:13:"), exc.value.location
    assert f"{path}:13" in str(exc.value)
    graph = fxsparse.analyze(mod.NoRule(), torch.randn(1, 3, 4, 4))
    assert f"torch.cumsum at {path}:25" in graph.groups[0].reason, graph.groups[0].reason


def test_analyze_rejects_non_module():
    with pytest.raises(TypeError):
        fxsparse.analyze(lambda x: x, torch.randn(1))


def test_analyze_leaves_model_untouched():
    case = R.CASES_BY_NAME["conv2d"]
    model = R.build(case).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    fxsparse.analyze(model, case.inputs())
    assert model.training
    assert torch.equal(torch.get_rng_state(), rng)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


# ----------------------------------------------------------------------------------------
# user-registered rules
# ----------------------------------------------------------------------------------------
def _custom_case():
    model = R.build(R.RuleCase("custom", R.CustomOpNet, R.IMG, [], 0))
    return model, (torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)),)


def test_user_registered_rule():
    model, inputs = _custom_case()
    assert R.channel_scale not in _RULES
    # a torch.fx.wrap-ed function with no rule is seen through (captured with torch.export)
    graph = fxsparse.analyze(model, inputs)
    assert sorted(g.size for g in graph.prunable_groups) == [6, 8]
    assert not any(n.target is R.channel_scale for n in graph.gm.graph.nodes)
    check_export(model, inputs, n_masks=2, ratios=None, graph=graph)
    # one torch.export cannot see through either stays an opaque leaf that blocks its channels
    opaque = R.build(R.RuleCase("opaque", R.OpaqueOpNet, R.IMG, [], 0))
    graph = fxsparse.analyze(opaque, inputs)
    assert sorted(g.size for g in graph.prunable_groups) == [6]
    (blocked,) = [g for g in graph.groups if any(m.param == "conv1.weight" for m in g.members)]
    assert not blocked.prunable and "signed_channel_scale" in blocked.reason and "register_rule" in blocked.reason
    try:
        fxsparse.register_rule(R.channel_scale)(passthrough)
        with pytest.raises(ValueError, match="already registered"):
            fxsparse.register_rule(R.channel_scale)(passthrough)
        graph = fxsparse.analyze(model, inputs)
        assert sorted(g.size for g in graph.prunable_groups) == [6, 8]
        (g8,) = [g for g in graph.prunable_groups if g.size == 8]
        assert {m.layer for m in g8.members} == {"conv1", "conv2"}
        # a function with a rule stays one traced node: the rule describes it
        assert [n.target for n in graph.gm.graph.nodes if n.op == "call_function"].count(R.channel_scale) == 1
        check_export(model, inputs, n_masks=5, ratios=None, graph=graph)
    finally:
        _RULES.pop(R.channel_scale, None)
    # the registry is restored: the function is seen through again, not a leaf
    graph = fxsparse.analyze(model, inputs)
    assert not any(n.target is R.channel_scale for n in graph.gm.graph.nodes)


def test_per_call_rules():
    model, inputs = _custom_case()
    graph = fxsparse.analyze(model, inputs, rules={R.channel_scale: passthrough})
    assert sorted(g.size for g in graph.prunable_groups) == [6, 8]
    graph = fxsparse.analyze(model, inputs, rules={R.channel_scale: fxsparse.Rule(analyze=passthrough)})
    assert sorted(g.size for g in graph.prunable_groups) == [6, 8]
    assert any(n.target is R.channel_scale for n in graph.gm.graph.nodes)  # a leaf with its per-call rule
    check_export(model, inputs, n_masks=3, ratios=None, graph=graph)
    assert R.channel_scale not in _RULES
    opaque = R.build(R.RuleCase("opaque", R.OpaqueOpNet, R.IMG, [], 0))
    assert sorted(g.size for g in fxsparse.analyze(opaque, inputs).prunable_groups) == [6]


class _EinsumProductNet(nn.Module):
    """An einsum that is no matrix product (an element-wise square written as einsum)."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 8), nn.Linear(8, 3)

    def forward(self, x):
        y = self.fc1(x)
        return self.fc2(torch.einsum("bnc,bnc->bnc", y, y))


class _EinsumSumNet(_EinsumProductNet):
    """An einsum that sums fc1's channels out: removing one changes the sum's operands."""

    def forward(self, x):
        y = self.fc1(x)
        return self.fc2(y) + torch.einsum("bnc->bn", y)[..., None]


def test_einsum_that_is_no_matrix_product_is_read_letter_by_letter():
    x, model = torch.randn(2, 5, 6), _EinsumProductNet()
    graph = fxsparse.analyze(model, x)
    (g,) = [g for g in graph if g.size == 8]
    assert g.prunable  # 'c' is in both operands and the output: an element-wise product
    check_export(model, (x,), n_masks=2, graph=graph)
    graph = fxsparse.analyze(_EinsumSumNet(), x)
    (g,) = [g for g in graph if g.size == 8]
    assert "einsum 'bnc->bn'" in g.reason and "summed over" in g.reason


def test_multihead_attention_export_runs_at_every_batch_size():
    """F.multi_head_attention_forward views [L, batch, E] as [L, batch * heads, head_dim]: the
    exported model must scale that size with the kept heads and keep the batch symbolic."""
    case = R.CASES_BY_NAME["multihead_attention"]
    model, graph, _ = analyze_case(case)
    (x,) = case.inputs()
    for keep in _random_keeps(graph, 3):
        small = fxsparse.export(model, graph, keep).eval()
        for batch in (1, 4, 6):
            xb = torch.randn(batch, *x.shape[1:])
            with torch.no_grad():
                out = small(xb)
                ref = torch.cat([masked_reference(graph, keep, c) for c in xb.split(x.shape[0])]) if batch > 1 else None
            assert out.shape[0] == batch and torch.isfinite(out).all()
            if ref is not None:
                assert_close(out, ref)


class _PositionalConvTranspose(nn.Module):
    """F.conv_transpose2d with its options positional: (stride, padding, output_padding, groups,
    dilation). A dilation read as groups would block a plain transposed conv."""

    def __init__(self, groups: int):
        super().__init__()
        self.groups = groups
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.weight = nn.Parameter(torch.randn(8, 6 // groups, 3, 3) * 0.2)
        self.bias = nn.Parameter(torch.randn(6) * 0.1)
        self.head = nn.Conv2d(6, 4, 1)

    def forward(self, x):
        h = torch.relu(self.conv(x))
        h = torch.nn.functional.conv_transpose2d(h, self.weight, self.bias, 2, 1, 1, self.groups, 2)
        return self.head(torch.relu(h))


def test_functional_conv_transpose_reads_positional_groups_not_dilation():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 6)
    graph = check_export(_PositionalConvTranspose(groups=1), x, n_masks=4)
    assert len([g for g in graph.groups if g.prunable]) == 2  # the conv's 8 channels and the transposed conv's 6
    grouped = fxsparse.analyze(_PositionalConvTranspose(groups=2).eval(), (x,))
    blocked = [g for g in grouped.groups if not g.prunable]
    assert any("grouped transposed conv" in g.reason for g in blocked)


# ----------------------------------------------------------------------------------------
# RMSNorm over the channels and channel shuffle, hand-built, under both captures
# ----------------------------------------------------------------------------------------
def _analyze_captured(model, inputs, capture, monkeypatch):
    """fxsparse.analyze with the symbolic trace, or with torch.export (the trace made to fail)."""
    import fxsparse.analysis.analyze as analyze_module
    from fxsparse.core.errors import TraceError

    if capture == "torch_export":
        def no_trace(*args, **kwargs):
            raise TraceError("forced: capture with torch.export")

        monkeypatch.setattr(analyze_module, "trace", no_trace)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.export keeps the image size (PinnedSizeWarning)
        graph = fxsparse.analyze(model, inputs)
    assert any(n.op == "call_module" for n in graph.gm.graph.nodes) == (capture == "symbolic_trace")
    return graph


class _RMSNormNet(nn.Module):
    """A conv stem, an RMSNorm over its channels (channels last), an MLP."""

    def __init__(self, c=8, hidden=12):
        super().__init__()
        self.stem, self.norm = nn.Conv2d(3, c, 1), nn.RMSNorm(c, eps=1e-4)
        self.fc1, self.fc2 = nn.Linear(c, hidden), nn.Linear(hidden, 4)

    def forward(self, x):
        y = self.norm(self.stem(x).permute(0, 2, 3, 1))
        return self.fc2(torch.relu(self.fc1(y)))


@pytest.mark.parametrize("capture", ["symbolic_trace", "torch_export"])
def test_rms_norm_over_channels_hand_built(capture, monkeypatch):
    torch.manual_seed(0)
    model = _RMSNormNet().eval()
    with torch.no_grad():
        model.norm.weight.uniform_(0.5, 1.5)
    inputs = (torch.randn(2, 3, 5, 5),)
    graph = _analyze_captured(model, inputs, capture, monkeypatch)
    assert not graph.zero_preserving and sorted(g.size for g in graph.prunable_groups) == [8, 12]
    P = dict(model.named_parameters())
    changed = 0
    for keep in _random_keeps(graph, 4):
        c = kept_indices(graph, keep, "stem.weight", 0, 8)
        h = kept_indices(graph, keep, "fc1.weight", 0, 12)
        small = _RMSNormNet(len(c), len(h))
        small.norm.eps = model.norm.eps
        _load(small, {
            "stem.weight": _slice(P["stem.weight"], c), "stem.bias": _slice(P["stem.bias"], c),
            "norm.weight": _slice(P["norm.weight"], c),
            "fc1.weight": _slice(P["fc1.weight"], h, c), "fc1.bias": _slice(P["fc1.bias"], h),
            "fc2.weight": _slice(P["fc2.weight"], None, h), "fc2.bias": _slice(P["fc2.bias"]),
        })
        _compare_hand_built(model, graph, keep, small, inputs)
        # the mean square runs over the kept channels: zeroing the others is a different model
        with torch.no_grad():
            changed += int(not torch.allclose(masked_reference(graph, keep, *inputs),
                                              _zeroed_rms_norm_net(model, c, h)(*inputs), atol=1e-5))
    assert changed


def _zeroed_rms_norm_net(model, c, h):
    """``model`` with the channels outside ``c`` and ``h`` zeroed, its RMSNorm over all 8."""
    import copy

    zeroed = copy.deepcopy(model)
    with torch.no_grad():
        for name, kept in (("stem", c), ("fc1", h)):
            layer = getattr(zeroed, name)
            drop = torch.ones(layer.weight.shape[0], dtype=torch.bool)
            drop[kept] = False
            layer.weight[drop] = 0
            layer.bias[drop] = 0
    return zeroed


class _ShuffleNet(nn.Module):
    """A conv, a channel shuffle of ``groups`` groups, a conv."""

    def __init__(self, c=8, groups=2):
        super().__init__()
        self.stem, self.shuffle, self.head = nn.Conv2d(3, c, 1), nn.ChannelShuffle(groups), nn.Conv2d(c, 4, 1)

    def forward(self, x):
        return self.head(torch.relu(self.shuffle(self.stem(x))))


@pytest.mark.parametrize("capture", ["symbolic_trace", "torch_export"])
def test_channel_shuffle_hand_built(capture, monkeypatch):
    """Every group keeps the same positions, so the pruned model's ChannelShuffle(2) is the
    same interleaving of the kept channels; the head sees them in the shuffled order."""
    torch.manual_seed(0)
    model, inputs = _ShuffleNet().eval(), (torch.randn(2, 3, 5, 5),)
    graph = _analyze_captured(model, inputs, capture, monkeypatch)
    assert sorted(g.size for g in graph.prunable_groups) == [4]  # position p of both groups: (p, 4 + p)
    P = dict(model.named_parameters())
    for keep in _random_keeps(graph, 4):
        c = kept_indices(graph, keep, "stem.weight", 0, 8)
        assert c[c < 4].tolist() == (c[c >= 4] - 4).tolist()  # the same positions in both groups
        shuffled = kept_indices(graph, keep, "head.weight", 1, 8)
        assert shuffled.tolist() == sorted(2 * (i % 4) + i // 4 for i in c.tolist())  # output j <- input (j % 2) * 4 + j // 2
        small = _ShuffleNet(len(c))
        _load(small, {
            "stem.weight": _slice(P["stem.weight"], c), "stem.bias": _slice(P["stem.bias"], c),
            "head.weight": _slice(P["head.weight"], None, shuffled), "head.bias": _slice(P["head.bias"]),
        })
        _compare_hand_built(model, graph, keep, small, inputs)
