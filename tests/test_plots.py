"""Plots write real PNG/PDF/SVG files, fit a paper column and never touch pyplot's state."""

from __future__ import annotations

import itertools
import sys

import numpy as np
import pytest
from PIL import Image

from featstore.errors import FeatstoreError
from featstore.trainers.plots import PlotError, heatmap_png, layers_png, temporal_png

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def pyplot_untouched():
    """Fail if a plot imports pyplot or registers a figure with it."""
    had_pyplot = "matplotlib.pyplot" in sys.modules
    figures_before = sys.modules["matplotlib.pyplot"].get_fignums() if had_pyplot else None
    yield
    if had_pyplot:
        assert sys.modules["matplotlib.pyplot"].get_fignums() == figures_before
    else:
        assert "matplotlib.pyplot" not in sys.modules


def check_png(path, *, min_width=200, min_height=150):
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        width, height = image.size
        assert width >= min_width and height >= min_height
        # Something was drawn: not a blank canvas.
        assert np.unique(np.asarray(image.convert("L"))).size > 2
    return width, height


def test_heatmap_writes_png(tmp_path):
    rng = np.random.default_rng(0)
    corr = np.corrcoef(rng.random((4, 20)))
    out = heatmap_png(
        corr,
        tmp_path / "sub" / "corr.png",
        row_labels=["a", "b", "c", "d"],
        col_labels=["a", "b", "c", "d"],
        title="correlation",
    )
    assert out == tmp_path / "sub" / "corr.png"
    check_png(out)


def test_heatmap_centered_with_nan_and_constant(tmp_path):
    rel = np.array([[0.0, 12.5, np.nan], [-30.0, 0.0, 3.0]])
    check_png(
        heatmap_png(
            rel,
            tmp_path / "rel.png",
            row_labels=["x", "y"],
            col_labels=["x", "y", "z"],
            value_format="{:+.1f}",
            cmap="RdBu_r",
            center=0.0,
        )
    )
    check_png(
        heatmap_png(np.ones((1, 1)), tmp_path / "one.png", row_labels=["a"], col_labels=["a"])
    )


@pytest.mark.parametrize(
    ("matrix", "rows", "cols", "kwargs", "match"),
    [
        (np.ones(3), ["a"], ["a"], {}, "2-D"),
        (np.ones((2, 2)), ["a"], ["a", "b"], {}, "1 row labels"),
        (np.array([[np.inf]]), ["a"], ["a"], {}, "inf"),
        (np.ones((1, 1)), ["a"], ["a"], {"cmap": "no-such-map"}, "colormap"),
    ],
)
def test_heatmap_rejects_bad_input(tmp_path, matrix, rows, cols, kwargs, match):
    with pytest.raises(PlotError, match=match):
        heatmap_png(matrix, tmp_path / "x.png", row_labels=rows, col_labels=cols, **kwargs)


def test_temporal_writes_png(tmp_path):
    times_s = np.arange(100) / 25.0
    scores = np.where((times_s > 1.0) & (times_s < 2.0), 2.0, -1.0) + 0.1 * np.sin(times_s)
    out = temporal_png(
        tmp_path / "temporal.png",
        times_s=times_s,
        frame_scores=scores,
        truth_segments=[(1.0, 2.0)],
        predicted_segments=[(1.04, 1.96), (3.0, 3.2)],
        title="video 0001",
    )
    width, height = check_png(out)
    assert width > height


def test_temporal_single_frame(tmp_path):
    check_png(temporal_png(tmp_path / "t.png", times_s=[0.0], frame_scores=[0.3]))


@pytest.mark.parametrize(
    ("times", "scores", "kwargs", "match"),
    [
        ([0.0, 0.04], [0.1], {}, "same non-zero length"),
        ([], [], {}, "same non-zero length"),
        ([0.0, 0.0], [0.1, 0.2], {}, "strictly increasing"),
        ([0.0, 0.04], [0.1, np.nan], {}, "finite"),
        ([0.0, 0.04], [0.1, 0.2], {"truth_segments": [(1.0, 0.5)]}, "end_s >= start_s"),
        ([0.0, 0.04], [0.1, 0.2], {"predicted_segments": [(1.0,)]}, "pairs"),
        ([0.0, 0.04], [0.1, 0.2], {"threshold": float("nan")}, "threshold"),
    ],
)
def test_temporal_rejects_bad_input(tmp_path, times, scores, kwargs, match):
    with pytest.raises(PlotError, match=match):
        temporal_png(tmp_path / "t.png", times_s=times, frame_scores=scores, **kwargs)


