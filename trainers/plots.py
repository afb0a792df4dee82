"""PNG figures for run reports: heatmaps (Fig. 5/6), temporal explanations (Fig. 3), layers (Fig. 7).

Every figure is a ``matplotlib.figure.Figure`` drawn on an Agg canvas; pyplot
and its global figure registry are never touched, so plotting is safe in
workers, servers and tests. matplotlib is imported inside the functions to
keep ``import trainers.plots`` cheap.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from featstore.errors import FeatstoreError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["PlotError", "heatmap_png", "layers_png", "temporal_png"]

_DPI = 120


class PlotError(FeatstoreError, ValueError):
    """The data handed to a plot has the wrong shape or values."""


def _new_figure(width_in: float, height_in: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    out = Path(path)
    if out.suffix.lower() != ".png":
        raise PlotError(f"plots are written as PNG; give a path ending in .png, got {str(out)!r}")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out


def heatmap_png(
    matrix: np.ndarray,
    path: str | Path,
    *,
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    title: str = "",
    value_format: str = "{:.2f}",
    cmap: str = "viridis",
    center: float | None = None,
) -> Path:
    """An annotated heatmap (e.g. model correlations or relative improvement).

    ``center`` makes the colour scale symmetric around that value (use it with a
    diverging ``cmap`` such as ``"RdBu_r"``, centre 0 for relative improvement).
    NaN cells are left blank and labelled "–".
    """
    from matplotlib import colormaps
    from matplotlib.colors import Normalize

    values = np.asarray(matrix, dtype=np.float64)  # [R, C]
    if values.ndim != 2 or values.size == 0:
        raise PlotError(f"expected a non-empty 2-D matrix, got shape {values.shape}")
    if len(row_labels) != values.shape[0] or len(col_labels) != values.shape[1]:
        raise PlotError(
            f"matrix is {values.shape[0]}x{values.shape[1]} but got "
            f"{len(row_labels)} row labels and {len(col_labels)} column labels"
        )
    if np.any(np.isinf(values)):
        raise PlotError("heatmap values must be finite or NaN (got inf)")
    if cmap not in colormaps:
        raise PlotError(f"unknown colormap {cmap!r}")
    finite = values[np.isfinite(values)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if center is not None:
        half = max(abs(hi - center), abs(lo - center)) or 1.0
        lo, hi = center - half, center + half
    elif lo == hi:
        lo, hi = lo - 0.5, hi + 0.5
    norm = Normalize(vmin=lo, vmax=hi)
    colours = colormaps[cmap]

    rows, cols = values.shape
    fig = _new_figure(max(4.0, 1.0 + 0.9 * cols), max(3.0, 0.8 + 0.6 * rows))
    ax = fig.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(values), cmap=colours, norm=norm, aspect="auto")
    fig.colorbar(image, ax=ax)
    ax.set_xticks(range(cols), labels=list(col_labels), rotation=45, ha="right")
    ax.set_yticks(range(rows), labels=list(row_labels))
    for i in range(rows):
        for j in range(cols):
            value = values[i, j]
            if math.isnan(value):
                ax.text(j, i, "–", ha="center", va="center", color="black")
                continue
            red, green, blue, _ = colours(norm(value))
            luminance = 0.299 * red + 0.587 * green + 0.114 * blue
            ax.text(
                j,
                i,
                value_format.format(value),
                ha="center",
                va="center",
                color="black" if luminance > 0.5 else "white",
                fontsize=8,
            )
    if title:
        ax.set_title(title)
    return _save(fig, path)


def _check_segments(
    name: str, segments: Sequence[tuple[float, float]]
) -> list[tuple[float, float]]:
    out = []
    for segment in segments:
        if len(segment) != 2:
            raise PlotError(f"{name} must be (start_s, end_s) pairs, got {segment!r}")
        start_s, end_s = float(segment[0]), float(segment[1])
        if not (math.isfinite(start_s) and math.isfinite(end_s)) or end_s < start_s:
            raise PlotError(f"{name} segment {segment!r} must be finite with end_s >= start_s")
        out.append((start_s, end_s))
    return out


def temporal_png(
    path: str | Path,
    *,
    times_s: Sequence[float] | np.ndarray,
    frame_scores: Sequence[float] | np.ndarray,
    threshold: float = 0.0,
    truth_segments: Sequence[tuple[float, float]] = (),
    predicted_segments: Sequence[tuple[float, float]] = (),
    title: str = "",
) -> Path:
    """A temporal explanation like paper Fig. 3: per-frame scores over time.

    Scores (logits, left axis) with the matching probability ``sigmoid(2 s)``
    on the right axis; ground-truth fake segments shaded red, predicted
    segments as an orange band along the bottom, the decision threshold as a
    grey dashed line (score 0 = probability 0.5).
    """
    times = np.asarray(times_s, dtype=np.float64)  # [T]
    scores = np.asarray(frame_scores, dtype=np.float64)  # [T]
    if times.ndim != 1 or times.size == 0 or times.shape != scores.shape:
        raise PlotError(
            f"times_s and frame_scores must be 1-D of the same non-zero length, "
            f"got shapes {times.shape} and {scores.shape}"
        )
    if not (np.all(np.isfinite(times)) and np.all(np.isfinite(scores))):
        raise PlotError("times_s and frame_scores must be finite")
    if np.any(np.diff(times) <= 0):
        raise PlotError("times_s must be strictly increasing")
    if not math.isfinite(threshold):
        raise PlotError(f"threshold must be finite, got {threshold!r}")
    truth = _check_segments("truth_segments", truth_segments)
    predicted = _check_segments("predicted_segments", predicted_segments)

    fig = _new_figure(8.0, 3.0)
    ax = fig.add_subplot()
    for k, (start_s, end_s) in enumerate(truth):
        ax.axvspan(
            start_s,
            end_s,
            color="tab:red",
            alpha=0.25,
            lw=0,
            label="fake (truth)" if k == 0 else None,
        )
    for k, (start_s, end_s) in enumerate(predicted):
        ax.axvspan(
            start_s,
            end_s,
            ymin=0.0,
            ymax=0.06,
            color="tab:orange",
            alpha=0.9,
            lw=0,
            label="fake (predicted)" if k == 0 else None,
        )
    ax.plot(
        times,
        scores,
        color="tab:blue",
        lw=1.2,
        marker="." if times.size < 50 else None,
        label="score",
    )
    ax.axhline(threshold, color="grey", ls="--", lw=1.0, label="threshold")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("score (logit)")
    ax.set_xlim(float(times[0]), float(times[-1]) if times.size > 1 else float(times[0]) + 1.0)

    def to_probability(s: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-2.0 * np.clip(s, -350.0, 350.0)))

    def to_score(p: np.ndarray) -> np.ndarray:
        q = np.clip(p, 1e-12, 1.0 - 1e-12)
        return 0.5 * np.log(q / (1.0 - q))

    ax.secondary_yaxis("right", functions=(to_probability, to_score)).set_ylabel("P(fake)")
    ax.legend(loc="upper left", fontsize=7, framealpha=0.8)
    if title:
        ax.set_title(title)
    return _save(fig, path)


def layers_png(
    path: str | Path,
    *,
    layers: Sequence[str],
    series: Mapping[str, Sequence[float]],
    ylabel: str = "AUC",
    title: str = "",
) -> Path:
    """A layer-wise line plot like paper Fig. 7: one line per series over the layers.

    ``layers`` are the x tick labels in order (e.g. ``["1", ..., "24"]``); each
    series gives one value per layer (NaN for a layer not evaluated: a gap).
    The best layer of each series is marked with a star.
    """
    if not layers:
        raise PlotError("layers must not be empty")
    if not series:
        raise PlotError("series must hold at least one line")
    lines = {}
    for name, values in series.items():
        y = np.asarray(values, dtype=np.float64)
        if y.shape != (len(layers),):
            raise PlotError(
                f"series {name!r} has shape {y.shape}, expected one value per layer ({len(layers)})"
            )
        if np.any(np.isinf(y)):
            raise PlotError(f"series {name!r} holds inf; use NaN for missing layers")
        lines[name] = y

    x = np.arange(len(layers))
    fig = _new_figure(max(5.0, 1.5 + 0.3 * len(layers)), 3.5)
    ax = fig.add_subplot()
    for name, y in lines.items():
        (line,) = ax.plot(x, y, marker="o", ms=3, lw=1.2, label=name)
        if np.any(np.isfinite(y)):
            best = int(np.nanargmax(y))
            ax.plot(x[best], y[best], marker="*", ms=11, color=line.get_color(), ls="none")
    ax.set_xticks(
        x, labels=[str(layer) for layer in layers], rotation=90 if len(layers) > 12 else 0
    )
    ax.set_xlabel("layer")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return _save(fig, path)
