"""Errors raised by fxsparse. Each names what is wrong and what to do about it.

Every error fxsparse raises on purpose is a :class:`FxsparseError` (``except
fxsparse.FxsparseError`` catches them all); those about a bad argument are also
``ValueError``:

* :class:`TraceError`: torch.fx cannot trace the model's top-level forward (names the file:line).
* :class:`InputError` (``ValueError``): the model does not run on the example inputs.
* :class:`KeepMaskError` (``ValueError``): a keep ratio or keep mask does not fit the channel graph.
* :class:`NoPrunableGroupError` (``ValueError``): the model has no prunable channel group
  (``fxsparse.analyze(model, x).summary()`` says why for each group).
* :class:`ExportError`: a keep pattern cannot be realised as a physically smaller model.
* :class:`PruneCheckError` (an ``ExportError``): ``fxsparse.prune(..., fallback="raise")``: the
  model sliced in place does not compute what the masked reference computes (its code pins a size).
* :class:`SavedModelError` (``ValueError``): a saved model (``fxsparse.load``) that cannot be
  rebuilt: missing, altered, or not this model's.
"""


class FxsparseError(Exception):
    """Base class of every error fxsparse raises on purpose."""


class TraceError(FxsparseError):
    """The model (or the part of it that cannot be made a leaf) cannot be traced by torch.fx."""

    def __init__(self, message, *, module_path="", location=""):
        super().__init__(message)
        self.module_path = module_path
        self.location = location


class KeepMaskError(FxsparseError, ValueError):
    """A keep mask does not fit the channel graph it is applied to."""


class ExportError(FxsparseError):
    """A keep pattern cannot be realised as a physically smaller model."""


class PruneCheckError(ExportError):
    """The model sliced in place (``fxsparse.prune``) does not compute what the masked reference
    computes: its code pins a size that pruning changed."""


class InputError(FxsparseError, ValueError):
    """The model does not run on the example inputs it was given."""


class NoPrunableGroupError(FxsparseError, ValueError):
    """The model has no channel group that can be pruned, so there is nothing to sparsify."""


class SavedModelError(FxsparseError, ValueError):
    """A saved model that cannot be rebuilt: its files are missing, were altered, or belong to
    another model."""
