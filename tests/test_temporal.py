"""Per-frame scores to segments (seconds) and ranked proposals recovering planted segments."""

from __future__ import annotations

import numpy as np
import pytest

from featstore.timebase import segments_to_mask
from featstore.trainers.metrics import MetricError
from featstore.trainers.segments import iou_matrix, segment_ap, segment_ar, segment_iou
from featstore.trainers.temporal import Segment, proposals_from_scores, scores_to_segments


def test_segment_boundaries_in_seconds() -> None:
    s = np.zeros(10)
    s[3:6] = [0.5, 0.9, 0.2]  # rows 3..5 above 0 at 25 Hz -> [3/25, 6/25)
    (seg,) = scores_to_segments(s, 25.0)
    assert (seg.start_s, seg.end_s, seg.score) == (0.12, 0.24, 0.9)
    assert seg.to_list() == [0.12, 0.24, 0.9]
    # Strictly above: a row equal to the threshold is not part of the segment.
    assert scores_to_segments(s, 25.0, threshold=0.2) == [Segment(0.12, 0.2, 0.9)]
    # Runs touching both ends of the video.
    assert scores_to_segments(np.array([1.0, 0, 0, 2.0]), 1.0) == [
        Segment(0.0, 1.0, 1.0),
        Segment(3.0, 4.0, 2.0),
    ]
    assert scores_to_segments(np.zeros(5), 25.0) == []
    assert scores_to_segments(np.zeros(0), 25.0) == []


def test_segments_round_trip_through_mask() -> None:
    rng = np.random.default_rng(0)
    s = rng.normal(size=300)
    segs = scores_to_segments(s, 25.0, threshold=0.5)
    mask = segments_to_mask([(g.start_s, g.end_s) for g in segs], 300, frame_hz=25.0)
    np.testing.assert_array_equal(mask, s > 0.5)
    for g in segs:
        rows = slice(round(g.start_s * 25), round(g.end_s * 25))
        assert g.score == s[rows].max()


def test_merge_gap_then_min_duration() -> None:
    # Runs at 10 Hz: rows 0-1, 3-3 (gap of 1 row = 0.1 s), 7-9 (gap of 3 rows = 0.3 s).
    s = np.array([1, 1, 0, 3, 0, 0, 0, 2, 2, 2], dtype=float)
    assert [g.to_list() for g in scores_to_segments(s, 10.0)] == [
        [0.0, 0.2, 1.0],
        [0.3, 0.4, 3.0],
        [0.7, 1.0, 2.0],
    ]
    # A 0.1 s gap merges (<=, robust to 0.3 - 0.2 != 0.1 in floats); the 0.3 s gap does not.
    merged = scores_to_segments(s, 10.0, merge_gap_s=0.1)
    assert [g.to_list() for g in merged] == [[0.0, 0.4, 3.0], [0.7, 1.0, 2.0]]
    assert len(scores_to_segments(s, 10.0, merge_gap_s=0.3)) == 1
    # Dropping short segments happens after merging: the 0.1 s run survives inside the merge.
    assert [g.to_list() for g in scores_to_segments(s, 10.0, min_duration_s=0.3)] == [
        [0.7, 1.0, 2.0]
    ]
    kept = scores_to_segments(s, 10.0, merge_gap_s=0.1, min_duration_s=0.4)
    assert [g.to_list() for g in kept] == [[0.0, 0.4, 3.0]]


def test_scores_to_segments_errors() -> None:
    with pytest.raises(MetricError, match="NaN"):
        scores_to_segments(np.array([0.0, np.nan]), 25.0)
    with pytest.raises(MetricError, match="1-D"):
        scores_to_segments(np.zeros((2, 2)), 25.0)
    with pytest.raises(MetricError, match="frame_hz"):
        scores_to_segments(np.zeros(3), 0.0)
    with pytest.raises(MetricError, match=">= 0"):
        scores_to_segments(np.zeros(3), 25.0, merge_gap_s=-1.0)


def _planted_video(seed: int, segments_rows: list[tuple[int, int, float]], n: int = 250):
    rng = np.random.default_rng(seed)
    s = rng.normal(0.0, 0.15, size=n)
    for a, b, height in segments_rows:
        s[a:b] += height
    return s


@pytest.mark.parametrize("seed", range(5))
def test_proposals_recover_planted_segment_at_rank_one(seed: int) -> None:
    s = _planted_video(seed, [(100, 150, 1.0)])  # [4.0, 6.0) s at 25 Hz
    props = proposals_from_scores(s, 25.0)
    _, start, end = props[0]
    assert segment_iou((start, end), (4.0, 6.0)) > 0.9
    confidences = [p[0] for p in props]
    assert confidences == sorted(confidences, reverse=True)
    assert all(0.0 < c < 1.0 for c in confidences)
    assert len(props) <= 100
    # After NMS no two proposals overlap by more than nms_iou.
    bounds = np.array([p[1:] for p in props])
    overlap = iou_matrix(bounds, bounds)
    np.fill_diagonal(overlap, 0.0)
    assert overlap.max() <= 0.7 + 1e-12


def test_proposals_recover_two_planted_segments_and_score_well() -> None:
    truth, proposals = {}, {}
    for v in range(6):
        s = _planted_video(v, [(25, 60, 1.2), (160, 190, 0.8)])
        proposals[f"v{v}"] = proposals_from_scores(s, 25.0)
        truth[f"v{v}"] = [(1.0, 2.4), (6.4, 7.6)]
        top = [p[1:] for p in proposals[f"v{v}"][:3]]
        # The stronger segment first; the weaker one may follow a loose run around the stronger.
        assert segment_iou(top[0], truth[f"v{v}"][0]) > 0.9
        assert max(segment_iou(p, truth[f"v{v}"][1]) for p in top) > 0.9
    # A real video's proposals have low contrast and rank below the planted ones.
    proposals["real"] = proposals_from_scores(_planted_video(99, []), 25.0)
    truth["real"] = []
    # The definitions, not the official tool's AP (which drops the first step, up to 1/12 here).
    assert segment_ap(proposals, truth, semantics="corrected")[0.75] > 0.9
    assert segment_ar(proposals, truth, semantics="corrected")[5] > 0.8


def test_proposals_options_and_edge_cases() -> None:
    s = _planted_video(0, [(100, 150, 1.0)])
    assert len(proposals_from_scores(s, 25.0, max_proposals=3)) == 3
    (only,) = proposals_from_scores(s, 25.0, thresholds=[0.5], max_proposals=1)
    assert segment_iou(only[1:], (4.0, 6.0)) > 0.9
    # Constant scores: nothing is above any quantile.
    assert proposals_from_scores(np.ones(50), 25.0) == []
    assert proposals_from_scores(np.zeros(0), 25.0) == []
    # The whole video as one run has no neighbourhood: contrast 0, confidence 1/2.
    assert proposals_from_scores(np.ones(10), 25.0, thresholds=[0.0]) == [(0.5, 0.0, 0.4)]
    with pytest.raises(MetricError, match="max_proposals"):
        proposals_from_scores(s, 25.0, max_proposals=0)
    with pytest.raises(MetricError, match="nms_iou"):
        proposals_from_scores(s, 25.0, nms_iou=1.5)
    with pytest.raises(MetricError, match="NaN"):
        proposals_from_scores(np.array([np.inf, 0.0]), 25.0)
