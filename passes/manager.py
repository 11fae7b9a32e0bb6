"""Running passes: a :class:`PassManager` runs its passes in order, after checking that the
order can work.

Each fxsparse pass declares the *facts* it needs and the ones it gives: a fact is a
``node.meta`` key (:mod:`fxsparse.rules.meta_keys`: the pass that writes it gives it) or a
form of the whole graph (:data:`TORCH_LEVEL`). Building a manager checks the order: a pass
whose needs are neither given to the pipeline nor given by an earlier pass is rejected with
:class:`PassOrderError`, before anything runs. Running it calls each pass as torch.fx's
``PassBase`` does (its own ``requires`` check on the graph, ``call``, its ``ensures``
check) and returns ``PassResult(graph_module, modified by any pass)``.

Modelled on ``torch.fx.passes.infra.pass_manager.PassManager`` (a list of ``PassBase``
objects in, a ``PassResult`` out) with two differences: the order is written, not solved
from constraints (the facts say why it is what it is), and an exception keeps its type
(callers catch ``InputError`` to try another capture), with a note naming the pass, where
torch's manager re-raises every error as a bare ``Exception``. The pipelines fxsparse runs
are composed in :mod:`fxsparse.passes.pipelines`.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch.fx as fx
from torch.fx.passes.infra.pass_base import PassBase, PassResult

# A graph form (not a node.meta key): the graph calls the torch-level functions, modules
# and methods the rules are keyed on. torch.fx's symbolic trace gives it; a torch.export
# graph (aten ops) has it after the aten_to_torch pass.
TORCH_LEVEL = "torch_level_calls"


def require_meta(gm: fx.GraphModule, key: str, who: str, what: str, *, op: str | None = None) -> None:
    """The runtime check of a node.meta fact: every node (``op`` nodes only, when given; the
    output never) carries ``key``, else AssertionError "``who`` needs ``what``"."""
    nodes = (n for n in gm.graph.nodes if (n.op == op if op else n.op != "output"))
    if any(key not in n.meta for n in nodes):
        raise AssertionError(f"{who} needs {what}")


class PassOrderError(ValueError):
    """A pipeline runs a pass before what it needs exists."""


def _name(p) -> str:
    return type(p).__name__


class PassManager:
    """``PassManager(passes, given=facts)``: ``given`` are the facts the graph handed to it
    already has. Raises :class:`PassOrderError` when a pass needs a fact neither given nor
    given by an earlier pass, or ``TypeError`` for a pass that declares no facts."""

    def __init__(self, passes: Iterable[PassBase], given: Iterable[str] = ()):
        self.passes = list(passes)
        self.given = frozenset(given)
        available = set(self.given)
        for i, p in enumerate(self.passes):
            if not isinstance(p, PassBase) or not isinstance(getattr(p, "needs", None), frozenset) \
                    or not isinstance(getattr(p, "gives", None), frozenset):
                raise TypeError(f"{_name(p)} is not a PassBase declaring frozensets 'needs' and 'gives'")
            missing = p.needs - available
            if missing:
                before = [_name(q) for q in self.passes[:i]]
                raise PassOrderError(f"{_name(p)} needs {sorted(missing)}, which neither the pipeline's input "
                                     f"(given {sorted(self.given)}) nor the passes before it ({before}) give")
            available |= p.gives
        self.facts = frozenset(available)  # what the graph has after a run

    def __call__(self, gm: fx.GraphModule) -> PassResult:
        modified = False
        for p in self.passes:
            try:
                result = p(gm)  # PassBase.__call__: requires, call, ensures
            except Exception as exc:
                if hasattr(exc, "add_note"):  # Python 3.11+
                    exc.add_note(f"in pass {_name(p)} of the pipeline {[_name(q) for q in self.passes]}")
                raise
            gm = result.graph_module
            modified = modified or result.modified
        return PassResult(gm, modified)


__all__ = ["PassManager", "PassOrderError", "TORCH_LEVEL"]
