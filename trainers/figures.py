"""Paper figures: the shared style, and Fig. 2 (localization vs classification per feature).

``localization_bars`` / ``localization_figure``: for each run, the temporal
localization AUC (solid bar) beside the video-level AUC (hatched bar) of one
test set, read from the runs' ``metrics.json`` (``featstore eval`` wrote
them), coloured by the modality of the features the run reads. Fig. 3 (one
video) is ``featstore.trainers.video_figure``.

Figures are drawn for a paper column (``COLUMN_WIDTH_IN``, 7 pt text) and
saved as PNG, PDF or SVG by the path's suffix; the caption states what was
measured on which videos (n, evaluation filter). matplotlib is imported
inside the functions; pyplot is never used.
"""

from __future__ import annotations

import json
import logging
import math
import os
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from featstore.errors import FeatstoreError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from featstore.trainers.runs import Run

log = logging.getLogger(__name__)

__all__ = [
    "COLUMN_WIDTH_IN",
    "FONT_PT",
    "FORMATS",
    "FigureError",
    "LocalizationBar",
    "add_caption",
    "filter_text",
    "localization_bars",
    "localization_caption",
    "localization_figure",
    "new_figure",
    "paper_style",
    "run_modality",
    "save_figure",
    "short_labels",
    "wrap",
    "write_json",
]

COLUMN_WIDTH_IN = 3.3  # one column of a two-column paper (CVPR: 3.25 in)
FORMATS = ("png", "pdf", "svg")
FONT_PT = 7.0
MODALITY_COLOURS = {
    "audio": "#1f77b4",
    "visual": "#2ca02c",
    "audio-visual": "#9467bd",
    "unknown": "#7f7f7f",
}
_DPI = 300  # PNG at print resolution


class FigureError(FeatstoreError, ValueError):
    """A figure cannot be drawn from what was given (missing metrics, bad path, ...)."""


def save_figure(fig: Figure, path: str | os.PathLike[str]) -> Path:
    """Save ``fig`` as PNG, PDF or SVG, chosen by the suffix of ``path``."""
    out = Path(path)
    fmt = out.suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise FigureError(f"give a path ending in .png, .pdf or .svg, got {str(out)!r}")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format=fmt, dpi=_DPI)
    return out


