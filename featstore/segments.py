"""Single-speaker segments of a video from its scored face tracks (paper Supp. C).

The paper keeps a span of an in-the-wild video when (i) the video has an audio stream,
(ii) exactly one speaking face is tracked in every frame, (iii) that face is larger than
100x100 px and (iv) the span lasts 3-60 s. :func:`find_segments` applies these rules per
25 fps frame and says why every other frame was dropped:

- each frame gets a state: ``no_face`` (no track), ``nobody_speaking`` (no track scores
  >= 0), ``several_faces`` (two or more tracks score >= 0), ``face_too_small`` (the one
  speaking face's box side is under ``min_face_px``), or "track k speaks";
- a pause of at most ``max_gap_s`` inside one track's speech (frames where nobody speaks,
  the same face is still tracked and large enough) is kept in the segment: speakers pause
  between phrases and a segment of continuous speech only would be a few seconds long (the
  paper's segments average 14 s). TalkNet's scores, smoothed as its demo does, dip in such
  pauses too;
- runs of one track speaking shorter than ``min_s`` are dropped as ``too_short``; runs
  longer than ``max_s`` are cut into ``ceil(L / max_s)`` equal parts (each between
  ``max_s / 2`` and ``max_s``, so never too short when ``max_s >= 2 min_s``) rather than
  into ``max_s`` pieces and a short remainder.

A segment never crosses a shot boundary, because tracks do not.

>>> result = find_segments(n_frames, tracks, SegmentRules())  # doctest: +SKIP
>>> [(s.start_s, s.end_s) for s in result.segments]  # doctest: +SKIP
[(0.24, 7.96)]
"""

from __future__ import annotations

import enum
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from featstore import timebase

__all__ = ["DropReason", "ScoredTrack", "Segment", "SegmentRules", "VideoSegments", "find_segments"]

_FPS = timebase.FRAME_HZ


class DropReason(enum.StrEnum):
    NO_AUDIO = "no_audio"
    NO_FACE = "no_face"
    SEVERAL_FACES = "several_faces"
    NOBODY_SPEAKING = "nobody_speaking"
    FACE_TOO_SMALL = "face_too_small"
    TOO_SHORT = "too_short"


@dataclass(frozen=True)
class SegmentRules:
    min_s: float = 3.0
    max_s: float = 60.0
    min_face_px: float = 100.0
    max_gap_s: float = 0.5

    def __post_init__(self) -> None:
        if not 0 < self.min_s <= self.max_s:
            raise ValueError(f"need 0 < min_s <= max_s, got {self.min_s}, {self.max_s}")
        if self.min_face_px < 0 or self.max_gap_s < 0:
            raise ValueError("min_face_px and max_gap_s must be >= 0")


@dataclass(frozen=True, eq=False)
class ScoredTrack:
    """A face track over frames ``[start, start + T)`` with per-frame scores and face sizes."""

    start: int
    scores: np.ndarray  # [T] speaking where >= 0
    face_px: np.ndarray  # [T] side of the face box in pixels

    @property
    def end(self) -> int:
        return self.start + len(self.scores)


@dataclass(frozen=True)
class Segment:
    """Frames ``[start_frame, end_frame)`` where track ``track`` is the one speaker."""

    start_frame: int
    end_frame: int
    track: int

    @property
    def start_s(self) -> float:
        return self.start_frame / _FPS

    @property
    def end_s(self) -> float:
        return self.end_frame / _FPS

    @property
    def duration_s(self) -> float:
        return (self.end_frame - self.start_frame) / _FPS


@dataclass(frozen=True)
class VideoSegments:
    n_frames: int
    segments: tuple[Segment, ...]
    dropped: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # reason -> spans

    def dropped_s(self) -> dict[str, float]:
        return {r: sum(e - s for s, e in spans) / _FPS for r, spans in self.dropped.items()}


