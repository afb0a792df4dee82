"""Figures of run reports: heatmaps (Fig. 5/6), temporal explanations (Fig. 3), layers (Fig. 7).

Drawn for a paper column (``featstore.trainers.figures.COLUMN_WIDTH_IN``, 3.3 in) in
the shared paper style (no text under 7 pt), with a caption that says what
was measured on which videos (n, evaluation filter), and saved as PNG, PDF or
SVG by the path's suffix. Each figure has a ``*_figure`` function that
returns the ``matplotlib.figure.Figure`` (tests read its contents) and a
``*_png`` function that draws and saves it (any of the three formats, despite
the historical name).

Every figure is drawn on an Agg canvas; pyplot and its global figure
registry are never touched, so plotting is safe in workers, servers and
tests. matplotlib is imported inside the functions to keep
``import featstore.trainers.plots`` cheap.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from featstore.errors import FeatstoreError
from featstore.trainers.figures import (
    COLUMN_WIDTH_IN,
    FONT_PT,
    add_caption,
    new_figure,
    paper_style,
    save_figure,
    wrap,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "PlotError",
    "heatmap_figure",
    "heatmap_png",
    "layers_figure",
    "layers_png",
    "temporal_figure",
    "temporal_png",
]

_CHAR_IN = FONT_PT * 0.58 / 72  # about one character's width at FONT_PT, inches
_CAPTION_LINE_IN = FONT_PT * 1.25 / 72


class PlotError(FeatstoreError, ValueError):
    """The data handed to a plot has the wrong shape or values."""


def _caption_height(text: str, width_in: float) -> float:
    return 0.0 if not text else (wrap(text, width_in).count("\n") + 1) * _CAPTION_LINE_IN + 0.08


def _title(ax: Any, title: str, width_in: float) -> None:
    """The title over the whole figure (an axes title is centred on the axes, which
    side labels push off centre, so a line as wide as the figure would be clipped)."""
    if title:
        ax.figure.suptitle(wrap(title, width_in), fontsize=FONT_PT)


def _legend_above(ax: Any, handles: Sequence[Any]) -> None:
    """The legend just above the axes, outside them (so it hides no data), under the
    title; constrained layout makes room for it."""
    ax.legend(
        handles=list(handles),
        loc="lower center",
        bbox_to_anchor=(0.5, 1.01),
        ncols=2,
        frameon=False,
        handlelength=1.6,
        columnspacing=1.0,
        borderaxespad=0.0,
    )


# ------------------------------------------------------------------ heatmap


def heatmap_figure(
    matrix: np.ndarray,
    *,
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    title: str = "",
    caption: str = "",
    value_format: str = "{:.2f}",
    cmap: str = "viridis",
    limits: tuple[float, float] | None = None,
    center: float | None = None,
    mask_diagonal: bool = False,
    colorbar_label: str = "",
    width_in: float = COLUMN_WIDTH_IN,
) -> Figure:
    """An annotated heatmap (model correlations, relative improvement).

    ``limits`` fixes the colour scale (Pearson: ``(-1, 1)`` with a diverging
    ``cmap``); otherwise it spans the finite values, made symmetric around
    ``center`` when given. ``mask_diagonal`` greys out the diagonal (a model
    compared with itself). NaN cells are left blank and labelled "–".
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
    rows, cols = values.shape
    shown = values.copy()
    diagonal = np.zeros_like(values, dtype=bool)
    if mask_diagonal:
        if rows != cols:
            raise PlotError(f"mask_diagonal needs a square matrix, got {rows}x{cols}")
        diagonal = np.eye(rows, dtype=bool)
        shown[diagonal] = np.nan
    if limits is not None:
        lo, hi = (float(x) for x in limits)
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise PlotError(f"limits must be finite with low < high, got {limits!r}")
    else:
        finite = shown[np.isfinite(shown)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        if center is not None:
            half = max(abs(hi - center), abs(lo - center)) or 1.0
            lo, hi = center - half, center + half
        elif lo == hi:
            lo, hi = lo - 0.5, hi + 0.5
    norm = Normalize(vmin=lo, vmax=hi)
    colours = colormaps[cmap]

    longest_col = max((len(str(x)) for x in col_labels), default=1)
    longest_row = max((len(str(x)) for x in row_labels), default=1)
    grid_w = max(1.0, width_in - 0.75 - longest_row * _CHAR_IN)  # colour bar and row labels
    cell = min(0.45, grid_w / cols)
    height = (
        0.35
        + (0.3 if title else 0.0)
        + rows * cell
        + longest_col * _CHAR_IN * 0.75  # column labels at 45 degrees
        + _caption_height(caption, width_in)
    )
    with paper_style():
        fig = new_figure(width_in, max(1.5, height))
        ax = fig.add_subplot()
        image = ax.imshow(np.ma.masked_invalid(shown), cmap=colours, norm=norm, aspect="equal")
        if diagonal.any():
            grey = np.where(diagonal, 1.0, np.nan)
            ax.imshow(np.ma.masked_invalid(grey), cmap="Greys", vmin=0, vmax=4, aspect="equal")
        bar = fig.colorbar(image, ax=ax, shrink=0.9, pad=0.02)
        if colorbar_label:
            bar.set_label(colorbar_label)
        ax.set_xticks(range(cols), labels=list(col_labels), rotation=45, ha="right")
        ax.set_yticks(range(rows), labels=list(row_labels))
        annotate = cell >= 0.28  # numbers only where a 7 pt number fits its cell
        for i in range(rows):
            for j in range(cols):
                if diagonal[i, j]:
                    continue
                value = values[i, j]
                if math.isnan(value):
                    ax.text(j, i, "–", ha="center", va="center", color="black")
                    continue
                if not annotate:
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
                )
        _title(ax, title, width_in)
        if caption:
            add_caption(fig, caption, width_in)
    return fig


