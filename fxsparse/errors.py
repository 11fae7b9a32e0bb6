"""Errors raised by fxsparse. Each names what is wrong and what to do about it."""


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


class InputError(FxsparseError, ValueError):
    """The model does not run on the example inputs it was given."""
