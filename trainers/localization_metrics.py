"""How well segments at a threshold localize fakes: frame F1 / IoU and segment precision / recall.

Complements the paper's temporal AUC (threshold-free, per fake video) and
AV-Deepfake1M's AP/AR (ranked proposals) with what a user of the segments
sees at the run's frame threshold, over every evaluated video (real videos
included: each segment on one is a false alarm):

- **frames**: rows inside a predicted segment vs rows overlapping an
  annotated one (``featstore.timebase.segments_to_mask``), true/false
  positives and misses pooled over the videos; precision, recall, F1 and IoU
  (``TP / (TP + FP + FN)``); ``mean_iou`` is the per-fake-video IoU averaged
  over the annotated fakes.
- **segments**: a predicted segment is correct when it matches an annotated
  one with IoU strictly above ``iou`` (0.5, AV1M's rule), one to one
  (greedy, highest IoU first); precision over predicted segments, recall over
  annotated ones, F1.
- **videos**: the fraction of annotated fakes with any segment and of real
  videos with any segment (false alarms a user would act on).

>>> pairs_above([(0.0, 1.0)], [(0.1, 1.0)], 0.5)
1
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from featstore.timebase import segments_to_mask
from featstore.trainers.metrics import MetricError

__all__ = ["SEGMENT_IOU", "LocalizationScores", "localization_scores", "pairs_above"]

SEGMENT_IOU = 0.5


def pairs_above(
    predicted: Sequence[Sequence[float]], truth: Sequence[Sequence[float]], iou: float
) -> int:
    """Predicted segments matched one to one to truth segments with IoU strictly above ``iou``."""
    from featstore.trainers.segments import iou_matrix

    if len(predicted) == 0 or len(truth) == 0:
        return 0
    p = np.asarray([s[:2] for s in predicted], dtype=np.float64)  # [P, 2]
    g = np.asarray([s[:2] for s in truth], dtype=np.float64)  # [G, 2]
    ious = iou_matrix(p, g)  # [P, G]
    matched = 0
    while True:
        i, j = np.unravel_index(int(np.argmax(ious)), ious.shape)
        if ious[i, j] <= iou:
            return matched
        matched += 1
        ious[i, :] = -1.0
        ious[:, j] = -1.0


@dataclass(frozen=True)
class LocalizationScores:
    """Frame- and segment-level scores of segments at one threshold (see the module)."""

    frame_precision: float | None
    frame_recall: float | None
    frame_f1: float | None
    frame_iou: float | None
    mean_iou: float | None  # per annotated fake video, averaged
    segment_precision: float | None
    segment_recall: float | None
    segment_f1: float | None
    n_predicted: int
    n_truth: int
    n_matched: int
    n_fakes: int  # annotated fake videos
    fakes_with_segment: int
    n_reals: int
    reals_with_segment: int
    false_segments_on_reals: int
    iou: float = SEGMENT_IOU

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _ratio(a: float, b: float) -> float | None:
    return float(a / b) if b else None


def _f1(p: float | None, r: float | None) -> float | None:
    """F1; nothing predicted (no precision) scores 0 when there was something to find."""
    if r is None:
        return None
    p = 0.0 if p is None else p
    return 0.0 if p + r == 0 else 2 * p * r / (p + r)


def localization_scores(
    videos: Iterable[tuple[int, Sequence[Sequence[float]], Sequence[Sequence[float]], int]],
    frame_hz: float,
    *,
    iou: float = SEGMENT_IOU,
) -> LocalizationScores:
    """Scores of ``(label, predicted [[s, e, ...]], truth [[s, e]], n_rows)`` per video.

    Fakes without annotated segments (the whole video, or unknown) are left
    out: nothing says where their fake frames are.
    """
    tp = fp = fn = 0
    n_pred = n_truth = n_matched = 0
    n_fakes = fakes_hit = n_reals = reals_hit = false_on_reals = 0
    ious: list[float] = []
    for label, predicted, truth, n_rows in videos:
        if label and not len(truth):
            continue
        if not label and len(truth):
            raise MetricError("a real video has annotated fake segments")
        pred_mask = segments_to_mask([s[:2] for s in predicted], n_rows, frame_hz=frame_hz)
        true_mask = segments_to_mask(truth, n_rows, frame_hz=frame_hz)
        v_tp = int(np.sum(pred_mask & true_mask))
        v_fp = int(np.sum(pred_mask & ~true_mask))
        v_fn = int(np.sum(~pred_mask & true_mask))
        tp, fp, fn = tp + v_tp, fp + v_fp, fn + v_fn
        n_pred += len(predicted)
        n_truth += len(truth)
        n_matched += pairs_above(predicted, truth, iou)
        if label:
            n_fakes += 1
            fakes_hit += bool(len(predicted))
            union = v_tp + v_fp + v_fn
            ious.append(v_tp / union if union else 0.0)
        else:
            n_reals += 1
            reals_hit += bool(len(predicted))
            false_on_reals += len(predicted)
    fp_, fr_ = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    sp, sr = _ratio(n_matched, n_pred), _ratio(n_matched, n_truth)
    return LocalizationScores(
        frame_precision=fp_,
        frame_recall=fr_,
        frame_f1=_f1(fp_, fr_),
        frame_iou=_ratio(tp, tp + fp + fn),
        mean_iou=float(np.mean(ious)) if ious else None,
        segment_precision=sp,
        segment_recall=sr,
        segment_f1=_f1(sp, sr),
        n_predicted=n_pred,
        n_truth=n_truth,
        n_matched=n_matched,
        n_fakes=n_fakes,
        fakes_with_segment=fakes_hit,
        n_reals=n_reals,
        reals_with_segment=reals_hit,
        false_segments_on_reals=false_on_reals,
        iou=iou,
    )
