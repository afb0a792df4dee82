"""How complementary are models? Correlation and pairwise late fusion (paper Fig. 5/6).

- ``pearson_matrix``: Pearson correlation between the models' predictions on a
  shared test set. The paper correlates the models' "predictions"/"outputs";
  we use the probabilities ``sigmoid(2 s)``, the same quantities late fusion
  averages (pass scores instead to correlate logits; the function is agnostic).
- ``relative_improvement``: entry ``[i, j]`` is
  ``(M(fuse(i, j)) - M(i)) / M(i) * 100`` with ``M`` = AUC or AP, i.e. how much
  fusing model ``i`` (the row, the model being improved) with partner ``j``
  changes ``i``'s own performance. This is the paper's definition: in Fig. 6
  both ``58.6 * (1 - 0.159)`` (W2V2 row) and ``39.3 * (1 + 0.252)`` (V-MAE row)
  give the same fused AUC 49.2. The diagonal is 0.

Pure numpy/scikit-learn; the arrays are aligned with ``fusion.align_predictions``.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from featstore.errors import FeatstoreError
from featstore.trainers.fusion import late_fusion

__all__ = [
    "METRICS",
    "CorrelationError",
    "fusion_metric_matrix",
    "pearson_matrix",
    "relative_improvement",
]

METRICS = ("auc", "ap")


class CorrelationError(FeatstoreError, ValueError):
    """Predictions or labels cannot be correlated or compared (shapes, constants, classes)."""


def _check_matrix(values: np.ndarray, *, min_videos: int) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 1:
        raise CorrelationError(f"expected a [models, videos] matrix, got shape {x.shape}")
    if x.shape[1] < min_videos:
        raise CorrelationError(f"need at least {min_videos} videos, got {x.shape[1]}")
    if not np.all(np.isfinite(x)):
        raise CorrelationError("predictions must be finite (got NaN or inf)")
    return x


def pearson_matrix(probabilities: np.ndarray) -> np.ndarray:
    """Pearson correlation between every pair of models: ``[M, N] -> [M, M]``.

    A model whose predictions are constant has no defined correlation; that is
    an error naming the model's row rather than a matrix of NaN.
    """
    x = _check_matrix(probabilities, min_videos=2)  # [M, N]
    centred = x - x.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(centred, axis=1)  # [M]
    scale = np.maximum(np.abs(x).max(axis=1), 1.0)
    constant = np.flatnonzero(norms <= 1e-12 * scale * np.sqrt(x.shape[1]))
    if constant.size:
        raise CorrelationError(
            f"model row(s) {constant.tolist()} predict the same value for every video; "
            "their correlation is undefined"
        )
    unit = centred / norms[:, None]
    corr = np.clip(unit @ unit.T, -1.0, 1.0)  # [M, M]
    np.fill_diagonal(corr, 1.0)
    return corr


def _check_labels(labels: np.ndarray, n_videos: int) -> np.ndarray:
    y = np.asarray(labels)
    if y.shape != (n_videos,):
        raise CorrelationError(f"expected {n_videos} labels (one per video), got shape {y.shape}")
    if not np.all(np.isin(y, (0, 1))):
        raise CorrelationError("labels must be 0 (real) or 1 (fake)")
    y = y.astype(np.int64)
    if y.min() == y.max():
        raise CorrelationError(
            f"labels hold only class {int(y[0])}; AUC and AP need both real and fake videos"
        )
    return y


def _metric(metric: str, labels: np.ndarray, probabilities: np.ndarray) -> float:
    if metric == "auc":
        return float(roc_auc_score(labels, probabilities))
    return float(average_precision_score(labels, probabilities))


def fusion_metric_matrix(
    labels: np.ndarray, probabilities: np.ndarray, *, metric: str = "auc"
) -> np.ndarray:
    """Metric of every single model (diagonal) and every fused pair (off-diagonal).

    ``[i, i]`` = metric of model ``i``; ``[i, j]`` = metric of the late fusion
    (average of probabilities) of models ``i`` and ``j``; symmetric, ``[M, M]``.
    """
    if metric not in METRICS:
        raise CorrelationError(f"metric must be one of {METRICS}, got {metric!r}")
    p = _check_matrix(probabilities, min_videos=2)  # [M, N]
    y = _check_labels(labels, p.shape[1])
    m = p.shape[0]
    out = np.empty((m, m), dtype=np.float64)
    for i in range(m):
        out[i, i] = _metric(metric, y, p[i])
        for j in range(i + 1, m):
            out[i, j] = out[j, i] = _metric(metric, y, late_fusion(p[[i, j]]))
    return out


def relative_improvement(
    labels: np.ndarray, probabilities: np.ndarray, *, metric: str = "auc"
) -> np.ndarray:
    """Relative change (%) of model ``i``'s metric when fused with model ``j``: ``[M, M]``.

    Row ``i`` is the model being improved: ``(M(fuse(i, j)) - M(i)) / M(i) * 100``
    (paper Fig. 5/6); the diagonal is 0.

    >>> y = np.array([0, 0, 1, 1])
    >>> p = np.array([[0.1, 0.6, 0.4, 0.9], [0.2, 0.1, 0.8, 0.7]])
    >>> relative_improvement(y, p).round(1).tolist()
    [[0.0, 33.3], [0.0, 0.0]]
    """
    table = fusion_metric_matrix(labels, probabilities, metric=metric)  # [M, M]
    single = np.diag(table).copy()  # [M]
    if np.any(single <= 0):
        zero = np.flatnonzero(single <= 0).tolist()
        raise CorrelationError(
            f"model row(s) {zero} have {metric.upper()} 0; relative improvement is undefined"
        )
    rel = (table - single[:, None]) / single[:, None] * 100.0
    np.fill_diagonal(rel, 0.0)
    return rel
