"""PNG figures of spatial explanations: overlays, contact sheets, Fig. 4 (curve and click grid).

As :mod:`featstore.trainers.plots`: matplotlib ``Figure`` objects on an Agg canvas, never
pyplot. A heat map is drawn over its frame normalised to ``[0, 1]`` over the
region the model saw (NaN elsewhere: left uncoloured); a map's maximum is the
green circle, a human click the red one (the paper's Fig. 4).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from featstore.trainers.figures import new_figure, save_figure
from featstore.trainers.plots import PlotError

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes

__all__ = ["Panel", "clicks_grid_png", "contact_sheet_png", "mae_curve_png", "overlay_png"]

PEAK_COLOUR, CLICK_COLOUR = "#00e000", "#ff2020"
CMAP, ALPHA = "jet", 0.45


@dataclass(frozen=True, eq=False)
class Panel:
    """One frame to draw: the image, its map over the frame (or None), points (relative)."""

    frame: np.ndarray  # [H, W, 3] uint8
    heat: np.ndarray | None = None  # [H', W'] float, NaN outside the model's view
    peak: tuple[float, float] | None = None  # (x, y) relative
    click: tuple[float, float] | None = None  # (x, y) relative
    caption: str = ""


def _aspect(panels: Sequence[Panel]) -> float:
    """Height over width of the first panel's frame (figures are laid out by it)."""
    h, w = np.asarray(panels[0].frame).shape[:2]
    return h / w


def _normalised(heat: np.ndarray) -> np.ndarray:
    v = np.asarray(heat, dtype=np.float64)
    finite = np.isfinite(v)
    if not finite.any():
        return v
    lo, hi = v[finite].min(), v[finite].max()
    return (v - lo) / (hi - lo) if hi > lo else np.where(finite, 0.5, np.nan)


def _draw(ax: Axes, panel: Panel, *, show_heat: bool = True) -> None:
    from matplotlib.patches import Circle

    frame = np.asarray(panel.frame)
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise PlotError(f"expected an RGB frame [H, W, 3], got {frame.shape}")
    h, w = frame.shape[:2]
    ax.imshow(frame, extent=(0, w, h, 0), interpolation="bilinear")
    if show_heat and panel.heat is not None:
        heat = np.ma.masked_invalid(_normalised(panel.heat))
        ax.imshow(heat, extent=(0, w, h, 0), cmap=CMAP, alpha=ALPHA, vmin=0, vmax=1)
    radius = 0.04 * max(h, w)
    for point, colour in ((panel.peak, PEAK_COLOUR), (panel.click, CLICK_COLOUR)):
        if point is not None:
            xy = (point[0] * w, point[1] * h)
            ax.add_patch(Circle(xy, radius, fill=False, lw=2.0, ec=colour))
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.set_xticks([])
    ax.set_yticks([])
    if panel.caption:
        ax.set_title(panel.caption, fontsize=8)


def overlay_png(path: str | Path, panel: Panel, *, title: str = "") -> Path:
    """One frame: the image, the heat map over it and its maximum (and a click, if given)."""
    h, w = np.asarray(panel.frame).shape[:2]
    fig = new_figure(4.0 * w / max(h, w) + 0.2, 4.0 * h / max(h, w) + 0.4)
    ax = fig.add_subplot(1, 1, 1)
    _draw(ax, Panel(panel.frame, panel.heat, panel.peak, panel.click, panel.caption or title))
    return save_figure(fig, path)


def contact_sheet_png(
    path: str | Path, rows: Sequence[tuple[str, Sequence[Panel]]], *, title: str = ""
) -> Path:
    """Several videos, one row each (its label first), their explained frames side by side."""
    if not rows or not any(panels for _, panels in rows):
        raise PlotError("a contact sheet needs at least one panel")
    n_cols = max(len(p) for _, p in rows)
    aspect = _aspect(next(p for _, p in rows if p))
    fig = new_figure(2.2 * n_cols + 0.6, (2.2 * aspect + 0.35) * len(rows) + 0.5)
    grid = fig.add_gridspec(len(rows), n_cols)
    for r, (label, panels) in enumerate(rows):
        for c in range(n_cols):
            ax = fig.add_subplot(grid[r, c])
            if c < len(panels):
                _draw(ax, panels[c])
            else:
                ax.axis("off")
            if c == 0:
                ax.set_ylabel(label, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def clicks_grid_png(path: str | Path, panels: Sequence[Panel], *, title: str = "") -> Path:
    """Fig. 4 (right): per sample, the frame with the human click (red, top) and the same
    frame with the explanation and its maximum (green, bottom)."""
    if not panels:
        raise PlotError("the click grid needs at least one sample")
    fig = new_figure(2.2 * len(panels) + 0.4, 2 * (2.2 * _aspect(panels) + 0.35) + 0.6)
    grid = fig.add_gridspec(2, len(panels))
    for c, p in enumerate(panels):
        _draw(
            fig.add_subplot(grid[0, c]),
            Panel(p.frame, click=p.click, caption=p.caption),
            show_heat=False,
        )
        _draw(fig.add_subplot(grid[1, c]), Panel(p.frame, p.heat, peak=p.peak))
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def mae_curve_png(
    path: str | Path, table: pd.DataFrame, *, main: str, title: str = "", x_label: str = ""
) -> Path:
    """Fig. 4 (left): ``main``'s MAE against the minimum score with its spread (mean +- std),
    every other method of ``table`` (:func:`featstore.trainers.clicks.curve`) as a line, and the
    number of videos per threshold on a second axis."""
    if table.empty or main not in set(table["method"]):
        raise PlotError(f"the curve has no rows for {main!r}")
    fig = new_figure(6.0, 3.6)
    ax = fig.add_subplot(1, 1, 1)
    for method, rows in table.groupby("method", sort=False):
        rows = rows.sort_values("threshold")
        x, m, s = (rows[k].to_numpy(dtype=np.float64) for k in ("threshold", "mean", "std"))
        if method == main:
            ax.plot(x, m, color="C0", lw=2.2, label=str(method))
            ax.fill_between(x, m - s, m + s, color="C0", alpha=0.2, lw=0)
        else:
            ax.plot(x, m, lw=1.2, ls="--", label=str(method))
    counts = table[table["method"] == main].sort_values("threshold")
    twin = ax.twinx()
    twin.bar(counts["threshold"], counts["n_videos"], width=0.03, color="0.7", alpha=0.35)
    twin.set_ylabel("videos", fontsize=8)
    ax.set_zorder(twin.get_zorder() + 1)
    ax.patch.set_visible(False)
    ax.set_xlabel(x_label or "minimum fakeness score")
    ax.set_ylabel("MAE (relative coordinates)")
    ax.legend(fontsize=7, loc="upper right")
    if title:
        ax.set_title(title, fontsize=10)
    return save_figure(fig, path)
