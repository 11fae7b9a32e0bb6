"""Which input dims a capture keeps symbolic, which ones it fixes, and the warning that names them.

A captured graph whose sizes were frozen at the example (``view(2, 16, 96)``) runs only at
the example's batch, length and image size; with the dims symbolic the exported (small)
model runs at any size the dense model accepts. Asked per dim as ``Dim.AUTO``, torch.export
keeps a dim symbolic where the model's code allows and specialises it where the code fixes
it (a reshape to a constant, a check against a table's length), in the same call;
:func:`pinned_dims` reads which ones it fixed.

Which dims are asked (:func:`dynamic_shapes`), most first; :mod:`fxsparse.analysis.capture`
tries the levels in order and keeps the first capture that succeeds:

* ``"image"``: every dim below, and the spatial dims of an image (a float input of rank >= 4);
* ``"sequence"``: every dim of an integer input (token ids, attention masks, positions), the
  batch dim of a float input and dim 1 of a rank-3 one (``inputs_embeds``: N, L, D);
* ``"batch"``: dim 0 of every input.

Symbolic image sizes are cheap for CNNs and ViTs (at most a few dozen shape guards) but cost
minutes where windows or patch folds are cut from the image (Swin, MaxViT, TinyViT,
MobileViT: hundreds of guards, 1 to 2 minutes per capture on a CPU). The image level runs
under a budget of :data:`IMAGE_GUARD_BUDGET` guards per size: past it, the capture is
dropped and the next level keeps the image size, and the warning says so.

Models torch.fx traces keep every size as their code computes it (``x.shape``); the sizes
their code fixes (a constant in a reshape, a table of the example's length) are found by
running the graph at other sizes on fake tensors (:mod:`fxsparse.analysis.size_probe`).
Either way the dims a capture fixes are recorded on the graph (:func:`record_fixed_dims`),
so the exported model checks its inputs and names the dim instead of failing deep inside.
"""
from __future__ import annotations

import contextlib
import os
import sys
import warnings
from dataclasses import dataclass

import torch
from torch.fx.experimental.symbolic_shapes import is_concrete_int

__all__ = ["PinnedSizeWarning", "FixedDim", "IMAGE_GUARD_BUDGET", "LEVELS", "FIXED_DIMS_META", "asked_dims", "dynamic_shapes",
           "guard_budget", "over_budget", "pinned_dims", "dropped_dims", "record_fixed_dims", "fixed_dims_of",
           "warn_fixed_sizes"]

LEVELS = ("image", "sequence", "batch")
IMAGE_GUARD_BUDGET = 48  # CNNs and ViTs need at most ~30 guards per image size; windowed models hundreds
FIXED_DIMS_META = "fxsparse_fixed_input_dims"  # GraphModule.meta key: the FixedDims of the capture

# why a dim is fixed
CODE = "code"          # the model's code fixes it (torch.export specialised it; a traced graph fails elsewhere)
COST = "cost"          # symbolic, it would cost more than IMAGE_GUARD_BUDGET shape guards
FAILED = "failed"      # the capture failed with it symbolic
GRAPH = "graph"        # symbolic in torch.export's report, but the graph holds the example's size


class PinnedSizeWarning(UserWarning):
    """An input dim the captured graph fixes to the example's size: the exported (and
    masked reference) model runs only at that size there."""


@contextlib.contextmanager
def pinned_sizes_expected():
    """No PinnedSizeWarning inside: for callers whose data has one input size (a training
    run and the models it saves), where a size the model's code pins is no news (the
    exported model still checks its inputs; ``fxsparse.analyze`` outside still warns)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PinnedSizeWarning)
        yield


@dataclass(frozen=True)
class FixedDim:
    """Input ``input`` (``name`` in the graph) has size ``size`` at dim ``dim`` in every run."""
    input: int
    name: str
    dim: int
    size: int
    why: str = CODE

    def __str__(self) -> str:
        return f"input {self.input} ({self.name}) dim {self.dim} (size {self.size})"


def asked_dims(x: torch.Tensor, level: str) -> list[int]:
    """The dims of ``x`` asked symbolic at ``level`` (sizes 0 and 1 cannot be dynamic)."""
    if level not in LEVELS:
        raise ValueError(f"level {level!r}: use one of {LEVELS}")
    if level == "batch":
        dims = [0]
    elif not (x.is_floating_point() or x.is_complex()):
        dims = list(range(x.dim()))
    elif x.dim() >= 4:
        dims = [0] + (list(range(2, x.dim())) if level == "image" else [])
    else:
        dims = [0, 1] if x.dim() == 3 else [0]
    return [d for d in dims if d < x.dim() and x.shape[d] > 1]


def dynamic_shapes(example_inputs, level: str = "sequence"):
    """``dynamic_shapes`` for ``torch.export.export``: the dims of ``level`` as ``Dim.AUTO``
    (None for an input with none)."""
    return tuple({d: torch.export.Dim.AUTO for d in asked_dims(x, level)} or None
                 if isinstance(x, torch.Tensor) else None for x in example_inputs)


@contextlib.contextmanager
def guard_budget(limit: int | None):
    """torch's shape environment specialises a size past ``limit`` guards on it (None: no limit)."""
    import torch.fx.experimental._config as shape_config

    old = shape_config.symbol_guard_limit_before_specialize
    shape_config.symbol_guard_limit_before_specialize = limit
    try:
        yield
    finally:
        shape_config.symbol_guard_limit_before_specialize = old