def test_layers_writes_png(tmp_path):
    layers = [str(i) for i in range(1, 25)]
    auc = 0.6 + 0.08 * np.tanh(np.arange(24) / 5.0)
    ap = auc.copy()
    ap[3] = np.nan  # a layer not evaluated leaves a gap
    out = layers_png(
        tmp_path / "layers.png",
        layers=layers,
        series={"AUC": auc, "AP": ap},
        ylabel="score",
        title="AV-HuBERT layers",
    )
    check_png(out)


@pytest.mark.parametrize(
    ("layers", "series", "match"),
    [
        ([], {"a": []}, "layers must not be empty"),
        (["1", "2"], {}, "at least one line"),
        (["1", "2"], {"a": [0.5]}, "one value per layer"),
        (["1", "2"], {"a": [0.5, np.inf]}, "inf"),
    ],
)
def test_layers_rejects_bad_input(tmp_path, layers, series, match):
    with pytest.raises(PlotError, match=match):
        layers_png(tmp_path / "l.png", layers=layers, series=series)


def test_unknown_suffix_is_rejected(tmp_path):
    with pytest.raises(FeatstoreError, match=r"\.png, \.pdf or \.svg"):
        layers_png(tmp_path / "l.jpg", layers=["1"], series={"a": [0.5]})
    assert not (tmp_path / "l.jpg").exists()


# ------------------------------------------------------------ fit for a paper

MAGIC = {"png": b"\x89PNG", "pdf": b"%PDF", "svg": b"<?xml"}
LONG = "a/very/long/dataset-and-video-identifier/that/would/not/fit/on/one/line"


def _drawn(fig):
    fig.canvas.draw()
    return fig.canvas.get_renderer()


def assert_fits_the_page(fig, *, width_in=3.3, min_pt=7.0):
    """Nothing drawn outside the canvas (tight bbox within the figure), every text >= 7 pt,
    and the figure as wide as a paper column."""
    from matplotlib.text import Text

    renderer = _drawn(fig)
    w, h = fig.get_size_inches()
    assert w == pytest.approx(width_in)
    tight = fig.get_tightbbox(renderer)  # inches
    slack = 1 / 72
    assert tight.x0 >= -slack and tight.y0 >= -slack, tight
    assert tight.x1 <= w + slack and tight.y1 <= h + slack, (tight, (w, h))
    texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]
    assert texts
    for t in texts:
        assert t.get_fontsize() >= min_pt, (t.get_text(), t.get_fontsize())
    # title, legends, caption and the main axes never overlap one another
    blocks = [fig.axes[0].get_window_extent(renderer)]
    blocks += [legend.get_window_extent(renderer) for a in fig.axes if (legend := a.get_legend())]
    blocks += [t.get_window_extent(renderer) for t in (fig._suptitle, fig._supxlabel) if t]
    for a, b in itertools.combinations(blocks, 2):
        assert not a.overlaps(b), (a, b)


def _caption(fig) -> str:
    return " ".join(fig._supxlabel.get_text().split()) if fig._supxlabel else ""


def test_heatmap_correlation_scale_is_fixed_and_diverging():
    from featstore.trainers.plots import heatmap_figure

    names = [f"model-{i}-last/{LONG[:12]}" for i in range(5)]
    corr = np.full((5, 5), 0.2) + 0.8 * np.eye(5)  # all positive: auto-ranging would hide it
    fig = heatmap_figure(
        corr,
        row_labels=names,
        col_labels=names,
        title="Pearson correlation of P(fake) " + LONG,
        caption="on x:test, n = 40 videos (20 real / 20 fake), every fake counted",
        cmap="RdBu_r",
        limits=(-1.0, 1.0),
    )
    assert_fits_the_page(fig)
    (image, *_) = fig.axes[0].get_images()
    assert image.get_clim() == (-1.0, 1.0)
    assert image.get_cmap().name == "RdBu_r"
    assert "n = 40" in _caption(fig)
    colorbar = fig.axes[1]
    assert colorbar.get_ylim() == pytest.approx((-1.0, 1.0))


def test_heatmap_masks_the_diagonal_and_centres_improvement():
    from matplotlib.text import Text

    from featstore.trainers.plots import heatmap_figure

    rel = np.array([[0.0, 12.5, -4.0], [-30.0, 0.0, 3.0], [1.0, 2.0, 0.0]])
    fig = heatmap_figure(
        rel,
        row_labels=["a", "b", "c"],
        col_labels=["a", "b", "c"],
        value_format="{:+.1f}",
        cmap="RdBu",
        center=0.0,
        mask_diagonal=True,
    )
    assert_fits_the_page(fig)
    ax = fig.axes[0]
    image, grey = ax.get_images()
    assert image.get_clim() == (-30.0, 30.0)  # symmetric around 0
    assert np.ma.getmaskarray(image.get_array())[np.eye(3, dtype=bool)].all()
    assert not np.ma.getmaskarray(grey.get_array())[np.eye(3, dtype=bool)].any()
    cells = {
        (round(t.get_position()[0]), round(t.get_position()[1])): t.get_text()
        for t in ax.findobj(Text)
        if t.get_text() and t.axes is ax and t not in ax.get_xticklabels() + ax.get_yticklabels()
    }
    assert all((i, i) not in cells for i in range(3))  # no number on the diagonal
    assert cells[(1, 0)] == "+12.5" and cells[(0, 1)] == "-30.0"


