"""Active speaker detectors behind one interface: per-frame speaking scores of a face track.

A detector declares which crops it needs (``crop``), may look at the whole video's audio
once (``prepare``) and scores one track at a time (``score_track``): ``[T]`` float, the
face speaks at a frame where its score is >= 0. Registered by name in :data:`ASD_NAMES`
(``talknet``: TalkNet-ASD with its checkpoint; ``sync``: weight-free, VAD + audio-visual
agreement). Callers never branch on the name.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from featstore import timebase
from featstore.errors import FeatstoreError

if TYPE_CHECKING:
    from featstore.asd.facetracks import Track

__all__ = [
    "ASD_NAMES",
    "ActiveSpeakerDetector",
    "SyncDetector",
    "TalkNetDetector",
    "UnknownAsdError",
    "VideoAudio",
    "demo_smoothing",
    "load_detector",
]

_SPF = timebase.SAMPLES_PER_FRAME


class UnknownAsdError(FeatstoreError, KeyError):
    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True, eq=False)
class VideoAudio:
    """A video's whole 16 kHz mono audio and what ``prepare`` derived from it."""

    audio: np.ndarray  # [N] float32
    n_frames: int
    extra: dict[str, Any]


class ActiveSpeakerDetector(ABC):
    name: str
    crop: str  # "talknet" (112x112 grey face) or "mouth" (96x96 grey mouth ROI)

    def prepare(self, audio: np.ndarray, n_frames: int) -> VideoAudio:
        return VideoAudio(np.asarray(audio, dtype=np.float32), n_frames, {})

    @abstractmethod
    def score_track(self, video: VideoAudio, track: Track, crops: np.ndarray) -> np.ndarray:
        """``[T]`` per-frame scores of ``track`` (speaking where >= 0)."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """What produced the scores (recorded in the segment dataset's attrs)."""

    @classmethod
    def create(
        cls, *, checkpoint: str | os.PathLike[str] | None = None, device: str = "cpu"
    ) -> ActiveSpeakerDetector:
        """Build from the command line's options (a detector ignores those it has no use for)."""
        return cls()

    @staticmethod
    def track_audio(video: VideoAudio, track: Track) -> np.ndarray:
        """The track's samples ``[640 T]``, zero-padded past the end of the audio."""
        s, e = track.start * _SPF, track.end * _SPF
        out = np.zeros(e - s, dtype=np.float32)
        piece = video.audio[s:e]
        out[: len(piece)] = piece
        return out


def demo_smoothing(scores: np.ndarray, n_frames: int) -> np.ndarray:
    """TalkNet demo's display smoothing of a track's ``n`` scores over its ``T`` frames:
    frame ``f`` gets ``mean(scores[max(f - 2, 0) : min(f + 3, n - 1)])`` (the demo's slice
    never reaches the last score); an empty slice takes the nearest score."""
    n = len(scores)
    out = np.empty(n_frames)
    for f in range(n_frames):
        lo, hi = max(f - 2, 0), min(f + 3, n - 1)
        out[f] = scores[lo:hi].mean() if hi > lo else scores[min(f, n - 1)]
    return out


class TalkNetDetector(ActiveSpeakerDetector):
    name = "talknet"
    crop = "talknet"

    def __init__(self, checkpoint: str | os.PathLike[str] | None = None, *, device: str = "cpu"):
        from featstore.asd.talknet import load_talknet

        self.loaded = load_talknet(checkpoint, device=device)
        self.device = device

    @classmethod
    def create(
        cls, *, checkpoint: str | os.PathLike[str] | None = None, device: str = "cpu"
    ) -> ActiveSpeakerDetector:
        return cls(checkpoint, device=device)

    def score_track(self, video: VideoAudio, track: Track, crops: np.ndarray) -> np.ndarray:
        from featstore.asd.talknet.preprocess import track_inputs
        from featstore.asd.talknet.scoring import score_track

        mfcc, cut = track_inputs(self.track_audio(video, track), crops)
        if len(cut) == 0:
            return np.full(track.n_frames, -1.0)
        scores = score_track(self.loaded.model, mfcc, cut, device=self.device).scores
        return demo_smoothing(scores, track.n_frames)

    def describe(self) -> dict[str, Any]:
        return {
            "asd": self.name,
            "checkpoint": str(self.loaded.path),
            "checkpoint_sha256": self.loaded.sha256,
        }


class SyncDetector(ActiveSpeakerDetector):
    name = "sync"
    crop = "mouth"

    def __init__(self, config: Any = None) -> None:
        from featstore.asd.sync import SyncAsdConfig

        self.config = config or SyncAsdConfig()

    def prepare(self, audio: np.ndarray, n_frames: int) -> VideoAudio:
        from featstore.asd.sync import audio_envelope
        from featstore.asd.vad import speech_frames

        audio = np.asarray(audio, dtype=np.float32)
        padded = np.zeros(n_frames * _SPF, np.float32)
        padded[: min(len(audio), len(padded))] = audio[: len(padded)]
        extra = {
            "speech": speech_frames(padded, n_frames, threshold=self.config.vad_threshold),
            "envelope": audio_envelope(padded, n_frames, floor_nats=self.config.floor_nats),
        }
        return VideoAudio(padded, n_frames, extra)

    def score_track(self, video: VideoAudio, track: Track, crops: np.ndarray) -> np.ndarray:
        from featstore.asd.sync import sync_track_scores
        from featstore.encoders.baselines import mouth_pixel_rows

        sl = slice(track.start, track.end)
        return sync_track_scores(
            video.extra["envelope"][sl],
            mouth_pixel_rows(crops),
            video.extra["speech"][sl],
            self.config,
        )

    def describe(self) -> dict[str, Any]:
        import dataclasses

        return {"asd": self.name, **dataclasses.asdict(self.config), "vad": "silero-vad"}


_REGISTRY: dict[str, type[ActiveSpeakerDetector]] = {
    "talknet": TalkNetDetector,
    "sync": SyncDetector,
}


def load_detector(
    name: str, *, checkpoint: str | os.PathLike[str] | None = None, device: str = "cpu"
) -> ActiveSpeakerDetector:
    """The detector registered as ``name``; ``checkpoint``/``device`` go to those that use them."""
    if name not in _REGISTRY:
        raise UnknownAsdError(
            f"unknown active speaker detector {name!r}; choose from {', '.join(ASD_NAMES)}"
        )
    return _REGISTRY[name].create(checkpoint=checkpoint, device=device)


ASD_NAMES = tuple(_REGISTRY)
