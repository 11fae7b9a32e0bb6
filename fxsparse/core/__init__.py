"""Bottom layer: errors, broadcast shapes, channel elements, tracing helpers (no fxsparse imports above it)."""
