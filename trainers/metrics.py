"""Binary detection metrics and per-video temporal localization AUC, in pure numpy.

Convention everywhere: label 1 = fake, 0 = real; a higher score means more fake.
``auc`` and ``average_precision`` equal scikit-learn's ``roc_auc_score`` and
``average_precision_score`` (ties included); scikit-learn is only the reference
in the tests.

>>> auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
0.75
>>> eer([0, 1], [0.5, 0.5])
0.5
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.stats import rankdata

from featstore.errors import FeatstoreError
from featstore.timebase import segments_to_mask

__all__ = [
    "BinaryMetrics",
    "MetricError",
    "TemporalAUC",
    "auc",
    "average_precision",
    "binary_metrics",
    "bootstrap_ci",
    "eer",
    "temporal_auc",
]

Metric = Callable[[np.ndarray, np.ndarray], float]

# Resampled index arrays are built in chunks of at most this many elements.
_CHUNK_ELEMENTS = 4_000_000


class MetricError(FeatstoreError, ValueError):
    """Labels or scores a metric cannot be computed on (one class, NaN, mismatched lengths, ...)."""


def _check_binary(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate and return ``(labels [N] int8, scores [N] float64)``."""
    y = np.asarray(labels)
    s = np.asarray(scores, dtype=np.float64)
    if y.ndim != 1 or s.ndim != 1:
        raise MetricError(f"labels and scores must be 1-D, got shapes {y.shape} and {s.shape}")
    if y.shape[0] != s.shape[0]:
        raise MetricError(f"{y.shape[0]} labels but {s.shape[0]} scores")
    if y.shape[0] == 0:
        raise MetricError("no labels and scores: empty input")
    if y.dtype != bool and not np.all((y == 0) | (y == 1)):
        bad = np.unique(y[(y != 0) & (y != 1)])[:5].tolist()
        raise MetricError(f"labels must be 0 (real) or 1 (fake), got {bad}")
    if not np.all(np.isfinite(s)):
        raise MetricError(f"{int(np.sum(~np.isfinite(s)))} scores are NaN or infinite")
    y = y.astype(np.int8)
    n_fake = int(y.sum())
    if n_fake == 0 or n_fake == y.shape[0]:
        only = "fake" if n_fake else "real"
        raise MetricError(f"labels are all {only}: the metric needs both real and fake samples")
    return y, s


