"""``fxsparse report DIR``: PNG plots of a training run from its ``history.json``.

* ``curves.png``: training loss, test accuracy, and expected / realised keep (channels and
  FLOPs) per epoch.
* ``keep_per_layer.png``: the realised keep ratio of every prunable channel group (mean
  over the epoch's sampled masks during search, the fixed mask afterwards), first and last
  epoch side by side.
* ``scores.png``: the histogram of the keep-probabilities (scores) over the search epochs,
  as a heat map (epochs x score bins).
"""
from __future__ import annotations

import json
import os


def _load(run_dir: str) -> list:
    path = os.path.join(run_dir, "history.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no history.json in {run_dir!r}: pass the --out directory of a `fxsparse train` run")
    with open(path) as f:
        history = json.load(f)
    if not isinstance(history, list) or not history:
        raise ValueError(f"{path} holds no epochs yet")
    return history


def report(run_dir: str) -> list[str]:
    """Write the plots into ``run_dir`` and return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history = _load(run_dir)
    epochs = [r["epoch"] for r in history]
    written = []

    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    axes[0].plot(epochs, [r["loss"] for r in history], marker="o")
    axes[0].set(title="training loss", xlabel="epoch")
    axes[1].plot(epochs, [r["test_acc_pct"] for r in history], marker="o", color="tab:green")
    axes[1].set(title="test accuracy (%)", xlabel="epoch")
    for key, style in (("expected_keep", "-"), ("realised_keep", "--"), ("expected_flops_frac", ":"), ("realised_flops_frac", "-.")):
        axes[2].plot(epochs, [r[key] for r in history], style, marker=".", label=key.replace("_", " "))
    axes[2].set(title="keep ratio", xlabel="epoch", ylim=(0, 1.05))
    axes[2].legend(fontsize=8)
    for ax in axes:
        _mark_phases(ax, history)
    fig.tight_layout()
    written.append(_save(fig, run_dir, "curves.png"))

    with_groups = [r for r in history if r.get("group_keep")]
    if with_groups:
        first, last = with_groups[0], with_groups[-1]
        n = len(last["group_keep"])
        fig, ax = plt.subplots(figsize=(max(6, 0.25 * n + 2), 3.8))
        xs = range(n)
        ax.bar([x - 0.2 for x in xs], first["group_keep"], width=0.4, label=f"epoch {first['epoch']} ({first['phase']})")
        ax.bar([x + 0.2 for x in xs], last["group_keep"], width=0.4, label=f"epoch {last['epoch']} ({last['phase']})")
        ax.set(title="realised keep per channel group", xlabel="prunable group (see `fxsparse analyze`)",
               ylabel="kept fraction", ylim=(0, 1.05))
        ax.legend(fontsize=8)
        fig.tight_layout()
        written.append(_save(fig, run_dir, "keep_per_layer.png"))

    hists = [r for r in history if r.get("score_hist")]
    if hists:
        import numpy as np

        counts = np.array([r["score_hist"] for r in hists], dtype=float)
        counts /= np.maximum(counts.sum(1, keepdims=True), 1)
        fig, ax = plt.subplots(figsize=(6, 3.8))
        im = ax.imshow(counts.T, origin="lower", aspect="auto", extent=(hists[0]["epoch"] - 0.5, hists[-1]["epoch"] + 0.5, 0, 1),
                       cmap="viridis")
        fig.colorbar(im, ax=ax, label="fraction of channels")
        ax.set(title="score (keep-probability) histogram", xlabel="epoch", ylabel="score")
        fig.tight_layout()
        written.append(_save(fig, run_dir, "scores.png"))
    return written


def _mark_phases(ax, history):
    for prev, cur in zip(history, history[1:]):
        if prev["phase"] != cur["phase"]:
            ax.axvline(prev["epoch"] + 0.5, color="grey", lw=0.8, ls="--")


def _save(fig, run_dir, name):
    import matplotlib.pyplot as plt

    path = os.path.join(run_dir, name)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
