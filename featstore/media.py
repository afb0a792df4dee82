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
- Audio is converted to float32 mono at 16 kHz by one FFmpeg filter graph
  (:class:`featstore.downmix.MonoResampler`): the mono mix is the mean of the
  channels, whatever their number or layout, made before any array exists (so
  a stereo file with two equal channels gives the samples of its mono version,
  and 7.1 audio no longer crashes PyAV). Audio is aligned to the
  video: sample ``i`` is at ``video_start + i / sample_rate_hz``; audio before the
  first video frame is dropped and a late audio start is padded with zeros.
  Files without video use the audio's own start.
- Every decode is bounded by a :class:`~featstore.decode_limits.DecodeLimits`
  (default: 3840x2160 pixels per frame and 4 GiB of decoded arrays per clip;
  callers add a duration, ``featstore extract`` 600 s), checked against the
  headers first and then against the decoded media as it comes, so a header
  that lies cannot make decoding run past a bound; a ``MemoryError`` while
  decoding becomes that file's ``DecodeMemoryError``.
- Truncated media: when decoding ends clearly before a stream's declared
  duration (by more than ``max(0.25 s, 2 %)``), or FFmpeg fails mid-stream, a
  ``CorruptMediaError`` is raised, because partial features would silently
  disagree with the dataset's labels and fake segments. ``allow_truncated=True``
  keeps what was decoded and logs a warning instead. A file whose index is lost
  (an mp4 cut before its ``moov`` atom) cannot be opened and is always corrupt.
  Streams that declare no duration cannot be checked.

All PyAV/FFmpeg errors are mapped to the ``MediaError`` family
(:mod:`featstore.media_errors`, re-exported here); the message names the file
and the reason.

>>> media = decode("clip.mp4")  # doctest: +SKIP
>>> media.frames.shape, media.audio.shape  # doctest: +SKIP
((50, 224, 224, 3), (32000,))
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from featstore import seeking, timebase
from featstore.decode_limits import DecodeLimits, format_pixels, memory_guard
from featstore.media_errors import (
    CorruptMediaError,
    DecodedBytesLimitError,
    DecodeMemoryError,
    DurationLimitError,
    EmptyMediaError,
    FrameSizeLimitError,
    MediaError,
    MediaLimitError,
    MediaNotFoundError,
    NoAudioStreamError,
    NoVideoStreamError,
    UnsupportedMediaError,
)

if TYPE_CHECKING:
    import av.container

logger = logging.getLogger(__name__)

SILENCE_THRESHOLD = 0.0005  # AVH-Align: speech starts at the first |sample| above this
DEFAULT_LIMITS = DecodeLimits()
_TRUNCATION_TOLERANCE_S = 0.25
_TRUNCATION_TOLERANCE_FRAC = 0.02
_MAX_TIMESTAMP_OVERRUN_S = 60.0  # a frame this far past the declared duration is a corrupt pts
_MAX_INITIAL_BYTES = 256 * 2**20  # first allocation of a whole-clip array, whatever the header says