def test_temporal_threshold_inside_ticks_spaced_legend_outside():
    from featstore.trainers.plots import temporal_figure

    times = np.arange(120) / 25.0
    scores = -6.0 + np.sin(
        times * 3
    )  # all far below the threshold: the old plot put it on the border
    fig = temporal_figure(
        times_s=times,
        frame_scores=scores,
        threshold=0.0,
        truth_segments=[(1.0, 2.0)],
        predicted_segments=[(3.0, 3.4)],
        title="fake video, score -0.15",
        caption=f"{LONG}: per-frame scores, n = 120 frames at 25 Hz",
    )
    assert_fits_the_page(fig)
    renderer = _drawn(fig)
    ax = fig.axes[0]
    lo, hi = ax.get_ylim()
    span = hi - lo
    assert lo + 0.02 * span < 0.0 < hi - 0.02 * span  # the threshold line is off the border
    assert lo < scores.min() and scores.max() < hi
    # the legend sits outside the axes: it cannot hide the annotated band
    legend = ax.get_legend().get_window_extent(renderer)
    assert not legend.overlaps(ax.get_window_extent(renderer))
    # right axis: P(fake) = sigmoid(2 s), labels apart from each other
    (right,) = ax.child_axes
    labels = [t for t in right.get_yticklabels() if t.get_text()]
    assert len(labels) >= 2
    boxes = sorted((t.get_window_extent(renderer) for t in labels), key=lambda b: b.y0)
    for below, above in itertools.pairwise(boxes):
        assert above.y0 >= below.y1, "P(fake) labels overlap"
    for tick in right.get_yticks():
        s = 0.5 * np.log(tick / (1 - tick))  # the score where P(fake) = tick
        assert lo <= s <= hi
    assert "n = 120" in _caption(fig)


def test_layers_plot_has_chance_lines_n_and_fits():
    from featstore.trainers.plots import layers_figure

    layers = [*map(str, range(49)), "last"]
    auc = 60 + 10 * np.tanh(np.arange(50) / 9)
    fig = layers_figure(
        layers=layers,
        series={"AUC": auc, "AP": auc - 20},
        chance={"AUC": 50.0, "AP": 22.2},
        ylabel="%",
        title="avhubert-a vs avhubert-v: Eq. 3 per layer " + LONG,
        caption="on x:test, n = 18 videos (14 real / 4 fake), evaluation filter",
    )
    assert_fits_the_page(fig)
    ax = fig.axes[0]
    flat = {
        round(float(line.get_ydata()[0]), 3)
        for line in ax.get_lines()
        if line.get_linestyle() == ":" and len(set(np.ravel(line.get_ydata()))) == 1
    }
    assert flat == {50.0, 22.2}
    shown = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
    assert len(shown) <= 13 and shown[0] == "0" and shown[-1] == "last"
    assert "n = 18" in _caption(fig)
    with pytest.raises(PlotError, match="not plotted"):
        layers_figure(layers=["1"], series={"AUC": [0.5]}, chance={"AP": 0.3})


@pytest.mark.parametrize("fmt", ["png", "pdf", "svg"])
def test_every_plot_writes_each_format(tmp_path, fmt):
    paths = [
        heatmap_png(np.eye(2), tmp_path / f"h.{fmt}", row_labels=["a", "b"], col_labels=["a", "b"]),
        temporal_png(tmp_path / f"t.{fmt}", times_s=[0.0, 0.04], frame_scores=[0.1, -0.2]),
        layers_png(tmp_path / f"l.{fmt}", layers=["0", "1"], series={"AUC": [50.0, 60.0]}),
    ]
    for path in paths:
        assert path.suffix == f".{fmt}"
        assert path.read_bytes()[: len(MAGIC[fmt])] == MAGIC[fmt]


def test_temporal_right_axis_says_p_fake_only_for_calibrated_kinds():
    from featstore.trainers.plots import temporal_figure

    kw = {"times_s": np.arange(50) / 25.0, "frame_scores": np.linspace(-2, 2, 50)}
    calibrated = temporal_figure(**kw)
    (right,) = calibrated.axes[0].child_axes
    assert right.get_ylabel() == "P(fake)"
    ranked = temporal_figure(**kw, calibrated=False)
    (right,) = ranked.axes[0].child_axes
    assert "P(fake)" not in right.get_ylabel() and "rank" in right.get_ylabel()
    assert ranked.axes[0].get_ylabel() == "score"
