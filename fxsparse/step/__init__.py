"""Stage 3, sparse step: SparseModel and its compiled training step over the kept channels, the masked optimizer.

The step reads SparseModel only through :class:`fxsparse.step.host.StepHost` (see
docs/ARCHITECTURE.md for the modules, one job each)."""
