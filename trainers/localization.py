"""Fake segments people can act on: per-frame scores -> smoothed, merged, ranked segments.

Every run kind gives per-frame scores on its logit scale (higher = more fake,
row ``t`` covers ``[t / frame_hz, (t + 1) / frame_hz)``). Read raw at 0 (the
paper's reading), they flag 40 ms fragments on real videos and miss fakes
whose every frame is below 0. :class:`SegmentRules` says how a run reads them
instead; it is recorded in the run's config (``localization.rules``, with a
threshold calibrated on validation data: :mod:`featstore.trainers.calibration`) and
every field can be overridden per request (HTTP query parameters, ``eval``
options):

1. **smooth**: a running median over ``smooth_s`` seconds (an odd number of
   rows, edges repeated). A median removes a 1-row spike and fills a 1-row dip
   without moving a segment's edges, which a mean would blur.
2. **threshold**: rows whose smoothed score is above ``threshold``.
3. **merge**: runs separated by at most ``merge_gap_s`` seconds become one.
4. **minimum length**: segments shorter than ``min_segment_s`` are dropped.
5. **rank**: each segment's confidence in (0, 1) is the contrast of its rows
   against their neighbourhood (:func:`featstore.trainers.temporal.run_confidences`),
   the measure the AV-Deepfake1M proposals are ranked by, so segments and
   proposals compare.

:func:`localize` also gives the ranked proposals (``(confidence, start_s,
end_s)``, what AV1M's AP/AR consume: runs above many levels of the smoothed
scores, at least ``min_segment_s`` long) and, for a video labelled fake,
guarantees at least one segment: when nothing passes the threshold its
top-ranked proposal is returned flagged ``below_threshold``.

>>> s = np.zeros(50); s[20:30] = 2.0; s[5] = 9.0  # a segment and a 1-row spike
>>> [(x.start_s, x.end_s) for x in localize(s, 25.0, DEFAULT_RULES).segments]
[(0.8, 1.2)]
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from featstore.timebase import row_bounds_s
from featstore.trainers.metrics import MetricError

__all__ = [
    "DEFAULT_RULES",
    "PAPER_RULES",
    "LocalSegment",
    "Localization",
    "SegmentRules",
    "find_segments",
    "localize",
    "smooth",
    "smoothing_rows",
]

MAX_SMOOTH_S = 10.0  # a running median wider than this smooths a segment away

# Slack for comparing durations computed from row counts with durations in seconds.
_EPS_S = 1e-9


@dataclass(frozen=True)
class SegmentRules:
    """How per-frame scores become segments (see the module docstring)."""

    threshold: float = 0.0
    smooth_s: float = 0.0
    min_segment_s: float = 0.0
    merge_gap_s: float = 0.0

    def __post_init__(self) -> None:
        for name in ("threshold", "smooth_s", "min_segment_s", "merge_gap_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise MetricError(f"{name} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise MetricError(f"{name} must be finite, got {value!r}")
            object.__setattr__(self, name, float(value))
        for name in ("smooth_s", "min_segment_s", "merge_gap_s"):
            if getattr(self, name) < 0:
                raise MetricError(f"{name} must be >= 0 seconds, got {getattr(self, name)}")
        if self.smooth_s > MAX_SMOOTH_S:
            raise MetricError(f"smooth_s must be at most {MAX_SMOOTH_S:g} s, got {self.smooth_s}")

    def with_(self, **overrides: float | None) -> SegmentRules:
        """These rules with the given fields replaced (``None``: keep)."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def post_processing(self) -> dict[str, float]:
        """Everything but the threshold (what calibration holds fixed)."""
        return {k: v for k, v in asdict(self).items() if k != "threshold"}

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> SegmentRules:
        unknown = set(doc) - {"threshold", "smooth_s", "min_segment_s", "merge_gap_s"}
        if unknown:
            raise MetricError(f"unknown keys {sorted(unknown)} in segment rules")
        return cls(**dict(doc))


PAPER_RULES = SegmentRules()
"""The paper's reading of per-frame scores: every row above 0, nothing else."""

DEFAULT_RULES = SegmentRules(smooth_s=0.2, min_segment_s=0.2, merge_gap_s=0.2)
"""Post-processing of new runs (their threshold is calibrated): 0.2 s is 5 rows at 25 Hz,
so 1- and 2-row spikes go, and gaps of a word's pause are bridged."""


@dataclass(frozen=True)
class LocalSegment:
    """A fake segment ``[start_s, end_s)``: its highest smoothed score, its confidence in
    (0, 1), and whether it is only there because the video is labelled fake."""

    start_s: float
    end_s: float
    score: float
    confidence: float
    below_threshold: bool = False

    def to_list(self) -> list[float]:
        """``[start_s, end_s, score]`` (the API's ``segments`` entries)."""
        return [self.start_s, self.end_s, self.score]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Localization:
    """One video's segments (time order) and ranked proposals under ``rules``."""

    rules: SegmentRules
    segments: tuple[LocalSegment, ...] = ()
    proposals: tuple[tuple[float, float, float], ...] = field(default=(), repr=False)


def smoothing_rows(frame_hz: float, smooth_s: float) -> int:
    """Rows of the running median: ``smooth_s`` seconds, rounded to an odd count >= 1."""
    rows = round(smooth_s * frame_hz)
    return max(1, rows if rows % 2 else rows + 1) if rows > 1 else 1


