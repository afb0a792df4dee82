"""Late fusion of several runs' per-video predictions (DESIGN.md, "Trainers").

Score convention, shared by every trainer: a model's video score ``s`` is a
logit with ``P(fake) = sigmoid(2 s)`` (the probe's loss is cross-entropy over
``[-s, s]``, i.e. BCE on ``2 s``); label 1 = fake, higher = more fake.

Late fusion is the average of the models' *probabilities* (paper Tab. 3/5:
"late fusion (average of predictions)"). ``fused_score`` maps the fused
probability back onto the score scale with ``logit(p) / 2``, so a fused run is
thresholded and scored exactly like a single run: score 0 <=> probability 0.5.

``late_fusion_frames`` applies the same rule per frame, on a common timeline
(the members' per-frame probabilities resampled to one rate and trimmed to the
shortest): the paper fuses videos only, so fused frame scores serve
explanations and localization, not the paper's numbers.

Pure numpy; reading predictions from run directories is the caller's job.

>>> ids, p = align_predictions([{"a": 0.2, "b": 0.9}, {"b": 0.7, "a": 0.4}], names=["x", "y"])
>>> ids, late_fusion(p).round(2).tolist()
(['a', 'b'], [0.3, 0.8])
>>> float(fused_score(np.array([0.5]))[0])
0.0
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy.special import expit, logit

from featstore.errors import FeatstoreError
from featstore.timebase import resample_rows

__all__ = [
    "PROBABILITY_EPS",
    "FusionError",
    "align_predictions",
    "fused_score",
    "late_fusion",
    "late_fusion_frames",
    "probabilities_from_scores",
]

# Probabilities are clipped to [eps, 1 - eps] before the logit so that fused
# scores stay finite (|score| <= logit(1 - eps) / 2, about 13.8).
PROBABILITY_EPS = 1e-12

_ALIGN_MODES = ("exact", "intersect")
_SHOWN_IDS = 5


class FusionError(FeatstoreError, ValueError):
    """Predictions cannot be aligned or fused (mismatched videos, bad values)."""


def _preview(ids: Sequence[str]) -> str:
    shown = ", ".join(repr(i) for i in list(ids)[:_SHOWN_IDS])
    more = len(ids) - _SHOWN_IDS
    return shown + (f" (+{more} more)" if more > 0 else "")


def _is_finite_number(value: object) -> bool:
    try:
        return math.isfinite(float(value))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


def align_predictions(
    predictions: Sequence[Mapping[str, float]],
    *,
    names: Sequence[str],
    how: str = "exact",
) -> tuple[list[str], np.ndarray]:
    """Put several models' per-video predictions on the same sorted video ids.

    ``how="exact"`` requires every model to cover the same videos (the error
    names the models and a few missing/extra ids); ``how="intersect"`` keeps
    the videos all models share. Returns the sorted ids and a float64
    ``[M models, N videos]`` matrix in the order of ``predictions``.
    """
    if how not in _ALIGN_MODES:
        raise FusionError(f"how must be one of {_ALIGN_MODES}, got {how!r}")
    names = list(names)
    if len(names) != len(predictions):
        raise FusionError(
            f"got {len(predictions)} prediction sets but {len(names)} names; give one name per model"
        )
    if not predictions:
        raise FusionError("no predictions to align; give at least one model")
    if len(set(names)) != len(names):
        raise FusionError(f"model names must be unique, got {names}")
    for name, preds in zip(names, predictions, strict=True):
        if not preds:
            raise FusionError(f"model {name!r} has no predictions")
        bad = [vid for vid, value in preds.items() if not _is_finite_number(value)]
        if bad:
            raise FusionError(
                f"model {name!r} has non-numeric or non-finite predictions for {_preview(sorted(bad))}"
            )

    reference = set(predictions[0])
    if how == "exact":
        for name, preds in zip(names[1:], predictions[1:], strict=True):
            ids = set(preds)
            if ids != reference:
                missing = sorted(reference - ids)
                extra = sorted(ids - reference)
                parts = []
                if missing:
                    parts.append(f"{len(missing)} missing ({_preview(missing)})")
                if extra:
                    parts.append(f"{len(extra)} extra ({_preview(extra)})")
                raise FusionError(
                    f"model {name!r} and model {names[0]!r} were scored on different videos: "
                    f"{name!r} has {' and '.join(parts)}; use how='intersect' to keep the common ones"
                )
        common = reference
    else:
        common = reference.intersection(*(set(p) for p in predictions[1:]))
        if not common:
            raise FusionError(f"models {names} share no video; nothing to fuse")

    video_ids = sorted(common)
    matrix = np.array(
        [[float(preds[vid]) for vid in video_ids] for preds in predictions], dtype=np.float64
    )  # [M, N]
    return video_ids, matrix


def _check_probabilities(probabilities: np.ndarray, *, ndim: int) -> np.ndarray:
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != ndim or p.size == 0:
        raise FusionError(
            f"expected a non-empty {ndim}-D array of probabilities, got shape {p.shape}"
        )
    if not np.all(np.isfinite(p)):
        raise FusionError("probabilities must be finite (got NaN or inf)")
    if p.min() < 0.0 or p.max() > 1.0:
        raise FusionError(
            f"probabilities must lie in [0, 1], got values in [{p.min():.4g}, {p.max():.4g}]; "
            "convert scores with probabilities_from_scores first"
        )
    return p


def late_fusion(probabilities: np.ndarray, *, weights: Sequence[float] | None = None) -> np.ndarray:
    """Average the models' probabilities per video: ``[M, N] -> [N]``.

    ``weights`` (one per model, non-negative, not all zero) are normalised to
    sum to one; without them every model counts the same (paper's late fusion).
    """
    p = _check_probabilities(probabilities, ndim=2)  # [M, N]
    if weights is None:
        return p.mean(axis=0)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (p.shape[0],):
        raise FusionError(f"expected {p.shape[0]} weights (one per model), got shape {w.shape}")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise FusionError(f"weights must be finite and non-negative, got {w.tolist()}")
    total = w.sum()
    if total <= 0:
        raise FusionError("weights must not all be zero")
    return (w / total) @ p


def fused_score(probability: np.ndarray) -> np.ndarray:
    """Map fused probabilities back to the score scale: ``logit(p) / 2``.

    Inverse of ``probabilities_from_scores`` (``sigmoid(2 * fused_score(p)) == p``
    for ``p`` in ``[PROBABILITY_EPS, 1 - PROBABILITY_EPS]``; outside, ``p`` is
    clipped so scores stay finite). Keeps fused runs on the single-run scale.
    """
    p = _check_probabilities(probability, ndim=1)  # [N]
    return logit(np.clip(p, PROBABILITY_EPS, 1.0 - PROBABILITY_EPS)) / 2.0


def probabilities_from_scores(scores: np.ndarray) -> np.ndarray:
    """A run's ``P(fake) = sigmoid(2 s)`` for video scores ``s`` (any shape)."""
    s = np.asarray(scores, dtype=np.float64)
    if not np.all(np.isfinite(s)):
        raise FusionError("scores must be finite (got NaN or inf)")
    return expit(2.0 * s)


def late_fusion_frames(
    frame_scores: Sequence[np.ndarray],
    rates_hz: Sequence[float],
    *,
    frame_hz: float,
    weights: Sequence[float] | None = None,
) -> np.ndarray:
    """Fused per-frame scores ``[T]`` of one video from each model's frame logits ``[T_m]``.

    Each model's frame probabilities ``sigmoid(2 z_t)`` are resampled from its
    rate to ``frame_hz`` (``featstore.timebase.resample_rows``), trimmed to the
    shortest, averaged as ``late_fusion`` averages video probabilities, and
    mapped back with ``fused_score``.

    >>> late_fusion_frames([np.zeros(4), np.zeros(2)], [25.0, 12.5], frame_hz=25.0).tolist()
    [0.0, 0.0, 0.0, 0.0]
    """
    if len(frame_scores) != len(rates_hz) or not frame_scores:
        raise FusionError(
            f"need one rate per model: {len(frame_scores)} frame score arrays, "
            f"{len(rates_hz)} rates"
        )
    columns = []
    for z, hz in zip(frame_scores, rates_hz, strict=True):
        p = probabilities_from_scores(np.asarray(z, dtype=np.float64).ravel())[:, None]  # [T, 1]
        if not math.isclose(float(hz), frame_hz, rel_tol=1e-9):
            p = resample_rows(p, src_hz=float(hz), dst_hz=frame_hz)  # [T', 1]
        columns.append(p[:, 0])
    n = min(c.shape[0] for c in columns)
    if n == 0:
        return np.zeros(0, dtype=np.float32)
    probs = np.stack([c[:n] for c in columns])  # [M, T]
    return fused_score(late_fusion(probs, weights=weights)).astype(np.float32)  # [T]
