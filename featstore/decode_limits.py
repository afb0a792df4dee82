"""Bounds on what decoding one file may cost: its duration, its frame size, the bytes decoded.

Media files are untrusted input: a 10 MB file can hold ten hours of silence, a
header can say 1 s over an hour of audio, a stream can declare 8000x8000 frames.
Every decode in :mod:`featstore.media` is therefore bounded by a
:class:`DecodeLimits`, checked twice:

- against the headers, before anything is decoded (fail fast on honest files);
- against what is actually decoded, as it is decoded: decoding stops with the
  error as soon as the decoded media passes a bound, whatever the header said.

The decoder itself is told ``max_pixels`` so that FFmpeg refuses to allocate an
oversized frame the headers did not announce, and a ``MemoryError`` while
decoding becomes a :class:`~featstore.media_errors.DecodeMemoryError`. All of
them are :class:`~featstore.media_errors.MediaLimitError`: one video's failure,
never a crashed run or server.

``DecodeLimits()`` bounds memory, whoever decodes: frame size and decoded
bytes. The duration is a policy of the caller, since streaming (``iter_*``,
leading-silence measurement, the active-speaker segmentation of long
in-the-wild sources) holds one chunk however long the file: ``featstore
extract`` bounds it with :data:`EXTRACT_LIMITS`, ``featstore serve`` with its
``--max-duration-s``. The defaults fit the paper's datasets with room to spare:

- ``max_duration_s = 600`` for extraction: AV-Deepfake1M and FakeAVCeleb clips
  last seconds, Deepfake-Eval-2024's single-speaker segments at most 60 s; a
  10-minute in-the-wild video still passes (its audio is 38 MB at 16 kHz).
- ``max_frame_pixels = 3840 x 2160`` (4K UHD, 25 MB per RGB frame): anything
  a camera or phone records; 8000x8000 (192 MB per frame) is refused.
- ``max_decoded_bytes = 4 GiB`` for the arrays of one whole-clip decode
  (frames at native resolution + audio): 62 s of 720p (2.8 MB per frame),
  27 s of 1080p, 15 minutes of AV-Deepfake1M's 224x224. Longer high-resolution
  videos must be cut into segments (as the paper does) or the limit raised.

Extraction decodes ``--num-workers`` clips at once and keeps a few decoded
clips ahead of the encoder, so its peak memory is a small multiple of
``max_decoded_bytes`` in the worst case, however long or large the inputs.

>>> EXTRACT_LIMITS.max_frames(fps=25.0, frame_bytes=2_764_800)  # 720p: bytes bind first
(1553, 'bytes')
>>> EXTRACT_LIMITS.max_samples(sample_rate_hz=16_000)  # audio: the duration binds
(9600000, 'duration')
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

from featstore.errors import FeatstoreError
from featstore.media_errors import (
    DecodedBytesLimitError,
    DecodeMemoryError,
    DurationLimitError,
    FrameSizeLimitError,
)

__all__ = [
    "DEFAULT_MAX_DECODED_BYTES",
    "DEFAULT_MAX_FRAME_PIXELS",
    "EXTRACT_LIMITS",
    "EXTRACT_MAX_DURATION_S",
    "DecodeLimits",
    "InvalidLimitsError",
    "format_pixels",
    "memory_guard",
]

EXTRACT_MAX_DURATION_S = 600.0
DEFAULT_MAX_FRAME_PIXELS = 3840 * 2160
DEFAULT_MAX_DECODED_BYTES = 4 * 2**30
AUDIO_SAMPLE_BYTES = 4  # float32 mono


class InvalidLimitsError(FeatstoreError, ValueError):
    """A decode limit that is not a positive number."""


@dataclass(frozen=True)
class DecodeLimits:
    """Bounds on one decode; ``None`` lifts a bound (:meth:`unbounded` lifts all).

    The defaults bound memory only (no duration: see the module docs).

    ``max_duration_s``: media may last up to this many seconds (output frame
    ``k`` starts at ``k / fps`` and audio sample ``i`` at ``i / sample_rate_hz``;
    any frame or sample at or past the limit is refused). ``max_frame_pixels``:
    width x height of any video frame. ``max_decoded_bytes``: the arrays one
    whole-clip :func:`~featstore.media.decode` returns (``[T, H, W, 3]`` uint8 +
    ``[N]`` float32), and the buffer of one streamed chunk.
    """

    max_duration_s: float | None = None
    max_frame_pixels: int | None = DEFAULT_MAX_FRAME_PIXELS
    max_decoded_bytes: int | None = DEFAULT_MAX_DECODED_BYTES

    def __post_init__(self) -> None:
        for name in ("max_duration_s", "max_frame_pixels", "max_decoded_bytes"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InvalidLimitsError(f"{name} must be a number or None, got {value!r}")
            if not (math.isfinite(value) and value > 0):
                raise InvalidLimitsError(f"{name} must be positive, got {value!r}")

    @classmethod
    def unbounded(cls) -> DecodeLimits:
        """No bound at all (trusted files only)."""
        return cls(max_duration_s=None, max_frame_pixels=None, max_decoded_bytes=None)

    def max_frames(
        self, *, fps: float, frame_bytes: int, used_bytes: int = 0
    ) -> tuple[int | None, str]:
        """How many output frames of ``frame_bytes`` each may be decoded, and which bound
        says so (``"duration"`` or ``"bytes"``; ``(None, "")`` when unbounded)."""
        return _tightest(
            duration=_count(self.max_duration_s, fps),
            bytes_=self._bytes_left(used_bytes, frame_bytes),
        )

    def max_samples(self, *, sample_rate_hz: int, used_bytes: int = 0) -> tuple[int | None, str]:
        """How many float32 audio samples may be decoded (as :meth:`max_frames`)."""
        return _tightest(
            duration=_count(self.max_duration_s, sample_rate_hz),
            bytes_=self._bytes_left(used_bytes, AUDIO_SAMPLE_BYTES),
        )

    def _bytes_left(self, used_bytes: int, item_bytes: int) -> int | None:
        if self.max_decoded_bytes is None:
            return None
        return max(0, int(self.max_decoded_bytes) - used_bytes) // max(1, item_bytes)

    # -- checks: each raises (or returns) the typed error that names the file and the bound

    def check_frame_size(
        self, path: str | os.PathLike[str], width: int, height: int, *, where: str
    ) -> None:
        """Refuse frames of more than ``max_frame_pixels`` (``where``: who says their size)."""
        limit = self.max_frame_pixels
        if limit is not None and width * height > limit:
            raise FrameSizeLimitError(
                path,
                f"video frames are {width}x{height} ({format_pixels(width * height)}, {where}), "
                f"above the frame size limit of {format_pixels(limit)} (max_frame_pixels)",
            )

    def check_declared(
        self,
        path: str | os.PathLike[str],
        *,
        durations_s: Mapping[str, float],
        frame_size: tuple[int, int] | None,
        fps: float,
        sample_rate_hz: int,
        whole: bool,
    ) -> None:
        """Refuse from the headers alone what decoding would refuse (nothing is decoded).

        ``durations_s``: the declared duration of each stream to decode (``"video"``,
        ``"audio"``); ``frame_size``: the video's declared ``(width, height)``;
        ``whole``: a whole-clip decode, whose arrays are estimated against
        ``max_decoded_bytes``.
        """
        if frame_size is not None:
            self.check_frame_size(path, *frame_size, where="declared by the stream")
        limit = self.max_duration_s
        for kind, seconds in durations_s.items():
            if limit is not None and seconds > limit:
                raise DurationLimitError(
                    path,
                    f"{kind} lasts {seconds:.1f} s by its header, longer than the duration "
                    f"limit of {limit:g} s (max_duration_s)",
                )
        if not whole or self.max_decoded_bytes is None:
            return
        width, height = frame_size or (0, 0)
        n_frames = math.ceil(durations_s.get("video", 0.0) * fps)
        n_samples = math.ceil(durations_s.get("audio", 0.0) * sample_rate_hz)
        n_bytes = n_frames * width * height * 3 + n_samples * AUDIO_SAMPLE_BYTES
        if n_bytes > self.max_decoded_bytes:
            what = f"{n_frames} frames of {width}x{height}" if n_frames else "the audio"
            raise self.bytes_error(path, f"by the headers, the decoded arrays ({what})", n_bytes)

    def duration_error(
        self, path: str | os.PathLike[str], kind: str, *, stopped_s: float, declared_s: float | None
    ) -> DurationLimitError:
        """Decoding ``kind`` passed ``max_duration_s`` at ``stopped_s``."""
        said = f", though its header declares {declared_s:.1f} s" if declared_s is not None else ""
        return DurationLimitError(
            path,
            f"{kind} lasts longer than the duration limit of {self.max_duration_s:g} s "
            f"(max_duration_s): decoding stopped at {stopped_s:.1f} s{said}",
        )

    def bytes_error(
        self, path: str | os.PathLike[str], what: str, n_bytes: int
    ) -> DecodedBytesLimitError:
        """``what`` would take ``n_bytes``, past ``max_decoded_bytes``."""
        return DecodedBytesLimitError(
            path,
            f"{what} reach {n_bytes / 2**30:.2f} GiB, above the limit of "
            f"{(self.max_decoded_bytes or 0) / 2**30:.2f} GiB per clip (max_decoded_bytes)",
        )

    def decoder_options(self) -> dict[str, str]:
        """FFmpeg decoder options that make FFmpeg itself refuse oversized frames
        (a bitstream can change size without any header saying so)."""
        if self.max_frame_pixels is None:
            return {}
        return {"max_pixels": str(int(self.max_frame_pixels))}


EXTRACT_LIMITS = DecodeLimits(max_duration_s=EXTRACT_MAX_DURATION_S)
"""``featstore extract``'s defaults: 600 s, 3840x2160 pixels, 4 GiB of decoded arrays."""