def _curve_counts(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative ``(tp [K], fp [K])`` at each distinct score, highest threshold first."""
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    # The last index of each run of equal scores: ties move together along the curve.
    ends = np.flatnonzero(np.diff(s_sorted) != 0)
    ends = np.append(ends, s_sorted.shape[0] - 1)  # [K]
    tp = np.cumsum(y_sorted, dtype=np.int64)[ends]
    fp = ends + 1 - tp
    return tp, fp


def auc(labels: Any, scores: Any) -> float:
    """Area under the ROC curve (= scikit-learn ``roc_auc_score``, ties count one half).

    Computed as the Mann-Whitney statistic with average ranks for ties.
    """
    y, s = _check_binary(labels, scores)
    ranks = rankdata(s)  # [N], average ranks for ties
    n_fake = int(y.sum())
    n_real = y.shape[0] - n_fake
    u = float(ranks[y == 1].sum()) - n_fake * (n_fake + 1) / 2.0
    return u / (n_fake * n_real)


def average_precision(labels: Any, scores: Any) -> float:
    """Average precision ``sum_k (R_k - R_{k-1}) P_k`` over distinct thresholds (= scikit-learn)."""
    y, s = _check_binary(labels, scores)
    tp, fp = _curve_counts(y, s)
    precision = tp / (tp + fp)
    recall = tp / tp[-1]
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def eer(labels: Any, scores: Any) -> float:
    """Equal error rate: where FPR and FNR = 1 - TPR cross, linearly interpolated along the ROC."""
    y, s = _check_binary(labels, scores)
    tp, fp = _curve_counts(y, s)
    fpr = np.concatenate([[0.0], fp / fp[-1]])  # [K + 1], from the "nothing is fake" point
    fnr = np.concatenate([[1.0], 1.0 - tp / tp[-1]])
    gap = fnr - fpr  # starts at 1, ends at -1, never increases
    i = int(np.argmax(gap <= 0))
    if gap[i] == 0:
        return float(fpr[i])
    t = gap[i - 1] / (gap[i - 1] - gap[i])
    return float(fpr[i - 1] + t * (fpr[i] - fpr[i - 1]))


def _batched_auc(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """AUC of each row: ``pos [B, P]`` fake scores against ``neg [B, Q]`` real scores -> ``[B]``."""
    ranks = rankdata(np.concatenate([pos, neg], axis=1), axis=1)  # [B, P + Q]
    n_pos, n_neg = pos.shape[1], neg.shape[1]
    u = ranks[:, :n_pos].sum(axis=1) - n_pos * (n_pos + 1) / 2.0
    return u / (n_pos * n_neg)


def bootstrap_ci(
    labels: Any,
    scores: Any,
    metric: Metric = auc,
    *,
    n_resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of ``metric(labels, scores)``.

    Stratified: each resample draws the fakes and the reals separately with
    replacement, so every resample keeps both classes and the class balance.
    The AUC is computed for a whole chunk of resamples at once.
    """
    if n_resamples < 1:
        raise MetricError(f"n_resamples must be >= 1, got {n_resamples}")
    if not 0.0 < level < 1.0:
        raise MetricError(f"level must be in (0, 1), got {level}")
    y, s = _check_binary(labels, scores)
    pos, neg = s[y == 1], s[y == 0]  # [P], [Q]
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_ELEMENTS // y.shape[0])
    values: list[np.ndarray] = []
    y_resampled = np.concatenate([np.ones(pos.shape[0], np.int8), np.zeros(neg.shape[0], np.int8)])
    for start in range(0, n_resamples, chunk):
        b = min(chunk, n_resamples - start)
        pos_b = pos[rng.integers(0, pos.shape[0], size=(b, pos.shape[0]))]  # [b, P]
        neg_b = neg[rng.integers(0, neg.shape[0], size=(b, neg.shape[0]))]  # [b, Q]
        if metric is auc:
            values.append(_batched_auc(pos_b, neg_b))
        else:
            both = np.concatenate([pos_b, neg_b], axis=1)  # [b, P + Q]
            values.append(np.array([metric(y_resampled, row) for row in both], dtype=np.float64))
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(np.concatenate(values), [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def _ci_list(ci: tuple[float, float] | None) -> list[float] | None:
    return None if ci is None else [float(ci[0]), float(ci[1])]


@dataclass(frozen=True)
class BinaryMetrics:
    """Video-level detection metrics of one score set."""

    n: int
    n_real: int
    n_fake: int
    auc: float
    ap: float
    eer: float
    auc_ci: tuple[float, float] | None = None
    ap_ci: tuple[float, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; confidence intervals as ``[lo, hi]`` or ``None``."""
        return {
            "n": self.n,
            "n_real": self.n_real,
            "n_fake": self.n_fake,
            "auc": self.auc,
            "ap": self.ap,
            "eer": self.eer,
            "auc_ci": _ci_list(self.auc_ci),
            "ap_ci": _ci_list(self.ap_ci),
        }


def binary_metrics(
    labels: Any, scores: Any, *, ci: bool = False, n_resamples: int = 1000, seed: int = 0
) -> BinaryMetrics:
    """AUC, AP and EER, with 95 % bootstrap intervals of AUC and AP when ``ci``.

    >>> binary_metrics([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]).to_dict()["auc"]
    0.75
    """
    y, s = _check_binary(labels, scores)
    n_fake = int(y.sum())
    auc_ci = ap_ci = None
    if ci:
        auc_ci = bootstrap_ci(y, s, auc, n_resamples=n_resamples, seed=seed)
        ap_ci = bootstrap_ci(y, s, average_precision, n_resamples=n_resamples, seed=seed)
    return BinaryMetrics(
        n=int(y.shape[0]),
        n_real=int(y.shape[0]) - n_fake,
        n_fake=n_fake,
        auc=auc(y, s),
        ap=average_precision(y, s),
        eer=eer(y, s),
        auc_ci=auc_ci,
        ap_ci=ap_ci,
    )


@dataclass(frozen=True)
class TemporalAUC:
    """Temporal localization score (paper §5.2): mean per-video frame-level AUC over fake videos."""

    mean: float
    n_videos: int
    n_skipped: int
    per_video: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "mean": self.mean,
            "n_videos": self.n_videos,
            "n_skipped": self.n_skipped,
            "per_video": dict(self.per_video),
        }


def temporal_auc(
    videos: Iterable[tuple[str, np.ndarray, Sequence[Sequence[float]]]], frame_hz: float
) -> TemporalAUC:
    """Frame-level AUC of per-frame scores against each fake video's segments, averaged.

    Each item is ``(video_id, frame_scores [T], fake_segments_s [[start, end], ...])``;
    row ``t`` is fake when it overlaps a segment (``featstore.timebase.segments_to_mask``).
    Videos without segments (real) are ignored; fake videos whose mask is all fake
    or all real have no AUC and are counted in ``n_skipped``.
    """
    if not (frame_hz > 0 and math.isfinite(frame_hz)):
        raise MetricError(f"frame_hz must be a positive finite number, got {frame_hz!r}")
    per_video: dict[str, float] = {}
    n_skipped = 0
    for video_id, frame_scores, segments in videos:
        if len(segments) == 0:
            continue
        s = np.asarray(frame_scores, dtype=np.float64)
        if s.ndim != 1:
            raise MetricError(f"{video_id}: frame scores must be 1-D [T], got shape {s.shape}")
        if video_id in per_video:
            raise MetricError(f"{video_id}: video listed twice")
        try:
            mask = segments_to_mask(segments, s.shape[0], frame_hz=frame_hz)  # [T]
        except ValueError as exc:
            raise MetricError(f"{video_id}: {exc}") from exc
        n_fake = int(mask.sum())
        if n_fake == 0 or n_fake == mask.shape[0]:
            n_skipped += 1
            continue
        try:
            per_video[video_id] = auc(mask, s)
        except MetricError as exc:
            raise MetricError(f"{video_id}: {exc}") from exc
    if not per_video:
        raise MetricError(
            f"no fake video with both fake and real frames ({n_skipped} skipped): "
            "temporal AUC is undefined"
        )
    return TemporalAUC(
        mean=float(np.mean(list(per_video.values()))),
        n_videos=len(per_video),
        n_skipped=n_skipped,
        per_video=per_video,
    )
