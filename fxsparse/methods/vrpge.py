"""VR-PGE (Zhou et al., NeurIPS 2021): the default method. A policy over channel masks is
learned jointly with the weights (search) from forward passes only, then its final mask
is fine-tuned and exported. Default: one keep ratio per channel group (``granularity=
"width"``; channels filled by L1 order), a score learning rate calibrated to the search
length, and the top of the scores as the final mask; ``granularity="channel"`` with
``final="sample"`` is the paper's per-channel form. The work happens in
:class:`fxsparse.structure.StructureLearner`; the trainer drives it. This class only
carries the options."""
from __future__ import annotations

from .base import Method
from .registry import register_method


@register_method("vrpge")
class VRPGE(Method):
    level = "channel"
    paper = "Zhou et al., Efficient Neural Network Training via Forward and Backward Propagation Sparsification, NeurIPS 2021"

    def __init__(self, keep: float = 0.5, *, budget: str = "channels", form: str = "exact", samples: int = 2,
                 score_lr: float | None = None, reuse_loss: bool = True, final_tries: int = 10,
                 granularity: str = "width", final: str = "topk", weight_masks: str = "sampled", **options):
        from ..structure import check_options

        super().__init__(keep, **options)
        check_options(budget=budget, form=form, samples=samples, granularity=granularity, final=final,
                      weight_masks=weight_masks)
        self.budget, self.form, self.samples = budget, form, int(samples)
        self.score_lr = None if score_lr is None else float(score_lr)
        self.reuse_loss, self.final_tries = bool(reuse_loss), int(final_tries)
        self.granularity, self.final, self.weight_masks = granularity, final, weight_masks