def _check(frame_scores: np.ndarray, frame_hz: float) -> np.ndarray:
    if not (frame_hz > 0 and math.isfinite(frame_hz)):
        raise MetricError(f"frame_hz must be a positive finite number, got {frame_hz!r}")
    s = np.asarray(frame_scores, dtype=np.float64)
    if s.ndim != 1:
        raise MetricError(f"frame scores must be 1-D [T], got shape {s.shape}")
    if not np.all(np.isfinite(s)):
        raise MetricError(f"{int(np.sum(~np.isfinite(s)))} frame scores are NaN or infinite")
    return s


def smooth(frame_scores: np.ndarray, frame_hz: float, smooth_s: float) -> np.ndarray:
    """``[T]`` running median of ``frame_scores [T]`` over ``smooth_s`` seconds (edges repeated)."""
    from scipy.ndimage import median_filter

    s = _check(frame_scores, frame_hz)
    k = smoothing_rows(frame_hz, smooth_s)
    if k == 1 or s.size == 0:
        return s
    return median_filter(s, size=k, mode="nearest")


def _segment_rows(
    smoothed: np.ndarray, frame_hz: float, rules: SegmentRules
) -> tuple[np.ndarray, np.ndarray]:
    """First and end rows ``[K]`` of the segments of already smoothed scores."""
    from featstore.trainers.temporal import mask_runs

    starts, ends = mask_runs(smoothed > rules.threshold)
    if starts.size == 0:
        return starts, ends
    gap_s = (starts[1:] - ends[:-1]) / frame_hz  # [K - 1]
    opens = np.concatenate([[True], gap_s > rules.merge_gap_s + _EPS_S])  # run i opens a segment
    seg_starts = starts[opens]
    seg_ends = ends[np.concatenate([opens[1:], [True]])]
    long_enough = (seg_ends - seg_starts) / frame_hz >= rules.min_segment_s - _EPS_S
    return seg_starts[long_enough], seg_ends[long_enough]


def _segments(
    smoothed: np.ndarray, frame_hz: float, starts: np.ndarray, ends: np.ndarray, *, below: bool
) -> list[LocalSegment]:
    from featstore.trainers.temporal import run_confidences

    bounds = row_bounds_s(smoothed.shape[0], frame_hz)  # [T, 2]
    confidence = run_confidences(smoothed, starts, ends)
    return [
        LocalSegment(
            float(bounds[a, 0]),
            float(bounds[b - 1, 1]),
            float(smoothed[a:b].max()),
            float(c),
            below,
        )
        for a, b, c in zip(starts, ends, confidence, strict=True)
    ]


def find_segments(
    frame_scores: np.ndarray, frame_hz: float, rules: SegmentRules, *, smoothed: bool = False
) -> list[LocalSegment]:
    """The segments of one video under ``rules``, in time order (none may pass).

    ``smoothed``: the scores are already smoothed by ``rules.smooth_s``.
    """
    s = (
        _check(frame_scores, frame_hz)
        if smoothed
        else smooth(frame_scores, frame_hz, rules.smooth_s)
    )
    starts, ends = _segment_rows(s, frame_hz, rules)
    return _segments(s, frame_hz, starts, ends, below=False)


def min_rows(frame_hz: float, rules: SegmentRules) -> int:
    """The fewest rows a segment of ``rules`` has (at least 1)."""
    return max(1, math.ceil(rules.min_segment_s * frame_hz - 1e-6))


def localize(
    frame_scores: np.ndarray,
    frame_hz: float,
    rules: SegmentRules,
    *,
    fake: bool = False,
    max_proposals: int = 100,
) -> Localization:
    """Segments (time order) and ranked proposals of one video under ``rules``.

    With ``fake`` (the video is labelled fake) the result has at least one
    segment: when none passes the threshold, the top-ranked proposal (or the
    whole video, when its smoothed scores are constant) flagged
    ``below_threshold``.
    """
    from featstore.trainers.temporal import proposals_from_scores

    s = smooth(frame_scores, frame_hz, rules.smooth_s)  # [T]
    if s.size == 0:
        return Localization(rules)
    starts, ends = _segment_rows(s, frame_hz, rules)
    segments = _segments(s, frame_hz, starts, ends, below=False)
    proposals = proposals_from_scores(
        s, frame_hz, max_proposals=max_proposals, min_rows=min(min_rows(frame_hz, rules), s.size)
    )
    if fake and not segments:
        segments = [_top_segment(s, frame_hz, proposals)]
    return Localization(rules, tuple(segments), tuple(proposals))


def _top_segment(
    smoothed: np.ndarray, frame_hz: float, proposals: list[tuple[float, float, float]]
) -> LocalSegment:
    """The best proposal as a below-threshold segment (the whole video without one)."""
    from featstore.trainers.temporal import run_confidences

    t = smoothed.shape[0]
    if proposals:
        confidence, start_s, end_s = proposals[0]
        a = round(start_s * frame_hz)
        b = max(a + 1, min(t, round(end_s * frame_hz)))
    else:
        a, b = 0, t
        confidence = float(run_confidences(smoothed, np.array([a]), np.array([b]))[0])
    bounds = row_bounds_s(t, frame_hz)
    return LocalSegment(
        float(bounds[a, 0]), float(bounds[b - 1, 1]), float(smoothed[a:b].max()),
        float(confidence), True,
    )  # fmt: skip