def heatmap_png(matrix: np.ndarray, path: str | Path, **kwargs: Any) -> Path:
    """Draw :func:`heatmap_figure` and save it (PNG, PDF or SVG by the suffix of ``path``)."""
    fig = heatmap_figure(matrix, **kwargs)
    with paper_style():
        return save_figure(fig, path)


# ------------------------------------------------------------------ temporal


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


_PROBABILITY_TICKS = (
    *(10.0**-k for k in range(12, 0, -1)),  # 1e-12 .. 0.1
    0.5,
    *(1 - 10.0**-k for k in range(1, 13)),  # 0.9 .. 1 - 1e-12
)


def _to_probability(s: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-2.0 * np.clip(s, -350.0, 350.0)))


def _to_score(p: np.ndarray) -> np.ndarray:
    q = np.clip(p, 1e-12, 1.0 - 1e-12)
    return 0.5 * np.log(q / (1.0 - q))


def _probability_label(p: float) -> str:
    """``0.5``, ``0.01``, ``1e-06``; near 1 as ``1-1e-06`` (``0.999999`` reads badly)."""
    if p >= 0.999:
        return f"1-{1 - p:.0e}".replace("e-0", "e-")
    return f"{p:.0e}".replace("e-0", "e-") if p < 0.001 else f"{p:g}"


def probability_ticks(y_lo: float, y_hi: float, *, min_gap: float = 0.12) -> list[float]:
    """P(fake) ticks for a score axis spanning ``[y_lo, y_hi]``: the round probabilities
    whose scores fall inside, at least ``min_gap`` of the axis height apart (so their
    labels never pile up), 0.5 kept first when inside."""
    span = y_hi - y_lo
    inside = [p for p in _PROBABILITY_TICKS if y_lo <= float(_to_score(np.array(p))) <= y_hi]
    order = sorted(inside, key=lambda p: (p != 0.5, abs(math.log(p / (1 - p)))))
    kept: list[float] = []
    for p in order:
        s = float(_to_score(np.array(p)))
        if all(abs(s - float(_to_score(np.array(q)))) >= min_gap * span for q in kept):
            kept.append(p)
    return sorted(kept)


def temporal_figure(
    *,
    times_s: Sequence[float] | np.ndarray,
    frame_scores: Sequence[float] | np.ndarray,
    threshold: float = 0.0,
    truth_segments: Sequence[tuple[float, float]] = (),
    predicted_segments: Sequence[tuple[float, float]] = (),
    title: str = "",
    caption: str = "",
    calibrated: bool = True,
    width_in: float = COLUMN_WIDTH_IN,
    height_in: float = 1.9,
) -> Figure:
    """A temporal explanation like paper Fig. 3: per-frame scores over time.

    Scores (logits, left axis) with the matching probability ``sigmoid(2 s)``
    on the right axis (a few round values, never crowded), labelled P(fake) only
    for a ``calibrated`` run kind (the probe; else a rank score); annotated fake
    segments shaded red, predicted segments as an orange band under the curve,
    the decision threshold as a dashed line kept inside the plot; the legend
    sits above the axes, so it hides nothing.
    """
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.ticker import FixedLocator

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

    data_lo = min(float(scores.min()), threshold)
    data_hi = max(float(scores.max()), threshold)
    pad = 0.08 * (data_hi - data_lo) or 0.5
    band = 0.1 * (data_hi - data_lo + 2 * pad)  # room for the predicted band under the data
    y_lo, y_hi = data_lo - pad - (band if predicted else 0.0), data_hi + pad
    x_lo = float(times[0])
    x_hi = float(times[-1]) if times.size > 1 else x_lo + 1.0

    with paper_style():
        fig = new_figure(
            width_in, height_in + (0.25 if title else 0) + _caption_height(caption, width_in)
        )
        ax = fig.add_subplot()
        for start_s, end_s in truth:
            ax.axvspan(start_s, end_s, color="tab:red", alpha=0.2, lw=0)
        band_top = (band * 0.8) / (y_hi - y_lo)  # axes fraction
        for start_s, end_s in predicted:
            ax.axvspan(start_s, end_s, ymin=0.0, ymax=band_top, color="tab:orange", lw=0)
        ax.plot(times, scores, color="tab:blue", lw=0.9, marker="." if times.size < 50 else None)
        ax.axhline(threshold, color="0.35", ls="--", lw=0.8)
        ax.set_xlabel("time (s)")
        ax.set_ylabel("score (logit)" if calibrated else "score")
        ax.set_xlim(x_lo, x_hi)
        ax.set_ylim(y_lo, y_hi)
        right = ax.secondary_yaxis("right", functions=(_to_probability, _to_score))
        right.yaxis.set_major_locator(FixedLocator(probability_ticks(y_lo, y_hi)))
        right.yaxis.set_minor_locator(FixedLocator([]))
        right.set_yticklabels([_probability_label(p) for p in probability_ticks(y_lo, y_hi)])
        right.set_ylabel("P(fake)" if calibrated else "rank score, sigmoid(2 s)")
        handles = [
            Line2D([], [], color="tab:blue", lw=0.9, label="score"),
            Line2D([], [], color="0.35", ls="--", lw=0.8, label=f"threshold ({threshold:g})"),
        ]
        if truth:
            handles.append(Patch(color="tab:red", alpha=0.2, lw=0, label="fake (annotated)"))
        if predicted:
            handles.append(Patch(color="tab:orange", lw=0, label="fake (predicted)"))
        _legend_above(ax, handles)
        _title(ax, title, width_in)
        if caption:
            add_caption(fig, caption, width_in)
    return fig


