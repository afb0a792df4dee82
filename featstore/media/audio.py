"""Audio decoding to 16 kHz mono float32 aligned to the video start, whole or by span."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from featstore import seeking, timebase
from featstore.decode_limits import DecodeLimits, memory_guard
from featstore.media.container import (
    DEFAULT_LIMITS,
    audio_stream,
    check_headers,
    check_truncated,
    declared_end_s,
    decode_error,
    frame_time,
    max_outputs,
    open_media,
    read_info,
    video_stream,
)
from featstore.media.video import first_video_time_s
from featstore.media_errors import EmptyMediaError, NoAudioStreamError

if TYPE_CHECKING:
    import av.container

logger = logging.getLogger(__name__)

__all__ = ["iter_audio", "mono_16k"]


def mono_16k(
    path: str,
    container: av.container.InputContainer,
    *,
    sample_rate_hz: int,
    start_s: float = 0.0,
    until_s: float | None,
    allow_truncated: bool,
    limits: DecodeLimits,
    used_bytes: int = 0,
) -> Iterator[np.ndarray]:
    """Yield float32 mono pieces (of varying size) aligned to the video start.

    Samples ``ceil(start_s * sample_rate_hz)`` onwards: a seek
    (:func:`seeking.seek_audio`) when the span starts late enough, the same samples as a
    decode from the start. Stops with a :class:`MediaLimitError` before yielding samples
    past ``limits`` (counted from the span's start; ``used_bytes``: what the caller
    already holds of ``limits.max_decoded_bytes``).
    """
    import av

    from featstore.downmix import MonoResampler

    as_ = audio_stream(container)
    if as_ is None:
        raise NoAudioStreamError(path, "no audio stream")
    ref = first_video_time_s(path, limits) if video_stream(container) is not None else None
    i0 = seeking.first_index(start_s, sample_rate_hz)
    n_max = max_outputs(until_s, sample_rate_hz)
    n_limit, bound = limits.max_samples(sample_rate_hz=sample_rate_hz, used_bytes=used_bytes)
    produced = 0  # samples yielded
    at = 0  # index (on the output grid, from the video start) of the next sample made
    to_drop = 0  # samples before the video start still to drop

    def check(n_more: int) -> None:
        """Refuse before ``n_more`` samples past the limit are made or yielded."""
        if n_limit is None or produced + n_more <= n_limit:
            return
        if bound == "duration":
            stopped_s = (produced + n_more) / sample_rate_hz
            raise limits.duration_error(
                path, "audio", stopped_s=stopped_s, declared_s=declared_end_s(as_)
            )
        n_bytes = used_bytes + 4 * (produced + n_more)
        raise limits.bytes_error(
            path, f"decoded frames and audio ({produced + n_more} samples)", n_bytes
        )

    def emit(mono: np.ndarray) -> Iterator[np.ndarray]:  # mono: [n] float32
        nonlocal produced, to_drop, at
        if to_drop:
            cut = min(to_drop, mono.shape[0])
            mono, to_drop = mono[cut:], to_drop - cut
        if at < i0:  # before the span
            cut = min(i0 - at, mono.shape[0])
            mono, at = mono[cut:], at + cut
        if n_max is not None:
            mono = mono[: n_max - at]
        if mono.shape[0]:
            check(mono.shape[0])
            produced += mono.shape[0]
            at += mono.shape[0]
            yield mono

    with contextlib.ExitStack() as stack:
        try:
            frames = container.decode(as_)
            first = next(frames, None)
            if first is None:
                raise EmptyMediaError(path, "no decodable audio samples")
            t = frame_time(first, as_)
            if ref is None:  # no video: the audio's own start is time zero
                ref = 0.0 if t is None else float(t)
            offset = 0.0 if t is None else float(t) - ref
            pad = round(offset * sample_rate_hz) if offset > 0 else 0
            to_drop = 0 if offset > 0 else round(-offset * sample_rate_hz)
            wanted = i0 + to_drop - pad  # the span's first sample, counted from `first`
            landed = None
            frames = seeking.chain(first, frames)
            if i0 and t is not None and seeking.worth_seeking(wanted, sample_rate_hz):
                landed = seeking.seek_audio(
                    container,
                    as_,
                    t_first=t,
                    first_rate=int(first.sample_rate),
                    first_format=(first.format.name, first.layout.name),
                    first_samples=int(first.samples),
                    wanted=wanted,
                    sample_rate_hz=sample_rate_hz,
                )
                if landed is None:  # the container has moved: start again in a fresh one
                    logger.debug("%s: cannot seek the audio; decoding from the start", path)
                    fresh = stack.enter_context(open_media(path))
                    frames = fresh.decode(audio_stream(fresh))
            if landed is not None:
                resampler = MonoResampler(sample_rate_hz, skip_input_samples=landed.skip_input)
                frames = landed.frames
                at, to_drop = landed.first_output - to_drop + pad, 0
            else:
                # decoding from the start costs the samples before the span: bound them
                if i0 and n_limit is not None and bound == "duration" and i0 > n_limit:
                    raise limits.duration_error(
                        path,
                        "audio decoded before the span (the file could not be seeked)",
                        stopped_s=i0 / sample_rate_hz,
                        declared_s=None,
                    )
                resampler = MonoResampler(sample_rate_hz)
                if pad:
                    if n_max is not None:
                        pad = min(pad, n_max)
                    check(max(0, pad - i0))
                    yield from emit(np.zeros(pad, np.float32))
                # dropped samples cost decoding time: bound them like kept ones
                if to_drop and n_limit is not None and bound == "duration" and to_drop > n_limit:
                    raise limits.duration_error(
                        path,
                        "audio before the first video frame",
                        stopped_s=-offset,
                        declared_s=None,
                    )
            for frame in frames:
                for piece in resampler.resample(frame):
                    yield from emit(piece)
                if n_max is not None and at >= n_max:
                    return
            for piece in resampler.resample(None):
                yield from emit(piece)
        except av.error.FFmpegError as exc:
            raise decode_error(path, "audio", at / sample_rate_hz, exc) from exc
    if produced == 0:
        if i0:
            raise EmptyMediaError(path, f"no audio samples from {start_s:.2f} s")
        raise EmptyMediaError(path, "no decodable audio samples")
    if n_max is None or at < n_max:
        check_truncated(
            path, "audio", as_, (ref or 0.0) + at / sample_rate_hz, allow=allow_truncated
        )


def iter_audio(
    path: str | os.PathLike[str],
    *,
    sample_rate_hz: int = timebase.SAMPLE_RATE_HZ,
    chunk_samples: int = 250 * timebase.SAMPLES_PER_FRAME,
    start_s: float = 0.0,
    until_s: float | None = None,
    allow_truncated: bool = False,
    limits: DecodeLimits = DEFAULT_LIMITS,
) -> Iterator[np.ndarray]:
    """Yield ``[n]`` float32 mono chunks at ``sample_rate_hz``, ``n == chunk_samples`` but the last.

    The default chunk (160,000 samples) spans the same 10 s as ``iter_frames``'
    default 250-frame chunk, so chunk ``i`` of both covers the same time.
    ``start_s``, ``until_s`` and ``limits`` as in :func:`iter_frames`.
    """
    if chunk_samples < 1:
        raise ValueError(f"chunk_samples must be >= 1, got {chunk_samples}")
    seeking.check_span(start_s, until_s)
    path_s = str(path)
    if limits.max_decoded_bytes is not None and 4 * chunk_samples > limits.max_decoded_bytes:
        raise limits.bytes_error(path_s, f"chunks of {chunk_samples} samples", 4 * chunk_samples)
    streaming = dataclasses.replace(limits, max_decoded_bytes=None)
    with open_media(path) as container, memory_guard(path_s, "while decoding the audio"):
        check_headers(
            read_info(container, Path(path)),
            limits,
            video=False,
            audio=True,
            whole=False,
            fps=timebase.FRAME_HZ,
            sample_rate_hz=sample_rate_hz,
            start_s=start_s,
            until_s=until_s,
        )
        pending: list[np.ndarray] = []
        n = 0
        for piece in mono_16k(
            path_s,
            container,
            sample_rate_hz=sample_rate_hz,
            start_s=start_s,
            until_s=until_s,
            allow_truncated=allow_truncated,
            limits=streaming,
        ):
            pending.append(piece)
            n += piece.shape[0]
            while n >= chunk_samples:
                joined = np.concatenate(pending)
                yield joined[:chunk_samples]
                rest = joined[chunk_samples:]
                pending, n = ([rest] if rest.shape[0] else []), rest.shape[0]
        if n:
            yield np.concatenate(pending)
