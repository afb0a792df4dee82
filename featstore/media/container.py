"""Opening media files, reading their headers, and the checks every decoder shares.

All PyAV/FFmpeg errors are mapped to the ``MediaError`` family
(:mod:`featstore.media_errors`); the message names the file and the reason.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

from featstore.decode_limits import DecodeLimits, format_pixels
from featstore.media.types import AudioStreamInfo, MediaInfo, VideoStreamInfo
from featstore.media_errors import (
    CorruptMediaError,
    EmptyMediaError,
    MediaError,
    MediaNotFoundError,
    UnsupportedMediaError,
)

if TYPE_CHECKING:
    import av.container

logger = logging.getLogger(__name__)

DEFAULT_LIMITS = DecodeLimits()
_TRUNCATION_TOLERANCE_S = 0.25
_TRUNCATION_TOLERANCE_FRAC = 0.02

__all__ = [
    "DEFAULT_LIMITS",
    "audio_stream",
    "check_headers",
    "check_truncated",
    "declared_duration_s",
    "declared_end_s",
    "decode_error",
    "frame_time",
    "limit_decoder",
    "max_outputs",
    "open_media",
    "probe",
    "read_info",
    "video_stream",
]


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
def open_media(path: str | os.PathLike[str]) -> Iterator[av.container.InputContainer]:
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


def video_stream(container: av.container.InputContainer) -> Any | None:
    import av

    for s in container.streams.video:
        if not s.disposition & av.stream.Disposition.attached_pic:  # skip cover art
            return s
    return None


def audio_stream(container: av.container.InputContainer) -> Any | None:
    return container.streams.audio[0] if container.streams.audio else None


def declared_duration_s(stream: Any) -> float | None:
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


def stream_start_s(stream: Any) -> float:
    if stream.start_time is None or stream.time_base is None:
        return 0.0
    return float(stream.start_time * stream.time_base)


def read_info(container: av.container.InputContainer, path: Path) -> MediaInfo:
    container_s = container.duration / 1_000_000 if container.duration else None
    video = audio = None
    vs = video_stream(container)
    if vs is not None:
        rate = vs.average_rate or vs.guessed_rate
        fps = float(rate) if rate else None
        dur = declared_duration_s(vs) or container_s
        n_frames = vs.frames or (round(dur * fps) if dur and fps else None)
        video = VideoStreamInfo(
            codec=vs.codec_context.name,
            width=int(vs.codec_context.width),
            height=int(vs.codec_context.height),
            fps=fps,
            n_frames=n_frames,
            duration_s=dur,
            start_s=stream_start_s(vs),
        )
    as_ = audio_stream(container)
    if as_ is not None:
        audio = AudioStreamInfo(
            codec=as_.codec_context.name,
            sample_rate_hz=int(as_.codec_context.sample_rate),
            channels=int(as_.codec_context.layout.nb_channels),
            duration_s=declared_duration_s(as_) or container_s,
            start_s=stream_start_s(as_),
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
    with open_media(path) as container:
        return read_info(container, Path(path))


# -- shared checks ---------------------------------------------------------------------------


def declared_end_s(stream: Any) -> float | None:
    """Where the stream says it ends: start + duration, or Matroska's ``DURATION`` tag.

    The tag that FFmpeg's Matroska muxer writes is the end time of the stream's
    last frame, counted from zero rather than from the stream's first frame.
    """
    if stream.duration is not None and stream.time_base is not None and stream.duration > 0:
        return stream_start_s(stream) + float(stream.duration * stream.time_base)
    return declared_duration_s(stream)


def check_truncated(
    path: str, kind: str, stream: Any, decoded_end_s: float, *, allow: bool
) -> None:
    """Raise (or warn) when decoding ended clearly before the stream's declared end."""
    declared_end = declared_end_s(stream)
    if declared_end is None:
        return
    missing = declared_end - decoded_end_s
    if missing > max(_TRUNCATION_TOLERANCE_S, _TRUNCATION_TOLERANCE_FRAC * declared_end):
        reason = f"truncated {kind}: decoding ended at {decoded_end_s:.2f} s of a declared {declared_end:.2f} s"
        if not allow:
            raise CorruptMediaError(path, reason)
        logger.warning("%s: %s; keeping what was decoded", path, reason)


def max_outputs(until_s: float | None, rate: float) -> int | None:
    if until_s is None:
        return None
    if until_s <= 0:
        raise ValueError(f"until_s must be positive, got {until_s}")
    return math.ceil(until_s * rate - 1e-9)


def decode_error(
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


def check_headers(
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


def limit_decoder(path: str, stream: Any, limits: DecodeLimits) -> None:
    """Check the stream's declared frame size; make FFmpeg refuse frames past the limit."""
    cc = stream.codec_context
    limits.check_frame_size(path, cc.width, cc.height, where="declared by the stream")
    if limits.decoder_options():
        cc.options = {**cc.options, **limits.decoder_options()}


def frame_time(frame: Any, stream: Any) -> Fraction | None:
    if frame.pts is None:
        return None
    return frame.pts * (frame.time_base or stream.time_base)
