"""torch.compile for one SparseModel's step functions: private code objects, counted graphs,
timed compiles, the symbolic kept counts of dynamic capacities, and dropping the graphs of a
capacity set no longer kept."""
from __future__ import annotations

import contextlib
import inspect
import time
import types

import torch

import fxsparse.step.fake_strides  # noqa: F401  (fakes laid out as the eager kernels: backends that run those)
from fxsparse.step.index import Slots, StepIndex


class StepCompiler:
    """``enabled``: compile at all (else every step function runs eagerly, the same code);
    ``dynamic``: the kept counts are symbolic sizes (one graph for every count), else static
    shapes (the capacities); ``compile_update``: also compile the compact step's indexed kernels
    (the gather of the kept weights and the optimizer update).
    ``compilations`` counts the graphs compiled, ``seconds`` the wall time of the calls that
    compiled one (see :meth:`timed`)."""

    def __init__(self, enabled: bool, dynamic: bool, compile_update: bool = True):
        self.enabled = bool(enabled)
        self.dynamic = bool(dynamic)
        self.compile_update = bool(enabled and compile_update)
        self.compilations = 0
        self.seconds = 0.0

    def compile(self, fn, codes: set, inductor_options: dict | None = None):
        """``fn`` compiled; its code object is added to ``codes`` (those of one capacity set,
        see :func:`drop_compiled`). ``inductor_options``: inductor config for this function's
        graphs only. ``fn`` is compiled as a copy with its own code object: torch.compile caches
        graphs (and counts its recompile limit) per code object, so with shared code one model's
        rebuild would drop another model's graphs, and several models together could reach the
        limit and run eagerly. Dynamic capacities: the sizes :meth:`mark_index` and
        :meth:`mark_gathered` marked are symbolic, and no two are assumed equal because they are
        equal once (duck shaping would recompile when two counts part)."""
        fn = _private_copy(fn)
        codes.add(fn.__code__ if not inspect.ismethod(fn) else fn.__func__.__code__)

        def backend(gm, example_inputs):
            from torch._inductor import config  # loaded by then: torch.compile is compiling

            with config.patch(inductor_options or {}):
                return self.backend(gm, example_inputs)

        if not self.dynamic:
            return torch.compile(fn, backend=backend, dynamic=False)
        compiled = torch.compile(fn, backend=backend, dynamic=None)

        def run(*args, **kwargs):
            # functional_call installs the gathered tensors as the module's parameters, which
            # torch.compile would otherwise treat as static shapes; every other size stays
            # static: automatic dynamic shapes keeps a profile per code location, so sizes of
            # another model compiled from the same code would turn dense tensors dynamic here
            with torch.fx.experimental._config.patch(use_duck_shape=False), torch._dynamo.config.patch(
                    force_parameter_static_shapes=False, force_nn_module_property_static_shapes=False,
                    automatic_dynamic_shapes=False):
                return compiled(*args, **kwargs)

        return run

    def backend(self, gm, example_inputs):
        """Inductor, counted (tests replace it with an eager backend to count graphs cheaply)."""
        from torch._inductor.compile_fx import compile_fx

        self.compilations += 1
        return compile_fx(gm, example_inputs)

    @contextlib.contextmanager
    def timed(self):
        """Adds the block's wall time to ``seconds`` when it compiled a graph (the backward's
        graph compiles in the first backward, inside the same step)."""
        before, start = self.compilations, time.perf_counter()
        try:
            yield
        finally:
            if self.compilations != before:
                self.seconds += time.perf_counter() - start

    def _marks(self) -> bool:
        """Dynamic capacities, compiled, outside a compile: marks are for inputs."""
        return self.dynamic and self.enabled and not torch.compiler.is_compiling()

    def mark_index(self, index: StepIndex) -> None:
        """Mark every index vector's length as symbolic, so that the first compile already
        covers every count (torch.compile would otherwise compile a static graph first, then
        once more per size it sees change)."""
        if self._marks():
            fixed = [b for name, b in index.buffers.items() if name in index.fixed_buffers]
            fixed += [t for dims in index.slots.values() for s in dims if not s.varies for t in (s.index, s.real, s.valid)]
            fixed_ids = {id(t) for t in fixed}  # a shared tensor is marked when one of its keys varies
            varying = [t for dims in index.slots.values() for s in dims if s.varies for t in (s.index, s.real, s.valid)]
            varying_ids = {id(t) for t in varying}
            for t in index.tensors():
                if id(t) not in fixed_ids or id(t) in varying_ids:
                    torch._dynamo.maybe_mark_dynamic(t, 0)

    def mark_gathered(self, tensors: dict[str, torch.Tensor], slots: dict[str, tuple[Slots, ...]]) -> None:
        """Mark the gathered dims of ``tensors`` (tensors at their ``slots``) as symbolic."""
        if self._marks():
            for name, t in tensors.items():
                for s in slots.get(name, ()):
                    if s.varies:  # a length that never changes stays a static size
                        torch._dynamo.maybe_mark_dynamic(t, s.dim)


def drop_compiled(codes: set) -> None:
    """Forget the graphs compiled for a capacity set no longer kept (``codes``: its functions'
    code objects): left in place they would hold memory for shapes that are not coming back."""
    reset = getattr(torch._C._dynamo.eval_frame, "reset_code", None)
    if reset is not None:
        for code in codes - {None}:
            reset(code)


def _private_copy(fn):
    """``fn`` (a function or a bound method) with a code object of its own."""
    if inspect.ismethod(fn):
        return types.MethodType(_private_copy(fn.__func__), fn.__self__)
    copy = types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
    copy.__kwdefaults__ = fn.__kwdefaults__
    copy.__dict__.update(fn.__dict__)
    return copy
