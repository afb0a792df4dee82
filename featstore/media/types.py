"""The facts :mod:`featstore.media` reports: stream headers, decoded clips, chunks."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "AudioStreamInfo",
    "DecodedMedia",
    "MediaChunk",
    "MediaInfo",
    "SilenceTrim",
    "VideoStreamInfo",
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


@dataclass(frozen=True)
class MediaChunk:
    """Frames and audio of the same stretch of time (``start_frame / fps`` onwards)."""

    start_frame: int
    frames: np.ndarray | None  # [n, H, W, 3] uint8; None once the video has ended
    audio: (
        np.ndarray | None
    )  # [n * samples_per_frame] float32 (shorter at the end); None once ended