def _runs(values: np.ndarray) -> list[tuple[int, int, int]]:
    """``(start, end, value)`` of maximal runs of equal values."""
    if len(values) == 0:
        return []
    change = np.flatnonzero(np.diff(values)) + 1
    starts = np.r_[0, change]
    ends = np.r_[change, len(values)]
    return [(int(s), int(e), int(values[s])) for s, e in zip(starts, ends, strict=True)]


# frame states below 0 are drop reasons; >= 0 the index of the speaking track
_STATE = {
    DropReason.NO_FACE: -1,
    DropReason.NOBODY_SPEAKING: -2,
    DropReason.SEVERAL_FACES: -3,
    DropReason.FACE_TOO_SMALL: -4,
    DropReason.TOO_SHORT: -5,
}
_REASON = {v: k for k, v in _STATE.items()}


def find_segments(
    n_frames: int, tracks: Sequence[ScoredTrack], rules: SegmentRules, *, has_audio: bool = True
) -> VideoSegments:
    """Segments and dropped spans (frame ranges by reason) of a video of ``n_frames``."""
    if not has_audio:
        dropped = {DropReason.NO_AUDIO.value: [(0, n_frames)]} if n_frames else {}
        return VideoSegments(n_frames, (), dropped)
    covered = np.zeros(n_frames, dtype=int)
    n_speaking = np.zeros(n_frames, dtype=int)
    speaker = np.full(n_frames, -1)
    large = np.zeros(n_frames, dtype=bool)  # the speaking face is large enough
    ok_face = np.zeros((len(tracks), n_frames), dtype=bool)  # tracked and large enough
    for k, tr in enumerate(tracks):
        s, e = tr.start, min(tr.end, n_frames)
        sc, px = tr.scores[: e - s], tr.face_px[: e - s]
        covered[s:e] += 1
        talk = sc >= 0
        n_speaking[s:e] += talk
        speaker[s:e][talk] = k
        large[s:e][talk] = px[talk] >= rules.min_face_px
        ok_face[k, s:e] = px >= rules.min_face_px
    state = np.full(n_frames, _STATE[DropReason.NO_FACE])
    state[covered > 0] = _STATE[DropReason.NOBODY_SPEAKING]
    one = n_speaking == 1
    state[n_speaking > 1] = _STATE[DropReason.SEVERAL_FACES]
    state[one & ~large] = _STATE[DropReason.FACE_TOO_SMALL]
    state[one & large] = speaker[one & large]
    _bridge_pauses(state, ok_face, round(rules.max_gap_s * _FPS))

    segments = []
    min_frames = math.ceil(rules.min_s * _FPS - 1e-9)
    max_frames = math.floor(rules.max_s * _FPS + 1e-9)
    for s, e, k in _runs(state):
        if k < 0:
            continue
        if e - s < min_frames:
            state[s:e] = _STATE[DropReason.TOO_SHORT]
            continue
        parts = math.ceil((e - s) / max_frames)
        bounds = np.linspace(s, e, parts + 1).round().astype(int)
        segments += [Segment(int(a), int(b), k) for a, b in itertools.pairwise(bounds)]
    dropped: dict[str, list[tuple[int, int]]] = {}
    for s, e, k in _runs(state):
        if k < 0:
            dropped.setdefault(_REASON[k].value, []).append((s, e))
    return VideoSegments(n_frames, tuple(segments), dropped)


def _bridge_pauses(state: np.ndarray, ok_face: np.ndarray, max_gap: int) -> None:
    """Fill short 'nobody speaking' gaps between two runs of the same track, in place."""
    runs = _runs(state)
    for i in range(1, len(runs) - 1):
        s, e, v = runs[i]
        before, after = runs[i - 1][2], runs[i + 1][2]
        if (
            v == _STATE[DropReason.NOBODY_SPEAKING]
            and before >= 0
            and before == after
            and e - s <= max_gap
            and ok_face[before, s:e].all()
        ):
            state[s:e] = before
