"""Stage 4, train: the Trainer behind `fxsparse train`, data, checkpoints, reports, the saved classifier."""