def temporal_png(path: str | Path, **kwargs: Any) -> Path:
    """Draw :func:`temporal_figure` and save it (PNG, PDF or SVG by the suffix of ``path``)."""
    fig = temporal_figure(**kwargs)
    with paper_style():
        return save_figure(fig, path)


# ------------------------------------------------------------------ layers


def layers_figure(
    *,
    layers: Sequence[str],
    series: Mapping[str, Sequence[float]],
    ylabel: str = "AUC",
    title: str = "",
    caption: str = "",
    chance: Mapping[str, float] | None = None,
    width_in: float = COLUMN_WIDTH_IN,
    height_in: float = 2.0,
) -> Figure:
    """A layer-wise line plot like paper Fig. 7: one line per series over the layers.

    ``layers`` are the x tick labels in order (e.g. ``["0", ..., "24", "last"]``,
    thinned to at most a dozen when there are many); each series gives one
    value per layer (NaN for a layer not evaluated: a gap). The best layer of
    each series is marked with a star. ``chance``: the value each series has
    by chance (AUC 50 %, AP the share of fakes), drawn as a dotted line in the
    series' colour.
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
    chance = dict(chance or {})
    unknown = sorted(set(chance) - set(lines))
    if unknown:
        raise PlotError(f"chance given for series {unknown} that are not plotted")
    for name, value in chance.items():
        if not math.isfinite(value):
            raise PlotError(f"chance of {name!r} must be finite, got {value!r}")

    x = np.arange(len(layers))
    step = max(1, math.ceil(len(layers) / 12))
    ticks = [i for i in range(len(layers)) if i % step == 0 or i == len(layers) - 1]
    if len(ticks) > 1 and ticks[-1] - ticks[-2] < step:  # keep the last label clear
        ticks.pop(-2)
    with paper_style():
        fig = new_figure(
            width_in, height_in + (0.25 if title else 0) + _caption_height(caption, width_in)
        )
        ax = fig.add_subplot()
        for name, y in lines.items():
            (line,) = ax.plot(x, y, marker="o", ms=2.5, lw=0.9, label=name)
            if np.any(np.isfinite(y)):
                best = int(np.nanargmax(y))
                ax.plot(x[best], y[best], marker="*", ms=8, color=line.get_color(), ls="none")
            if name in chance:
                ax.axhline(
                    chance[name],
                    color=line.get_color(),
                    ls=":",
                    lw=0.8,
                    label=f"{name} by chance ({chance[name]:.3g})",
                )
        ax.set_xticks([x[i] for i in ticks], labels=[str(layers[i]) for i in ticks])
        ax.set_xlim(-0.5, len(layers) - 0.5)
        ax.set_xlabel("layer")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, lw=0.4)
        _legend_above(ax, ax.get_legend_handles_labels()[0])
        _title(ax, title, width_in)
        if caption:
            add_caption(fig, caption, width_in)
    return fig


def layers_png(path: str | Path, **kwargs: Any) -> Path:
    """Draw :func:`layers_figure` and save it (PNG, PDF or SVG by the suffix of ``path``)."""
    fig = layers_figure(**kwargs)
    with paper_style():
        return save_figure(fig, path)
