"""``fxsparse report DIR``: PNG plots of a training run from its ``history.json``.

* ``curves.png``: how did training go in each phase? Training loss, test accuracy (%) and
  the kept fraction of channels and of FLOPs (expected under the scores: solid; realised by
  the masks that trained: dashed) per epoch, each phase shaded and named.
* ``keep_per_layer.png``: which layers kept how much? The kept fraction of every prunable
  channel group, named by its layer, for every epoch (during a search: the mean of the masks
  sampled in that epoch; afterwards the fixed mask).
* ``scores.png``: what did the search learn? Each layer's learned width (the expected kept
  fraction of its channel group under the search's scores, ``search.group_expected_keep``
  of the search rows) at every search row: a layer-by-epoch grid with the values written in.

Every text label stays inside its axes (:func:`_fit_labels` moves or wraps the ones that
would cross an edge).
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
    written = [_save(_curves(plt, history), run_dir, "curves.png")]
    if any(r.get("group_keep") for r in history):
        written.append(_save(_keep_per_layer(plt, history), run_dir, "keep_per_layer.png"))
    if _search_rows(history):
        written.append(_save(_scores(plt, history), run_dir, "scores.png"))
    return written


def _search_rows(history) -> list:
    """The rows that carry the search's learned widths (VR-PGE's ``search`` diagnostics)."""
    return [r for r in history if (r.get("search") or {}).get("group_expected_keep")]


def _curves(plt, history):
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
    _fit_labels(fig)
    return fig


def _keep_per_layer(plt, history):
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
    return fig


def _scores(plt, history):
    """Each layer's learned width at each search row: a grid, layers down, search rows across."""
    import numpy as np

    rows = _search_rows(history)
    widths = np.array([r["search"]["group_expected_keep"] for r in rows], dtype=float).T  # layers x rows
    n, k = widths.shape
    names = rows[-1].get("group_names") or [f"group {g}" for g in range(n)]
    label_in = 0.065 * max(len(str(name)) for name in names)  # the layer names at 8 pt
    fig, ax = plt.subplots(figsize=(min(max(5.0, label_in + 0.6 * k + 2.5), 18.0), max(2.5, 0.32 * n + 1.6)))
    image = ax.imshow(widths, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest")
    if k <= 20 and n * k <= 400:  # the values themselves, where they fit
        for g in range(n):
            for i in range(k):
                ax.text(i, g, f"{widths[g, i]:.2f}", ha="center", va="center", fontsize=7,
                        color="black" if widths[g, i] > 0.6 else "white")
    ax.set_xticks(range(k), [f"{r['epoch']:g}" for r in rows])
    ax.set_yticks(range(n), names, fontsize=8)
    stages = sorted({r["search"].get("stage") for r in rows} - {None})
    ax.set_title("learned width per layer\nduring the search" + (f" ({', '.join(stages)})" if stages else ""),
                 fontsize=10)
    ax.set_xlabel("epoch (end of each search row)")
    fig.colorbar(image, ax=ax, fraction=0.05, pad=0.02,
                 label="expected kept fraction of the\nlayer's channels under the scores")
    fig.tight_layout()
    _fit_labels(fig)
    return fig


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
    for i, (phase, a, _) in enumerate(spans[1:]):
        ax.axvline(a, color="#555555", lw=0.9, ls=":", zorder=1)
        # staggered down, so that close hand-overs do not write over each other
        ax.text(a, 0.99 - 0.09 * (i % 3), f" {phase} from epoch {a:g} ", transform=ax.get_xaxis_transform(),
                ha="left", va="top", fontsize=7, color="#555555", gid="phase-label")
    ax.set_xlim(0, max(r["epoch"] for r in history) * 1.02)


def _fit_labels(fig):
    """Keep every text of the figure's axes inside its axes: a label that crosses an edge goes
    to the other side of its anchor; one too wide for either side is wrapped onto two lines
    (on the side with more room), then made smaller until it fits."""
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        box = ax.get_window_extent(renderer)

        def fits(text):
            bb = text.get_window_extent(renderer)
            return (bb.x0 >= box.x0 - 0.5 and bb.x1 <= box.x1 + 0.5 and bb.y0 >= box.y0 - 0.5
                    and bb.y1 <= box.y1 + 0.5)

        for text in ax.texts:
            if fits(text):
                continue
            if text.get_ha() in ("left", "right"):
                text.set_ha("right" if text.get_ha() == "left" else "left")
                if fits(text):
                    continue
                anchor = text.get_transform().transform(text.get_position())[0]
                text.set_ha("right" if anchor - box.x0 > box.x1 - anchor else "left")
                words = text.get_text().strip().split(" ", 1)
                pad = " " if len(words) > 1 else ""
                text.set_text("\n".join(pad + w + pad for w in words))
            while not fits(text) and text.get_fontsize() > 4:
                text.set_fontsize(text.get_fontsize() * 0.9)


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
