"""Probe and decode media to the project's timebase: 25 fps RGB frames, 16 kHz mono audio.

- ``probe(path)`` reads container and stream headers only.
- ``decode(path)`` returns a whole clip in memory; ``iter_frames`` / ``iter_audio``
  stream the same output in fixed-size chunks so that memory does not grow with
  duration (each opens its own pass over the file; concatenating their chunks
  gives exactly what ``decode`` returns); ``iter_chunks`` zips the two into
  time-aligned ``MediaChunk``s (250 frames <-> 160,000 samples by default).
- Video is resampled by timestamps: output frame ``k`` (time ``k / fps``) is the
  last source frame with ``pts <= k / fps``, times counted from the first decoded
  frame. This handles 24/30/60 fps and variable frame rate alike. Output frames
  exist while ``k / fps`` is before the end of the last source frame.
- Audio is resampled with PyAV's ``AudioResampler`` to float32 at 16 kHz and
  downmixed to mono as the mean of the channels (a stereo file with two equal
  channels gives the same samples as its mono version). Audio is aligned to the
  video: sample ``i`` is at ``video_start + i / sample_rate_hz``; audio before the
  first video frame is dropped and a late audio start is padded with zeros.
  Files without video use the audio's own start.
- Truncated media: when decoding ends clearly before a stream's declared
  duration (by more than ``max(0.25 s, 2 %)``), or FFmpeg fails mid-stream, a
  ``CorruptMediaError`` is raised, because partial features would silently
  disagree with the dataset's labels and fake segments. ``allow_truncated=True``
  keeps what was decoded and logs a warning instead. A file whose index is lost
  (an mp4 cut before its ``moov`` atom) cannot be opened and is always corrupt.
  Streams that declare no duration cannot be checked.

All PyAV/FFmpeg errors are mapped to the ``MediaError`` family below; the
message names the file and the reason.

>>> media = decode("clip.mp4")  # doctest: +SKIP
>>> media.frames.shape, media.audio.shape  # doctest: +SKIP
((50, 224, 224, 3), (32000,))
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from featstore import timebase
from featstore.errors import FeatstoreError

if TYPE_CHECKING:
    import av.container

logger = logging.getLogger(__name__)

SILENCE_THRESHOLD = 0.0005  # AVH-Align: speech starts at the first |sample| above this
_TRUNCATION_TOLERANCE_S = 0.25
_TRUNCATION_TOLERANCE_FRAC = 0.02
_MAX_TIMESTAMP_OVERRUN_S = 60.0  # a frame this far past the declared duration is a corrupt pts

__all__ = [
    "AudioStreamInfo",
    "CorruptMediaError",
    "DecodedMedia",
    "EmptyMediaError",
    "MediaChunk",
    "MediaError",
    "MediaInfo",
    "MediaNotFoundError",
    "NoAudioStreamError",
    "NoVideoStreamError",
    "SilenceTrim",
    "UnsupportedMediaError",
    "VideoStreamInfo",
    "decode",
    "iter_audio",
    "iter_chunks",
    "iter_frames",
    "leading_silence_s",
    "probe",
    "trim_leading_silence",
]


class MediaError(FeatstoreError):
    """A media file cannot be probed or decoded; ``path`` names it."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class MediaNotFoundError(MediaError, FileNotFoundError):
    """The media file does not exist."""


class UnsupportedMediaError(MediaError):
    """Not a media file FFmpeg can read (e.g. a text file named ``.mp4``)."""


class EmptyMediaError(MediaError):
    """A zero-byte file, or a stream with nothing decodable in it."""


class CorruptMediaError(MediaError):
    """A recognised container that is damaged or truncated."""


class NoVideoStreamError(MediaError):
    """Video was requested but the file has no video stream."""


class NoAudioStreamError(MediaError):
    """Audio was requested but the file has no audio stream."""


@dataclass(frozen=True)
class VideoStreamInfo:
    codec: str
    width: int
    height: int
    fps: float | None  # average frame rate; None when the container does not say
    n_frames: int | None  # from the header, else estimated as duration * fps
    # declared by the stream (Matroska: end time of its last frame), else the container's
    duration_s: float | None
    start_s: float


