"""``fxsparse report DIR``: PNG plots of a training run from its ``history.json``.

* ``curves.png``: how did training go in each phase? Training loss, test accuracy (%) and
  the kept fraction of channels and of FLOPs (expected under the scores: solid; realised by
  the masks that trained: dashed) per epoch, each phase shaded and named.
* ``keep_per_layer.png``: which layers kept how much? The kept fraction of every prunable
  channel group, named by its layer, for every epoch (during a search: the mean of the masks
  sampled in that epoch; afterwards the fixed mask).
* ``scores.png``: how did the channel scores (keep probabilities) evolve during the search?
  The share of scores that are decided (near 0 or 1) or still undecided per epoch, and the
  mean keep probability of each layer's channels.
"""
from __future__ import annotations

import json
import os

_PHASE_COLOURS = {"search": "#fde0c5", "finetune": "#d5e8d4", "fixed": "#dae8fc", "dense": "#eeeeee"}


def _load(run_dir: str) -> list:
    path = os.path.join(run_dir, "history.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no history.json in {run_dir!r}: pass the --out directory of a `fxsparse train` run")
    with open(path) as f:
        history = json.load(f)
    if not isinstance(history, list) or not history:
        raise ValueError(f"{path} holds no epochs yet")
    if "test_acc_pct" not in history[0]:
        raise ValueError(f"{path} was written by an older fxsparse (no 'test_acc_pct'); rerun `fxsparse train`")
    return history


