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

from featstore.decode_limits import DecodeLimits
from featstore.media.audio import iter_audio
from featstore.media.clip import (
    SILENCE_THRESHOLD,
    decode,
    iter_chunks,
    leading_silence_s,
    trim_leading_silence,
)
from featstore.media.container import DEFAULT_LIMITS, probe
from featstore.media.types import (
    AudioStreamInfo,
    DecodedMedia,
    MediaChunk,
    MediaInfo,
    SilenceTrim,
    VideoStreamInfo,
)
from featstore.media.video import iter_frames
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

__all__ = [
    "DEFAULT_LIMITS",
    "SILENCE_THRESHOLD",
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
