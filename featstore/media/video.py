"""Video decoding to constant-rate RGB frames (output ``k`` = the last source frame with
``pts <= k / fps``, times counted from the first decoded frame), whole or by span."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from featstore import seeking, timebase
from featstore.decode_limits import DecodeLimits, memory_guard
from featstore.media.container import (
    DEFAULT_LIMITS,
    check_headers,
    check_truncated,
    declared_duration_s,
    declared_end_s,
    decode_error,
    frame_time,
    limit_decoder,
    max_outputs,
    open_media,
    read_info,
    video_stream,
)
from featstore.media_errors import CorruptMediaError, EmptyMediaError, NoVideoStreamError

if TYPE_CHECKING:
    import av.container

logger = logging.getLogger(__name__)

_MAX_TIMESTAMP_OVERRUN_S = 60.0  # a frame this far past the declared duration is a corrupt pts

__all__ = ["constant_rate_frames", "first_video_time_s", "iter_frames"]


def _configure_video(path: str, vs: Any, limits: DecodeLimits, threads: int) -> None:
    limit_decoder(path, vs, limits)
    if threads == 1:
        vs.thread_type, vs.thread_count = "SLICE", 1
    else:
        vs.thread_type, vs.thread_count = "AUTO", threads


def constant_rate_frames(
    path: str,
    container: av.container.InputContainer,
    *,
    fps: float,
    start_s: float = 0.0,
    until_s: float | None,
    allow_truncated: bool,
    threads: int,
    limits: DecodeLimits,
    wanted: Callable[[int], bool] | None = None,
) -> Iterator[np.ndarray | None]:
    """Yield ``[H, W, 3]`` RGB frames at constant ``fps`` (the same array may repeat).

    Output frames ``ceil(start_s * fps)`` onwards: a seek (:func:`seeking.seek_video`)
    when ``start_s > 0``, the same frames as a decode from the start. Stops with a
    :class:`MediaLimitError` before the first frame past ``limits`` (counted from the
    span's start; ``limits.max_decoded_bytes`` bounds the frames yielded in all).
    ``wanted``: the output indices to convert; the others are yielded as None, never
    converted to RGB (most of a large frame's cost; :mod:`featstore.seek` keeps a few).
    """
    import av

    vs = video_stream(container)
    if vs is None:
        raise NoVideoStreamError(path, "no video stream")
    _configure_video(path, vs, limits, threads)
    rate = Fraction(fps).limit_denominator(1_000_000)
    k0 = seeking.first_index(start_s, fps)
    n_max = max_outputs(until_s, fps)
    n_limit: int | None = None  # output frames the limits allow, known from the first frame
    bound = ""  # which limit sets n_limit
    size: tuple[int, int] | None = None  # (width, height) of the first frame
    t0: Fraction | None = None
    held: Any = None  # the source frame shown now, converted lazily
    held_rgb: np.ndarray | None = None
    held_rel = held_dur = Fraction(0)
    k = k0
    prefix = 0  # frames decoded before the span without a seek (when it has to)

    def rgb() -> np.ndarray | None:
        nonlocal held_rgb
        if n_limit is not None and k - k0 >= n_limit:
            if bound == "duration":
                raise limits.duration_error(
                    path, "video", stopped_s=(k - k0) / fps, declared_s=declared_end_s(vs)
                )
            n_bytes = (k - k0 + 1) * 3 * size[0] * size[1]
            raise limits.bytes_error(
                path, f"decoded frames ({k - k0 + 1} of {size[0]}x{size[1]})", n_bytes
            )
        if wanted is not None and not wanted(k):
            return None
        if held_rgb is None:
            if (held.width, held.height) != size:
                logger.warning(
                    "%s: frame size changed to %dx%d; scaling to %dx%d",
                    path,
                    held.width,
                    held.height,
                    *size,
                )
            held_rgb = held.to_ndarray(format="rgb24", width=size[0], height=size[1])  # [H, W, 3]
        return held_rgb

    def start(frame: Any, t: Fraction) -> None:
        nonlocal t0, size, n_limit, bound
        t0, size = t, (frame.width, frame.height)
        n_limit, bound = limits.max_frames(fps=fps, frame_bytes=3 * size[0] * size[1])

    with contextlib.ExitStack() as stack:
        frames: Iterator[Any] = container.decode(vs)
        try:
            if k0:
                frames, vs, seeked = _video_from(
                    path, stack, container, vs, k0 / rate, start, limits=limits, threads=threads
                )
                # decoding from the start costs the frames before the span: count them
                prefix = 0 if seeked else k0
            src_rate = vs.average_rate or vs.guessed_rate
            default_dur = Fraction(1) / (Fraction(src_rate) if src_rate else rate)
            declared = declared_duration_s(vs)
            for frame in frames:
                limits.check_frame_size(path, frame.width, frame.height, where="a decoded frame")
                t = frame_time(frame, vs)
                if t is None:
                    t = (t0 or 0) + held_rel + held_dur if held is not None else Fraction(0)
                if t0 is None:
                    start(frame, t)
                rel = t - t0
                if declared is not None and rel > declared + _MAX_TIMESTAMP_OVERRUN_S:
                    raise CorruptMediaError(
                        path,
                        f"video timestamp {float(t):.1f} s far past the declared "
                        f"duration {declared:.1f} s",
                    )
                if prefix and bound == "duration" and rel * rate > n_limit:
                    raise limits.duration_error(
                        path,
                        "video decoded before the span (the file could not be seeked)",
                        stopped_s=float(rel),
                        declared_s=declared_end_s(vs),
                    )
                if held is not None:
                    while k < rel * rate:  # output time k / fps is before this frame: show held
                        yield rgb()
                        k += 1
                        if n_max is not None and k >= n_max:
                            return
                dur = frame.duration
                held, held_rgb, held_rel = frame, None, rel
                held_dur = dur * (frame.time_base or vs.time_base) if dur else default_dur
        except av.error.FFmpegError as exc:
            raise decode_error(path, "video", float(held_rel), exc, limits) from exc
    if held is None:
        raise EmptyMediaError(path, "no decodable video frames")
    end = held_rel + held_dur
    while k < end * rate and (n_max is None or k < n_max):
        yield rgb()
        k += 1
    if k == k0:
        raise EmptyMediaError(
            path, f"no video frames from {start_s:.2f} s: the video ends at {float(end):.2f} s"
        )
    if n_max is None or k < n_max:
        check_truncated(path, "video", vs, float(t0 + end), allow=allow_truncated)


def _video_from(
    path: str,
    stack: contextlib.ExitStack,
    container: av.container.InputContainer,
    vs: Any,
    at: Fraction,
    start: Callable[[Any, Fraction], None],
    *,
    limits: DecodeLimits,
    threads: int,
) -> tuple[Iterator[Any], Any, bool]:
    """Frames to decode for output times from ``at`` on (relative to the first frame).

    Decodes the file's first frame (``start(frame, t)`` records time zero and the output
    size from it), then seeks (:func:`seeking.seek_video`). Returns the frames, their
    stream and whether the seek worked; if not, the frames come from the start of a
    fresh container that ``stack`` closes.
    """
    frames = container.decode(vs)
    first = next(frames, None)
    if first is None:
        return iter(()), vs, False
    limits.check_frame_size(path, first.width, first.height, where="a decoded frame")
    t = frame_time(first, vs)
    if t is None:  # no timestamps to seek by: decode from the start, here
        return seeking.chain(first, frames), vs, False
    start(first, t)
    after = seeking.seek_video(container, vs, t0=t, at=at)
    if after is not None:
        return after, vs, True
    logger.debug("%s: cannot seek to %.2f s; decoding from the start", path, float(at))
    fresh = stack.enter_context(open_media(path))
    vs = video_stream(fresh)
    _configure_video(path, vs, limits, threads)
    return fresh.decode(vs), vs, False


def iter_frames(
    path: str | os.PathLike[str],
    *,
    fps: float = timebase.FRAME_HZ,
    chunk_frames: int = 250,
    start_s: float = 0.0,
    until_s: float | None = None,
    allow_truncated: bool = False,
    threads: int = 0,
    limits: DecodeLimits = DEFAULT_LIMITS,
) -> Iterator[np.ndarray]:
    """Yield ``[n, H, W, 3]`` uint8 RGB chunks at constant ``fps``, ``n <= chunk_frames``.

    Memory is bounded by one chunk plus one decoded frame (``limits.max_decoded_bytes``
    bounds the chunk; the duration is bounded, not the frames in all). ``start_s``,
    ``until_s``: only the span ``[start_s, until_s)`` (as :func:`decode`; no error when
    the file ends first). ``threads``: FFmpeg decoder threads
    (0 = one per core, 1 = single-threaded). Errors (including truncation and
    limits) can surface after some chunks were yielded: discard them then.
    """
    if chunk_frames < 1:
        raise ValueError(f"chunk_frames must be >= 1, got {chunk_frames}")
    seeking.check_span(start_s, until_s)
    path_s = str(path)
    streaming = dataclasses.replace(limits, max_decoded_bytes=None)
    with (
        open_media(path) as container,
        memory_guard(path_s, f"while decoding chunks of {chunk_frames} frames"),
    ):
        check_headers(
            read_info(container, Path(path)),
            limits,
            video=True,
            audio=False,
            whole=False,
            fps=fps,
            sample_rate_hz=timebase.SAMPLE_RATE_HZ,
            start_s=start_s,
            until_s=until_s,
        )
        buf: np.ndarray | None = None
        n = 0
        for img in constant_rate_frames(
            path_s,
            container,
            fps=fps,
            start_s=start_s,
            until_s=until_s,
            allow_truncated=allow_truncated,
            threads=threads,
            limits=streaming,
        ):
            if buf is None:
                chunk_bytes = chunk_frames * img.nbytes
                if limits.max_decoded_bytes is not None and chunk_bytes > limits.max_decoded_bytes:
                    what = f"chunks of {chunk_frames} frames of {img.shape[1]}x{img.shape[0]}"
                    raise limits.bytes_error(path_s, what, chunk_bytes)
                buf = np.empty((chunk_frames, *img.shape), dtype=np.uint8)  # [chunk, H, W, 3]
            buf[n] = img
            n += 1
            if n == chunk_frames:
                yield buf
                buf, n = None, 0
        if buf is not None and n:
            # a short tail is copied so that it does not pin a whole chunk's allocation
            yield buf[:n].copy() if 2 * n < chunk_frames else buf[:n]


def first_video_time_s(path: str, limits: DecodeLimits) -> float | None:
    """Time of the first decoded video frame (stream ``start_time`` is unreliable, e.g. in mkv)."""
    import av

    with open_media(path) as container:
        vs = video_stream(container)
        limit_decoder(path, vs, limits)
        vs.thread_type, vs.thread_count = "SLICE", 1
        try:
            for frame in container.decode(vs):
                limits.check_frame_size(path, frame.width, frame.height, where="a decoded frame")
                t = frame_time(frame, vs)
                return None if t is None else float(t)
        except av.error.FFmpegError as exc:
            raise decode_error(path, "video", 0.0, exc, limits) from exc
    return None
