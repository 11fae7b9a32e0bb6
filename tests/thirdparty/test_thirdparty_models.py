"""Smoke tests for the third-party-style model zoo (construction, forward, determinism).

Deliberately does NOT require torch.fx traceability (see ``FX_TRACE_FAILS`` in ``__init__``).
"""
import pytest
import torch

from . import MODELS

NAMES = sorted(MODELS)


@pytest.mark.parametrize("name", NAMES)
def test_forward_eval_and_train(name):
    model, inputs = MODELS[name]()
    assert len(inputs) == 1 and tuple(inputs[0].shape) == (2, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        y = model(*inputs)
    assert isinstance(y, torch.Tensor)
    assert tuple(y.shape) == (2, 10)
    assert torch.isfinite(y).all()
    assert y.abs().sum() > 0  # zero-initialised heads are re-drawn in _common.build
    model.train()
    with torch.no_grad():
        y_train = model(*inputs)
    assert tuple(y_train.shape) == (2, 10)
    assert torch.isfinite(y_train).all()


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_construction(name):
    m1, (x1,) = MODELS[name]()
    m2, (x2,) = MODELS[name]()
    assert torch.equal(x1, x2)
    sd1, sd2 = m1.state_dict(), m2.state_dict()
    assert sd1.keys() == sd2.keys()
    for k in sd1:
        assert torch.equal(sd1[k], sd2[k]), k
    with torch.no_grad():
        assert torch.equal(m1.eval()(x1), m2.eval()(x2))
