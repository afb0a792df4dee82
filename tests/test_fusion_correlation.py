"""Late fusion, alignment, score round trip, correlation and relative improvement."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import pearsonr
from sklearn.metrics import average_precision_score, roc_auc_score

from featstore.errors import FeatstoreError
from featstore.trainers.correlation import (
    CorrelationError,
    fusion_metric_matrix,
    pearson_matrix,
    relative_improvement,
)
from featstore.trainers.fusion import (
    PROBABILITY_EPS,
    FusionError,
    align_predictions,
    fused_score,
    late_fusion,
    probabilities_from_scores,
)

# --- alignment ---------------------------------------------------------------


def test_align_sorts_ids_and_keeps_model_order():
    ids, matrix = align_predictions(
        [{"v2": 0.2, "v1": 0.9}, {"v1": 0.4, "v2": 0.6}], names=["clip", "w2v2"]
    )
    assert ids == ["v1", "v2"]
    np.testing.assert_array_equal(matrix, [[0.9, 0.2], [0.4, 0.6]])
    assert matrix.dtype == np.float64


def test_align_exact_names_models_and_ids():
    a = {f"v{i}": 0.5 for i in range(10)}
    b = {f"v{i}": 0.5 for i in range(2, 11)}
    with pytest.raises(FusionError) as err:
        align_predictions([a, b], names=["clip", "w2v2"])
    message = str(err.value)
    assert "'w2v2'" in message and "'clip'" in message
    assert "2 missing ('v0', 'v1')" in message
    assert "1 extra ('v10')" in message
    assert "intersect" in message
    assert isinstance(err.value, FeatstoreError) and isinstance(err.value, ValueError)


def test_align_exact_preview_is_short():
    a = {f"v{i:02d}": 0.1 for i in range(40)}
    with pytest.raises(FusionError, match=r"39 missing .*\(\+34 more\)"):
        align_predictions([a, {"v00": 0.1}], names=["x", "y"])


def test_align_intersect_keeps_common_and_rejects_empty():
    ids, matrix = align_predictions(
        [{"a": 0.1, "b": 0.2, "c": 0.3}, {"b": 0.5, "c": 0.6, "d": 0.7}],
        names=["x", "y"],
        how="intersect",
    )
    assert ids == ["b", "c"]
    np.testing.assert_array_equal(matrix, [[0.2, 0.3], [0.5, 0.6]])
    with pytest.raises(FusionError, match="share no video"):
        align_predictions([{"a": 0.1}, {"b": 0.2}], names=["x", "y"], how="intersect")


@pytest.mark.parametrize(
    ("predictions", "names", "how", "match"),
    [
        ([{"a": 0.1}], ["x", "y"], "exact", "one name per model"),
        ([], [], "exact", "at least one model"),
        ([{"a": 0.1}, {"a": 0.2}], ["x", "x"], "exact", "unique"),
        ([{"a": 0.1}, {}], ["x", "y"], "exact", "'y' has no predictions"),
        ([{"a": float("nan")}], ["x"], "exact", "non-finite"),
        ([{"a": "fake"}], ["x"], "exact", "non-numeric"),
        ([{"a": 0.1}], ["x"], "union", "how must be one of"),
    ],
)
def test_align_rejects_bad_input(predictions, names, how, match):
    with pytest.raises(FusionError, match=match):
        align_predictions(predictions, names=names, how=how)


# --- fusion and the score convention ----------------------------------------


def test_late_fusion_is_the_mean_of_probabilities():
    p = np.array([[0.1, 0.8, 0.5], [0.3, 0.4, 1.0]])
    np.testing.assert_allclose(late_fusion(p), [0.2, 0.6, 0.75])


def test_late_fusion_weights_are_normalised():
    p = np.array([[0.1, 0.8], [0.5, 0.2]])
    # weights 3:1 -> 0.75 * row0 + 0.25 * row1
    np.testing.assert_allclose(late_fusion(p, weights=[3.0, 1.0]), [0.2, 0.65])
    np.testing.assert_allclose(late_fusion(p, weights=[1.0, 0.0]), p[0])


@pytest.mark.parametrize(
    ("probabilities", "weights", "match"),
    [
        (np.array([0.1, 0.2]), None, "2-D"),
        (np.array([[0.1, 1.2]]), None, r"\[0, 1\]"),
        (np.array([[0.1, np.nan]]), None, "finite"),
        (np.array([[0.1], [0.2]]), [1.0], "2 weights"),
        (np.array([[0.1], [0.2]]), [1.0, -1.0], "non-negative"),
        (np.array([[0.1], [0.2]]), [0.0, 0.0], "all be zero"),
    ],
)
def test_late_fusion_rejects_bad_input(probabilities, weights, match):
    with pytest.raises(FusionError, match=match):
        late_fusion(probabilities, weights=weights)


def test_fused_score_round_trips_with_the_probe_convention():
    scores = np.array([-6.0, -1.5, -0.1, 0.0, 0.3, 2.0, 8.0])
    p = probabilities_from_scores(scores)
    np.testing.assert_allclose(p, 1.0 / (1.0 + np.exp(-2.0 * scores)))
    np.testing.assert_allclose(fused_score(p), scores, atol=1e-9)
    np.testing.assert_allclose(probabilities_from_scores(fused_score(p)), p, rtol=1e-12)
    assert fused_score(np.array([0.5]))[0] == 0.0


def test_fused_score_is_finite_at_the_extremes_and_keeps_order():
    s = fused_score(np.array([0.0, 1e-15, 0.5, 1.0]))
    assert np.all(np.isfinite(s))
    limit = 0.5 * np.log((1 - PROBABILITY_EPS) / PROBABILITY_EPS)  # about 13.8
    np.testing.assert_allclose(s[[0, 3]], [-limit, limit], rtol=1e-5)
    assert np.all(np.diff(s) >= 0)


def test_fusion_of_two_runs_by_hand():
    ids, p = align_predictions(
        [
            dict(zip("abc", probabilities_from_scores(np.array([1.0, -1.0, 0.0])), strict=True)),
            dict(zip("abc", probabilities_from_scores(np.array([0.0, 0.0, 2.0])), strict=True)),
        ],
        names=["x", "y"],
    )
    sig = 1.0 / (1.0 + np.exp(-2.0))
    expected = np.array(
        [(sig + 0.5) / 2, (1 - sig + 0.5) / 2, (0.5 + 1.0 / (1 + np.exp(-4.0))) / 2]
    )
    np.testing.assert_allclose(late_fusion(p), expected)
    assert ids == ["a", "b", "c"]


# --- correlation -------------------------------------------------------------


def test_pearson_matches_numpy_and_scipy():
    rng = np.random.default_rng(0)
    base = rng.random(50)
    p = np.stack([base, 0.5 * base + 0.5 * rng.random(50), rng.random(50), 1 - base])
    corr = pearson_matrix(p)
    np.testing.assert_allclose(corr, np.corrcoef(p), atol=1e-12)
    assert corr[0, 1] == pytest.approx(pearsonr(p[0], p[1]).statistic)
    assert corr[0, 3] == pytest.approx(-1.0)
    np.testing.assert_array_equal(np.diag(corr), 1.0)
    np.testing.assert_allclose(corr, corr.T)


def test_pearson_rejects_constant_rows_and_bad_shapes():
    with pytest.raises(CorrelationError, match=r"row\(s\) \[1\]"):
        pearson_matrix(np.array([[0.1, 0.2, 0.3], [0.4, 0.4, 0.4]]))
    with pytest.raises(CorrelationError, match="at least 2 videos"):
        pearson_matrix(np.array([[0.1], [0.2]]))
    with pytest.raises(CorrelationError, match="matrix"):
        pearson_matrix(np.array([0.1, 0.2]))


# --- relative improvement (paper Fig. 5/6) -----------------------------------

LABELS = np.array([0, 0, 0, 1, 1, 1])
# Probabilities in sixteenths (exact in binary, so fused values have no rounding ties).
# AUCs counted by hand over the 9 (fake, real) pairs:
#   model 0: reals 2 11 8, fakes 10 0 13  -> 2 + 0 + 3 = 5/9
#   model 1: reals 3 2 10, fakes 7 12 4   -> 2 + 3 + 2 = 7/9
#   model 2: reals 1 3 5,  fakes 9 11 14  -> 9/9
# Fused pairs (sums of sixteenths, same order as the sums of probabilities):
#   0+1: reals 5 13 18, fakes 17 12 17 -> 2 + 1 + 2 = 5/9
#   0+2: reals 3 14 13, fakes 19 11 27 -> 3 + 1 + 3 = 7/9
#   1+2: reals 4 5 15,  fakes 16 23 18 -> 9/9
PROBS = (
    np.array(
        [
            [2, 11, 8, 10, 0, 13],
            [3, 2, 10, 7, 12, 4],
            [1, 3, 5, 9, 11, 14],
        ]
    )
    / 16.0
)


def test_fusion_metric_matrix_by_hand():
    table = fusion_metric_matrix(LABELS, PROBS)
    expected = np.array([[5, 5, 7], [5, 7, 9], [7, 9, 9]]) / 9
    np.testing.assert_allclose(table, expected)
    for i, j in [(0, 1), (0, 2), (1, 2)]:
        assert table[i, j] == pytest.approx(roc_auc_score(LABELS, (PROBS[i] + PROBS[j]) / 2))


def test_relative_improvement_by_hand_row_is_the_improved_model():
    rel = relative_improvement(LABELS, PROBS)
    # Row i = model improved: (AUC(i+j) - AUC(i)) / AUC(i) * 100.
    expected = np.array(
        [
            [0.0, 0.0, (7 - 5) / 5 * 100],  # weak model 0 gains 40 % from the perfect model 2
            [(5 - 7) / 7 * 100, 0.0, (9 - 7) / 7 * 100],
            [(7 - 9) / 9 * 100, 0.0, 0.0],  # perfect model 2 loses 22 % when fused with 0
        ]
    )
    np.testing.assert_allclose(rel, expected, atol=1e-9)
    assert rel[0, 2] == pytest.approx(40.0)


def test_relative_improvement_with_average_precision():
    rel = relative_improvement(LABELS, PROBS, metric="ap")
    fused01 = PROBS[[0, 1]].mean(axis=0)
    ap0 = average_precision_score(LABELS, PROBS[0])
    assert rel[0, 1] == pytest.approx((average_precision_score(LABELS, fused01) - ap0) / ap0 * 100)


@pytest.mark.parametrize(
    ("labels", "metric", "match"),
    [
        (np.array([0, 1, 2, 1, 0, 1]), "auc", "0 \\(real\\) or 1"),
        (np.ones(6, dtype=int), "auc", "both real and fake"),
        (np.array([0, 1]), "auc", "6 labels"),
        (LABELS, "f1", "metric must be one of"),
    ],
)
def test_relative_improvement_rejects_bad_input(labels, metric, match):
    with pytest.raises(CorrelationError, match=match):
        relative_improvement(labels, PROBS, metric=metric)


def test_relative_improvement_rejects_zero_auc():
    probs = np.array([[0.9, 0.8, 0.1, 0.2], [0.1, 0.2, 0.9, 0.8]])
    with pytest.raises(CorrelationError, match=r"row\(s\) \[0\] have AUC 0"):
        relative_improvement(np.array([0, 0, 1, 1]), probs)
