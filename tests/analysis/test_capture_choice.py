"""Which frontend analyze captures a model with: `transformers` models go to torch.export
directly (symbolic tracing always fails on them), recognised by their class MRO without
importing transformers; a batch of one is exported in one call."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import fxsparse
import fxsparse.analysis.analyze as analyze_module
from fxsparse.analysis.capture import is_transformers_model

pytestmark = pytest.mark.usefixtures("single_thread")

# a stand-in for transformers.PreTrainedModel: only its module and name matter
PreTrainedModel = type("PreTrainedModel", (nn.Module,), {"__module__": "transformers.modeling_utils"})


class TinyLM(PreTrainedModel):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(20, 16)
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, 16)

    def forward(self, ids):
        x = self.embed(ids)
        return x + self.fc2(torch.relu(self.fc1(x)))


def test_transformers_models_skip_the_symbolic_trace(monkeypatch):
    assert is_transformers_model(TinyLM()) and not is_transformers_model(nn.Linear(2, 2))
    assert not is_transformers_model(type("PreTrainedModel", (nn.Module,), {})())  # another library's name

    def no_trace(*args, **kwargs):
        raise AssertionError("a transformers model was symbolically traced")

    monkeypatch.setattr(analyze_module, "trace", no_trace)
    model = TinyLM().eval()
    ids = torch.randint(0, 20, (2, 5))
    graph = fxsparse.analyze(model, ids)
    assert any(m.param == "fc1.weight" for g in graph.prunable_groups for m in g.members)
    small = fxsparse.export(model, graph, fxsparse.random_keep(graph, 0.5, torch.Generator().manual_seed(0)))
    assert small(torch.randint(0, 20, (3, 5))).shape == (3, 5, 16)  # the batch stays dynamic


def test_batch_of_one_is_exported_once(monkeypatch):
    calls = []
    real = torch.export.export

    def counting(*args, **kwargs):
        calls.append(kwargs.get("dynamic_shapes"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.export, "export", counting)
    fxsparse.analyze(TinyLM().eval(), torch.randint(0, 20, (1, 5)))
    assert len(calls) == 1


def test_wrong_inputs_of_a_transformers_model_blame_the_inputs():
    with pytest.raises(fxsparse.FxsparseError, match="example inputs") as info:
        fxsparse.analyze(TinyLM().eval(), torch.randn(2, 5, 3))
    assert isinstance(info.value, ValueError)  # InputError: the user's to fix


class TinyLMWithFixedMix(TinyLM):
    """A cumulative sum along fc1's channels: they are unprunable, with a reason."""

    def forward(self, ids):
        x = self.embed(ids)
        return x + self.fc2(torch.cumsum(torch.relu(self.fc1(x)), -1))


def test_transformers_captures_name_the_module_not_the_line():
    """transformers models are captured without Python stack traces (a third of the capture
    time): the reasons and errors name the module a node runs in instead of file:line."""
    graph = fxsparse.analyze(TinyLMWithFixedMix().eval(), torch.randint(0, 20, (2, 5)))
    assert all(n.meta.get("stack_trace") is None for n in graph.gm.graph.nodes)
    assert not torch.fx.config.do_not_emit_stack_traces  # the process-wide switch is restored
    reasons = [g.reason for g in graph.groups if not g.prunable]
    assert any("in module" in r or "(TinyLMWithFixedMix)" in r for r in reasons), reasons


def test_where_names_the_module_path_without_a_stack_trace():
    from fxsparse.rules.context import where

    graph = torch.fx.Graph()
    node = graph.placeholder("x")
    assert where(node) == "node 'x'"
    node.meta["nn_module_stack"] = {"a": ("", "pkg.Root"), "b": ("blocks.0.attn", "pkg.mod.Attention")}
    assert where(node) == "node 'x' in module 'blocks.0.attn' (Attention)"
