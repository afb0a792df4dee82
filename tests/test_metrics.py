"""Binary metrics against scikit-learn on seeded random inputs; temporal AUC on planted segments."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.interpolate import interp1d
from scipy.optimize import brentq
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from featstore.errors import FeatstoreError
from featstore.trainers.metrics import (
    BinaryMetrics,
    MetricError,
    TemporalAUC,
    auc,
    average_precision,
    binary_metrics,
    bootstrap_ci,
    eer,
    temporal_auc,
)


def _random_case(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Imbalanced labels, informative scores, and (for odd seeds) many ties."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 400))
    p_fake = rng.uniform(0.02, 0.98)
    y = (rng.random(n) < p_fake).astype(int)
    y[rng.integers(n)] = 1
    y[rng.integers(n)] = 0
    if y.sum() in (0, n):
        y[0], y[1] = 0, 1
    s = rng.normal(size=n) + rng.uniform(0, 2) * y
    if seed % 2:
        s = np.round(s * rng.integers(1, 4)) / 2.0  # few distinct values: heavy ties
    return y, s


def _eer_reference(y: np.ndarray, s: np.ndarray) -> float:
    """The usual roc_curve + brentq recipe: where 1 - FPR crosses the interpolated TPR."""
    fpr, tpr, _ = roc_curve(y, s)
    tpr_at = interp1d(fpr, tpr)
    return brentq(lambda x: 1.0 - x - tpr_at(x), 0.0, 1.0, xtol=1e-12)


@pytest.mark.parametrize("seed", range(40))
def test_auc_and_ap_equal_sklearn(seed: int) -> None:
    y, s = _random_case(seed)
    assert auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert average_precision(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)


@pytest.mark.parametrize("seed", range(40))
def test_eer_equals_roc_curve_reference(seed: int) -> None:
    y, s = _random_case(seed)
    assert eer(y, s) == pytest.approx(_eer_reference(y, s), abs=1e-9)


def test_metrics_hand_computed() -> None:
    # Ranked: 0.6 fake, 0.5 real, 0.3 fake, 0.2 real, 0.1 real.
    y = [1, 0, 1, 0, 0]
    s = [0.6, 0.5, 0.3, 0.2, 0.1]
    # AUC: fake 0.6 beats 3 reals, fake 0.3 beats 2 -> 5 / 6.
    assert auc(y, s) == pytest.approx(5 / 6)
    # AP: recall 1/2 at precision 1, recall 1 at precision 2/3 -> 1/2 + 1/3.
    assert average_precision(y, s) == pytest.approx(5 / 6)
    # (FPR, FNR): (0, 1) (0, 1/2) (1/3, 1/2) (1/3, 0) ...: they cross on the vertical step, at 1/3.
    assert eer(y, s) == pytest.approx(1 / 3)
    # A tie moves diagonally from (0, 1) to (1, 0): crossing half way.
    assert eer([1, 0], [0.5, 0.5]) == pytest.approx(0.5)
    assert auc([1, 0], [0.5, 0.5]) == pytest.approx(0.5)
    # Perfect and inverted scores.
    assert eer([0, 0, 1, 1], [0, 1, 2, 3]) == 0.0
    assert eer([0, 0, 1, 1], [3, 2, 1, 0]) == 1.0
    assert auc([0, 0, 1, 1], [3, 2, 1, 0]) == 0.0


def test_boolean_labels_accepted() -> None:
    assert auc(np.array([False, True, True]), [0.0, 1.0, 0.5]) == 1.0


@pytest.mark.parametrize(
    ("labels", "scores", "match"),
    [
        ([1, 1, 1], [0.1, 0.2, 0.3], "all fake"),
        ([0, 0], [0.1, 0.2], "all real"),
        ([0, 1], [0.1, np.nan], "NaN or infinite"),
        ([0, 1], [0.1, np.inf], "NaN or infinite"),
        ([0, 1, 1], [0.1, 0.2], "3 labels but 2 scores"),
        ([], [], "empty"),
        ([0, 2], [0.1, 0.2], "0 \\(real\\) or 1 \\(fake\\)"),
        ([[0, 1]], [[0.1, 0.2]], "1-D"),
    ],
)
def test_invalid_inputs_raise(labels, scores, match) -> None:
    for metric in (auc, average_precision, eer):
        with pytest.raises(MetricError, match=match):
            metric(labels, scores)
    assert issubclass(MetricError, FeatstoreError)
    assert issubclass(MetricError, ValueError)


def test_bootstrap_ci_brackets_estimate_and_is_seeded() -> None:
    y, s = _random_case(4)
    lo, hi = bootstrap_ci(y, s, n_resamples=300, seed=1)
    assert lo < auc(y, s) < hi
    assert (lo, hi) == bootstrap_ci(y, s, n_resamples=300, seed=1)
    assert (lo, hi) != bootstrap_ci(y, s, n_resamples=300, seed=2)
    narrow = bootstrap_ci(y, s, n_resamples=300, level=0.5, seed=1)
    assert lo <= narrow[0] <= narrow[1] <= hi


def test_bootstrap_vectorised_auc_matches_generic_path() -> None:
    # The batched AUC path and the per-resample path draw the same resamples.
    y, s = _random_case(7)
    fast = bootstrap_ci(y, s, auc, n_resamples=200, seed=3)
    slow = bootstrap_ci(y, s, lambda a, b: auc(a, b), n_resamples=200, seed=3)
    assert fast == pytest.approx(slow, abs=1e-12)


def test_bootstrap_is_stratified() -> None:
    # One fake among many reals: an unstratified resample would often miss it and fail.
    y = np.zeros(50, dtype=int)
    y[0] = 1
    s = np.linspace(0, 1, 50)
    lo, hi = bootstrap_ci(y, s, average_precision, n_resamples=100)
    assert 0.0 < lo <= hi <= 1.0


def test_bootstrap_rejects_bad_arguments() -> None:
    with pytest.raises(MetricError, match="n_resamples"):
        bootstrap_ci([0, 1], [0.0, 1.0], n_resamples=0)
    with pytest.raises(MetricError, match="level"):
        bootstrap_ci([0, 1], [0.0, 1.0], level=1.0)


def test_binary_metrics_and_json() -> None:
    y, s = _random_case(2)
    m = binary_metrics(y, s)
    assert isinstance(m, BinaryMetrics)
    assert (m.n, m.n_fake, m.n_real) == (len(y), int(y.sum()), len(y) - int(y.sum()))
    assert m.auc == pytest.approx(roc_auc_score(y, s))
    assert m.ap == pytest.approx(average_precision_score(y, s))
    assert m.auc_ci is None and json.loads(json.dumps(m.to_dict()))["ap_ci"] is None
    with_ci = binary_metrics(y, s, ci=True, n_resamples=100, seed=5)
    d = json.loads(json.dumps(with_ci.to_dict()))
    assert d["auc_ci"][0] <= with_ci.auc <= d["auc_ci"][1]
    assert d["ap_ci"][0] <= d["ap_ci"][1]
    with pytest.raises(AttributeError):
        m.auc = 0.0  # type: ignore[misc]


def _planted(n_frames: int, segments: list[list[float]], frame_hz: float = 25.0) -> np.ndarray:
    t = np.arange(n_frames) / frame_hz
    fake = np.zeros(n_frames)
    for start, end in segments:
        fake[(t + 1 / frame_hz > start) & (t < end)] = 1.0
    return fake


def test_temporal_auc_perfect_inverted_and_skips() -> None:
    segs_a = [[0.4, 1.0]]
    segs_b = [[0.0, 0.2], [2.0, 2.4]]
    perfect = [
        ("a", _planted(100, segs_a), segs_a),
        ("b", _planted(80, segs_b) + 0.01 * np.arange(80), segs_b),
        ("real", np.zeros(60), []),  # ignored: no fake segments
        ("all_fake", np.ones(10), [[0.0, 5.0]]),  # skipped: every frame is fake
        ("beyond_end", np.ones(10), [[3.0, 4.0]]),  # skipped: no frame is fake
    ]
    result = temporal_auc(perfect, frame_hz=25.0)
    assert isinstance(result, TemporalAUC)
    assert result.mean == 1.0
    assert (result.n_videos, result.n_skipped) == (2, 2)
    assert set(result.per_video) == {"a", "b"}
    assert json.loads(json.dumps(result.to_dict()))["per_video"]["a"] == 1.0

    inverted = [(vid, -scores, segs) for vid, scores, segs in perfect[:2]]
    assert temporal_auc(inverted, frame_hz=25.0).mean == 0.0


def test_temporal_auc_averages_over_videos() -> None:
    # Video "half": frames 0..3, fake = frame 2..3 at 1 Hz; scores rank one fake above both reals,
    # the other fake between them -> AUC 3/4. Video "one": perfect -> 1. Mean 7/8.
    videos = [
        ("half", np.array([0.1, 0.5, 0.9, 0.3]), [[2.0, 4.0]]),
        ("one", np.array([0.0, 1.0]), [[1.0, 2.0]]),
    ]
    result = temporal_auc(videos, frame_hz=1.0)
    assert result.per_video == {"half": 0.75, "one": 1.0}
    assert result.mean == pytest.approx(0.875)


def test_temporal_auc_errors() -> None:
    with pytest.raises(MetricError, match="no fake video"):
        temporal_auc([("r", np.zeros(5), []), ("f", np.ones(5), [[0.0, 9.0]])], frame_hz=25.0)
    with pytest.raises(MetricError, match="no fake video"):
        temporal_auc([], frame_hz=25.0)
    with pytest.raises(MetricError, match=r"x: .*NaN"):
        temporal_auc([("x", np.array([0.0, np.nan]), [[0.0, 0.04]])], frame_hz=25.0)
    with pytest.raises(MetricError, match="frame_hz"):
        temporal_auc([], frame_hz=0.0)
    with pytest.raises(MetricError, match="before its start"):
        temporal_auc([("x", np.zeros(5), [[0.1, 0.0]])], frame_hz=25.0)
