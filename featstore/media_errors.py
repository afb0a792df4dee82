"""The errors of media probing and decoding (re-exported by :mod:`featstore.media`).

Every PyAV/FFmpeg failure, and every decode bound a file passes
(:class:`~featstore.decode_limits.DecodeLimits`), is one of these: a typed
:class:`MediaError` that names the file and the reason. The extraction worker
records it as that video's failure; the API answers it with a 4xx.
"""

from __future__ import annotations

import os

from featstore.errors import FeatstoreError

__all__ = [
    "CorruptMediaError",
    "DecodeMemoryError",
    "DecodedBytesLimitError",
    "DurationLimitError",
    "EmptyMediaError",
    "FrameSizeLimitError",
    "MediaError",
    "MediaLimitError",
    "MediaNotFoundError",
    "NoAudioStreamError",
    "NoVideoStreamError",
    "UnsupportedMediaError",
]


class MediaError(FeatstoreError):
    """A media file cannot be probed or decoded; ``path`` names it."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self) -> tuple[type[MediaError], tuple[str, str]]:
        # picklable with both arguments (Dask workers send failures back to the client)
        return type(self), (self.path, self.reason)


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


class MediaLimitError(MediaError):
    """The file passes a decode bound (:class:`~featstore.decode_limits.DecodeLimits`).

    Raised from the headers before decoding, or while decoding as soon as the
    decoded media passes the bound (whatever the headers said). The file may be
    perfectly valid: raising the limit lets it through.
    """


class DurationLimitError(MediaLimitError):
    """The media lasts longer than ``max_duration_s``."""


class FrameSizeLimitError(MediaLimitError):
    """Video frames have more pixels than ``max_frame_pixels``."""


class DecodedBytesLimitError(MediaLimitError):
    """The decoded arrays would take more than ``max_decoded_bytes``."""


class DecodeMemoryError(MediaLimitError):
    """The process ran out of memory (``MemoryError``) while decoding this file."""
