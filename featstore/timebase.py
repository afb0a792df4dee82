"""Time steps, rates and length reconciliation: the one place rates are converted.

Conventions (DESIGN.md, "Timebase"):

- media are decoded to constant ``FRAME_HZ`` (25) fps frames and
  ``SAMPLE_RATE_HZ`` (16 kHz) mono audio, so one video frame spans
  ``SAMPLES_PER_FRAME`` (640) audio samples;
- a stored row ``t`` of an encoder running at ``frame_hz`` covers the half-open
  interval ``[t / frame_hz, (t + 1) / frame_hz)`` seconds from the start of the video;
- audio and visual rows are reconciled by trimming both to the shorter, keeping
  both original lengths.

Pure numpy; nothing here decodes media or touches the store.

>>> pair_frames(np.zeros((5, 2), dtype=np.float32)).shape
(3, 4)
>>> frames_to_samples(3)
1920
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from featstore.errors import FeatstoreError

FRAME_HZ = 25.0
SAMPLE_RATE_HZ = 16_000
SAMPLES_PER_FRAME = 640  # SAMPLE_RATE_HZ / FRAME_HZ

__all__ = [
    "FRAME_HZ",
    "SAMPLES_PER_FRAME",
    "SAMPLE_RATE_HZ",
    "RateError",
    "Reconciled",
    "common_rate",
    "concat_aligned",
    "frames_to_samples",
    "frames_to_seconds",
    "mask_to_segments",
    "pair_frames",
    "reconcile",
    "resample_rows",
    "resampled_length",
    "row_bounds_s",
    "row_times_s",
    "samples_per_frame",
    "samples_to_frames",
    "seconds_to_frames",
    "segments_to_mask",
    "silence_trim_counts",
]


class RateError(FeatstoreError, ValueError):
    """Rates that cannot be converted or brought together as asked."""


def _check_rate(name: str, value: float) -> None:
    if not (value > 0 and math.isfinite(value)):
        raise RateError(f"{name} must be a positive finite number, got {value!r}")


def samples_per_frame(*, sample_rate_hz: int = SAMPLE_RATE_HZ, frame_hz: float = FRAME_HZ) -> int:
    """Audio samples per frame (640 at 16 kHz / 25 fps); the rates must divide exactly."""
    _check_rate("sample_rate_hz", sample_rate_hz)
    _check_rate("frame_hz", frame_hz)
    ratio = sample_rate_hz / frame_hz
    if abs(ratio - round(ratio)) > 1e-9:
        raise ValueError(
            f"{sample_rate_hz} Hz is not a whole number of samples per {frame_hz} Hz frame"
        )
    return round(ratio)


def row_times_s(n_rows: int, frame_hz: float) -> np.ndarray:
    """Start time in seconds of each row: row ``t`` covers ``[t / frame_hz, (t + 1) / frame_hz)``."""
    _check_rate("frame_hz", frame_hz)
    if n_rows < 0:
        raise ValueError(f"n_rows must be >= 0, got {n_rows}")
    return np.arange(n_rows, dtype=np.float64) / frame_hz  # [n_rows]


def row_bounds_s(n_rows: int, frame_hz: float) -> np.ndarray:
    """``[n_rows, 2]`` start and end (exclusive) of each row in seconds."""
    start = row_times_s(n_rows, frame_hz)
    # (t + 1) / frame_hz, not start + 1 / frame_hz: the sum is off by an ulp (2/25 + 1/25
    # != 3/25), which made a segment starting exactly at a row's end overlap that row.
    end = np.arange(1, n_rows + 1, dtype=np.float64) / frame_hz
    return np.stack([start, end], axis=1)  # [n_rows, 2]


def frames_to_seconds(
    frames: int | float | np.ndarray, frame_hz: float = FRAME_HZ
) -> float | np.ndarray:
    """Frame index (or count) to seconds: the start time of that frame."""
    _check_rate("frame_hz", frame_hz)
    if isinstance(frames, np.ndarray):
        return frames.astype(np.float64) / frame_hz
    return frames / frame_hz


def seconds_to_frames(seconds: float | np.ndarray, frame_hz: float = FRAME_HZ) -> int | np.ndarray:
    """Index of the frame whose interval contains ``seconds`` (floor, robust to float noise)."""
    _check_rate("frame_hz", frame_hz)
    # A tiny epsilon so that e.g. 0.12 s * 25 = 2.9999999999999996 lands in frame 3.
    idx = np.floor(np.asarray(seconds, dtype=np.float64) * frame_hz + 1e-9).astype(np.int64)
    return idx if isinstance(seconds, np.ndarray) else int(idx)


def frames_to_samples(
    n_frames: int, *, sample_rate_hz: int = SAMPLE_RATE_HZ, frame_hz: float = FRAME_HZ
) -> int:
    """Number of audio samples spanned by ``n_frames`` frames (640 per frame by default)."""
    return int(n_frames) * samples_per_frame(sample_rate_hz=sample_rate_hz, frame_hz=frame_hz)


def samples_to_frames(
    n_samples: int,
    *,
    sample_rate_hz: int = SAMPLE_RATE_HZ,
    frame_hz: float = FRAME_HZ,
    partial: bool = False,
) -> int:
    """Number of whole frames in ``n_samples`` samples (``partial=True`` counts a last partial one)."""
    spf = samples_per_frame(sample_rate_hz=sample_rate_hz, frame_hz=frame_hz)
    if n_samples < 0:
        raise ValueError(f"n_samples must be >= 0, got {n_samples}")
    return -(-int(n_samples) // spf) if partial else int(n_samples) // spf


def pair_frames(x: np.ndarray) -> np.ndarray:
    """50 Hz -> 25 Hz by concatenating frames ``2t`` and ``2t + 1``: ``[T, D] -> [ceil(T/2), 2D]``.

    An odd count repeats the last frame (as the paper's wav2vec2 code pads), so
    the last output row is ``[x[-1], x[-1]]``.

    >>> pair_frames(np.arange(6).reshape(3, 2))
    array([[0, 1, 2, 3],
           [4, 5, 4, 5]])
    """
    if x.ndim != 2:
        raise ValueError(f"pair_frames expects [T, D], got shape {x.shape}")
    if x.shape[0] % 2:
        x = np.concatenate([x, x[-1:]], axis=0)  # [T + 1, D]
    t, d = x.shape
    return x.reshape(t // 2, 2 * d)  # [ceil(T/2), 2D]


def resample_rows(
    x: np.ndarray, *, src_hz: float, dst_hz: float, n_rows: int | None = None
) -> np.ndarray:
    """Rows at ``dst_hz`` taking the source row whose interval contains each output row's start.

    E.g. VideoMAE's 12.5 Hz rows to 25 Hz repeat each row twice. ``n_rows``
    defaults to the number of output rows that start before the source ends.
    """
    if n_rows is None:
        n_rows = resampled_length(x.shape[0], src_hz=src_hz, dst_hz=dst_hz)
    _check_rate("src_hz", src_hz)
    _check_rate("dst_hz", dst_hz)
    idx = seconds_to_frames(row_times_s(n_rows, dst_hz), src_hz)  # [n_rows]
    return x[np.minimum(idx, x.shape[0] - 1)] if x.shape[0] else x[:0]


def resampled_length(n_rows: int, *, src_hz: float, dst_hz: float) -> int:
    """Rows at ``dst_hz`` that start before ``n_rows`` rows at ``src_hz`` end.

    >>> resampled_length(5, src_hz=12.5, dst_hz=25.0), resampled_length(5, src_hz=25.0, dst_hz=25.0)
    (10, 5)
    """
    _check_rate("src_hz", src_hz)
    _check_rate("dst_hz", dst_hz)
    if src_hz == dst_hz:
        return int(n_rows)
    return math.ceil(n_rows * dst_hz / src_hz - 1e-9)


def common_rate(rates_hz: Sequence[float], *, frame_hz: float | None = None) -> float:
    """The rate several streams are read at together: ``frame_hz`` when given, else their
    shared rate. Different rates without ``frame_hz`` are an error that names a choice
    (the fastest rate, which repeats rows of the slower streams) rather than a guess.

    >>> common_rate([25.0, 25.0]), common_rate([25.0, 12.5], frame_hz=25.0)
    (25.0, 25.0)
    """
    if frame_hz is not None:
        _check_rate("frame_hz", frame_hz)
        return float(frame_hz)
    rates = [float(r) for r in rates_hz]
    if not rates:
        raise RateError("no streams to take a common rate of")
    for r in rates:
        _check_rate("frame_hz", r)
    if any(not math.isclose(r, rates[0], rel_tol=1e-9) for r in rates[1:]):
        shown = ", ".join(f"{r:g}" for r in rates)
        raise RateError(
            f"streams run at different rates ({shown} Hz); read them at a common rate by "
            f"resampling (frame_hz={max(rates):g} repeats rows of the slower streams)"
        )
    return rates[0]


def concat_aligned(
    arrays: Sequence[np.ndarray], rates_hz: Sequence[float], *, frame_hz: float
) -> np.ndarray:
    """Several streams of one video as one: each resampled to ``frame_hz`` (when it runs at
    another rate), all trimmed to the shortest, concatenated per row.

    ``[T_i, D_i]`` each -> ``[min T'_i, sum D_i]``, in the streams' dtype when they
    share one (float16 rows stay float16), else float32. A single stream at
    ``frame_hz`` comes back as it is.

    >>> concat_aligned([np.ones((3, 2)), np.zeros((2, 1))], [25.0, 12.5], frame_hz=25.0).shape
    (3, 3)
    """
    if len(arrays) != len(rates_hz) or not arrays:
        raise RateError(
            f"need one rate per stream, got {len(arrays)} streams, {len(rates_hz)} rates"
        )
    rows = []
    for x, hz in zip(arrays, rates_hz, strict=True):
        if x.ndim != 2:
            raise RateError(f"expected rows [T, D], got shape {x.shape}")
        if not math.isclose(float(hz), frame_hz, rel_tol=1e-9):
            x = resample_rows(x, src_hz=float(hz), dst_hz=frame_hz)  # [T', D]
        rows.append(x)
    if len(rows) == 1:
        return rows[0]
    n = min(x.shape[0] for x in rows)
    dtypes = {x.dtype for x in rows}
    dtype = dtypes.pop() if len(dtypes) == 1 else np.dtype(np.float32)
    return np.concatenate([x[:n].astype(dtype, copy=False) for x in rows], axis=1)


@dataclass(frozen=True)
class Reconciled:
    """Audio and visual rows trimmed to a common length, with both original lengths."""

    audio: np.ndarray  # [n_rows, D_a]
    visual: np.ndarray  # [n_rows, D_v]
    n_audio_rows: int
    n_visual_rows: int

    @property
    def n_rows(self) -> int:
        return int(self.audio.shape[0])

    @property
    def length_diff(self) -> int:
        """Audio rows minus visual rows before trimming (positive: audio was longer)."""
        return self.n_audio_rows - self.n_visual_rows


def reconcile(audio_rows: np.ndarray, visual_rows: np.ndarray) -> Reconciled:
    """Trim audio and visual rows (same rate) to the shorter; record both lengths.

    >>> r = reconcile(np.zeros((10, 4)), np.zeros((9, 8)))
    >>> (r.n_rows, r.n_audio_rows, r.n_visual_rows)
    (9, 10, 9)
    """
    n = min(audio_rows.shape[0], visual_rows.shape[0])
    return Reconciled(
        audio=audio_rows[:n],
        visual=visual_rows[:n],
        n_audio_rows=int(audio_rows.shape[0]),
        n_visual_rows=int(visual_rows.shape[0]),
    )


def segments_to_mask(
    segments_s: Sequence[Sequence[float]], n_rows: int, *, frame_hz: float = FRAME_HZ
) -> np.ndarray:
    """Boolean ``[n_rows]`` mask of rows whose interval overlaps any ``[start, end]`` segment.

    Overlap is strict (a segment ending exactly at a row's start does not mark it).
    """
    bounds = row_bounds_s(n_rows, frame_hz)  # [n_rows, 2]
    mask = np.zeros(n_rows, dtype=bool)
    for seg in segments_s:
        start, end = float(seg[0]), float(seg[1])
        if end < start:
            raise ValueError(f"segment end {end} is before its start {start}")
        mask |= (bounds[:, 0] < end) & (bounds[:, 1] > start)
    return mask


def mask_to_segments(mask: np.ndarray, *, frame_hz: float = FRAME_HZ) -> list[tuple[float, float]]:
    """Runs of True rows as ``(start_s, end_s)`` segments (end exclusive)."""
    m = np.asarray(mask, dtype=bool).ravel()
    edges = np.diff(np.concatenate([[0], m.astype(np.int8), [0]]))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    return [
        (s / frame_hz, e / frame_hz) for s, e in zip(starts.tolist(), ends.tolist(), strict=True)
    ]


def silence_trim_counts(
    silence_s: float, *, frame_hz: float = FRAME_HZ, sample_rate_hz: int = SAMPLE_RATE_HZ
) -> tuple[int, int]:
    """``(frames, samples)`` to skip for a leading silence of ``silence_s`` (AVH-Align).

    AVH-Align skips ``int(sil * 25) + 1`` video frames and ``int(sil * 25) * 640 + 640``
    audio samples, i.e. the frame in which speech starts is dropped as well, so
    audio and video stay aligned frame for frame.
    """
    if silence_s < 0:
        raise ValueError(f"silence_s must be >= 0, got {silence_s}")
    frames = int(silence_s * frame_hz) + 1
    return frames, frames * samples_per_frame(sample_rate_hz=sample_rate_hz, frame_hz=frame_hz)
