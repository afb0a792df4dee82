"""The demo's per-frame speaking scores: windows of several lengths, averaged, rounded.

``demoTalkNet.evaluate_network`` cuts a track into consecutive windows of ``d`` seconds
(the last one shorter) for each ``d`` of ``durationSet``, runs each window through the
model on its own, and averages the per-frame outputs over the passes, rounded to 0.1.
Its ``durationSet = {1,1,1,2,2,2,3,3,4,5,6}`` is a Python *set* literal, so the passes it
runs are d = 1, 2, 3, 4, 5, 6 s, one each, equally weighted: that is what the authors'
code computes, and the default here. A frame speaks where its score is >= 0.

Windows that coincide between passes (for a track no longer than ``d`` seconds every
longer pass is the one whole-track window) are computed once, and windows of one length
are batched: both give the demo's numbers (the port runs each clip of a batch on its own).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from featstore import timebase

if TYPE_CHECKING:
    from featstore.asd.talknet.model import TalkNet

__all__ = ["DURATIONS_S", "TrackScores", "score_track"]

DURATIONS_S: tuple[int, ...] = tuple(sorted({1, 2, 3, 4, 5, 6}))
_FPS = int(timebase.FRAME_HZ)
_ROWS = 4


@dataclass(frozen=True, eq=False)
class TrackScores:
    """Per-frame scores of one track: ``scores`` as the demo reports them (mean, rounded)."""

    scores: np.ndarray  # [n] float64, rounded to 0.1
    mean: np.ndarray  # [n] float32, before rounding
    passes: np.ndarray  # [len(durations), n] float32, one row per window length


def score_track(
    model: TalkNet,
    mfcc: np.ndarray,
    crops: np.ndarray,
    *,
    durations_s: Sequence[int] = DURATIONS_S,
    batch_frames: int = 1500,
    device: str = "cpu",
) -> TrackScores:
    """Score ``n`` frames from MFCC ``[4 n, 13]`` and grey crops ``[n, 112, 112]`` uint8."""
    import torch

    n = len(crops)
    if mfcc.shape != (_ROWS * n, 13):
        raise ValueError(f"need {_ROWS * n} MFCC rows of 13 for {n} frames, got {mfcc.shape}")
    if n == 0:
        raise ValueError("no frames to score")
    windows = {d: [(s, min(s + d * _FPS, n)) for s in range(0, n, d * _FPS)] for d in durations_s}
    done: dict[tuple[int, int], np.ndarray] = {}
    by_length: dict[int, list[tuple[int, int]]] = {}
    for spans in windows.values():
        for s, e in spans:
            if (s, e) not in done:
                done[(s, e)] = np.empty(0)
                by_length.setdefault(e - s, []).append((s, e))
    a_all = torch.from_numpy(np.ascontiguousarray(mfcc, dtype=np.float32))
    v_all = torch.from_numpy(np.ascontiguousarray(crops)).float()
    with torch.inference_mode():
        for length, spans in by_length.items():
            per_batch = max(1, batch_frames // length)
            for i in range(0, len(spans), per_batch):
                group = spans[i : i + per_batch]
                a = torch.stack([a_all[_ROWS * s : _ROWS * e] for s, e in group]).to(device)
                v = torch.stack([v_all[s:e] for s, e in group]).to(device)
                out = model(a, v).float().cpu().numpy()  # [B, length]
                for (s, e), row in zip(group, out, strict=True):
                    done[(s, e)] = row
    passes = np.stack([np.concatenate([done[w] for w in windows[d]]) for d in durations_s]).astype(
        np.float32
    )  # [P, n]
    mean = np.mean(passes, axis=0)  # float32, as numpy averages the demo's float32 scores
    return TrackScores(scores=np.round(mean, 1).astype(np.float64), mean=mean, passes=passes)
