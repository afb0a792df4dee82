"""Decode only chosen frames of a video, by seeking: the frames ``decode`` would give at those indices.

Spatial explanations look at a handful of frames of a long video (the top-scoring
ones, or the frames humans clicked on); decoding the whole clip for them wastes
most of the work. :func:`read_frames` returns, for 25 fps frame indices ``k``,
exactly the arrays ``featstore.media.decode(path).frames[k]`` holds: the same
constant-rate rule (output ``k`` is the last source frame with
``pts <= k / fps``, times counted from the first decoded frame) and the same RGB
conversion at the first frame's size. It seeks to the keyframe before each
target and decodes forward; targets closer than ``max_gap_s`` to the previous one
are reached by decoding on instead of seeking again.

It shares :mod:`featstore.media`'s opening and stream selection (and so its error
types). A stream without timestamps cannot be sought: it falls back to decoding
from the start, keeping only the chosen frames.

>>> frames = read_frames("clip.mp4", [0, 120, 121])  # doctest: +SKIP
>>> frames.shape  # doctest: +SKIP
(3, 720, 1280, 3)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from fractions import Fraction
from typing import Any

import numpy as np

from featstore import timebase
from featstore.decode_limits import DecodeLimits
from featstore.media import (
    DEFAULT_LIMITS,
    EmptyMediaError,
    MediaError,
    NoVideoStreamError,
    _decode_error,
    _frame_time,
    _limit_decoder,
    _open,
    _video_stream,
    iter_frames,
)

log = logging.getLogger(__name__)

__all__ = ["FrameIndexError", "read_frames"]

DEFAULT_MAX_GAP_S = 2.0  # decode on (rather than seek) to a target at most this far ahead


class FrameIndexError(MediaError):
    """A requested frame index is negative or past the end of the video."""


def read_frames(
    path: str | os.PathLike[str],
    indices: Sequence[int],
    *,
    fps: float = timebase.FRAME_HZ,
    max_gap_s: float = DEFAULT_MAX_GAP_S,
    limits: DecodeLimits = DEFAULT_LIMITS,
) -> np.ndarray:
    """``uint8 [len(indices), H, W, 3]`` RGB frames at the given constant-rate indices.

    ``indices`` may be in any order and repeat; the output follows their order.
    ``limits``: the frame size bound of a full decode (the frames kept are only
    the ones asked for).
    """
    wanted = [int(i) for i in indices]
    if not wanted:
        raise ValueError("no frame indices given")
    if min(wanted) < 0:
        raise FrameIndexError(path, f"frame index {min(wanted)} is negative")
    targets = sorted(set(wanted))
    with _open(path) as container:
        vs = _video_stream(container)
        if vs is None:
            raise NoVideoStreamError(path, "no video stream")
        _limit_decoder(str(path), vs, limits)
        vs.thread_type, vs.thread_count = "SLICE", 1
        found = _seek_frames(
            str(path), container, vs, targets, fps=fps, max_gap_s=max_gap_s, limits=limits
        )
    if found is None:  # no timestamps: decode from the start
        found = _scan_frames(path, targets, fps=fps, limits=limits)
    missing = [k for k in targets if k not in found]
    if missing:
        n = max(found) + 1 if found else 0
        raise FrameIndexError(
            path, f"frame {missing[0]} is past the end of the video (it has about {n} frames)"
        )
    return np.stack([found[k] for k in wanted])  # [N, H, W, 3]


def _seek_frames(
    path: str,
    container: Any,
    vs: Any,
    targets: list[int],
    *,
    fps: float,
    max_gap_s: float,
    limits: DecodeLimits,
) -> dict[int, np.ndarray] | None:
    """Frames for sorted ``targets`` by seek + decode; None when the stream has no timestamps."""
    import av

    rate = Fraction(fps).limit_denominator(1_000_000)
    first = _first_frame(path, container, vs)
    t0 = _frame_time(first, vs)
    if t0 is None:
        return None
    size = (first.width, first.height)
    src_rate = vs.average_rate or vs.guessed_rate
    default_dur = Fraction(1) / (Fraction(src_rate) if src_rate else rate)
    gap = Fraction(max_gap_s).limit_denominator(1000)
    out: dict[int, np.ndarray] = {}

    def when(k: int) -> Fraction:  # the time of output frame k
        return t0 + Fraction(k) / rate

    i = 0
    while i < len(targets):
        seek_at = i
        held: Any = None
        held_rgb: np.ndarray | None = None
        held_t = Fraction(0)
        try:
            for frame in _frames_from(path, container, vs, when(targets[i]), t0):
                limits.check_frame_size(path, frame.width, frame.height, where="a decoded frame")
                t = _frame_time(frame, vs)
                if t is None:
                    return None
                # output k shows the held frame while its time is before this frame's
                while i < len(targets) and held is not None and when(targets[i]) < t:
                    if held_rgb is None:
                        held_rgb = _rgb(held, size)
                    out[targets[i]] = held_rgb
                    i += 1
                if i == len(targets):
                    return out
                if i > seek_at and when(targets[i]) - t > gap:
                    break  # the next target is far ahead: seek to it
                held, held_rgb, held_t = frame, None, t
            else:  # end of stream: the last frame lasts until its end
                if held is None:
                    return out
                dur = held.duration
                end = held_t + (dur * (held.time_base or vs.time_base) if dur else default_dur)
                while i < len(targets) and when(targets[i]) < end:
                    if held_rgb is None:
                        held_rgb = _rgb(held, size)
                    out[targets[i]] = held_rgb
                    i += 1
                return out
        except av.error.FFmpegError as exc:
            raise _decode_error(path, "video", float(when(targets[i]) - t0), exc, limits) from exc
    return out


def _frames_from(path: str, container: Any, vs: Any, goal: Fraction, t0: Fraction) -> Iterator[Any]:
    """Seek to the keyframe at or before ``goal``; yield frames from the last one <= goal on.

    Demuxers that land after ``goal`` (inexact indexes) are retried further back,
    down to the start of the stream.
    """
    back = Fraction(0)
    while True:
        at = max(goal - back, t0)
        container.seek(int(at / vs.time_base), backward=True, any_frame=False, stream=vs)
        decoded = container.decode(vs)
        first = next(decoded, None)
        if first is None:
            raise EmptyMediaError(path, "no decodable video frames after a seek")
        t = _frame_time(first, vs)
        if t is None or t <= goal or at == t0:
            return _chain(first, decoded)
        back = max(Fraction(1), 2 * back)


def _chain(first: Any, rest: Iterator[Any]) -> Iterator[Any]:
    yield first
    yield from rest


def _first_frame(path: str, container: Any, vs: Any) -> Any:
    import av

    try:
        for frame in container.decode(vs):
            return frame
    except av.error.FFmpegError as exc:
        raise _decode_error(path, "video", 0.0, exc) from exc
    raise EmptyMediaError(path, "no decodable video frames")


def _rgb(frame: Any, size: tuple[int, int]) -> np.ndarray:
    """As :mod:`featstore.media`: RGB at the first frame's size."""
    return frame.to_ndarray(format="rgb24", width=size[0], height=size[1])  # [H, W, 3]


def _scan_frames(
    path: str | os.PathLike[str], targets: list[int], *, fps: float, limits: DecodeLimits
) -> dict[int, np.ndarray]:
    """Decode from the start (no timestamps to seek by), keeping the targets."""
    out: dict[int, np.ndarray] = {}
    start, last = 0, targets[-1]
    wanted = set(targets)
    chunks = iter_frames(path, fps=fps, chunk_frames=64, until_s=(last + 1) / fps, limits=limits)
    for chunk in chunks:
        for j in range(len(chunk)):
            if start + j in wanted:
                out[start + j] = chunk[j].copy()
        start += len(chunk)
    return out
