"""Tracing with torch.fx, falling back to opaque leaves for submodules that cannot be traced.

A submodule whose forward has data-dependent control flow (or anything else torch.fx
cannot trace) is retried as a leaf: one warning names its path, and the analysis then
treats it as an op without a rule (its channels are not pruned). If the top-level
forward itself cannot be traced, :class:`TraceError` says where and what to do.
"""
from __future__ import annotations

import contextlib
import functools
import os
import traceback
import warnings

import torch
import torch.fx as fx
import torch.nn as nn

from fxsparse.core.errors import TraceError

_MAX_RETRIES = 64


class _Tracer(fx.Tracer):
    def __init__(self, leaves: set[str] = frozenset()):  # a default: torch.load re-creates it to unpickle
        super().__init__()
        self.record_stack_traces = True  # so reasons can name file:line
        self.leaves = set(leaves)
        self.path_stack: list[str] = []

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return qualname in self.leaves or super().is_leaf_module(m, qualname)

    def call_module(self, m, forward, args, kwargs):
        qualname = self.path_of_module(m)
        self.path_stack.append(qualname)
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception as exc:  # annotate with the innermost failing module once
            if not hasattr(exc, "_fxsparse_module"):
                exc._fxsparse_module = qualname
            raise
        finally:
            self.path_stack.pop()


def _package_dirs(name: str) -> list[str]:
    import importlib.util

    spec = importlib.util.find_spec(name)
    return [os.path.realpath(d) + os.sep for d in (spec.submodule_search_locations or [])] if spec else []


@functools.lru_cache(maxsize=None)
def _internal_dirs() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(the real folders of torch, fxsparse and fxsparse.passes, wherever they are installed;
    fxsparse's zoo folders, whose models are user code: a trace error there names its line)."""
    internal = [os.path.realpath(os.path.dirname(torch.__file__)) + os.sep,
                os.path.realpath(os.path.dirname(os.path.abspath(__file__))) + os.sep]
    return tuple(internal + _package_dirs("fxsparse.passes")), tuple(_package_dirs("fxsparse.zoo"))


@functools.lru_cache(maxsize=4096)
def is_internal(filename: str) -> bool:
    """Whether ``filename`` is code of torch or fxsparse itself (not the user's model).
    Compares real folders, not path fragments: a user's model under a folder that happens to
    be named ``fxsparse``, ``torch`` or ``passes`` is still the user's."""
    path = os.path.realpath(filename)
    internal, zoo = _internal_dirs()
    if any(path.startswith(d) for d in zoo):
        return False
    return any(path.startswith(d) for d in internal)


def _user_location(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    for fr in reversed(frames):
        if not is_internal(fr.filename):
            return f"{fr.filename}:{fr.lineno}: {fr.line}"
    return ""


def trace(model: nn.Module, leaf_modules=()) -> tuple[fx.GraphModule, list[str]]:
    """Trace ``model``; returns the GraphModule and the paths that had to become leaves."""
    leaves = set()
    for item in leaf_modules:
        if isinstance(item, str):
            leaves.add(item)
        elif isinstance(item, type):
            leaves.update(name for name, m in model.named_modules() if isinstance(m, item))
        else:
            raise TypeError(f"leaf_modules takes module paths (str) or module classes, got {item!r}")
    auto = []
    for _ in range(_MAX_RETRIES):
        tracer = _Tracer(leaves)
        try:
            graph = tracer.trace(model)
        except Exception as exc:
            path = getattr(exc, "_fxsparse_module", "")
            where = _user_location(exc)
            if not path or path in leaves:
                name = type(model).__name__ if not path else f"'{path}' ({type(model.get_submodule(path)).__name__})"
                raise TraceError(
                    f"torch.fx cannot trace the forward of {name if path else 'the top-level module ' + name}"
                    f"{' at ' + where if where else ''}: {type(exc).__name__}: {exc}. "
                    "Fix: move the untraceable code into a submodule and pass its path in "
                    "leaf_modules=[...] (its channels are then left unpruned), or remove the "
                    "data-dependent control flow.",
                    module_path=path,
                    location=where,
                ) from exc
            leaves.add(path)
            auto.append(path)
            warnings.warn(
                f"fxsparse: submodule '{path}' ({type(model.get_submodule(path)).__name__}) cannot be traced"
                f"{' (' + where + ')' if where else ''}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}; "
                "it is treated as an opaque leaf and its channels are not pruned.",
                stacklevel=3,
            )
            continue
        name = type(model).__name__
        gm = fx.GraphModule(tracer.root, graph, name)
        return gm, auto
    raise TraceError(f"gave up after making {_MAX_RETRIES} submodules leaves: {auto[:5]}...")


@contextlib.contextmanager
def untouched(module: nn.Module):
    """Run code on ``module`` without gradients and leave its buffers (BN statistics) and the
    global RNG state as they were."""
    buffers = {k: v.detach().clone() for k, v in module.named_buffers()}
    rng = torch.get_rng_state()
    try:
        with torch.no_grad():
            yield
    finally:
        torch.set_rng_state(rng)
        with torch.no_grad():
            current = dict(module.named_buffers())
            for k, v in buffers.items():
                if k in current and current[k].shape == v.shape:
                    current[k].copy_(v)


def runs_eagerly(model: nn.Module, example_inputs) -> bool:
    """Whether ``model(*example_inputs)`` runs (no gradients; buffers and RNG state restored):
    tells a wrong capture apart from inputs the model does not accept."""
    try:
        with untouched(model):
            model(*example_inputs)
        return True
    except Exception:
        return False


@contextlib.contextmanager
def eval_mode(*modules: nn.Module):
    """The modules in eval mode (dropout off, BatchNorm on its statistics), every submodule's
    own ``training`` flag restored afterwards."""
    modes = {m: m.training for root in modules for m in root.modules()}
    for root in modules:
        root.eval()
    try:
        yield
    finally:
        for m, mode in modes.items():
            m.training = mode