__all__ = [
    "DEFAULT_LIMITS",
    "AudioStreamInfo",
    "CorruptMediaError",
    "DecodeLimits",
    "DecodeMemoryError",
    "DecodedBytesLimitError",
    "DecodedMedia",
    "DurationLimitError",
    "EmptyMediaError",
    "FrameSizeLimitError",
    "MediaChunk",
    "MediaError",
    "MediaInfo",
    "MediaLimitError",
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


def _max_outputs(until_s: float | None, rate: float) -> int | None:
    if until_s is None:
        return None
    if until_s <= 0:
        raise ValueError(f"until_s must be positive, got {until_s}")
    return math.ceil(until_s * rate - 1e-9)


def _decode_error(
    path: str, kind: str, at_s: float, exc: Exception, limits: DecodeLimits | None = None
) -> CorruptMediaError:
    hint = ""
    if limits is not None and limits.max_frame_pixels is not None:
        # FFmpeg refuses a frame over max_pixels with a generic error: say it may be that
        hint = (
            "; or its frames grew past the frame size limit of "
            f"{format_pixels(limits.max_frame_pixels)} (max_frame_pixels), which the decoder "
            "refuses"
        )
    return CorruptMediaError(
        path, f"corrupt {kind} stream, decoding failed at {at_s:.2f} s ({exc}){hint}"
    )


def _check_headers(
    info: MediaInfo,
    limits: DecodeLimits,
    *,
    video: bool,
    audio: bool,
    whole: bool,
    fps: float,
    sample_rate_hz: int,
    start_s: float = 0.0,
    until_s: float | None,
) -> None:
    """``limits.check_declared`` on what ``info`` says of the streams to decode.

    The frame size counts whenever the file has video (aligning audio decodes a frame).
    Durations are those of the span ``[start_s, until_s)``.
    """
    v, a = info.video, info.audio
    durations = {
        kind: max(0.0, (d if until_s is None else min(d, until_s)) - start_s)
        for kind, stream, wanted in (("video", v, video), ("audio", a, audio))
        if wanted and stream is not None and (d := stream.duration_s) is not None
    }
    limits.check_declared(
        info.path,
        durations_s=durations,
        frame_size=None if v is None else (v.width, v.height),
        fps=fps,
        sample_rate_hz=sample_rate_hz,
        whole=whole,
    )


def _limit_decoder(path: str, stream: Any, limits: DecodeLimits) -> None:
    """Check the stream's declared frame size; make FFmpeg refuse frames past the limit."""
    cc = stream.codec_context
    limits.check_frame_size(path, cc.width, cc.height, where="declared by the stream")
    if limits.decoder_options():
        cc.options = {**cc.options, **limits.decoder_options()}


# -- video -----------------------------------------------------------------------------------


def _frame_time(frame: Any, stream: Any) -> Fraction | None:
    if frame.pts is None:
        return None
    return frame.pts * (frame.time_base or stream.time_base)


def _configure_video(path: str, vs: Any, limits: DecodeLimits, threads: int) -> None:
    _limit_decoder(path, vs, limits)
    if threads == 1:
        vs.thread_type, vs.thread_count = "SLICE", 1
    else:
        vs.thread_type, vs.thread_count = "AUTO", threads


def _constant_rate_frames(
    path: str,
    container: av.container.InputContainer,
    *,
    fps: float,
    start_s: float = 0.0,
    until_s: float | None,
    allow_truncated: bool,
    threads: int,
    limits: DecodeLimits,
) -> Iterator[np.ndarray]:
    """Yield ``[H, W, 3]`` RGB frames at constant ``fps`` (the same array may repeat).

    Output frames ``ceil(start_s * fps)`` onwards: a seek (:func:`seeking.seek_video`)
    when ``start_s > 0``, the same frames as a decode from the start. Stops with a
    :class:`MediaLimitError` before the first frame past ``limits`` (counted from the
    span's start; ``limits.max_decoded_bytes`` bounds the frames yielded in all).
    """
    import av

    vs = _video_stream(container)
    if vs is None:
        raise NoVideoStreamError(path, "no video stream")
    _configure_video(path, vs, limits, threads)
    rate = Fraction(fps).limit_denominator(1_000_000)
    k0 = seeking.first_index(start_s, fps)
    n_max = _max_outputs(until_s, fps)
    n_limit: int | None = None  # output frames the limits allow, known from the first frame
    bound = ""  # which limit sets n_limit
    size: tuple[int, int] | None = None  # (width, height) of the first frame
    t0: Fraction | None = None
    held: Any = None  # the source frame shown now, converted lazily
    held_rgb: np.ndarray | None = None
    held_rel = held_dur = Fraction(0)
    k = k0
    prefix = 0  # frames decoded before the span without a seek (when it has to)

    def rgb() -> np.ndarray:
        nonlocal held_rgb
        if n_limit is not None and k - k0 >= n_limit:
            if bound == "duration":
                raise limits.duration_error(
                    path, "video", stopped_s=(k - k0) / fps, declared_s=_declared_end_s(vs)
                )
            n_bytes = (k - k0 + 1) * 3 * size[0] * size[1]
            raise limits.bytes_error(
                path, f"decoded frames ({k - k0 + 1} of {size[0]}x{size[1]})", n_bytes
            )
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
            declared = _declared_duration_s(vs)
            for frame in frames:
                limits.check_frame_size(path, frame.width, frame.height, where="a decoded frame")
                t = _frame_time(frame, vs)
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
                        declared_s=_declared_end_s(vs),
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
            raise _decode_error(path, "video", float(held_rel), exc, limits) from exc
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
        _check_truncated(path, "video", vs, float(t0 + end), allow=allow_truncated)


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
    t = _frame_time(first, vs)
    if t is None:  # no timestamps to seek by: decode from the start, here
        return seeking.chain(first, frames), vs, False
    start(first, t)
    after = seeking.seek_video(container, vs, t0=t, at=at)
    if after is not None:
        return after, vs, True
    logger.debug("%s: cannot seek to %.2f s; decoding from the start", path, float(at))
    fresh = stack.enter_context(_open(path))
    vs = _video_stream(fresh)
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
        _open(path) as container,
        memory_guard(path_s, f"while decoding chunks of {chunk_frames} frames"),
    ):
        _check_headers(
            _info(container, Path(path)),
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
        for img in _constant_rate_frames(
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


# -- audio -----------------------------------------------------------------------------------


def _first_video_time_s(path: str, limits: DecodeLimits) -> float | None:
    """Time of the first decoded video frame (stream ``start_time`` is unreliable, e.g. in mkv)."""
    import av

    with _open(path) as container:
        vs = _video_stream(container)
        _limit_decoder(path, vs, limits)
        vs.thread_type, vs.thread_count = "SLICE", 1
        try:
            for frame in container.decode(vs):
                limits.check_frame_size(path, frame.width, frame.height, where="a decoded frame")
                t = _frame_time(frame, vs)
                return None if t is None else float(t)
        except av.error.FFmpegError as exc:
            raise _decode_error(path, "video", 0.0, exc, limits) from exc
    return None


def _mono_16k(
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

    as_ = _audio_stream(container)
    if as_ is None:
        raise NoAudioStreamError(path, "no audio stream")
    ref = _first_video_time_s(path, limits) if _video_stream(container) is not None else None
    i0 = seeking.first_index(start_s, sample_rate_hz)
    n_max = _max_outputs(until_s, sample_rate_hz)
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
                path, "audio", stopped_s=stopped_s, declared_s=_declared_end_s(as_)
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
            t = _frame_time(first, as_)
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
                    fresh = stack.enter_context(_open(path))
                    frames = fresh.decode(_audio_stream(fresh))
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
            raise _decode_error(path, "audio", at / sample_rate_hz, exc) from exc
    if produced == 0:
        if i0:
            raise EmptyMediaError(path, f"no audio samples from {start_s:.2f} s")
        raise EmptyMediaError(path, "no decodable audio samples")
    if n_max is None or at < n_max:
        _check_truncated(
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
    with _open(path) as container, memory_guard(path_s, "while decoding the audio"):
        _check_headers(
            _info(container, Path(path)),
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
        for piece in _mono_16k(
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
    frames = iter_frames(
        path,
        fps=fps,
        chunk_frames=chunk_frames,
        start_s=start_s,
        until_s=until_s,
        allow_truncated=allow_truncated,
        threads=threads,
        limits=limits,
    )
    audio = iter_audio(
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
    _check_headers(
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
        with _open(path) as container, memory_guard(path_s, "while decoding the video frames"):
            frames = _collect(
                (
                    img[None]  # [1, H, W, 3]
                    for img in _constant_rate_frames(
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
        with _open(path) as container, memory_guard(path_s, "while decoding the audio"):
            samples = _collect(
                _mono_16k(
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


def _collect(
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
