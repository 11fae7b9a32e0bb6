"""Pass: run the traced graph once on example inputs and record every output's shape.

Unlike torch.fx's ShapeProp it leaves the model exactly as it found it: buffers
(BatchNorm running statistics) and the RNG state are restored.

``node.meta`` keys written (declared in :mod:`fxsparse.rules.meta_keys`; rules read them
through :class:`fxsparse.rules.context.GraphValues`):

* :data:`SHAPE`: the output's shape (a tuple, a nested tuple for tuple outputs, or None
  for non-tensors);
* :data:`VALUE`: small non-tensor results (sizes read off tensors);
* :data:`FLOPS`: forward FLOPs of the node (torch.utils.flop_counter), with ``count_flops``.
"""
from __future__ import annotations

import contextlib

import torch
import torch.fx as fx
from torch.fx.passes.infra.pass_base import PassBase, PassResult
from torch.utils.flop_counter import FlopCounterMode

from fxsparse.core.errors import InputError
from fxsparse.core.flop_formulas import register_known
from fxsparse.rules.context import where
from fxsparse.rules.meta_keys import FLOPS, SHAPE, VALUE


def _shape_of(value):
    if isinstance(value, torch.Tensor):
        return tuple(value.shape)
    if isinstance(value, (tuple, list)) and any(isinstance(v, torch.Tensor) for v in value):
        return tuple(_shape_of(v) for v in value)
    return None


def mutable(value):
    """fx.Interpreter hands immutable lists to calls; generated code passes fresh literals,
    and some library functions (torchvision's window attention) mutate their list args."""
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return type(value)(mutable(v) for v in value) if isinstance(value, tuple) else [mutable(v) for v in value]
    if isinstance(value, dict):
        return {k: mutable(v) for k, v in value.items()}
    return value


class _Recorder(fx.Interpreter):
    count_flops = False

    def call_function(self, target, args, kwargs):
        return target(*mutable(args), **mutable(kwargs))

    current = None

    counter: FlopCounterMode | None = None  # one counter around the whole run (one per node is slow)

    def _flops_so_far(self) -> int:
        return sum(self.counter.flop_counts["Global"].values())

    def run_node(self, n):
        self.current = n
        if self.count_flops and n.op in ("call_module", "call_function", "call_method"):
            before = self._flops_so_far()
            result = super().run_node(n)
            n.meta[FLOPS] = float(self._flops_so_far() - before)
        else:
            result = super().run_node(n)
        n.meta[SHAPE] = _shape_of(result)
        if isinstance(result, (int, float, bool, torch.Size)) or (
            isinstance(result, (tuple, list)) and all(isinstance(v, (int, float, bool)) for v in result)
        ):
            n.meta[VALUE] = result
        return result


class ShapeProp(PassBase):
    """Records :data:`SHAPE` / :data:`VALUE` (and :data:`FLOPS` with ``count_flops``) on every
    node by running ``example_inputs`` through the graph. The graph itself is not changed
    (``modified`` is False). Raises :class:`~fxsparse.core.errors.InputError` naming the node
    where the inputs fail."""

    needs = frozenset()  # any graph runs
    gives = frozenset({SHAPE, VALUE})  # and FLOPS with count_flops (read with a default: no pass needs it)

    def __init__(self, example_inputs, count_flops: bool = False):
        self.example_inputs = tuple(example_inputs)
        self.count_flops = count_flops

    def ensures(self, graph_module):
        missing = [n.name for n in graph_module.graph.nodes if n.op != "output" and SHAPE not in n.meta]
        if missing:
            raise AssertionError(f"shape_prop: no shape recorded for {missing[:3]}")

    def call(self, gm: fx.GraphModule) -> PassResult:
        example_inputs = self.example_inputs
        buffers = {k: v.detach().clone() for k, v in gm.state_dict(keep_vars=True).items()
                   if not isinstance(v, torch.nn.Parameter)}
        rng = torch.get_rng_state()
        try:
            with torch.no_grad():
                recorder = _Recorder(gm)
                recorder.count_flops = self.count_flops
                if self.count_flops:
                    register_known()  # grouped matrix products (experts) count too
                    recorder.counter = FlopCounterMode(display=False)
                try:
                    with recorder.counter if self.count_flops else contextlib.nullcontext():
                        recorder.run(*example_inputs)
                except Exception as exc:
                    node = recorder.current
                    shapes = [tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__ for x in example_inputs]
                    failure = f"at node '{node.name}' ({where(node)}): {type(exc).__name__}: {str(exc).splitlines()[0]}"
                    error = InputError(
                        f"the model fails on the example inputs {shapes} {failure}. Pass inputs the model accepts "
                        "(e.g. [batch, channels, height, width] for a CNN)."
                    )
                    error.capture_failure, error.location = failure, where(node)  # for analyze's re-check
                    raise error from exc
        finally:
            torch.set_rng_state(rng)
            with torch.no_grad():
                state = gm.state_dict(keep_vars=True)
                for k, v in buffers.items():
                    state[k].copy_(v)
        return PassResult(gm, False)