def report(run_dir: str) -> list[str]:
    """Write the plots into ``run_dir`` and return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history = _load(run_dir)
    written = [_curves(plt, history, run_dir)]
    if any(r.get("group_keep") for r in history):
        written.append(_keep_per_layer(plt, history, run_dir))
    if any(r.get("score_hist") for r in history):
        written.append(_scores(plt, history, run_dir))
    return written


def _curves(plt, history, run_dir):
    epochs = [r["epoch"] for r in history]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    axes[0].plot(epochs, [r["loss"] for r in history], "o-", color="tab:red")
    axes[0].set(title="training loss (mean over the epoch)", xlabel="epoch", ylabel="cross-entropy")
    axes[1].plot(epochs, [r["test_acc_pct"] for r in history], "o-", color="tab:green")
    axes[1].set(title="test accuracy", xlabel="epoch", ylabel="%")
    ax = axes[2]
    for what, colour in (("keep", "tab:blue"), ("flops_frac", "tab:orange")):
        name = "channels" if what == "keep" else "FLOPs"
        ax.plot(epochs, [r[f"expected_{what}"] for r in history], "-", marker="o", ms=9, mfc="none", color=colour,
                label=f"{name}, expected (scores)")
        ax.plot(epochs, [r[f"realised_{what}"] for r in history], "--", marker="x", ms=7, color=colour,
                label=f"{name}, realised (trained masks)")
    ax.set(title="kept fraction of the dense model", xlabel="epoch", ylabel="fraction", ylim=(0, 1.05))
    for ax in axes:
        _phases(ax, history)
        _integer_epochs(ax, epochs)
    for ax in axes[:2]:
        ax.legend(fontsize=8, loc="best")
    axes[2].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return _save(fig, run_dir, "curves.png")


def _keep_per_layer(plt, history, run_dir):
    rows = [r for r in history if r.get("group_keep")]
    names = rows[-1].get("group_names") or [f"group {i}" for i in range(len(rows[-1]["group_keep"]))]
    n, k = len(names), len(rows)
    height = 0.8 / k
    fig, ax = plt.subplots(figsize=(8, max(3.0, 0.35 * n * max(1, k / 2) + 1.5)))
    cmap = plt.get_cmap("viridis")
    for i, r in enumerate(rows):
        ys = [g + (i - (k - 1) / 2) * height for g in range(n)]
        ax.barh(ys, r["group_keep"], height=height, color=cmap(i / max(1, k - 1) * 0.85),
                label=f"epoch {r['epoch']} ({r['phase']})")
    ax.set_yticks(range(n), names)
    ax.invert_yaxis()  # first layer on top, as in the model
    ax.set(title="kept fraction of channels per layer (channel group, named by its first layer)",
           xlabel="kept fraction of the group's channels", xlim=(0, 1.05))
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return _save(fig, run_dir, "keep_per_layer.png")


def _scores(plt, history, run_dir):
    import numpy as np

    rows = [r for r in history if r.get("score_hist")]
    epochs = [r["epoch"] for r in rows]
    counts = np.array([r["score_hist"] for r in rows], dtype=float)  # 20 bins over [0, 1]
    counts /= np.maximum(counts.sum(1, keepdims=True), 1)
    bands = [("near 0 (< 0.05): pruned", counts[:, :1].sum(1), "#d62728"),
             ("0.05 - 0.5", counts[:, 1:10].sum(1), "#ff9896"),
             ("0.5 - 0.95", counts[:, 10:19].sum(1), "#98df8a"),
             ("near 1 (>= 0.95): kept", counts[:, 19:].sum(1), "#2ca02c")]
    fig, axes = plt.subplots(1, 2, figsize=(14, 5))
    ax = axes[0]
    ax.stackplot(epochs, *[b[1] for b in bands], labels=[b[0] for b in bands], colors=[b[2] for b in bands])
    if len(epochs) == 1:  # a single search row: show it as a bar
        ax.cla()
        bottom = 0.0
        for label, value, colour in bands:
            ax.bar(epochs, value, bottom=bottom, width=0.3, color=colour, label=label)
            bottom += value
    ax.set(title="channel scores (keep probabilities) at the end of each search epoch", xlabel="epoch",
           ylabel="share of channels", ylim=(0, 1))
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2)
    _integer_epochs(ax, epochs)
    ax = axes[1]
    with_groups = [r for r in rows if r.get("group_keep")]
    names = (with_groups[-1].get("group_names") if with_groups else None) or []
    for g, name in enumerate(names or range(len(with_groups[-1]["group_keep"]) if with_groups else 0)):
        ax.plot([r["epoch"] for r in with_groups], [r["group_keep"][g] for r in with_groups], "o-",
                label=name if names else f"group {g}")
    ax.set(title="mean keep probability per layer (masks sampled in the epoch)", xlabel="epoch",
           ylabel="kept fraction", ylim=(0, 1.05))
    if with_groups:
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=min(4, max(1, len(names))))
    _integer_epochs(ax, epochs)
    fig.tight_layout()
    return _save(fig, run_dir, "scores.png")


def _phases(ax, history):
    """Shade each phase and name it; a dotted line where one phase hands over to the next."""
    start, spans = 0.0, []
    for i, r in enumerate(history):
        if i + 1 == len(history) or history[i + 1]["phase"] != r["phase"]:
            spans.append((r["phase"], start, r["epoch"]))
            start = r["epoch"]
    seen = set()
    for phase, a, b in spans:
        ax.axvspan(a, b, color=_PHASE_COLOURS.get(phase, "#eeeeee"), alpha=0.6, lw=0, zorder=0,
                   label=None if phase in seen else f"phase: {phase}")
        seen.add(phase)
    for phase, a, _ in spans[1:]:
        ax.axvline(a, color="#555555", lw=0.9, ls=":", zorder=1)
        ax.text(a, 0.99, f" {phase} from epoch {a:g}", transform=ax.get_xaxis_transform(), ha="left", va="top",
                fontsize=7, color="#555555")
    ax.set_xlim(0, max(r["epoch"] for r in history) * 1.02)


def _integer_epochs(ax, epochs):
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if max(epochs) < 1:  # a run shorter than one epoch: ticks at its rows
        ax.set_xticks(epochs)


def _save(fig, run_dir, name):
    import matplotlib.pyplot as plt

    path = os.path.join(run_dir, name)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
