"""Decode only chosen frames of a video: the frames ``decode`` would give at those indices.

Spatial explanations look at a handful of frames of a long video (the top-scoring
ones, or the frames humans clicked on); decoding the whole clip for them wastes
most of the work. :func:`read_frames` returns, for 25 fps frame indices ``k``,
exactly the arrays ``featstore.media.decode(path).frames[k]`` holds. The targets
are grouped into runs (consecutive targets at most ``max_gap_s`` apart) and each
run is one span decode of :func:`featstore.media.video.constant_rate_frames` (the
decoder of :func:`featstore.media.iter_frames`: it seeks to the keyframe before the
span, see :mod:`featstore.seeking`, and equals the slice of a whole decode) that
converts only the targets to RGB, so the seeking, limits and errors are media's own.

>>> frames = read_frames("clip.mp4", [0, 120, 121])  # doctest: +SKIP
>>> frames.shape  # doctest: +SKIP
(3, 720, 1280, 3)
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence

import numpy as np

from featstore import timebase
from featstore.decode_limits import DecodeLimits
from featstore.media import DEFAULT_LIMITS, EmptyMediaError, MediaError
from featstore.media.container import open_media
from featstore.media.video import constant_rate_frames

log = logging.getLogger(__name__)

__all__ = ["FrameIndexError", "read_frames"]

DEFAULT_MAX_GAP_S = 2.0  # decode on (rather than seek) to a target at most this far ahead


class FrameIndexError(MediaError):
    """A requested frame index is negative or past the end of the video."""


def read_frames(
    path: str | os.PathLike[str],
    indices: Sequence[int],
    *,
    fps: float = timebase.FRAME_HZ,
    max_gap_s: float = DEFAULT_MAX_GAP_S,
    limits: DecodeLimits = DEFAULT_LIMITS,
) -> np.ndarray:
    """``uint8 [len(indices), H, W, 3]`` RGB frames at the given constant-rate indices.

    ``indices`` may be in any order and repeat; the output follows their order.
    ``limits``: the bounds of a decode (the frames kept are only the ones asked for).
    """
    wanted = [int(i) for i in indices]
    if not wanted:
        raise ValueError("no frame indices given")
    if min(wanted) < 0:
        raise FrameIndexError(path, f"frame index {min(wanted)} is negative")
    found: dict[int, np.ndarray] = {}
    for run in _runs(sorted(set(wanted)), max_gap=max(1, round(max_gap_s * fps))):
        found.update(_decode_run(path, run, fps=fps, limits=limits))
    missing = [k for k in sorted(set(wanted)) if k not in found]
    if missing:
        raise FrameIndexError(path, f"frame {missing[0]} is past the end of the video")
    return np.stack([found[k] for k in wanted])  # [N, H, W, 3]


def _runs(targets: list[int], *, max_gap: int) -> list[list[int]]:
    """Sorted ``targets`` cut where the next one is more than ``max_gap`` frames ahead."""
    runs = [[targets[0]]]
    for k in targets[1:]:
        if k - runs[-1][-1] > max_gap:
            runs.append([k])
        else:
            runs[-1].append(k)
    return runs


def _decode_run(
    path: str | os.PathLike[str], run: list[int], *, fps: float, limits: DecodeLimits
) -> dict[int, np.ndarray]:
    """The frames of one run of sorted targets, from one span decode ``[run[0], run[-1]]``."""
    keep = set(run)
    out: dict[int, np.ndarray] = {}
    k = run[0]
    try:
        with open_media(path) as container:
            frames = constant_rate_frames(
                str(path),
                container,
                fps=fps,
                start_s=run[0] / fps,
                until_s=(run[-1] + 1) / fps,
                allow_truncated=False,
                threads=1,
                limits=dataclasses.replace(limits, max_decoded_bytes=None),  # only `keep` is held
                wanted=keep.__contains__,
            )
            for k, img in enumerate(frames, start=run[0]):  # img: [H, W, 3] or None
                if img is not None:
                    out[k] = img.copy()
    except EmptyMediaError:
        if run[0] == 0:
            raise
        return out  # the span starts past the end: the caller names the missing frame
    log.debug("%s: frames %d..%d decoded for %d targets", path, run[0], k, len(run))
    return out
