"""Agreement of spatial explanations with human clicks (paper Sec. 6.2, Fig. 4): the numbers.

ExDDV's annotators clicked where they saw artifacts; a click is a frame index of
the *source* video and a point relative to the frame. The paper measures the
mean absolute error between a click and the maximum of the explanation's map on
the clicked frame, as a function of the minimum fakeness score, beside
baselines: a random position, the frame centre, the face centre, and a model
trained to predict clicks.

Here, per click, ``error = (|x - x_click| + |y - y_click|) / 2`` (the MAE of the
two relative coordinates); per video, the mean over its clicks (all annotators'
clicks on every clicked frame); per threshold ``tau`` of the curve, the mean and
standard deviation over the fake videos whose score is ``>= tau``, and their
number. Every method is evaluated on the same videos at each threshold.

Pure functions on arrays and frames; :mod:`featstore.trainers.clicks_eval` reads the store
and runs the explainer.

>>> click_errors(np.array([[0.5, 0.5]]), np.array([[0.6, 0.3]])).round(3).tolist()
[0.15]
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from featstore import timebase
from featstore.errors import FeatstoreError

__all__ = [
    "CENTRE",
    "COORDS",
    "DEFAULT_THRESHOLDS",
    "EXDDV_TOOL_HW",
    "FACE",
    "RANDOM",
    "Click",
    "ClickError",
    "click_errors",
    "clicks_of_row",
    "curve",
    "face_centres",
    "random_points",
    "to_output_frame",
    "tool_to_frame",
    "video_errors",
]

RANDOM, CENTRE, FACE = "random", "frame centre", "face centre"
COORDS = ("frame", "exddv-tool")
"""How click coordinates are relative: ``frame`` (to the video frame, as ExDDV documents
them and the paper reads them) or ``exddv-tool`` (to the annotation tool's 600x500 display
box, see :func:`tool_to_frame`)."""
EXDDV_TOOL_HW = (500, 600)
DEFAULT_THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(20))  # 0.00 .. 0.95


class ClickError(FeatstoreError):
    """Clicks or predictions cannot be read or evaluated as given."""


@dataclass(frozen=True)
class Click:
    """One human click: the source frame index, its 25 fps frame, and the point (relative)."""

    video_id: str
    source_frame: int
    frame: int  # 25 fps output frame
    x: float
    y: float
    annotator: str = ""


def to_output_frame(source_frame: int, source_fps: float, fps: float = timebase.FRAME_HZ) -> int:
    """The 25 fps frame nearest in time to frame ``source_frame`` of a ``source_fps`` video."""
    if not (source_fps > 0 and math.isfinite(source_fps)):
        raise ClickError(f"the source frame rate must be a positive number, got {source_fps!r}")
    return math.floor(source_frame * fps / source_fps + 0.5)


def tool_to_frame(x: float, y: float, frame_hw: tuple[int, int]) -> tuple[float, float]:
    """Coordinates recorded by ExDDV's annotation tool -> relative to the frame.

    The tool (``main.py`` of the ExDDV repository) shows the frame scaled to fit a
    600x500 box, aspect kept (``int`` sizes), and records ``x / 600, y / 500`` of the
    click on the shown image; so a 16:9 video's clicks span ``y`` in ``[0, 0.68]``.
    This maps them back to ``x / W, y / H`` of the frame.
    """
    h, w = frame_hw
    box_h, box_w = EXDDV_TOOL_HW
    if w / h > box_w / box_h:
        shown_w, shown_h = box_w, int(box_w / (w / h))
    else:
        shown_w, shown_h = int(box_h * (w / h)), box_h
    return x * box_w / shown_w, y * box_h / shown_h


def clicks_of_row(
    video_id: str,
    row: Mapping[str, object],
    *,
    source_fps: float,
    coords: str = "frame",
    frame_hw: tuple[int, int] | None = None,
) -> list[Click]:
    """Every annotator's clicks of a manifest row (ExDDV's ``annotations``, else ``clicks``)."""
    if coords not in COORDS:
        raise ClickError(f"click coordinates must be one of {COORDS}, got {coords!r}")
    if coords == "exddv-tool" and frame_hw is None:
        raise ClickError("exddv-tool coordinates need the frame size")
    annotations = row.get("annotations")
    if not isinstance(annotations, list) or not annotations:
        annotations = [{"clicks": row.get("clicks"), "username": row.get("username", "")}]
    out = []
    for ann in annotations:
        for c in ann.get("clicks") or []:
            x, y = float(c["x"]), float(c["y"])
            if coords == "exddv-tool":
                x, y = tool_to_frame(x, y, frame_hw)  # type: ignore[arg-type]
            out.append(
                Click(
                    video_id=video_id,
                    source_frame=int(c["frame"]),
                    frame=to_output_frame(int(c["frame"]), source_fps),
                    x=x,
                    y=y,
                    annotator=str(ann.get("username") or ""),
                )
            )
    return out


def click_errors(points: np.ndarray, clicks: np.ndarray) -> np.ndarray:
    """``[N, 2]`` predicted and clicked (x, y), relative -> ``[N]`` mean absolute errors."""
    p, c = np.asarray(points, dtype=np.float64), np.asarray(clicks, dtype=np.float64)
    if p.shape != c.shape or p.ndim != 2 or p.shape[1] != 2:
        raise ClickError(f"expected two [N, 2] point arrays, got {p.shape} and {c.shape}")
    return np.abs(p - c).mean(axis=1)


def random_points(n: int, *, seed: int) -> np.ndarray:
    """``[n, 2]`` uniform positions in the frame (the random baseline), reproducible."""
    return np.random.default_rng(seed).uniform(0.0, 1.0, size=(n, 2))


def face_centres(boxes: np.ndarray, frame_hw: tuple[int, int]) -> np.ndarray:
    """``[N, 4]`` face boxes (x0, y0, x1, y1; pixel centres) -> ``[N, 2]`` relative centres."""
    b = np.asarray(boxes, dtype=np.float64)
    centre = (b[:, :2] + b[:, 2:4]) / 2 + 0.5  # pixel-centre -> edge coordinates
    return centre / np.array([frame_hw[1], frame_hw[0]], dtype=np.float64)


def video_errors(table: pd.DataFrame, methods: Sequence[str]) -> pd.DataFrame:
    """Per-click ``table`` (``video_id``, ``score``, one error column per method) -> one row per
    video: its score and each method's mean error over its clicks (NaN clicks skipped)."""
    missing = [m for m in ("video_id", "score", *methods) if m not in table.columns]
    if missing:
        raise ClickError(f"the click table lacks columns {missing}")
    agg = {"score": "first", **{m: "mean" for m in methods}}
    return table.groupby("video_id", sort=True).agg(agg).reset_index()


def curve(
    videos: pd.DataFrame,
    methods: Sequence[str],
    *,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
) -> pd.DataFrame:
    """MAE against the minimum fakeness score: rows (threshold, method, n_videos, mean, std).

    At each threshold a method is averaged over the videos with ``score >= threshold``
    that it has an error for; ``std`` is the population standard deviation over those
    videos (NaN when there are none).
    """
    rows = []
    scores = videos["score"].to_numpy(dtype=np.float64)
    for tau in thresholds:
        keep = scores >= tau
        for m in methods:
            e = videos[m].to_numpy(dtype=np.float64)[keep]
            e = e[np.isfinite(e)]
            rows.append(
                {
                    "threshold": float(tau),
                    "method": m,
                    "n_videos": len(e),
                    "mean": float(e.mean()) if len(e) else math.nan,
                    "std": float(e.std()) if len(e) else math.nan,
                }
            )
    return pd.DataFrame(rows, columns=["threshold", "method", "n_videos", "mean", "std"])
