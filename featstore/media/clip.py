"""Whole clips and time-aligned chunks of frames and audio; leading silence (AVH-Align)."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Iterator

import numpy as np

from featstore import seeking, timebase
from featstore.decode_limits import DecodeLimits, memory_guard
from featstore.media import audio as _audio
from featstore.media import video as _video
from featstore.media.container import DEFAULT_LIMITS, check_headers, open_media, probe
from featstore.media.types import DecodedMedia, MediaChunk, MediaInfo, SilenceTrim
from featstore.media_errors import EmptyMediaError, NoAudioStreamError, NoVideoStreamError

SILENCE_THRESHOLD = 0.0005  # AVH-Align: speech starts at the first |sample| above this
_MAX_INITIAL_BYTES = 256 * 2**20  # first allocation of a whole-clip array, whatever the header says

__all__ = [
    "SILENCE_THRESHOLD",
    "collect",
    "decode",
    "iter_chunks",
    "leading_silence_s",
    "trim_leading_silence",
]


def iter_chunks(
    path: str | os.PathLike[str],
    *,
    chunk_frames: int = 250,
    fps: float = timebase.FRAME_HZ,
    sample_rate_hz: int = timebase.SAMPLE_RATE_HZ,
    start_s: float = 0.0,
    until_s: float | None = None,
    allow_truncated: bool = False,
    threads: int = 0,
    limits: DecodeLimits = DEFAULT_LIMITS,
) -> Iterator[MediaChunk]:
    """Time-aligned frame and audio chunks (``iter_frames`` and ``iter_audio`` side by side).

    Chunk ``i`` holds frames ``[k0 + i * chunk_frames, k0 + (i + 1) * chunk_frames)``
    (``k0 = ceil(start_s * fps)``, 0 by default) and the audio samples of the same
    interval. When one stream ends first, its field is None in the remaining chunks;
    reconcile lengths with ``featstore.timebase``.
    """
    import itertools

    spf = timebase.samples_per_frame(sample_rate_hz=sample_rate_hz, frame_hz=fps)
    frames = _video.iter_frames(
        path,
        fps=fps,
        chunk_frames=chunk_frames,
        start_s=start_s,
        until_s=until_s,
        allow_truncated=allow_truncated,
        threads=threads,
        limits=limits,
    )
    audio = _audio.iter_audio(
        path,
        sample_rate_hz=sample_rate_hz,
        chunk_samples=chunk_frames * spf,
        start_s=start_s,
        until_s=until_s,
        allow_truncated=allow_truncated,
        limits=limits,
    )
    k0 = seeking.first_index(start_s, fps)
    for i, (f, a) in enumerate(itertools.zip_longest(frames, audio)):
        yield MediaChunk(start_frame=k0 + i * chunk_frames, frames=f, audio=a)


# -- whole clips -----------------------------------------------------------------------------


def decode(
    path: str | os.PathLike[str],
    *,
    video: bool = True,
    audio: bool = True,
    fps: float = timebase.FRAME_HZ,
    sample_rate_hz: int = timebase.SAMPLE_RATE_HZ,
    start_s: float = 0.0,
    until_s: float | None = None,
    allow_truncated: bool = False,
    threads: int = 0,
    limits: DecodeLimits = DEFAULT_LIMITS,
) -> DecodedMedia:
    """Decode a clip to constant-rate RGB frames and mono float32 audio (see module docs).

    Visual-only encoders pass ``audio=False`` so that files without audio work.
    ``start_s``, ``until_s``: decode only the span ``[start_s, until_s)`` of the file
    (seconds from its first video frame; no error when the file ends first): frames
    ``ceil(start_s * fps)`` to ``ceil(until_s * fps)`` and the samples of the same
    interval, exactly those of a whole decode, found by seeking rather than decoding
    from the start (:mod:`featstore.seeking`). ``limits``: media past them raise a
    :class:`MediaLimitError` (checked on the headers, then while decoding; the duration
    counts from ``start_s``); ``limits.max_decoded_bytes`` bounds the frames and audio
    returned, together.

    >>> m = decode("clip.mp4", audio=False)  # doctest: +SKIP
    >>> m.frames.dtype, m.audio  # doctest: +SKIP
    (dtype('uint8'), None)
    >>> decode("long.mp4", start_s=590.0, until_s=600.0).n_frames  # doctest: +SKIP
    250
    """
    if not (video or audio):
        raise ValueError("decode needs video=True or audio=True")
    seeking.check_span(start_s, until_s)
    path_s = str(path)
    info = probe(path)
    if video and info.video is None:
        raise NoVideoStreamError(path, "no video stream")
    if audio and info.audio is None:
        raise NoAudioStreamError(path, "no audio stream (pass audio=False for visual-only use)")
    check_headers(
        info,
        limits,
        video=video,
        audio=audio,
        whole=True,
        fps=fps,
        sample_rate_hz=sample_rate_hz,
        start_s=start_s,
        until_s=until_s,
    )
    frames = samples = None
    if video:
        with open_media(path) as container, memory_guard(path_s, "while decoding the video frames"):
            frames = collect(
                (
                    img[None]  # [1, H, W, 3]
                    for img in _video.constant_rate_frames(
                        path_s,
                        container,
                        fps=fps,
                        start_s=start_s,
                        until_s=until_s,
                        allow_truncated=allow_truncated,
                        threads=threads,
                        limits=limits,
                    )
                ),
                expected=_expected_outputs(info.video.duration_s, info, fps, start_s, until_s),
                limit=lambda item_bytes: limits.max_frames(fps=fps, frame_bytes=item_bytes)[0],
            )  # [T, H, W, 3]
    if audio:
        used = 0 if frames is None else frames.nbytes
        with open_media(path) as container, memory_guard(path_s, "while decoding the audio"):
            samples = collect(
                _audio.mono_16k(
                    path_s,
                    container,
                    sample_rate_hz=sample_rate_hz,
                    start_s=start_s,
                    until_s=until_s,
                    allow_truncated=allow_truncated,
                    limits=limits,
                    used_bytes=used,
                ),
                expected=_expected_outputs(
                    info.audio.duration_s, info, sample_rate_hz, start_s, until_s
                ),
                limit=lambda _: limits.max_samples(sample_rate_hz=sample_rate_hz, used_bytes=used)[
                    0
                ],
            )  # [N]
    return DecodedMedia(
        frames=frames, audio=samples, fps=float(fps), sample_rate_hz=sample_rate_hz, info=info
    )


def _expected_outputs(
    stream_s: float | None, info: MediaInfo, rate: float, start_s: float, until_s: float | None
) -> int:
    """Outputs the header promises at ``rate`` in ``[start_s, until_s)`` (1 when it says nothing)."""
    duration = stream_s or info.duration_s or 0.0
    if until_s is not None:
        duration = min(duration, until_s)
    return max(0, math.ceil((duration - start_s) * rate)) + 1


def collect(
    blocks: Iterator[np.ndarray],
    *,
    expected: int,
    limit: Callable[[int], int | None] = lambda _: None,
) -> np.ndarray:
    """Gather ``[n, ...]`` blocks into one array sized from the header (``expected`` items).

    Filling a buffer allocated once keeps the peak at one clip; concatenating a
    list of chunks would hold the clip twice (1.4 GB for 10 s of 720p) and run at
    half the speed. The first allocation is at most ``limit(item_bytes)`` items
    (what the decode limits allow) and ``_MAX_INITIAL_BYTES``, so a header that
    lies about the duration cannot make it huge; a header that undercounts costs
    regrowing (doubling, up to the limit), one that overcounts by over 10 % a
    final trimming copy.
    """
    out: np.ndarray | None = None
    cap: int | None = None
    n = 0
    for block in blocks:
        if out is None:
            item_bytes = max(1, block[0].nbytes if len(block) else block.itemsize)
            cap = limit(item_bytes)
            size = min(expected, max(1, _MAX_INITIAL_BYTES // item_bytes))
            size = max(size, len(block)) if cap is None else max(min(size, cap), len(block))
            out = np.empty((size, *block.shape[1:]), dtype=block.dtype)
        if n + len(block) > len(out):
            size = max(2 * len(out), n + len(block))
            if cap is not None:
                size = max(min(size, cap), n + len(block))
            grown = np.empty((size, *out.shape[1:]), dtype=out.dtype)
            grown[:n] = out[:n]
            out = grown
        out[n : n + len(block)] = block
        n += len(block)
    if out is None:  # pragma: no cover - the decoders raise EmptyMediaError first
        raise EmptyMediaError("?", "nothing decoded")
    return out[:n] if n >= 0.9 * len(out) else out[:n].copy()


# -- leading silence (AVH-Align) -------------------------------------------------------------


def leading_silence_s(
    audio: np.ndarray,
    *,
    sample_rate_hz: int = timebase.SAMPLE_RATE_HZ,
    threshold: float = SILENCE_THRESHOLD,
) -> float:
    """Seconds until the first sample with ``|x| > threshold`` (the whole length if none)."""
    loud = np.flatnonzero(np.abs(audio) > threshold)
    first = int(loud[0]) if loud.size else int(audio.shape[0])
    return first / sample_rate_hz


def trim_leading_silence(
    media: DecodedMedia, *, threshold: float = SILENCE_THRESHOLD
) -> tuple[DecodedMedia, SilenceTrim]:
    """Drop the leading silence from audio and frames alike (AVH-Align's optional step).

    Fakes in AV-Deepfake1M and FakeAVCeleb often start with a short silence that
    supervised models learn as a shortcut. With ``sil`` the leading silence in
    seconds, ``int(sil * 25) + 1`` frames and ``(int(sil * 25) + 1) * 640``
    samples are skipped (at 25 fps / 16 kHz), so at least one frame always goes.
    The returned arrays are views of the input's.
    """
    if media.audio is None:
        raise NoAudioStreamError(
            media.info.path, "no decoded audio: trimming leading silence needs audio"
        )
    sil = leading_silence_s(media.audio, sample_rate_hz=media.sample_rate_hz, threshold=threshold)
    n_frames, n_samples = timebase.silence_trim_counts(
        sil, frame_hz=media.fps, sample_rate_hz=media.sample_rate_hz
    )
    trimmed = dataclasses.replace(
        media,
        frames=None if media.frames is None else media.frames[n_frames:],
        audio=media.audio[n_samples:],
    )
    return trimmed, SilenceTrim(silence_s=sil, frames=n_frames, samples=n_samples)
