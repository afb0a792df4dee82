"""Per-frame scores to fake segments (temporal explanations) and ranked segment proposals.

Row ``t`` of a score track at ``frame_hz`` covers ``[t / frame_hz, (t + 1) / frame_hz)``
seconds (``featstore.timebase``), so a run of rows ``a .. b - 1`` is the segment
``[a / frame_hz, b / frame_hz)``. Higher score = more fake.

>>> scores_to_segments(np.array([0, 0, 0, 1, 2, 1, 0.0]), 25.0)
[Segment(start_s=0.12, end_s=0.24, score=2.0)]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from featstore.timebase import row_bounds_s
from featstore.trainers.metrics import MetricError
from featstore.trainers.segments import iou_matrix

__all__ = [
    "DEFAULT_QUANTILES",
    "Segment",
    "mask_runs",
    "proposals_from_scores",
    "run_confidences",
    "scores_to_segments",
]

# Candidate thresholds of proposals_from_scores: these quantiles of the video's own scores.
DEFAULT_QUANTILES: tuple[float, ...] = tuple(
    float(q) for q in np.round(np.arange(0.05, 1.0, 0.05), 2)
)

# Slack for comparing durations computed from row counts with durations in seconds.
_EPS_S = 1e-9


@dataclass(frozen=True)
class Segment:
    """A fake segment ``[start_s, end_s)`` and its score (the highest frame score inside)."""

    start_s: float
    end_s: float
    score: float

    def to_list(self) -> list[float]:
        """``[start_s, end_s, score]``, JSON-ready."""
        return [self.start_s, self.end_s, self.score]


def _check_scores(frame_scores: np.ndarray, frame_hz: float) -> np.ndarray:
    """Validate ``frame_scores [T]`` (finite) and ``frame_hz``; return float64 scores."""
    if not (frame_hz > 0 and math.isfinite(frame_hz)):
        raise MetricError(f"frame_hz must be a positive finite number, got {frame_hz!r}")
    s = np.asarray(frame_scores, dtype=np.float64)
    if s.ndim != 1:
        raise MetricError(f"frame scores must be 1-D [T], got shape {s.shape}")
    if not np.all(np.isfinite(s)):
        raise MetricError(f"{int(np.sum(~np.isfinite(s)))} frame scores are NaN or infinite")
    return s


def mask_runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First rows ``[K]`` and end rows (exclusive) ``[K]`` of the runs of True in ``mask [T]``."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)


def scores_to_segments(
    frame_scores: np.ndarray,
    frame_hz: float,
    *,
    threshold: float = 0.0,
    min_duration_s: float = 0.0,
    merge_gap_s: float = 0.0,
) -> list[Segment]:
    """Runs of rows scoring strictly above ``threshold``, as segments in seconds.

    Runs separated by at most ``merge_gap_s`` seconds are merged first, then
    segments shorter than ``min_duration_s`` are dropped.
    """
    s = _check_scores(frame_scores, frame_hz)  # [T]
    if min_duration_s < 0 or merge_gap_s < 0:
        raise MetricError("min_duration_s and merge_gap_s must be >= 0")
    starts, ends = mask_runs(s > threshold)  # [K], [K]
    if starts.size == 0:
        return []
    # Merge: a run absorbs the next one when the rows between them last <= merge_gap_s.
    gap_s = (starts[1:] - ends[:-1]) / frame_hz  # [K - 1]
    keep_break = np.concatenate([[True], gap_s > merge_gap_s + _EPS_S])  # run i opens a segment
    seg_starts = starts[keep_break]
    seg_ends = ends[np.concatenate([keep_break[1:], [True]])]
    long_enough = (seg_ends - seg_starts) / frame_hz >= min_duration_s - _EPS_S
    bounds = row_bounds_s(s.shape[0], frame_hz)  # [T, 2]
    return [
        Segment(float(bounds[a, 0]), float(bounds[b - 1, 1]), float(s[a:b].max()))
        for a, b in zip(seg_starts[long_enough], seg_ends[long_enough], strict=True)
    ]


def _contrast(s: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """``[K]`` mean score inside each run minus the higher mean of its two neighbourhoods.

    Each neighbourhood is as many rows as the run, clipped to the video; a side
    beyond the video is left out, and a run covering the whole video has
    contrast 0.
    """
    t = s.shape[0]
    csum = np.concatenate([[0.0], np.cumsum(s)])  # [T + 1]
    length = ends - starts
    inside = (csum[ends] - csum[starts]) / length
    lo = np.maximum(starts - length, 0)
    hi = np.minimum(ends + length, t)
    n_left, n_right = starts - lo, hi - ends
    left = np.where(n_left > 0, (csum[starts] - csum[lo]) / np.maximum(n_left, 1), -np.inf)
    right = np.where(n_right > 0, (csum[hi] - csum[ends]) / np.maximum(n_right, 1), -np.inf)
    context = np.maximum(left, right)
    return np.where(np.isfinite(context), inside - context, 0.0)


def run_confidences(scores: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """``[K]`` confidences in (0, 1) of the runs ``[starts, ends)`` of ``scores [T]``.

    The contrast of each run (its mean score minus the higher mean of its two
    neighbourhoods, as many rows as the run on each side) squashed by
    ``0.5 + 0.5 * c / (1 + |c|)``: monotone, and without the ties a saturating
    sigmoid gives for large logits. :func:`proposals_from_scores` ranks by it.
    """
    s = np.asarray(scores, dtype=np.float64)
    starts, ends = np.asarray(starts, dtype=np.int64), np.asarray(ends, dtype=np.int64)
    if starts.size == 0:
        return np.zeros(0, dtype=np.float64)
    contrast = _contrast(s, starts, ends)
    return 0.5 + 0.5 * contrast / (1.0 + np.abs(contrast))


def _nms(rows: np.ndarray, confidence: np.ndarray, *, iou: float, limit: int) -> np.ndarray:
    """Indices of the kept ``rows [K, 2]``, by confidence descending (greedy NMS)."""
    order = np.argsort(-confidence, kind="stable")
    kept: list[int] = []
    while order.size and len(kept) < limit:
        best = int(order[0])
        kept.append(best)
        overlap = iou_matrix(rows[order[1:]], rows[[best]])[:, 0]  # [K']
        order = order[1:][overlap <= iou]
    return np.asarray(kept, dtype=np.int64)


def proposals_from_scores(
    frame_scores: np.ndarray,
    frame_hz: float,
    *,
    thresholds: Sequence[float] | None = None,
    max_proposals: int = 100,
    nms_iou: float = 0.7,
    min_rows: int = 1,
) -> list[tuple[float, float, float]]:
    """Ranked ``(confidence, start_s, end_s)`` fake-segment proposals of one video.

    Candidates are the runs above each threshold (default: the 5 %, 10 %, ..., 95 %
    quantiles of the video's scores, so that segments of any extent appear at some
    threshold). Confidence is the *contrast* of a run: its mean score minus the
    higher of the mean scores of the two neighbourhoods (as many rows as the run
    on each side), squashed to (0, 1) by ``0.5 + 0.5 * c / (1 + |c|)`` (monotone,
    and without the ties a saturating sigmoid gives for large logits). A run cut
    too short has fake rows on one side and one too long has real rows inside, so
    the best-localised run of a fake segment ranks first; contrasts stay in score
    units so that confidences are comparable across videos, as AP ranks them all
    together (a weaker fake segment can rank below a loose run around a stronger
    one). Runs shorter than ``min_rows`` are not candidates. Greedy non-maximum
    suppression at ``nms_iou`` removes near duplicates.

    >>> s = np.zeros(100); s[40:60] = 1.0
    >>> proposals_from_scores(s, 25.0)[0]
    (0.75, 1.6, 2.4)
    """
    s = _check_scores(frame_scores, frame_hz)  # [T]
    if max_proposals < 1:
        raise MetricError(f"max_proposals must be >= 1, got {max_proposals}")
    if not 0.0 <= nms_iou <= 1.0:
        raise MetricError(f"nms_iou must be in [0, 1], got {nms_iou}")
    if min_rows < 1:
        raise MetricError(f"min_rows must be >= 1, got {min_rows}")
    if s.size == 0:
        return []
    levels = np.quantile(s, DEFAULT_QUANTILES) if thresholds is None else thresholds
    found = {
        (int(a), int(b))
        for level in np.unique(np.asarray(levels, dtype=np.float64))
        for a, b in zip(*mask_runs(s > level), strict=True)
        if b - a >= min_rows
    }
    if not found:
        return []
    rows = np.asarray(sorted(found), dtype=np.int64)  # [K, 2] first row, end row (exclusive)
    confidence = run_confidences(s, rows[:, 0], rows[:, 1])  # [K]
    kept = _nms(rows.astype(np.float64), confidence, iou=nms_iou, limit=max_proposals)
    bounds = row_bounds_s(s.shape[0], frame_hz)  # [T, 2]
    return [
        (float(confidence[k]), float(bounds[rows[k, 0], 0]), float(bounds[rows[k, 1] - 1, 1]))
        for k in kept
    ]