@dataclass(frozen=True)
class AudioStreamInfo:
    codec: str
    sample_rate_hz: int
    channels: int
    duration_s: float | None
    start_s: float


@dataclass(frozen=True)
class MediaInfo:
    path: str
    format: str  # FFmpeg demuxer name(s), e.g. "mov,mp4,m4a,3gp,3g2,mj2"
    size_bytes: int
    duration_s: float | None
    video: VideoStreamInfo | None
    audio: AudioStreamInfo | None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class DecodedMedia:
    frames: np.ndarray | None  # [T, H, W, 3] uint8 RGB at ``fps``
    audio: np.ndarray | None  # [N] float32 mono at ``sample_rate_hz``
    fps: float
    sample_rate_hz: int
    info: MediaInfo

    @property
    def n_frames(self) -> int:
        return 0 if self.frames is None else int(self.frames.shape[0])

    @property
    def n_samples(self) -> int:
        return 0 if self.audio is None else int(self.audio.shape[0])


@dataclass(frozen=True)
class SilenceTrim:
    """What ``trim_leading_silence`` removed."""

    silence_s: float
    frames: int
    samples: int


# -- opening ---------------------------------------------------------------------------------

# Signatures of containers we know; a file that has one but fails to open is corrupt, not alien.
_MP4_BOXES = (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip")


def _looks_like_media(head: bytes) -> bool:
    return (
        head[4:8] in _MP4_BOXES
        or head.startswith((b"\x1a\x45\xdf\xa3", b"RIFF", b"OggS", b"FLV", b"fLaC", b"ID3"))
        or (len(head) > 188 and head[0] == 0x47 and head[188] == 0x47)  # MPEG-TS sync bytes
    )


@contextmanager
def _open(path: str | os.PathLike[str]) -> Iterator[av.container.InputContainer]:
    import av

    p = Path(path)
    if not p.exists():
        raise MediaNotFoundError(p, "no such file")
    if p.is_dir():
        raise UnsupportedMediaError(p, "is a directory, not a media file")
    if p.stat().st_size == 0:
        raise EmptyMediaError(p, "empty file (0 bytes)")
    try:
        container = av.open(str(p), mode="r", metadata_errors="ignore")
    except av.error.FFmpegError as exc:
        with p.open("rb") as fh:
            head = fh.read(512)
        if _looks_like_media(head):
            raise CorruptMediaError(
                p, f"corrupt or truncated media, cannot be opened ({exc.strerror})"
            ) from exc
        raise UnsupportedMediaError(p, f"not a supported media file ({exc.strerror})") from exc
    except OSError as exc:
        raise MediaError(p, f"cannot read file ({exc})") from exc
    try:
        if not any(s.type in ("audio", "video") for s in container.streams):
            raise EmptyMediaError(p, "no audio or video stream")
        yield container
    finally:
        container.close()


def _video_stream(container: av.container.InputContainer) -> Any | None:
    import av

    for s in container.streams.video:
        if not s.disposition & av.stream.Disposition.attached_pic:  # skip cover art
            return s
    return None


def _audio_stream(container: av.container.InputContainer) -> Any | None:
    return container.streams.audio[0] if container.streams.audio else None


def _declared_duration_s(stream: Any) -> float | None:
    """The stream's own duration: header field, else Matroska's ``DURATION`` tag."""
    if stream.duration is not None and stream.time_base is not None and stream.duration > 0:
        return float(stream.duration * stream.time_base)
    tag = stream.metadata.get("DURATION") or stream.metadata.get("duration")
    if tag:
        try:
            h, m, s = tag.split(":")
            return int(h) * 3600 + int(m) * 60 + float(s)
        except ValueError:
            return None
    return None


def _start_s(stream: Any) -> float:
    if stream.start_time is None or stream.time_base is None:
        return 0.0
    return float(stream.start_time * stream.time_base)


def _info(container: av.container.InputContainer, path: Path) -> MediaInfo:
    container_s = container.duration / 1_000_000 if container.duration else None
    video = audio = None
    vs = _video_stream(container)
    if vs is not None:
        rate = vs.average_rate or vs.guessed_rate
        fps = float(rate) if rate else None
        dur = _declared_duration_s(vs) or container_s
        n_frames = vs.frames or (round(dur * fps) if dur and fps else None)
        video = VideoStreamInfo(
            codec=vs.codec_context.name,
            width=int(vs.codec_context.width),
            height=int(vs.codec_context.height),
            fps=fps,
            n_frames=n_frames,
            duration_s=dur,
            start_s=_start_s(vs),
        )
    as_ = _audio_stream(container)
    if as_ is not None:
        audio = AudioStreamInfo(
            codec=as_.codec_context.name,
            sample_rate_hz=int(as_.codec_context.sample_rate),
            channels=int(as_.codec_context.layout.nb_channels),
            duration_s=_declared_duration_s(as_) or container_s,
            start_s=_start_s(as_),
        )
    return MediaInfo(
        path=str(path),
        format=container.format.name,
        size_bytes=path.stat().st_size,
        duration_s=container_s,
        video=video,
        audio=audio,
    )


def probe(path: str | os.PathLike[str]) -> MediaInfo:
    """Container and stream facts from the headers, without decoding frames."""
    with _open(path) as container:
        return _info(container, Path(path))


# -- shared checks ---------------------------------------------------------------------------


def _declared_end_s(stream: Any) -> float | None:
    """Where the stream says it ends: start + duration, or Matroska's ``DURATION`` tag.

    The tag that FFmpeg's Matroska muxer writes is the end time of the stream's
    last frame, counted from zero rather than from the stream's first frame.
    """
    if stream.duration is not None and stream.time_base is not None and stream.duration > 0:
        return _start_s(stream) + float(stream.duration * stream.time_base)
    return _declared_duration_s(stream)


def _check_truncated(
    path: str, kind: str, stream: Any, decoded_end_s: float, *, allow: bool
) -> None:
    """Raise (or warn) when decoding ended clearly before the stream's declared end."""
    declared_end = _declared_end_s(stream)
    if declared_end is None:
        return
    missing = declared_end - decoded_end_s
    if missing > max(_TRUNCATION_TOLERANCE_S, _TRUNCATION_TOLERANCE_FRAC * declared_end):
        reason = f"truncated {kind}: decoding ended at {decoded_end_s:.2f} s of a declared {declared_end:.2f} s"
        if not allow:
            raise CorruptMediaError(path, reason)
        logger.warning("%s: %s; keeping what was decoded", path, reason)


def _max_outputs(max_duration_s: float | None, rate: float) -> int | None:
    if max_duration_s is None:
        return None
    if max_duration_s <= 0:
        raise ValueError(f"max_duration_s must be positive, got {max_duration_s}")
    return math.ceil(max_duration_s * rate - 1e-9)


def _decode_error(path: str, kind: str, at_s: float, exc: Exception) -> CorruptMediaError:
    return CorruptMediaError(
        path, f"corrupt {kind} stream, decoding failed at {at_s:.2f} s ({exc})"
    )


# -- video -----------------------------------------------------------------------------------


def _frame_time(frame: Any, stream: Any) -> Fraction | None:
    if frame.pts is None:
        return None
    return frame.pts * (frame.time_base or stream.time_base)


def _constant_rate_frames(
    path: str,
    container: av.container.InputContainer,
    *,
    fps: float,
    max_duration_s: float | None,
    allow_truncated: bool,
    threads: int,
) -> Iterator[np.ndarray]:
    """Yield ``[H, W, 3]`` RGB frames at constant ``fps`` (the same array may repeat)."""
    import av

    vs = _video_stream(container)
    if vs is None:
        raise NoVideoStreamError(path, "no video stream")
    if threads == 1:
        vs.thread_type, vs.thread_count = "SLICE", 1
    else:
        vs.thread_type, vs.thread_count = "AUTO", threads
    rate = Fraction(fps).limit_denominator(1_000_000)
    src_rate = vs.average_rate or vs.guessed_rate
    default_dur = Fraction(1) / (Fraction(src_rate) if src_rate else rate)
    declared = _declared_duration_s(vs)
    n_max = _max_outputs(max_duration_s, fps)
    size: tuple[int, int] | None = None  # (width, height) of the first frame
    t0: Fraction | None = None
    held: Any = None  # the source frame shown now, converted lazily
    held_rgb: np.ndarray | None = None
    held_rel = held_dur = Fraction(0)
    k = 0

    def rgb() -> np.ndarray:
        nonlocal held_rgb
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

    try:
        for frame in container.decode(vs):
            t = _frame_time(frame, vs)
            if t is None:
                t = (t0 or 0) + held_rel + held_dur if held is not None else Fraction(0)
            if t0 is None:
                t0, size = t, (frame.width, frame.height)
            rel = t - t0
            if declared is not None and rel > declared + _MAX_TIMESTAMP_OVERRUN_S:
                raise CorruptMediaError(
                    path,
                    f"video timestamp {float(t):.1f} s far past the declared "
                    f"duration {declared:.1f} s",
                )
            if held is not None:
                while k < rel * rate:  # output time k / fps is before this frame: show the held one
                    yield rgb()
                    k += 1
                    if n_max is not None and k >= n_max:
                        return
            dur = frame.duration
            held, held_rgb, held_rel = frame, None, rel
            held_dur = dur * (frame.time_base or vs.time_base) if dur else default_dur
    except av.error.FFmpegError as exc:
        raise _decode_error(path, "video", float(held_rel), exc) from exc
    if held is None:
        raise EmptyMediaError(path, "no decodable video frames")
    end = held_rel + held_dur
    while k < end * rate and (n_max is None or k < n_max):
        yield rgb()
        k += 1
    if n_max is None or k < n_max:
        _check_truncated(path, "video", vs, float(t0 + end), allow=allow_truncated)


def iter_frames(
    path: str | os.PathLike[str],
    *,
    fps: float = timebase.FRAME_HZ,
    chunk_frames: int = 250,
    max_duration_s: float | None = None,
    allow_truncated: bool = False,
    threads: int = 0,
) -> Iterator[np.ndarray]:
    """Yield ``[n, H, W, 3]`` uint8 RGB chunks at constant ``fps``, ``n <= chunk_frames``.

    Memory is bounded by one chunk plus one decoded frame. ``threads``: FFmpeg
    decoder threads (0 = one per core, 1 = single-threaded). Errors (including
    truncation) can surface after some chunks were yielded: discard them then.
    """
    if chunk_frames < 1:
        raise ValueError(f"chunk_frames must be >= 1, got {chunk_frames}")
    path_s = str(path)
    with _open(path) as container:
        buf: np.ndarray | None = None
        n = 0
        for img in _constant_rate_frames(
            path_s,
            container,
            fps=fps,
            max_duration_s=max_duration_s,
            allow_truncated=allow_truncated,
            threads=threads,
        ):
            if buf is None:
                buf = np.empty((chunk_frames, *img.shape), dtype=np.uint8)  # [chunk, H, W, 3]
            buf[n] = img
            n += 1
            if n == chunk_frames:
                yield buf
                buf, n = None, 0
        if buf is not None and n:
            # a short tail is copied so that it does not pin a whole chunk's allocation
            yield buf[:n].copy() if 2 * n < chunk_frames else buf[:n]


# -- audio -----------------------------------------------------------------------------------


def _first_video_time_s(path: str) -> float | None:
    """Time of the first decoded video frame (stream ``start_time`` is unreliable, e.g. in mkv)."""
    import av

    with _open(path) as container:
        vs = _video_stream(container)
        vs.thread_type, vs.thread_count = "SLICE", 1
        try:
            for frame in container.decode(vs):
                t = _frame_time(frame, vs)
                return None if t is None else float(t)
        except av.error.FFmpegError as exc:
            raise _decode_error(path, "video", 0.0, exc) from exc
    return None


def _mono_16k(
    path: str,
    container: av.container.InputContainer,
    *,
    sample_rate_hz: int,
    max_duration_s: float | None,
    allow_truncated: bool,
) -> Iterator[np.ndarray]:
    """Yield float32 mono pieces (of varying size) aligned to the video start."""
    import av

    as_ = _audio_stream(container)
    if as_ is None:
        raise NoAudioStreamError(path, "no audio stream")
    ref = _first_video_time_s(path) if _video_stream(container) is not None else None
    n_max = _max_outputs(max_duration_s, sample_rate_hz)
    resampler = av.AudioResampler(format="fltp", layout=None, rate=sample_rate_hz)
    produced = 0  # samples yielded
    to_drop = 0  # samples before the video start still to drop
    started = False

    def emit(planes: np.ndarray) -> Iterator[np.ndarray]:
        nonlocal produced, to_drop
        mono = planes.mean(axis=0, dtype=np.float32) if planes.shape[0] > 1 else planes[0]  # [n]
        if to_drop:
            cut = min(to_drop, mono.shape[0])
            mono, to_drop = mono[cut:], to_drop - cut
        if n_max is not None:
            mono = mono[: n_max - produced]
        if mono.shape[0]:
            produced += mono.shape[0]
            yield np.ascontiguousarray(mono, dtype=np.float32)

    try:
        for frame in container.decode(as_):
            if not started:
                started = True
                t = _frame_time(frame, as_)
                if ref is None:  # no video: the audio's own start is time zero
                    ref = 0.0 if t is None else float(t)
                offset = 0.0 if t is None else float(t) - ref
                if offset > 0:  # audio starts after the first video frame: pad with silence
                    yield from emit(np.zeros((1, round(offset * sample_rate_hz)), np.float32))
                else:
                    to_drop = round(-offset * sample_rate_hz)
            for out in resampler.resample(frame):
                yield from emit(out.to_ndarray())  # [C, n]
            if n_max is not None and produced >= n_max:
                return
        for out in resampler.resample(None):
            yield from emit(out.to_ndarray())
    except av.error.FFmpegError as exc:
        raise _decode_error(path, "audio", produced / sample_rate_hz, exc) from exc
    if produced == 0:
        raise EmptyMediaError(path, "no decodable audio samples")
    if n_max is None or produced < n_max:
        _check_truncated(
            path, "audio", as_, (ref or 0.0) + produced / sample_rate_hz, allow=allow_truncated
        )


def iter_audio(
    path: str | os.PathLike[str],
    *,
    sample_rate_hz: int = timebase.SAMPLE_RATE_HZ,
    chunk_samples: int = 250 * timebase.SAMPLES_PER_FRAME,
    max_duration_s: float | None = None,
    allow_truncated: bool = False,
) -> Iterator[np.ndarray]:
    """Yield ``[n]`` float32 mono chunks at ``sample_rate_hz``, ``n == chunk_samples`` but the last.

    The default chunk (160,000 samples) spans the same 10 s as ``iter_frames``'
    default 250-frame chunk, so chunk ``i`` of both covers the same time.
    """
    if chunk_samples < 1:
        raise ValueError(f"chunk_samples must be >= 1, got {chunk_samples}")
    with _open(path) as container:
        pending: list[np.ndarray] = []
        n = 0
        for piece in _mono_16k(
            str(path),
            container,
            sample_rate_hz=sample_rate_hz,
            max_duration_s=max_duration_s,
            allow_truncated=allow_truncated,
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


@dataclass(frozen=True)
class MediaChunk:
    """Frames and audio of the same stretch of time (``start_frame / fps`` onwards)."""

    start_frame: int
    frames: np.ndarray | None  # [n, H, W, 3] uint8; None once the video has ended
    audio: (
        np.ndarray | None
    )  # [n * samples_per_frame] float32 (shorter at the end); None once ended


def iter_chunks(
    path: str | os.PathLike[str],
    *,
    chunk_frames: int = 250,
    fps: float = timebase.FRAME_HZ,
    sample_rate_hz: int = timebase.SAMPLE_RATE_HZ,
    max_duration_s: float | None = None,
    allow_truncated: bool = False,
    threads: int = 0,
) -> Iterator[MediaChunk]:
    """Time-aligned frame and audio chunks (``iter_frames`` and ``iter_audio`` side by side).

    Chunk ``i`` holds frames ``[i * chunk_frames, (i + 1) * chunk_frames)`` and the
    audio samples of the same interval. When one stream ends first, its field is
    None in the remaining chunks; reconcile lengths with ``featstore.timebase``.
    """
    import itertools

    spf = timebase.samples_per_frame(sample_rate_hz=sample_rate_hz, frame_hz=fps)
    frames = iter_frames(
        path,
        fps=fps,
        chunk_frames=chunk_frames,
        max_duration_s=max_duration_s,
        allow_truncated=allow_truncated,
        threads=threads,
    )
    audio = iter_audio(
        path,
        sample_rate_hz=sample_rate_hz,
        chunk_samples=chunk_frames * spf,
        max_duration_s=max_duration_s,
        allow_truncated=allow_truncated,
    )
    for i, (f, a) in enumerate(itertools.zip_longest(frames, audio)):
        yield MediaChunk(start_frame=i * chunk_frames, frames=f, audio=a)


# -- whole clips -----------------------------------------------------------------------------


def decode(
    path: str | os.PathLike[str],
    *,
    video: bool = True,
    audio: bool = True,
    fps: float = timebase.FRAME_HZ,
    sample_rate_hz: int = timebase.SAMPLE_RATE_HZ,
    max_duration_s: float | None = None,
    allow_truncated: bool = False,
    threads: int = 0,
) -> DecodedMedia:
    """Decode a clip to constant-rate RGB frames and mono float32 audio (see module docs).

    Visual-only encoders pass ``audio=False`` so that files without audio work.

    >>> m = decode("clip.mp4", audio=False)  # doctest: +SKIP
    >>> m.frames.dtype, m.audio  # doctest: +SKIP
    (dtype('uint8'), None)
    """
    if not (video or audio):
        raise ValueError("decode needs video=True or audio=True")
    info = probe(path)
    if video and info.video is None:
        raise NoVideoStreamError(path, "no video stream")
    if audio and info.audio is None:
        raise NoAudioStreamError(path, "no audio stream (pass audio=False for visual-only use)")
    frames = samples = None
    if video:
        frames = _collect_frames(
            iter_frames(
                path,
                fps=fps,
                max_duration_s=max_duration_s,
                allow_truncated=allow_truncated,
                threads=threads,
            ),
            expected=_expected_frames(info, fps, max_duration_s),
        )
    if audio:
        with _open(path) as container:
            pieces = list(
                _mono_16k(
                    str(path),
                    container,
                    sample_rate_hz=sample_rate_hz,
                    max_duration_s=max_duration_s,
                    allow_truncated=allow_truncated,
                )
            )
        samples = np.concatenate(pieces)  # [N]
    return DecodedMedia(
        frames=frames, audio=samples, fps=float(fps), sample_rate_hz=sample_rate_hz, info=info
    )


def _expected_frames(info: MediaInfo, fps: float, max_duration_s: float | None) -> int:
    """Output frames the header promises (0 when it says nothing)."""
    duration = (info.video.duration_s if info.video else None) or info.duration_s or 0.0
    if max_duration_s is not None:
        duration = min(duration, max_duration_s)
    return math.ceil(duration * fps) + 1


def _collect_frames(chunks: Iterator[np.ndarray], *, expected: int) -> np.ndarray:
    """Gather frame chunks into one ``[T, H, W, 3]`` array sized from the header.

    Filling a buffer allocated once keeps the peak at one clip plus one chunk;
    concatenating a list of chunks would hold the clip twice (1.4 GB for 10 s
    of 720p) and run at half the speed. A header that undercounts only costs
    a regrowth; one that overcounts by over 10 % costs a final trimming copy.
    """
    out: np.ndarray | None = None
    n = 0
    for chunk in chunks:
        if out is None:
            out = np.empty((max(expected, len(chunk)), *chunk.shape[1:]), dtype=chunk.dtype)
        if n + len(chunk) > len(out):
            grown = np.empty((max(2 * len(out), n + len(chunk)), *out.shape[1:]), dtype=out.dtype)
            grown[:n] = out[:n]
            out = grown
        out[n : n + len(chunk)] = chunk
        n += len(chunk)
    if out is None:  # pragma: no cover - iter_frames raises EmptyMediaError first
        raise EmptyMediaError("?", "no frames decoded")
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
