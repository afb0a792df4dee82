"""Seeking for span decodes: start near a span instead of at the start of the file.

A span ``[start_s, until_s)`` of a clip must decode to exactly the slice of the whole
clip's decode (:mod:`featstore.media`): frames ``ceil(start_s * fps)`` onwards and
samples ``ceil(start_s * sample_rate_hz)`` onwards, on the same 25 fps / 16 kHz grid
whose time zero is the file's first video frame. Decoding from the start and dropping
costs the whole prefix (minutes of video for a segment at the end of a long file), so
the decoders seek:

- **video**: container seek to the keyframe at or before the span start, decode, drop
  the frames before it. The first frame decoded after the seek must be a keyframe at or
  before the time of the span's first output frame (it is then the same picture as in
  a decode from the start, and every frame after it too); otherwise (a demuxer that
  seeks by decode timestamps past the frame needed, open-GOP leading pictures, frames
  without timestamps) the seek backs off by 1, 2, 4... s and finally decodes from the
  start.
- **audio**: decoded audio samples depend on what came before them (codec overlap,
  the resampler's filter), so the seek lands at least :data:`AUDIO_PREROLL_S` before
  the span and the first :data:`AUDIO_WARMUP_S` of output are never used. The
  resampler's output grid must also be the whole decode's: that decode resamples from
  the first audio frame, so output sample ``J`` lies ``J * in_rate / out_rate`` input
  samples after it. The seek drops the ``d`` input samples that put the resampler's
  first input on that grid (``(n + d) * out_rate / in_rate`` an integer, where ``n``
  input samples precede the first frame after the seek), and its outputs are exactly
  the whole decode's from there on. ``n`` comes from the frame's timestamp, which is
  sample-exact in MP4/MOV (time base = 1 / sample rate) and in 48 kHz Matroska (1 ms
  = 48 samples); a coarser timestamp (44.1 kHz in Matroska) places the span within
  its rounding (at most half a tick, 0.5 ms), which is logged.

Nothing here decodes more than the frames it inspects; :mod:`featstore.media` owns the
decoding loops, the limits and the errors.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from featstore.errors import FeatstoreError

log = logging.getLogger(__name__)

__all__ = [
    "AUDIO_PREROLL_S",
    "AUDIO_WARMUP_S",
    "AudioSeek",
    "InvalidSpanError",
    "chain",
    "check_span",
    "first_index",
    "seek_audio",
    "seek_video",
    "worth_seeking",
]

AUDIO_PREROLL_S = Fraction(1, 2)  # decode this much audio before a span (Opus needs 80 ms)
AUDIO_WARMUP_S = Fraction(1, 4)  # outputs this close to where decoding started are not used
_MAX_TRIES = 8  # back-offs of 1, 2, 4, ... s before decoding from the start
_EPS = 1e-9


class InvalidSpanError(FeatstoreError, ValueError):
    """A span that is not ``0 <= start_s < until_s`` (finite)."""


def check_span(start_s: float, until_s: float | None) -> None:
    """Raise :class:`InvalidSpanError` unless ``0 <= start_s < until_s`` (``until_s`` may be None)."""
    if isinstance(start_s, bool) or not isinstance(start_s, int | float):
        raise InvalidSpanError(f"start_s must be a number, got {start_s!r}")
    if not (math.isfinite(start_s) and start_s >= 0):
        raise InvalidSpanError(f"start_s must be a finite number >= 0, got {start_s}")
    if until_s is not None and not (until_s > start_s):
        raise InvalidSpanError(f"the span ends at {until_s} s, not after its start {start_s} s")


def first_index(start_s: float, rate: float) -> int:
    """The first output (frame or sample) at or after ``start_s``: ``ceil(start_s * rate)``."""
    return max(0, math.ceil(start_s * rate - _EPS))


def _frame_time(frame: Any, stream: Any) -> Fraction | None:
    if frame is None or frame.pts is None:
        return None
    return frame.pts * (frame.time_base or stream.time_base)


def _seek(container: Any, stream: Any, t: Fraction) -> Iterator[Any]:
    container.seek(math.floor(t / stream.time_base), stream=stream, backward=True)
    return container.decode(stream)


def seek_video(container: Any, stream: Any, *, t0: Fraction, at: Fraction) -> Iterator[Any] | None:
    """Decoded frames from a keyframe at or before ``t0 + at``, or None (decode from the start).

    ``t0``: the time of the file's first decoded frame; ``at``: the time of the first
    output frame wanted, relative to it. The first frame yielded is that keyframe.
    """
    margin = Fraction(0)
    for _ in range(_MAX_TRIES):
        if at - margin <= 0:
            break
        frames = _seek(container, stream, t0 + at - margin)
        first = next(frames, None)
        t = _frame_time(first, stream)
        if t is not None and first.key_frame and t0 <= t <= t0 + at:
            return chain(first, frames)
        log.debug(
            "video seek to %.3f s gave %s; backing off",
            float(at - margin),
            "no frame" if first is None else f"a frame at {float(t - t0) if t else None} s",
        )
        margin = max(2 * margin, Fraction(1))
    return None


def worth_seeking(wanted: int, sample_rate_hz: int) -> bool:
    """Whether output ``wanted`` lies past the pre-roll (else decode from the start)."""
    return wanted > AUDIO_PREROLL_S * sample_rate_hz


@dataclass(frozen=True)
class AudioSeek:
    """Where an audio seek landed: decoded frames, input samples to drop, first output index.

    After dropping ``skip_input`` samples of ``frames``' first frame, the resampler's
    output ``j`` is output ``first_output + j`` of a decode from the first audio frame.
    """

    frames: Iterator[Any]
    skip_input: int
    first_output: int
    exact: bool  # the landing frame's timestamp is a whole number of input samples


def seek_audio(
    container: Any,
    stream: Any,
    *,
    t_first: Fraction,
    first_rate: int,
    first_format: tuple[str, str],
    first_samples: int,
    wanted: int,
    sample_rate_hz: int,
) -> AudioSeek | None:
    """Frames from at least :data:`AUDIO_PREROLL_S` before output ``wanted``, or None.

    ``t_first``, ``first_rate``, ``first_format`` (sample format, layout), ``first_samples``:
    the first audio frame of the file, where a decode from the start begins resampling; ``wanted``: the
    first output sample needed, counted from that frame at ``sample_rate_hz``. None when
    the seeks fail or land on audio of another rate or layout (the stream changes format:
    only a decode from the start knows where its resampler restarted); the container
    has then moved, and the caller decodes from the start in a fresh one.
    """
    period = first_rate // math.gcd(first_rate, sample_rate_hz)  # input samples per grid step
    margin = AUDIO_PREROLL_S
    for _ in range(_MAX_TRIES):
        target = t_first + Fraction(wanted, sample_rate_hz) - margin
        if target <= t_first:
            return None
        frames = _seek(container, stream, target)
        first = next(frames, None)
        t = _frame_time(first, stream)
        if t is None or t < t_first:
            return None
        if (
            int(first.sample_rate) != first_rate
            or (
                first.format.name,
                first.layout.name,
            )
            != first_format
        ):
            return None
        n, exact = _samples_before(
            (t - t_first) * first_rate,
            tick=Fraction(stream.time_base) * first_rate,
            first_samples=first_samples,
            frame_samples=int(first.samples),
        )
        skip = (-n) % period
        j0 = (n + skip) * sample_rate_hz // first_rate
        if wanted - j0 >= AUDIO_WARMUP_S * sample_rate_hz:
            if not exact:
                log.debug(
                    "audio seek: timestamp %.6f s does not give a whole number of samples at "
                    "%d Hz; the span is placed within half a timestamp tick",
                    float(t),
                    first_rate,
                )
            return AudioSeek(chain(first, frames), skip, j0, exact)
        margin *= 2
    return None


def _samples_before(
    estimate: Fraction, *, tick: Fraction, first_samples: int, frame_samples: int
) -> tuple[int, bool]:
    """Input samples before a frame whose timestamp says ``estimate``; whether that is exact.

    A timestamp of one tick per sample or finer is exact. A coarser one (Matroska's
    1 ms) is rounded: when frames have one size (AAC's 1024, a muxer's PCM blocks),
    the frame starts at ``first_samples + k * frame_samples``, and the one such start
    within half a tick of the estimate is the true one.
    """
    if tick <= 1:
        return round(estimate), estimate.denominator == 1
    k = round((estimate - first_samples) / frame_samples)
    snapped = first_samples + k * frame_samples
    if frame_samples > tick and abs(snapped - estimate) <= tick / 2:
        return snapped, True
    return round(estimate), False


def chain(first: Any, rest: Iterator[Any]) -> Iterator[Any]:
    """``first``, then ``rest``."""
    yield first
    yield from rest
