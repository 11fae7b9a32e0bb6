"""Which input dims a ``torch.export`` capture keeps symbolic, and which ones the model pinned.

A captured graph whose sizes were frozen at the example (``view(2, 16, 96)``) runs only at
the example's batch and length; with the dims symbolic the exported (small) model runs at
any batch size and sequence length the dense model accepts. Asked per dim as ``Dim.AUTO``,
torch.export keeps a dim symbolic where the model's code allows and specialises it where
the code fixes it (a reshape to a constant, a check against a table's length), in the same
call; :func:`pinned_dims` reads which ones it fixed, for a warning.

Which dims are asked:

* every dim of an integer input (token ids, attention masks, positions): batch and sequence;
* the batch dim of a float input, and dim 1 of a rank-3 one (``inputs_embeds``: N, L, D);
* not the spatial dims of an image (rank >= 4): symbolic image sizes through torch.export
  cost minutes on windowed attention (Swin: 2 minutes and hundreds of guards for a 2-stage
  model at 32x32) and still freeze the window code's sizes. Such models are the ones
  symbolic tracing cannot take (``transformers`` vision models, timm's dynamic-size ViT /
  Swin); their image size stays the example's, and :func:`static_image_dims` names it.
  Models that torch.fx traces keep every size symbolic in the graph (``x.shape`` calls), so
  they run at any image size their own code accepts.
"""
from __future__ import annotations

import warnings

import torch
from torch.fx.experimental.symbolic_shapes import is_concrete_int

__all__ = ["PinnedSizeWarning", "dynamic_shapes", "pinned_dims", "static_image_dims", "warn_fixed_sizes"]


class PinnedSizeWarning(UserWarning):
    """An input dim the captured graph fixes to the example's size: the exported (and
    masked reference) model runs only at that size there."""


def _asked(x: torch.Tensor, batch_only: bool) -> list[int]:
    if batch_only:
        dims = [0]
    elif x.is_floating_point() or x.is_complex():
        dims = [0, 1] if x.dim() == 3 else [0]
    else:
        dims = list(range(x.dim()))
    return [d for d in dims if d < x.dim() and x.shape[d] > 1]  # sizes 0 and 1 cannot be dynamic


def dynamic_shapes(example_inputs, batch_only: bool = False):
    """``dynamic_shapes`` for ``torch.export.export``: the dims above as ``Dim.AUTO`` (None for
    an input with none)."""
    return tuple({d: torch.export.Dim.AUTO for d in _asked(x, batch_only)} or None
                 if isinstance(x, torch.Tensor) else None for x in example_inputs)


def _user_placeholders(program):
    nodes = [n for n in program.graph.nodes if n.op == "placeholder"]
    kinds = [s.kind for s in program.graph_signature.input_specs]
    return [n for n, k in zip(nodes, kinds) if k == torch.export.graph_signature.InputKind.USER_INPUT]


def pinned_dims(program, example_inputs, asked) -> list[str]:
    """``"input I (name) dim D (size N)"`` for every dim in ``asked`` (the first attempt's
    dynamic shapes) that ``program`` holds as a plain number: torch.export specialised it, or a
    later attempt captured it static."""
    out = []
    for i, (x, spec, node) in enumerate(zip(example_inputs, asked or (), _user_placeholders(program))):
        val = node.meta.get("val")
        if spec and val is not None:
            out += [f"input {i} ({node.name}) dim {d} (size {x.shape[d]})" for d in spec
                    if is_concrete_int(val.shape[d])]  # a SymInt specialised to the example counts too
    return out


def static_image_dims(example_inputs) -> list[str]:
    """The spatial dims of image inputs, which a torch.export capture keeps at the example's size."""
    return [f"input {i} dims {', '.join(str(d) for d in range(2, x.dim()))} (size {'x'.join(map(str, x.shape[2:]))})"
            for i, x in enumerate(example_inputs)
            if isinstance(x, torch.Tensor) and x.is_floating_point() and x.dim() >= 4]


def warn_fixed_sizes(model_name: str, pinned: list[str], images: list[str], stacklevel: int = 7) -> None:
    """One warning naming the dims the captured graph fixes, with why and what to do."""
    parts = []
    if pinned:
        parts.append(f"the model's code fixes {', '.join(pinned)} to the example's size (torch.export had to "
                     "specialise it), so the exported model runs only at that size there")
    if images:
        parts.append(f"{model_name} was captured by torch.export, which keeps the image size: {', '.join(images)}; the "
                     "exported model may run only at that size (models torch.fx traces keep image sizes symbolic)")
    if parts:
        warnings.warn(PinnedSizeWarning(f"{model_name}: " + "; ".join(parts) + ". To free a size, remove the constant "
                                        "from the model's code, or analyze at the size you will run."),
                      stacklevel=stacklevel)
