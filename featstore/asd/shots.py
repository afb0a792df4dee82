"""Shot boundaries by frame-to-frame content change (PySceneDetect's ContentDetector).

TalkNet's demo finds shots with PySceneDetect's ``ContentDetector`` (PEERS.md); this is
the same rule in numpy + OpenCV, streaming over frames:

- frames wider than 256 px are subsampled by the integer factor ``width // 256``
  (PySceneDetect's default downscale: every k-th row and column);
- each frame is converted to HSV (OpenCV's 8-bit ranges); its *content value* is the mean
  of the three channels' mean absolute differences from the previous frame;
- a cut lies before frame ``t`` when the content value reaches ``threshold`` (27) and at
  least ``min_shot_frames`` (15) frames passed since the previous cut (or the start).

>>> detector = ShotDetector()
>>> cuts = [t for t, frame in enumerate(frames) if detector.update(frame)]  # doctest: +SKIP
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

__all__ = ["Shot", "ShotConfig", "ShotDetector", "detect_shots", "shots_from_cuts"]


@dataclass(frozen=True)
class ShotConfig:
    threshold: float = 27.0
    min_shot_frames: int = 15
    downscale_width: int = 256

    def __post_init__(self) -> None:
        if self.threshold <= 0 or self.min_shot_frames < 1 or self.downscale_width < 1:
            raise ValueError(f"invalid shot detection settings: {self}")


@dataclass(frozen=True)
class Shot:
    """Frames ``[start, end)`` of one shot (25 fps frame indices)."""

    start: int
    end: int

    @property
    def n_frames(self) -> int:
        return self.end - self.start


class ShotDetector:
    """Feed frames in order with :meth:`update`; it says where cuts are."""

    def __init__(self, config: ShotConfig | None = None) -> None:
        self.config = config or ShotConfig()
        self._last: np.ndarray | None = None  # [h, w, 3] int16 HSV of the previous frame
        self._t = 0
        self._last_cut = 0
        self.values: list[float] = []  # content value per frame (0 for the first)

    def update(self, frame: np.ndarray) -> bool:
        """Take the next RGB frame ``[H, W, 3]``; True when a shot starts at it (not frame 0)."""
        from featstore.landmarks import load_cv2

        cv2 = load_cv2()
        factor = max(1, frame.shape[1] // self.config.downscale_width)
        small = np.ascontiguousarray(frame[::factor, ::factor])
        hsv = cv2.cvtColor(small, cv2.COLOR_RGB2HSV).astype(np.int16)  # [h, w, 3]
        cut = False
        value = 0.0
        if self._last is not None:
            value = float(np.abs(hsv - self._last).mean(axis=(0, 1)).mean())
            if (
                value >= self.config.threshold
                and self._t - self._last_cut >= self.config.min_shot_frames
            ):
                cut = True
                self._last_cut = self._t
        self.values.append(value)
        self._last = hsv
        self._t += 1
        return cut


def shots_from_cuts(cuts: Iterable[int], n_frames: int) -> list[Shot]:
    """Shots between cut frames (a video without cuts is one shot)."""
    bounds = [0, *sorted(c for c in cuts if 0 < c < n_frames), n_frames]
    return [Shot(a, b) for a, b in itertools.pairwise(bounds) if b > a]


def detect_shots(frames: Iterable[np.ndarray], config: ShotConfig | None = None) -> list[Shot]:
    """Shots of a whole video given as RGB frames."""
    detector = ShotDetector(config)
    cuts = []
    n = 0
    for t, frame in enumerate(frames):
        if detector.update(frame):
            cuts.append(t)
        n = t + 1
    return shots_from_cuts(cuts, n)
