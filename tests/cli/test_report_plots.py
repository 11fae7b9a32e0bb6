"""``fxsparse report``'s figures, checked on their artists: ``scores.png`` shows what the
search learned (each layer's learned width at each search row, the values of the history),
and every label of ``curves.png`` and ``scores.png`` lies inside its axes and the figure."""
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from fxsparse.training import report as rp  # noqa: E402
from fxsparse.training.trainer import TrainConfig, Trainer  # noqa: E402

NAMES = ["conv1 (6 ch)", "conv2 (16 ch)", "fc1 (120 ch, +1 coupled layers)"]


def _row(epoch, phase, rng, search=True):
    keep = rng.uniform(0.05, 1.0, len(NAMES)).tolist()
    row = {"epoch": epoch, "step": int(round(epoch * 10)), "phase": phase, "loss": 2.0 / (1 + epoch),
           "test_acc_pct": 40 + 20 * epoch, "expected_keep": 0.5, "realised_keep": 0.5, "expected_flops_frac": 0.3,
           "realised_flops_frac": 0.3, "group_keep": keep, "group_names": NAMES}
    if phase == "search" and search:
        # the learned widths differ from the sampled masks' means (group_keep): the plot must show these
        row["search"] = {"group_expected_keep": rng.uniform(0, 1, len(NAMES)).tolist(), "stage": "width",
                         "scores_at_0_or_1": 0.0}
        row["score_hist"] = [1.0] * 20
    return row


def _history(handovers=((1.8, "finetune"),), end=2.0, seed=0):
    """Search rows every 0.6 epoch up to the first hand-over, then one row per later phase."""
    rng = np.random.default_rng(seed)
    first = handovers[0][0]
    rows = [_row(e, "search", rng) for e in np.round(np.arange(0.6, first + 1e-9, 0.6), 3).tolist()]
    if not rows or rows[-1]["epoch"] != first:
        rows.append(_row(first, "search", rng))
    bounds = [h[0] for h in handovers[1:]] + [end]
    rows += [_row(b, phase, rng) for b, (_, phase) in zip(bounds, handovers)]
    return rows


def _inside(inner, outer, tol=0.5):
    return (inner.x0 >= outer.x0 - tol and inner.x1 <= outer.x1 + tol and inner.y0 >= outer.y0 - tol
            and inner.y1 <= outer.y1 + tol)


def _check_texts_inside(fig):
    """Every text of every axes inside that axes; titles, axis labels, tick labels and
    legends inside the figure."""
    fig.canvas.draw()  # lays out the axis labels and ticks as savefig would
    renderer = fig.canvas.get_renderer()
    fig_box = fig.bbox
    for ax in fig.axes:
        box = ax.get_window_extent(renderer)
        for text in ax.texts:
            assert _inside(text.get_window_extent(renderer), box), (text.get_text(), text.get_window_extent(renderer),
                                                                  box)
        (x0, x1), (y0, y1) = sorted(ax.get_xlim()), sorted(ax.get_ylim())
        ticks = [t for t in ax.get_xticklabels() if x0 <= t.get_position()[0] <= x1] + \
            [t for t in ax.get_yticklabels() if y0 <= t.get_position()[1] <= y1]  # the drawn ones
        shown = [ax.title, ax._left_title, ax._right_title, ax.xaxis.label, ax.yaxis.label, *ticks]
        for text in shown:
            if text.get_text() and text.get_visible():
                assert _inside(text.get_window_extent(renderer), fig_box), (text.get_text(), fig_box)
        legend = ax.get_legend()
        if legend is not None:
            assert _inside(legend.get_window_extent(renderer), fig_box)


@pytest.mark.parametrize("handovers, end", [
    (((1.8, "finetune"),), 2.0),                 # the "finetune from epoch 1.8" at the right edge
    (((1.9, "fixed"), (1.95, "finetune")), 2.0),  # two hand-overs close together at the right edge
    (((0.02, "finetune"),), 3.0),                # a hand-over at the left edge
])
def test_curves_keep_the_phase_labels_inside_the_axes(handovers, end):
    history = _history(handovers, end)
    fig = rp._curves(plt, history)
    try:
        labels = [t for ax in fig.axes for t in ax.texts if t.get_gid() == "phase-label"]
        assert len(labels) == 3 * len(handovers)  # one per hand-over in each of the 3 panels
        for t in labels:  # the label still names its hand-over
            phase, a = next((p, a) for a, p in handovers if p in t.get_text())
            assert " ".join(t.get_text().split()) == f"{phase} from epoch {a:g}"
        _check_texts_inside(fig)
        # the labels of two close hand-overs do not write over each other
        renderer = fig.canvas.get_renderer()
        for ax in fig.axes:
            boxes = [t.get_window_extent(renderer) for t in ax.texts if t.get_gid() == "phase-label"]
            for i, a in enumerate(boxes):
                for b in boxes[i + 1:]:
                    assert not a.overlaps(b)
    finally:
        plt.close(fig)


def test_scores_show_the_learned_width_of_each_layer_over_the_search():
    history = _history(((1.8, "finetune"),), 2.0)
    search = [r for r in history if "search" in r]
    assert len(search) == 3
    fig = rp._scores(plt, history)
    try:
        ax = fig.axes[0]
        (image,) = ax.get_images()
        expected = np.array([r["search"]["group_expected_keep"] for r in search]).T  # layers x search rows
        np.testing.assert_array_equal(np.asarray(image.get_array()), expected)
        assert not np.allclose(expected, np.array([r["group_keep"] for r in search]).T)  # not the masks' means
        assert [t.get_text() for t in ax.get_yticklabels()] == NAMES
        assert [t.get_text() for t in ax.get_xticklabels()] == ["0.6", "1.2", "1.8"]
        cells = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts}
        assert cells == {(g, i): f"{expected[g, i]:.2f}" for g in range(len(NAMES)) for i in range(len(search))}
        assert image.get_clim() == (0.0, 1.0)
        _check_texts_inside(fig)
    finally:
        plt.close(fig)


def test_report_of_a_real_search_plots_its_learned_widths(data_dir, tmp_path):
    """A VR-PGE run (its default width search) on tiny IDX data: scores.png holds the widths its
    history.json recorded, and the three PNGs are written."""
    out = tmp_path / "run"
    Trainer(TrainConfig(model="zoo:lenet5", data="mnist", data_root=data_dir, batch_size=32, epochs=1,
                        finetune_epochs=0.5, method="vrpge", compile=False, out=str(out)), log=None,
            progress=False).run()
    history = json.load(open(out / "history.json"))
    search = [r for r in history if r["phase"] == "search"]
    assert search and all(r["search"]["stage"] == "width" for r in search)
    fig = rp._scores(plt, history)
    try:
        (image,) = fig.axes[0].get_images()
        np.testing.assert_array_equal(np.asarray(image.get_array()),
                                      np.array([r["search"]["group_expected_keep"] for r in search]).T)
        assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == search[-1]["group_names"]
        _check_texts_inside(fig)
    finally:
        plt.close(fig)
    written = rp.report(str(out))
    assert [p.rsplit("/", 1)[1] for p in written] == ["curves.png", "keep_per_layer.png", "scores.png"]
    assert not plt.get_fignums()  # every figure closed
