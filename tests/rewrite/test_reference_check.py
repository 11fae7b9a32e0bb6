"""fxsparse.check_against_reference: the one export-equals-reference check, and what it says
when an output differs."""
import torch
import torch.nn as nn

import fxsparse


def _model_and_keep():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    x = torch.randn(2, 3, 8, 8)
    graph = fxsparse.analyze(model, (x,))
    return model, graph, fxsparse.random_keep(graph, 0.5, torch.Generator().manual_seed(0)), x


def test_the_export_matches_and_keeps_its_outputs_for_a_backward():
    model, graph, keep, x = _model_and_keep()
    check = fxsparse.check_against_reference(fxsparse.export(model, graph, keep).eval(), graph, keep, (x,))
    assert check.ok and check.output is None, check.message
    assert check.max_abs_diff < 1e-5
    check.first_output.sum().backward()


def test_a_differing_output_is_named_with_its_difference():
    model, _, _, x = _model_and_keep()

    class TwoOutputs(nn.Module):  # the second output is off by 0.5
        def forward(self, x):
            y = model(x)
            return y, y + 0.5

    class Pair(nn.Module):
        def forward(self, x):
            y = model(x)
            return y, y

    pair = Pair().eval()
    graph2 = fxsparse.analyze(pair, (x,))
    check = fxsparse.check_against_reference(TwoOutputs(), graph2, {}, (x,))  # {}: every channel kept
    assert not check.ok and check.output == "1"
    assert abs(check.max_abs_diff - 0.5) < 1e-4 and "output '1' differs" in check.message