def new_figure(width_in: float, height_in: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not (0.5 <= width_in <= 20 and 0.5 <= height_in <= 20):
        raise FigureError(f"figure size must lie in 0.5-20 in, got {width_in} x {height_in}")
    fig = Figure(figsize=(width_in, height_in), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def paper_style() -> Any:
    from matplotlib import rc_context

    return rc_context(
        {
            "font.size": FONT_PT,
            "axes.titlesize": FONT_PT,
            "axes.labelsize": FONT_PT,
            "xtick.labelsize": FONT_PT,
            "ytick.labelsize": FONT_PT,
            "legend.fontsize": FONT_PT,
            "figure.titlesize": FONT_PT,
            "figure.labelsize": FONT_PT,
            "axes.linewidth": 0.6,
            "hatch.linewidth": 0.6,
            "pdf.fonttype": 42,  # embed TrueType: text stays text in PDF
            "svg.fonttype": "none",
        }
    )


def add_caption(fig: Figure, text: str, width_in: float) -> None:
    """``text`` under the axes, wrapped to the figure's width (never below 7 pt)."""
    fig.supxlabel(wrap(text, width_in), fontsize=FONT_PT, ha="center")


def wrap(text: str, width_in: float, *, font_pt: float = FONT_PT) -> str:
    """``text`` wrapped into lines that fit ``width_in`` at ``font_pt`` (DejaVu Sans
    averages about 0.55 em per character)."""
    chars = max(20, int(width_in * 72 / (font_pt * 0.58)))
    return textwrap.fill(text, chars)


def short_labels(names: Sequence[str]) -> tuple[list[str], str]:
    """``names`` without the suffix they all share from a separator on (a grid's
    ``clip-last/sample``, ``logfbank-last/sample`` -> ``clip``, ``logfbank``), and that
    suffix ("" when none, or when it would leave a name empty or the names alike)."""
    if len(names) < 2:
        return list(names), ""
    common = os.path.commonprefix([n[::-1] for n in names])[::-1]  # noqa: RUF071 - by character
    cut = min((common.find(sep) for sep in "/-_:" if sep in common), default=-1)
    if cut < 0:
        return list(names), ""
    suffix = common[cut:]
    short = [n[: len(n) - len(suffix)] for n in names]
    if not all(short) or len(set(short)) < len(short):
        return list(names), ""
    return short, suffix


def filter_text(fakes: str) -> str:
    """What a result's ``fakes`` field (``paper`` or ``all``; older records' spellings too)
    means, for captions (``featstore.trainers.evaluation_filter.describe``)."""
    from featstore.trainers.evaluation_filter import FilterError, describe

    try:
        return describe(fakes)
    except FilterError:
        return fakes


# ------------------------------------------------------------------ Fig. 2


def _encoder_names(value: Any) -> Iterable[str]:
    """Every string in a run config that names a registered encoder (``NAME`` or ``NAME:LAYER``)."""
    if isinstance(value, str):
        yield value.split(":", 1)[0]
    elif isinstance(value, Mapping):
        for key, item in value.items():
            if key not in ("store", "source", "path", "out"):
                yield from _encoder_names(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _encoder_names(item)


def run_modality(config: Mapping[str, Any]) -> str:
    """``audio``, ``visual``, ``audio-visual`` or ``unknown``: the modalities the run reads.

    Found from the encoder names anywhere in the run's config (any kind, any
    config layout), looked up in the encoder registry.
    """
    from featstore.encoders import specs

    registry = specs()
    found = {registry[name].modality for name in _encoder_names(config) if name in registry}
    if not found:
        return "unknown"
    if found == {"audio"} or found == {"visual"}:
        return found.pop()
    return "audio-visual"


@dataclass(frozen=True)
class LocalizationBar:
    """One run's temporal localization AUC and video-level AUC on a test set."""

    label: str
    run: str
    modality: str
    temporal_auc: float
    auc: float
    n_temporal: int  # fake videos in the localization mean
    n: int  # videos in the video-level AUC
    n_real: int
    n_fake: int
    fakes: str  # the evaluation filter: "paper" or "all"


def localization_bars(
    runs: Sequence[Run | str | os.PathLike[str]],
    selection: str,
    *,
    labels: Sequence[str] | None = None,
    fakes: str = "paper",
) -> list[LocalizationBar]:
    """Each run's stored metrics on ``selection`` (``NAME[:SPLIT]``) under the evaluation
    filter ``fakes`` (``paper`` or ``all``) as a Fig. 2 bar."""
    from featstore.trainers.data import Selection
    from featstore.trainers.evaluation_filter import PAPER, check_fakes
    from featstore.trainers.metrics_file import find_metrics
    from featstore.trainers.runs import Run, load_run

    fakes = check_fakes(fakes)

    if not runs:
        raise FigureError("give at least one run")
    if labels is not None and len(labels) != len(runs):
        raise FigureError(f"{len(labels)} labels for {len(runs)} runs")
    key = str(Selection.parse(selection, default_split="test"))
    loaded = [item if isinstance(item, Run) else load_run(item) for item in runs]
    names = labels if labels is not None else _run_labels(loaded)
    bars = []
    for i, run in enumerate(loaded):
        metrics = find_metrics(run, key, fakes)
        if metrics is None:
            option = "" if fakes == PAPER else f" --fakes {fakes}"
            raise FigureError(
                f"run {run.path} has no metrics for {key} with the {fakes} filter; run "
                f"`featstore eval {run.path} --on {key}{option}` first"
            )
        temporal = metrics.get("temporal")
        if not temporal:
            raise FigureError(
                f"run {run.path} has no temporal localization AUC on {key} (no per-frame "
                "scores, or no annotated fake segments)"
            )
        binary = metrics["binary"]
        bars.append(
            LocalizationBar(
                label=names[i],
                run=str(run.path),
                modality=run_modality(run.config),
                temporal_auc=float(temporal["mean"]),
                auc=float(binary["auc"]),
                n_temporal=int(temporal["n_videos"]),
                n=int(binary["n"]),
                n_real=int(binary["n_real"]),
                n_fake=int(binary["n_fake"]),
                # Metrics from before the temporal AUC recorded its filter counted every fake.
                fakes=_temporal_filter(temporal),
            )
        )
    filters = sorted({b.fakes for b in bars})
    if len(filters) > 1:
        raise FigureError(
            f"the runs' metrics use different evaluation filters ({', '.join(filters)}); "
            f"evaluate them alike (featstore eval RUN --on {key} --fakes {fakes})"
        )
    return bars


def _temporal_filter(temporal: Mapping[str, Any]) -> str:
    """The filter a stored temporal AUC used (``paper``/``all``; older records said which
    in other words, and the oldest counted every fake without saying so)."""
    from featstore.trainers.evaluation_filter import recorded_fakes

    if "fakes" not in temporal:
        return "all fakes (unfiltered, older metrics)"
    return recorded_fakes(temporal)


def _run_labels(runs: Sequence[Run]) -> list[str]:
    """Run directory names; ``parent/name`` where they clash (a grid's ``<feature>/<dataset>``)."""
    names = [r.name for r in runs]
    if len(set(names)) < len(names):
        names = [f"{r.path.parent.name}/{r.name}" for r in runs]
    if len(set(names)) < len(names):
        names = [f"{i}:{r.name}" for i, r in enumerate(runs)]
    return names


def _span(values: Sequence[int]) -> str:
    lo, hi = min(values), max(values)
    return f"{lo}" if lo == hi else f"{lo}-{hi}"


def localization_caption(bars: Sequence[LocalizationBar], selection: str) -> str:
    """What Fig. 2 shows, on which videos (n) and with which filter."""
    fakes = bars[0].fakes
    which = filter_text(fakes)
    return (
        f"{selection}: temporal localization AUC (solid; mean per-video frame-level AUC over "
        f"n = {_span([b.n_temporal for b in bars])} fake videos with annotated segments) "
        f"and video-level AUC (hatched; n = {_span([b.n for b in bars])} videos, "
        f"{_span([b.n_real for b in bars])} real / {_span([b.n_fake for b in bars])} fake); "
        f"{which}. Colour: modality."
    )


def localization_figure(
    bars: Sequence[LocalizationBar],
    path: str | os.PathLike[str],
    *,
    selection: str,
    width_in: float = COLUMN_WIDTH_IN,
    height_in: float = 2.6,
    caption: bool = True,
) -> Path:
    """Fig. 2: per run, temporal localization AUC (solid) and video AUC (hatched), in %."""
    from matplotlib.patches import Patch

    if not bars:
        raise FigureError("no bars to draw")
    with paper_style():
        fig = new_figure(width_in, height_in)
        ax = fig.add_subplot()
        x = np.arange(len(bars))
        w = 0.38
        for i, bar in enumerate(bars):
            colour = MODALITY_COLOURS.get(bar.modality, MODALITY_COLOURS["unknown"])
            ax.bar(x[i] - w / 2, 100 * bar.temporal_auc, w, color=colour, lw=0)
            ax.bar(
                x[i] + w / 2, 100 * bar.auc, w, facecolor="white", edgecolor=colour,
                hatch="////", lw=0.6,
            )  # fmt: skip
        lows = [100 * min(b.temporal_auc, b.auc) for b in bars]
        ax.set_ylim(max(0.0, math.floor(min(lows) / 10) * 10 - 10), 100)
        ax.axhline(50, color="grey", lw=0.5, ls=":")
        ax.set_xticks(x, labels=[b.label for b in bars], rotation=40, ha="right")
        ax.set_ylabel("AUC (%)")
        ax.grid(axis="y", alpha=0.3, lw=0.4)
        modalities = list(dict.fromkeys(b.modality for b in bars))
        handles = [
            Patch(color=MODALITY_COLOURS.get(m, MODALITY_COLOURS["unknown"]), label=m)
            for m in modalities
        ]
        handles += [
            Patch(facecolor="grey", lw=0, label="localization"),
            Patch(facecolor="white", edgecolor="grey", hatch="////", label="classification"),
        ]
        fig.legend(handles=handles, loc="outside upper center", ncols=3, frameon=False)
        if caption:
            add_caption(fig, localization_caption(bars, selection), width_in)
        return save_figure(fig, path)


def write_json(path: str | os.PathLike[str], doc: Mapping[str, Any]) -> Path:
    """A figure's data beside it (``fig.pdf`` -> ``fig.json``)."""
    out = Path(path).with_suffix(".json")
    out.write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n")
    return out
