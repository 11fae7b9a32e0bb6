"""Stage 3, sparse step: SparseModel and its compiled training step over the kept channels, the masked optimizer."""