def over_budget(program, limit: int) -> bool:
    """Whether a size of ``program``'s capture took more than ``limit`` guards (then it was
    specialised for the cost, not for the model's code)."""
    for node in _user_placeholders(program):
        env = getattr(getattr(node.meta.get("val"), "fake_mode", None), "shape_env", None)
        if env is not None:
            return any(count > limit for count in env.symbol_guard_counter.values())
    return False


def _user_placeholders(program):
    nodes = [n for n in program.graph.nodes if n.op == "placeholder"]
    kinds = [s.kind for s in program.graph_signature.input_specs]
    return [n for n, k in zip(nodes, kinds) if k == torch.export.graph_signature.InputKind.USER_INPUT]


def pinned_dims(program, example_inputs, asked) -> list[FixedDim]:
    """The dims of ``asked`` (a capture's dynamic shapes) that ``program`` holds as plain
    numbers: torch.export specialised them for the model's code."""
    out = []
    for i, (x, spec, node) in enumerate(zip(example_inputs, asked or (), _user_placeholders(program))):
        val = node.meta.get("val")
        if spec and val is not None:
            out += [FixedDim(i, node.name, d, int(x.shape[d])) for d in spec
                    if is_concrete_int(val.shape[d])]  # a SymInt specialised to the example counts too
    return out


def dropped_dims(program, example_inputs, wanted, asked, sequence, why_image: str) -> list[FixedDim]:
    """The dims of ``wanted`` (the first level's dynamic shapes) that the capture ``program``
    was not asked for (``asked``: a later level's): image dims (not in ``sequence``, the
    sequence level's) fixed for ``why_image``, the others because the capture failed."""
    nodes = _user_placeholders(program)
    out = []
    for i, x in enumerate(example_inputs):
        want, got, seq = (_spec(s, i) for s in (wanted, asked, sequence))
        name = nodes[i].name if i < len(nodes) else f"input_{i}"
        out += [FixedDim(i, name, d, int(x.shape[d]), FAILED if d in seq else why_image) for d in want if d not in got]
    return out


def _spec(dynamic, i: int) -> dict:
    return (dynamic[i] if dynamic and i < len(dynamic) else None) or {}


def record_fixed_dims(gm: torch.fx.GraphModule, fixed: list[FixedDim]) -> None:
    """Keep ``fixed`` on the captured graph: its copies (the exported model) check their inputs."""
    gm.meta[FIXED_DIMS_META] = list(fixed)


def fixed_dims_of(gm: torch.nn.Module) -> list[FixedDim]:
    return list(getattr(gm, "meta", {}).get(FIXED_DIMS_META, ()))


_WHY = {CODE: "the model's code fixes {dims} to the example's size, so the exported model runs only at that size there",
        COST: "{dims} kept at the example's size: symbolic, it needs more than " + str(IMAGE_GUARD_BUDGET) +
              " shape guards in torch.export (windows or patches cut from the image: minutes per capture), so the "
              "exported model runs only at that size there although the dense model may run at others",
        FAILED: "{dims} kept at the example's size: torch.export cannot capture the model with it symbolic, so "
                "the exported model runs only at that size there",
        GRAPH: "the captured graph holds {dims} at the example's size (torch.export specialised a size computed "
               "from it without saying so: a feature map of size 1, a comparison in the model's code), so the "
               "exported model runs only at that size there; a larger example may free it"}


def warn_fixed_sizes(model_name: str, fixed: list[FixedDim]) -> None:
    """One warning naming the dims the captured graph fixes, with why and what to do."""
    parts = []
    for why, text in _WHY.items():
        dims = [str(f) for f in fixed if f.why == why]
        if dims:
            parts.append(text.format(dims=", ".join(dims)))
    if parts:
        warnings.warn(PinnedSizeWarning(f"{model_name}: " + "; ".join(parts) + ". To free a size, compute it from "
                                        "the input in the model's code (x.shape, -1 in a reshape), or analyze at "
                                        "the size you will run."), stacklevel=_caller_outside_fxsparse())


def _caller_outside_fxsparse() -> int:
    """The stacklevel of the first frame outside this package (the user's ``analyze`` call)."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package):
        frame, level = frame.f_back, level + 1
    return level
