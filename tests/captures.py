"""Each third-party model captured once per test session, not once per test file.

Several files check the same model from different sides: the chain and export tests of
tests/thirdparty, the other input sizes of tests/rewrite/test_any_input_size.py and
tests/analysis/test_compile_analyze_groups.py. ``captured(key)`` builds the model and runs
``fxsparse.analyze`` on the first call in a pytest process (each pytest-xdist worker has its
own) and hands the same model and graph to the later ones: the captures were most of those
files' time.

The shared model and graph are only read (exported, run in eval mode without gradients,
captured again by ``fxsparse.compile``, which leaves the model as it was). A test that changes
a model (a sparse step in train mode, a backward into its parameters) takes ``fresh()``: the
same model built again.
"""
from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from typing import Callable

import torch

import fxsparse
from fxsparse.analysis.dynamic_dims import PinnedSizeWarning

# the model sets a key names ("timm:resnet18"): the zoo and those of tests/thirdparty/survey.py
SET_NAMES = ("zoo", "vendored", "transformers", "timm", "tests")
# the sets whose models several files read; the others (one reader) are captured per call, not kept
SHARED_SETS = {"vendored", "transformers", "timm"}


def _zoo(name):
    from fxsparse import zoo
    from harness import zoo_small  # the zoo's small CI configurations

    shape = (2,) + zoo.info(name).default_input
    return lambda: (zoo_small(name, shape[1]), (torch.randn(shape, generator=torch.Generator().manual_seed(0)),))


@functools.cache
def models(set_name) -> dict:
    """{name: build} of one set (``build()`` returns (model, inputs)); {} where the optional
    library it needs (transformers, timm) is not installed."""
    if set_name == "zoo":
        from fxsparse import zoo

        return {name: _zoo(name) for name in zoo.names()}
    from thirdparty.survey import SETS  # the third-party models the README reports on

    try:
        return SETS[set_name]()
    except ImportError:
        return {}


def built(build):
    """``build()``'s model and inputs as the tests take them: seed 0, eval mode, a tuple of inputs."""
    torch.manual_seed(0)
    model, inputs = build()
    return model.eval(), (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)


def analyzed(model, inputs):
    """``fxsparse.analyze``'s graph and the messages of the ``PinnedSizeWarning``s it gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        graph = fxsparse.analyze(model, inputs)
    return graph, [str(w.message) for w in caught if issubclass(w.category, PinnedSizeWarning)]


@dataclass(frozen=True)
class Captured:
    model: torch.nn.Module  # shared: only read
    inputs: tuple
    graph: object  # fxsparse.ChannelGraph
    pinned: list  # PinnedSizeWarning messages
    build: Callable | None = None  # None: a model no other test shares

    def fresh(self):
        """(model, inputs) built again as the shared ones were, for a test that changes the model."""
        return built(self.build)


_CAPTURED: dict = {}


def captured(key) -> Captured:
    """The model ``key`` ("SET:NAME", SET one of ``SET_NAMES``) and its analysis, once per session
    for a set of ``SHARED_SETS``."""
    if key in _CAPTURED:
        return _CAPTURED[key]
    set_name, name = key.split(":", 1)
    build = models(set_name)[name]
    model, inputs = built(build)
    capture = Captured(model, inputs, *analyzed(model, inputs), build)
    if set_name in SHARED_SETS:
        _CAPTURED[key] = capture
    return capture
