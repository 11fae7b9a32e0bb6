"""FLOPs formulas for ops ``torch.utils.flop_counter`` has none for: grouped matrix products
(mixture-of-experts layers). Without one, ``FlopCounterMode`` counts such an op as free,
so an MoE model's FLOPs would leave out its experts.

``register_known()`` adds them to the counter's registry; ops that do not exist in this
process (a library's custom op whose library is not imported) are skipped, so it is called
again before each count."""
from __future__ import annotations

import math

import torch
from torch.utils import flop_counter

# custom ops known by name (namespace::op); aten's own is always there
_GROUPED_MM_OPS = ("aten::_grouped_mm", "transformers::grouped_mm_fallback")


def grouped_mm_flops(a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    """``a [rows, in]`` times one ``[in, out]`` slice of ``b [groups, in, out]`` per row (or
    a batched / K-grouped product): 2 multiply-adds per output element and contracted index."""
    if len(a_shape) == 2 and len(b_shape) == 3:  # rows routed to groups
        return 2 * a_shape[0] * a_shape[1] * b_shape[2]
    if len(a_shape) == 3 and len(b_shape) == 3:  # batched
        return 2 * a_shape[0] * a_shape[1] * a_shape[2] * b_shape[2]
    if len(a_shape) == 2 and len(b_shape) == 2:  # contracted dim split in groups: [groups, M, N] out
        return 2 * a_shape[0] * a_shape[1] * b_shape[1]
    return 2 * math.prod(a_shape) * b_shape[-1]


def _op(qualified: str):
    namespace, name = qualified.split("::")
    packet = getattr(getattr(torch.ops, namespace), name, None) if hasattr(torch.ops, namespace) else None
    return packet


def register_known() -> None:
    """Registers the formulas above for the ops that exist now and have no formula yet."""
    for qualified in _GROUPED_MM_OPS:
        try:
            op = _op(qualified)
        except (AttributeError, RuntimeError):
            op = None
        if op is not None and op not in flop_counter.flop_registry:
            flop_counter.register_flop_formula(op)(grouped_mm_flops)
