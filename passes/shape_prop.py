"""Pass: run the traced graph once on example inputs and record every output's shape.

Writes ``node.meta['fxsparse_shape']`` (a tuple, a nested tuple for tuple outputs, or
None for non-tensors) and ``node.meta['fxsparse_value']`` for small non-tensor values
(sizes read off tensors). Unlike torch.fx's ShapeProp it leaves the model exactly as it
found it: buffers (BatchNorm running statistics) and the RNG state are restored.
"""
from __future__ import annotations

import torch
import torch.fx as fx
from torch.utils.flop_counter import FlopCounterMode

from fxsparse.errors import InputError
from fxsparse.rules.context import SHAPE, where

VALUE = "fxsparse_value"


def _shape_of(value):
    if isinstance(value, torch.Tensor):
        return tuple(value.shape)
    if isinstance(value, (tuple, list)) and any(isinstance(v, torch.Tensor) for v in value):
        return tuple(_shape_of(v) for v in value)
    return None


FLOPS = "fxsparse_flops"  # node.meta: forward FLOPs of this node (torch.utils.flop_counter)


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

    def run_node(self, n):
        self.current = n
        if self.count_flops and n.op in ("call_module", "call_function", "call_method"):
            counter = FlopCounterMode(display=False)
            with counter:
                result = super().run_node(n)
            n.meta[FLOPS] = float(counter.get_total_flops())
        else:
            result = super().run_node(n)
        n.meta[SHAPE] = _shape_of(result)
        if isinstance(result, (int, float, bool, torch.Size)) or (
            isinstance(result, (tuple, list)) and all(isinstance(v, (int, float, bool)) for v in result)
        ):
            n.meta[VALUE] = result
        return result


def shape_prop(gm: fx.GraphModule, example_inputs, count_flops: bool = False) -> fx.GraphModule:
    """``count_flops``: also record each node's FLOPs in ``node.meta['fxsparse_flops']``."""
    buffers = {k: v.detach().clone() for k, v in gm.state_dict(keep_vars=True).items() if not isinstance(v, torch.nn.Parameter)}
    rng = torch.get_rng_state()
    try:
        with torch.no_grad():
            recorder = _Recorder(gm)
            recorder.count_flops = count_flops
            try:
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
    return gm
