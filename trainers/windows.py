"""Video scores that do not drift with clip length: windows of the training length.

A detector's video score pools per-frame evidence over the whole clip (the
probe's and the sync network's log-sum-exp, the next-token predictor's max),
so it grows with length: a real clip looped from 4.7 s to 47 s went from
P(fake) 0.64 to 0.99 under a probe trained on 3-6 s clips. Each run records
the lengths of its training videos (:class:`LengthProfile`, in rows of the
detector's ``frame_hz``), and an input longer than the window is scored in
windows as long as a typical training video (:class:`WindowRule`):

- window: the median training length. A looped clip of period ``P`` scored
  in windows of ``W`` moves by about ``|log(W / P)|`` on the log-sum-exp
  scale (a window holds ``W / P`` periods, or the best ``W`` of one), so the
  middle of the (log-)length distribution keeps clips of every training
  length closest to their own score;
- hop: half a window; the last window ends at the end of the input, so
  every row is in one window at least and two windows overlap by at least
  half;
- video score: the maximum of the windows' scores, the per-window analogue
  of the paper's pooling (a fake part makes a fake video), each window scored
  by the detector exactly as a clip of that length (``score_rows`` on the
  window's rows); per-frame scores stay those of the whole input.

Inputs shorter than a minimum are refused with the reason
(:class:`InputTooShortError`): the kind's own minimum (``Detector.min_rows``:
one row for the probe, a next frame for the next-token predictor, the
``2 tau + 1`` audio candidates of the sync network, the ``2 D + 1`` shifts of
the training-free score) everywhere, and for the service also half the 5th
percentile of the training lengths (a clip pooled over far fewer frames
than any training clip scores low whatever it shows).

>>> WindowRule(window_rows=100, hop_rows=50, min_rows=20, kind_min_rows=1, frame_hz=25.0).plan(230)
[(0, 100), (50, 150), (100, 200), (130, 230)]
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from featstore.errors import FeatstoreError

if TYPE_CHECKING:
    from featstore.trainers.data import FeatureKey
    from featstore.trainers.inputs import StoredFeature

__all__ = [
    "HOP_FRACTION",
    "MIN_LENGTH_FRACTION",
    "InputTooShortError",
    "LengthProfile",
    "WindowRule",
    "WindowedScore",
    "slice_rows",
    "window_rule",
]

HOP_FRACTION = 0.5
MIN_LENGTH_FRACTION = 0.5  # of the 5th-percentile training length: the service's minimum


class InputTooShortError(FeatstoreError, ValueError):
    """An input is shorter than a detector scores (HTTP 422; ``eval`` leaves it out)."""


@dataclass(frozen=True)
class LengthProfile:
    """Lengths, in rows at ``frame_hz``, of the videos a run was trained (or run) on."""

    frame_hz: float
    n_videos: int
    min_rows: int
    p5_rows: int
    median_rows: int
    p95_rows: int
    max_rows: int
    selection: str | None = None

    @classmethod
    def of(
        cls, lengths: Sequence[int] | np.ndarray, frame_hz: float, *, selection: str | None = None
    ) -> LengthProfile | None:
        """The profile of ``lengths`` (None when there are none)."""
        n = np.asarray(lengths, dtype=np.int64)
        n = n[n > 0]
        if n.size == 0:
            return None
        q = np.quantile(n, [0.05, 0.5, 0.95], method="nearest")
        return cls(
            frame_hz=float(frame_hz),
            n_videos=int(n.size),
            min_rows=int(n.min()),
            p5_rows=int(q[0]),
            median_rows=int(q[1]),
            p95_rows=int(q[2]),
            max_rows=int(n.max()),
            selection=selection,
        )

    def seconds(self, rows: int) -> float:
        return float(rows / self.frame_hz)

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["seconds"] = {
            k: self.seconds(getattr(self, f"{k}_rows"))
            for k in ("min", "p5", "median", "p95", "max")
        }
        return doc

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> LengthProfile:
        fields = {
            "frame_hz", "n_videos", "min_rows", "p5_rows", "median_rows", "p95_rows", "max_rows",
            "selection",
        }  # fmt: skip
        unknown = set(doc) - fields - {"seconds"}
        if unknown:
            from featstore.trainers.runs import RunError

            raise RunError(f"unknown keys {sorted(unknown)} in a run's length record")
        return cls(**{k: v for k, v in doc.items() if k in fields})


@dataclass(frozen=True)
class WindowRule:
    """How a run scores inputs by length (rows at ``frame_hz``).

    ``window_rows == 0``: no length profile, every input scored whole.
    """

    window_rows: int
    hop_rows: int
    min_rows: int  # the service's minimum (>= kind_min_rows)
    kind_min_rows: int  # the kind's own minimum (eval leaves shorter videos out)
    frame_hz: float
    reason: str = field(default="", compare=False)  # why min_rows is what it is

    def plan(self, n_rows: int) -> list[tuple[int, int]]:
        """Windows ``[(first, end)]`` of an input of ``n_rows``; ``[]``: score it whole."""
        w, hop = self.window_rows, self.hop_rows
        if w < 1 or n_rows <= w:
            return []
        starts = list(range(0, n_rows - w, hop))
        if starts[-1] + w < n_rows:
            starts.append(n_rows - w)
        return [(a, a + w) for a in starts]

    def check(self, n_rows: int, *, service: bool, who: str) -> None:
        """Raise :class:`InputTooShortError` when ``n_rows`` is under the minimum."""
        need = self.min_rows if service else self.kind_min_rows
        if n_rows < need:
            raise InputTooShortError(
                f"{who} needs at least {need} rows ({need / self.frame_hz:.2f} s at "
                f"{self.frame_hz:g} Hz); this input has {n_rows} ({n_rows / self.frame_hz:.2f} s): "
                f"{self.reason}"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "window_rows": self.window_rows,
            "hop_rows": self.hop_rows,
            "window_s": self.window_rows / self.frame_hz,
            "hop_s": self.hop_rows / self.frame_hz,
            "min_rows": self.min_rows,
            "min_duration_s": self.min_rows / self.frame_hz,
            "kind_min_rows": self.kind_min_rows,
            "reason": self.reason,
        }


def window_rule(
    profile: LengthProfile | None, *, kind_min_rows: int, kind_reason: str, frame_hz: float
) -> WindowRule:
    """The rule of a run from its length profile (None: scored whole) and its kind's minimum."""
    kind_min_rows = max(1, int(kind_min_rows))
    if profile is None:
        return WindowRule(0, 0, kind_min_rows, kind_min_rows, frame_hz, kind_reason)
    scale = frame_hz / profile.frame_hz  # a profile recorded at another rate (fusions)
    window = max(1, round(profile.median_rows * scale))
    hop = max(1, math.floor(window * HOP_FRACTION))
    floor = math.ceil(MIN_LENGTH_FRACTION * profile.p5_rows * scale)
    reason = kind_reason
    if floor > kind_min_rows:
        reason = (
            f"the run was trained on clips of {profile.seconds(profile.min_rows):.2f}-"
            f"{profile.seconds(profile.max_rows):.2f} s (5th percentile "
            f"{profile.seconds(profile.p5_rows):.2f} s); a clip under half of that is pooled "
            "over too few frames for its score to mean what it means on training clips"
        )
    return WindowRule(window, hop, max(kind_min_rows, floor), kind_min_rows, frame_hz, reason)


def slice_rows(
    rows: Mapping[FeatureKey, np.ndarray],
    features: Sequence[StoredFeature],
    frame_hz: float,
    first: int,
    end: int,
) -> dict[FeatureKey, np.ndarray]:
    """Every feature's rows of the window ``[first, end)`` (rows at ``frame_hz``), each
    at its own rate (the window's span in seconds, widened to whole rows)."""
    start_s, end_s = first / frame_hz, end / frame_hz
    out = {}
    for f in features:
        x = rows[f.key]
        a = math.floor(start_s * f.frame_hz + 1e-9)
        b = math.ceil(end_s * f.frame_hz - 1e-9)
        out[f.key] = x[a:b]
    return out


@dataclass(frozen=True)
class WindowedScore:
    """A video's score: the maximum over its windows when it was windowed, else the whole
    input's; per-frame scores of the whole input; each window ``(first, end, score)``."""

    score: float
    frame_scores: np.ndarray | None = field(repr=False)
    whole_score: float
    windows: tuple[tuple[int, int, float], ...] = ()
    n_rows: int = 0

    @property
    def windowed(self) -> bool:
        return bool(self.windows)
