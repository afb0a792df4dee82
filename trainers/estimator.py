"""A scikit-learn estimator over the linear probe (paper Eq. 1), for notebooks.

``X`` is a list of per-video feature arrays ``[T_i, D]`` (videos differ in
length), ``y`` one label per video. Fitting runs :func:`featstore.trainers.probe.fit_probe`
(the authors' loop, defaults included) on those arrays; scoring runs
:func:`featstore.trainers.probe.score_source`. Parameters are :class:`ProbeConfig`'s
fields plus ``validation_fraction`` (a seeded, stratified share of the
training videos held out for early stopping; ``None``: no early stopping,
as ``fit_probe`` without validation). ``get_params`` / ``set_params`` come from
scikit-learn, so ``sklearn.base.clone``, ``cross_val_score`` and
``GridSearchCV`` work on lists of videos.

The positive class is ``classes_[1]`` (scikit-learn's convention): with 0/1
labels, 1 = fake. ``decision_function`` is the video logit
``s = logsumexp_t (w . phi_t + b)``, ``predict_proba`` is ``[1 - p, p]`` with
``p = sigmoid(2 s)`` (the probe's P(fake)), ``predict`` thresholds ``s`` at 0
and ``score`` is accuracy (use ``scoring="roc_auc"`` for the paper's metric).

>>> from sklearn.model_selection import cross_val_score
>>> clf = ProbeClassifier(max_epochs=20)  # doctest: +SKIP
>>> cross_val_score(clf, videos, labels, cv=5, scoring="roc_auc").mean()  # doctest: +SKIP
0.93
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from featstore.trainers.probe import (
    ProbeConfig,
    ProbeError,
    ProbeParams,
    fit_probe,
    frame_logits,
    probability,
    score_source,
)
from featstore.trainers.sources import ArraySource

__all__ = ["ProbeClassifier"]

_DEFAULTS = ProbeConfig()


def _videos(X: Sequence[np.ndarray], dim: int | None = None) -> list[np.ndarray]:
    """``X`` as float32 arrays ``[T_i, D]`` (one dtype for the sources), checked."""
    if isinstance(X, np.ndarray) and X.ndim == 2:
        raise ProbeError(
            "X is one 2-D array; the probe takes a list of per-video arrays [T_i, D] "
            "(wrap a single video as [x])"
        )
    videos = [np.asarray(x, dtype=np.float32) for x in X]
    if not videos:
        raise ProbeError("X holds no videos")
    for i, x in enumerate(videos):
        if x.ndim != 2 or x.shape[0] == 0:
            raise ProbeError(f"video {i}: expected a non-empty [T, D] array, got {x.shape}")
        if dim is not None and x.shape[1] != dim:
            raise ProbeError(f"video {i} is {x.shape[1]}-wide; the probe was fit on {dim}")
    return videos


class ProbeClassifier(ClassifierMixin, BaseEstimator):
    """The paper's linear probe as a scikit-learn classifier over lists of videos."""

    def __init__(
        self,
        *,
        l2_normalize: bool = _DEFAULTS.l2_normalize,
        lr: float = _DEFAULTS.lr,
        max_epochs: int = _DEFAULTS.max_epochs,
        patience: int = _DEFAULTS.patience,
        batch_videos: int | None = _DEFAULTS.batch_videos,
        seed: int = _DEFAULTS.seed,
        device: str = _DEFAULTS.device,
        scale_lr: bool = _DEFAULTS.scale_lr,
        center_bias: bool = _DEFAULTS.center_bias,
        validation_fraction: float | None = None,
    ) -> None:
        self.l2_normalize = l2_normalize
        self.lr = lr
        self.max_epochs = max_epochs
        self.patience = patience
        self.batch_videos = batch_videos
        self.seed = seed
        self.device = device
        self.scale_lr = scale_lr
        self.center_bias = center_bias
        self.validation_fraction = validation_fraction

    def probe_config(self) -> ProbeConfig:
        """The estimator's parameters as the probe's config (validated there)."""
        names = {f.name for f in dataclasses.fields(ProbeConfig)}
        return ProbeConfig(**{k: v for k, v in self.get_params().items() if k in names})

    def fit(
        self,
        X: Sequence[np.ndarray],
        y: Sequence[Any] | np.ndarray,
        *,
        X_val: Sequence[np.ndarray] | None = None,
        y_val: Sequence[Any] | np.ndarray | None = None,
    ) -> ProbeClassifier:
        """Train on videos ``X`` with labels ``y``; early-stop on ``(X_val, y_val)`` or on
        a ``validation_fraction`` of ``X`` when given."""
        config = self.probe_config()
        videos = _videos(X)
        labels = np.asarray(y)
        if labels.shape != (len(videos),):
            raise ProbeError(f"need one label per video: {len(videos)} videos, y {labels.shape}")
        self.classes_ = np.unique(labels)
        if len(self.classes_) != 2:
            raise ProbeError(f"the probe needs exactly two classes, got {list(self.classes_)}")
        targets = (labels == self.classes_[1]).astype(np.int8)  # [N] 1 = positive (fake)
        val = None
        if X_val is not None or y_val is not None:
            if X_val is None or y_val is None or self.validation_fraction is not None:
                raise ProbeError("give X_val and y_val together, and not validation_fraction")
            val_videos = _videos(X_val, videos[0].shape[1])
            val_targets = (np.asarray(y_val) == self.classes_[1]).astype(np.int8)
            val = ArraySource(val_videos, val_targets)
        elif self.validation_fraction is not None:
            from sklearn.model_selection import train_test_split

            if not 0 < self.validation_fraction < 1:
                raise ProbeError(
                    f"validation_fraction must lie in (0, 1), got {self.validation_fraction!r}"
                )
            index = np.arange(len(videos))
            fit_idx, val_idx = train_test_split(
                index,
                test_size=self.validation_fraction,
                stratify=targets,
                random_state=self.seed,
            )
            val = ArraySource([videos[i] for i in val_idx], targets[val_idx])
            videos, targets = [videos[i] for i in fit_idx], targets[fit_idx]
        result = fit_probe(ArraySource(videos, targets), val, config)
        self.params_ = result.params
        self.coef_ = result.params.w[None, :].copy()  # [1, D]
        self.intercept_ = np.array([result.params.b], dtype=np.float32)  # [1]
        self.n_features_in_ = int(result.params.dim)
        self.history_ = list(result.history)
        self.best_epoch_ = int(result.best_epoch)
        return self

    def _params(self) -> ProbeParams:
        check_is_fitted(self, "params_")
        return self.params_

    def decision_function(self, X: Sequence[np.ndarray]) -> np.ndarray:
        """Video logits ``s`` ``[N]`` (higher = more fake)."""
        params = self._params()
        videos = _videos(X, params.dim)
        scores, _ = score_source(params, ArraySource(videos, np.zeros(len(videos), np.int8)))
        return np.asarray(scores, dtype=np.float64)

    def predict_proba(self, X: Sequence[np.ndarray]) -> np.ndarray:
        """``[N, 2]``: ``1 - p`` and ``p = sigmoid(2 s)``, in ``classes_`` order."""
        p = np.asarray(probability(self.decision_function(X)), dtype=np.float64)  # [N]
        return np.stack([1.0 - p, p], axis=1)

    def predict(self, X: Sequence[np.ndarray]) -> np.ndarray:
        """``classes_[1]`` where ``s > 0`` (P > 0.5), else ``classes_[0]``."""
        return self.classes_[(self.decision_function(X) > 0).astype(int)]

    def frame_scores(self, X: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Per-frame logits ``[T_i]`` of each video (the temporal explanation)."""
        params = self._params()
        return [frame_logits(params, x) for x in _videos(X, params.dim)]
