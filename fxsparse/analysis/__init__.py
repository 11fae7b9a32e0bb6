"""Stage 1, analyze: capture a model as an FX graph and find its channel groups (ChannelGraph), FLOPs and keep masks."""
