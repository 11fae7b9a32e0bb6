"""No pruning: the dense baseline every comparison needs."""
from __future__ import annotations

from .base import Method
from .registry import register_method


@register_method("dense")
class Dense(Method):
    level = "none"
    paper = "the unpruned model"

    def __init__(self, keep: float = 1.0, **options):
        super().__init__(1.0, **options)

    def graph_for_run(self, graph, model_name: str):
        return None  # nothing to prune: the run analyses the model for its FLOPs only
