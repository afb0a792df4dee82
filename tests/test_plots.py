"""Plots write real PNGs and never touch pyplot's global state."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from PIL import Image

from featstore.errors import FeatstoreError
from trainers.plots import PlotError, heatmap_png, layers_png, temporal_png

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


def test_non_png_path_is_rejected(tmp_path):
    with pytest.raises(PlotError, match=r"\.png") as err:
        layers_png(tmp_path / "l.svg", layers=["1"], series={"a": [0.5]})
    assert isinstance(err.value, FeatstoreError)
    assert not (tmp_path / "l.svg").exists()