@contextmanager
def memory_guard(path: str | os.PathLike[str], doing: str) -> Iterator[None]:
    """Turn a ``MemoryError`` into this file's :class:`DecodeMemoryError`
    ("out of memory ``doing``", e.g. "while decoding the audio").

    The ``MemoryError``'s traceback is dropped first: its frames hold the partial
    arrays, which must be freed before the next video is decoded.
    """
    try:
        yield
    except MemoryError as exc:
        exc.__traceback__ = None
        raise DecodeMemoryError(path, f"out of memory {doing}") from None


def _count(limit: float | None, rate: float) -> int | None:
    """Outputs whose start time ``i / rate`` is before ``limit``."""
    return None if limit is None else math.ceil(limit * rate - 1e-9)


def _tightest(*, duration: int | None, bytes_: int | None) -> tuple[int | None, str]:
    if duration is None and bytes_ is None:
        return None, ""
    if bytes_ is None or (duration is not None and duration <= bytes_):
        return duration, "duration"
    return bytes_, "bytes"


def format_pixels(pixels: int | None) -> str:
    """``8294400`` -> ``8.3 MP``; below 0.1 MP, ``4096 pixels``."""
    if pixels is None:
        return "unbounded"
    return f"{pixels / 1e6:.1f} MP" if pixels >= 100_000 else f"{pixels} pixels"
