"""The whole contract of a channel rule, in one place: what a rule is, what it is called
with, and how an op reaches it under both ways fxsparse captures a model. Everything named
here can be imported from this module.

**1. How an op reaches a rule.** ``fxsparse.analyze`` captures the model one of two ways
(:mod:`fxsparse.analysis.capture` says which and why), and looks up each graph node's rule by
what the node calls:

* *torch.fx's symbolic trace* (tried first) records the calls the model's code makes: a
  ``call_module`` node for each module the tracer keeps whole (torch.nn's layers, modules
  given in ``leaf_modules``; a rule for an ``nn.Module`` subclass matches it and its
  subclasses that keep its ``forward``), ``call_function`` (``torch.sinc``, ``F.conv2d``,
  ``operator.add``, a ``torch.fx.wrap``-ed function) and ``call_method`` (``"view"``).
* *torch.export* (where the trace fails or would leave a call without a rule) records aten
  ops and inlines every module. The ``aten_to_torch`` pass rewrites each aten op that has a
  torch-level form into that call (``aten.linear`` -> ``F.linear``, ``aten.view`` ->
  ``.view``), so one rule serves both captures. An aten op with no form stays as it is and,
  with no rule, blocks every channel that enters it.

So a new op needs a rule for its torch-level call (:func:`register_rule`) and, when
torch.export records it as an aten op that has no torch-level form yet,
:func:`register_aten` (``register_aten(torch.ops.aten.sinc.default, torch.sinc)`` where the
two take the same arguments, ``convert=`` where they differ). A module rule only serves the
symbolic trace: under torch.export the module's ops need rules of their own. A custom op of
``torch.library`` (``"mylib::my_op"``) is one node in both captures: its rule is
registered under the qualified name and needs no aten entry.

**2. The rule** (:class:`Rule`, whose docstring has the details):

* ``analyze(ctx, node)``: returns the channel ids of the op's output (an array, a tuple of
  them for tuple outputs, or None) and couples, creates or blocks channels through ``ctx``,
  an :class:`AnalysisContext`; ``ctx.mark_mixing(node, why)`` where zeroing a channel is not
  the same as removing it; ``ctx.mark_summing(node, operands, why)`` where the op sums over a
  channel dim of ``operands`` (a zero adds nothing; the compiled step zero-fills an operand
  that is not zero at its empty slots). A rule that raises leaves the op opaque, with the
  error named.
* ``export(ectx, node)`` (optional): after the members were sliced, fixes what names a
  channel count (module attributes, shape arguments), through ``ectx``, an
  :class:`ExportContext`.
* ``masked(op, m, *args, **kwargs)`` (an op marked mixing needs it): the op as if the
  channels where ``m == 0`` were removed (the masked reference and ``fxsparse.compile``).

**3. The contexts.** A rule reads and writes the graph only through them, never
``node.meta``. Both read shapes (:class:`GraphValues`): ``shape(arg)``, ``value(arg)`` (a size
argument's concrete value), ``is_tuple_valued``, ``sequence_items`` (the tensors of a list
argument, :class:`TupleItem` for a tuple-valued node).

* :class:`AnalysisContext`: ``ids(arg)``, ``padded_ids``, ``axis(arg, dim, reason)``,
  ``item_ids``, ``tensor_args`` read channel ids; ``new_elements(n)`` makes channels,
  ``member(param, dim, ids)`` ties a parameter dim to them, ``couple(a, b)`` joins two,
  ``unprunable(ids, why)`` and ``opaque(node, why)`` block them, ``mark_mixing``, ``mark_summing``;
  parameters seen through shape-only ops: ``free``, ``set_free``, ``bind_free``
  (:class:`FreeRef`); ``param(name)``, ``along(ndim, dim, ids)``, ``where(node)``.
* :class:`ExportContext`: ``pruned_shape(node)``, ``pruned_size(node, dim)``,
  ``kept_mask``, ``kept_along``, ``kept_along_param``, ``reads_channel_count(arg)``,
  ``free``; the module tree: ``module(name)``, ``buffer``, ``set_buffer``; ``error(node,
  what)`` for a state the analysis should have prevented.

Helpers: :func:`node_arg` (an argument by position or keyword), :func:`where` (the user's
code line), :func:`call_op` (what a node calls, applied, for ``masked``).

**4. Registering.** A built-in rule goes in the ``fxsparse/rules/<family>.py`` of its op
family (imported by ``fxsparse/rules/__init__.py``)::

    from fxsparse.rules.pointwise import passthrough     # channels go through unchanged

    register_rule(torch.sinc, "sinc")(passthrough)          # the function and the method
    register_aten(torch.ops.aten.sinc.default, torch.sinc)  # what torch.export records

A rule with an export hook: ``@register_rule(target, export=hook)`` on the analysis function
(``fxsparse/rules/shapes.py`` has many).
A user registers the same way (``fxsparse.register_rule``), or for one call:
``fxsparse.analyze(model, x, rules={target: Rule(...)})`` (those travel with the graph to
export and compile; an aten form is always global).

**5. Testing.** Compare the exported model with the masked reference under both captures:
``tests/rules/test_rule_contract.py`` adds a toy op through this contract alone and checks it so;
op families are tested in ``tests/rules/test_op_families.py``, ``tests/rules/test_rules.py`` and, under both captures, ``tests/rules/test_export_capture_ops.py``.
"""
from __future__ import annotations

from .analysis_context import AnalysisContext
from .aten_ops import register_aten
from .context import FreeRef, GraphValues, TupleItem, node_arg, where
from .export_context import ExportContext
from .registry import Rule, call_op, register_rule

__all__ = ["AnalysisContext", "ExportContext", "FreeRef", "GraphValues", "Rule", "TupleItem", "call_op", "node_arg",
           "register_aten", "register_rule", "where"]
