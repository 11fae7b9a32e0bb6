"""The run's history: a row per epoch (and per phase that ends mid-epoch) in ``history.json``,
printed as a line of the table the CLI shows, and the units of its fields.

A row's keep fields: the method's own phase reports them itself (:meth:`Method.report`,
from the masks it sampled, tallied by :class:`RowTally`); in the trainer's phases they are
those of the fixed channel mask, the kept fraction of the weights for a method that masks
weights (:meth:`Method.weight_density`: the FLOPs stay dense), else the dense model's."""
from __future__ import annotations

from fxsparse.analysis.flops import TRAIN_FACTOR, SubnetFlops

# the units of history.json's rows and summary.json (also written into summary.json)
UNITS = {"*_pct": "percent (0-100)", "*_keep": "fraction (0-1) of the prunable channels",
         "*_flops_frac": "fraction (0-1) of the dense model's forward FLOPs", "*_tflop": "10^12 FLOPs",
         "*_s": "seconds", "epoch": "passes over the training data", "loss": "mean training cross-entropy"}


class RowTally:
    """A row's losses, skipped steps and the channel masks its steps trained: how many
    (``count``), their summed kept fractions of the channels (``channels``) and of the dense
    FLOPs (``flops``), and per channel how often it was kept (``kept``)."""

    def __init__(self, flops: SubnetFlops):
        self._flops, self.count, self.channels, self.flops, self.kept = flops, 0, 0.0, 0.0, 0.0
        self.losses, self.skipped = [], 0

    def add(self, mask, batch_size: int) -> tuple[float, float, float]:
        """Tally a trained mask: its (kept fraction, FLOPs fraction, training FLOPs of the
        step on ``batch_size`` samples)."""
        f = float(self._flops(mask))
        self.count += 1
        keep = float(mask.double().mean())
        self.channels += keep
        self.flops += f / self._flops.dense
        self.kept = self.kept + mask.double()
        return keep, f / self._flops.dense, TRAIN_FACTOR * f * batch_size

    def mean_loss(self) -> float:
        return sum(self.losses) / max(len(self.losses), 1)


def keep_fields(phase: str, own_phase: bool, masks, tally: RowTally, method, graph, flops: SubnetFlops) -> dict:
    """The keep fields of a row of ``phase`` (``own_phase``: the method's own), whose
    evaluated model has the channel mask ``masks`` (None: no channel mask)."""
    groups = graph.prunable_groups if graph is not None else []
    out = {"expected_keep": 1.0, "expected_flops_frac": 1.0, "realised_keep": 1.0, "realised_flops_frac": 1.0}
    density = None if own_phase else method.weight_density()  # the method's own phase reports itself
    if density is not None:  # masked weights still cost dense FLOPs: say so
        out.update(expected_keep=density, realised_keep=density)
    elif masks is not None and not own_phase:
        flat = flops.flat(masks)
        frac = flops.fraction(flat)
        out.update(expected_keep=float(flat.mean()), expected_flops_frac=frac, realised_keep=float(flat.mean()),
                   realised_flops_frac=frac, group_keep=[float(masks[g.id].double().mean()) for g in groups])
    out.update(method.report(phase, tally))
    if "group_keep" in out:
        out["group_names"] = [group_name(g) for g in groups]
    return out


def group_name(group) -> str:
    """A channel group by its first layer, its size and how many more layers' outputs it couples."""
    producers = {m.layer for m in group.members if m.dim == 0 and m.param.endswith(".weight")}
    more = len(producers - {group.layers[0]})
    return f"{group.layers[0]} ({group.size} ch" + (f", +{more} coupled layers" if more else "") + ")"


# ----- the table the CLI prints: a line per row ------------------------------------------
COLUMNS = [("epoch", 6), ("phase", 8), ("loss", 8), ("test_acc_pct", 12), ("expected_keep", 13),
           ("realised_keep", 13), ("realised_flops_frac", 19), ("train_tflop", 11), ("wall_s", 8)]


def table_header() -> str:
    return "  ".join(f"{name:>{w}}" for name, w in COLUMNS)


def table_line(r: dict) -> str:
    vals = [r["epoch"], r["phase"], f"{r['loss']:.4f}", f"{r['test_acc_pct']:.2f}", f"{r['expected_keep']:.3f}",
            f"{r['realised_keep']:.3f}", f"{r['realised_flops_frac']:.3f}", f"{r['train_tflop']:.3f}",
            f"{r['wall_s']:.1f}"]
    text = "  ".join(f"{v:>{w}}" for v, (_, w) in zip(vals, COLUMNS))
    return text + (f"  ({r['skipped']} steps skipped: non-finite loss)" if r["skipped"] else "")
