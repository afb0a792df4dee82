"""Pure pieces of in-the-wild segmentation: segment rules, shots, track linking, agreement."""

from __future__ import annotations

import functools
import itertools
import operator

import numpy as np
import pytest

from featstore.asd.facetracks import Detection, FaceTrackConfig, link_tracks
from featstore.asd.sync import windowed_agreement
from featstore.datasets.segments import clip_segments, segment_id
from featstore.segments import ScoredTrack, SegmentRules, find_segments

FPS = 25


def track(start: int, n: int, speaking: list[tuple[int, int]], px: float = 150.0) -> ScoredTrack:
    scores = np.full(n, -1.0)
    for a, b in speaking:
        scores[a - start : b - start] = 1.0
    return ScoredTrack(start, scores, np.full(n, px))


def spans(result, reason: str) -> list[tuple[int, int]]:
    return result.dropped.get(reason, [])


def test_each_frame_gets_one_reason() -> None:
    # frames 0-49 no face; 50-399 track 0 (speaks 60-200, 200-260 a second face also speaks);
    # 400-500 a small face speaking; 500-600 nobody
    tracks = [
        track(50, 350, [(60, 300)]),
        track(200, 60, [(200, 260)]),
        track(400, 200, [(400, 500)], px=80.0),
    ]
    r = find_segments(600, tracks, SegmentRules())
    assert [(s.start_frame, s.end_frame, s.track) for s in r.segments] == [(60, 200, 0)]
    assert spans(r, "no_face") == [(0, 50)]
    assert spans(r, "several_faces") == [(200, 260)]
    assert spans(r, "too_short") == [(260, 300)]  # 1.6 s after the second face leaves
    assert spans(r, "face_too_small") == [(400, 500)]
    assert spans(r, "nobody_speaking") == [(50, 60), (300, 400), (500, 600)]
    covered = sorted(
        [(s.start_frame, s.end_frame) for s in r.segments]
        + functools.reduce(operator.iadd, r.dropped.values(), [])
    )
    assert covered[0][0] == 0 and covered[-1][1] == 600
    assert all(a[1] == b[0] for a, b in itertools.pairwise(covered))


def test_short_pauses_of_one_speaker_are_kept() -> None:
    rules = SegmentRules(max_gap_s=0.5)
    tr = [track(0, 300, [(0, 100), (110, 200), (240, 300)])]  # pauses of 0.4 s and 1.6 s
    r = find_segments(300, tr, rules)
    assert [(s.start_frame, s.end_frame) for s in r.segments] == [(0, 200)]
    assert spans(r, "nobody_speaking") == [(200, 240)]
    assert spans(r, "too_short") == [(240, 300)]
    # a pause where the face is too small is not bridged
    small = track(0, 300, [(0, 100), (110, 200)])
    small.face_px[100:110] = 50
    split = find_segments(300, [small], rules).segments
    assert [(s.start_frame, s.end_frame) for s in split] == [(0, 100), (110, 200)]


def test_long_spans_are_cut_into_equal_parts() -> None:
    r = find_segments(3100, [track(0, 3100, [(0, 3100)])], SegmentRules(max_s=60))
    bounds = [(s.start_frame, s.end_frame) for s in r.segments]
    assert bounds == [(0, 1033), (1033, 2067), (2067, 3100)]  # 124 s: three parts of ~41 s
    assert all(s.duration_s <= 60 for s in r.segments)
    exact = find_segments(3000, [track(0, 3000, [(0, 3000)])], SegmentRules(max_s=60))
    assert [(s.start_frame, s.end_frame) for s in exact.segments] == [(0, 1500), (1500, 3000)]


def test_no_audio_drops_everything() -> None:
    r = find_segments(100, [track(0, 100, [(0, 100)])], SegmentRules(), has_audio=False)
    assert r.segments == () and r.dropped == {"no_audio": [(0, 100)]}


def test_fake_segments_are_clipped_and_shifted() -> None:
    assert clip_segments([[1.0, 2.0], [4.5, 6.0], [9.0, 9.5]], 4.0, 8.0) == [[0.5, 2.0]]
    assert clip_segments([], 0.0, 1.0) == []
    assert segment_id("a/b", 10, 85) == "a/b@10-85"


def _det(t: int, x: float) -> Detection:
    return Detection(t, np.array([x, 10.0, x + 50, 60.0]), np.zeros((68, 2)))


def test_tracks_link_by_iou_within_ten_missed_frames() -> None:
    dets = [_det(t, 100 + t) for t in range(0, 20)]  # face 1 drifts right
    dets += [_det(t, 100 + t) for t in range(26, 40)]  # back after 6 frames: same track
    dets += [_det(t, 100 + t) for t in range(52, 70)]  # after 12 frames: a new track
    dets += [_det(t, 400.0) for t in range(0, 8)]  # a second face, 8 detections: too short
    tracks = link_tracks(dets, config=FaceTrackConfig())
    assert [(t.start, t.end) for t in tracks] == [(0, 40), (52, 70)]
    gap = tracks[0]
    assert not gap.faces.detected[20:26].any() and gap.faces.detected[:20].all()
    np.testing.assert_allclose(gap.boxes[20:26, 0], 100 + np.arange(20, 26))  # interpolated


def test_agreement_is_the_best_shifted_correlation_over_speech() -> None:
    rng = np.random.default_rng(0)
    a = rng.standard_normal(200)
    v = np.roll(a, 1) + 0.3 * rng.standard_normal(200)  # the mouth lags the audio by a frame
    speech = np.ones(200, bool)
    speech[90:110] = False
    r = windowed_agreement(a, v, speech, window=50, shift=1)
    assert (r[90:110] == -1).all()
    t = 150
    f = np.arange(125, 175)
    expect = max(
        np.corrcoef(a[f[(f + d >= 0) & (f + d < 200)]], v[f[(f + d >= 0) & (f + d < 200)] + d])[
            0, 1
        ]
        for d in (-1, 0, 1)
    )
    assert r[t] == pytest.approx(expect)
    unrelated = windowed_agreement(a, rng.standard_normal(200), speech, window=50, shift=1)
    assert r[speech].min() > 0.8 > 0.5 > unrelated[speech].max()


def test_shot_cuts_where_hsv_content_jumps() -> None:
    pytest.importorskip("cv2")
    from featstore.asd.shots import ShotConfig, detect_shots

    red = np.zeros((20, 20, 3), np.uint8)
    red[..., 0] = 255
    blue = np.zeros((20, 20, 3), np.uint8)
    blue[..., 2] = 255
    # red -> blue: hue 0 -> 120 (OpenCV's 0-179 range), S and V unchanged: content 40 >= 27
    frames = [red] * 20 + [blue] * 20 + [red] * 20 + [blue] * 5 + [red] * 10
    shots = detect_shots(frames, ShotConfig())
    # the blue flash at 60 comes 20 frames after the cut at 40: a cut; the return
    # to red 5 frames later is under min_shot_frames (15): no cut
    assert [(s.start, s.end) for s in shots] == [(0, 20), (20, 40), (40, 60), (60, 75)]


def test_cli_names_the_registered_detectors() -> None:
    from featstore.asd.detectors import ASD_NAMES, UnknownAsdError, load_detector
    from featstore.cli.datasets import ASD_NAMES as CLI_NAMES

    assert CLI_NAMES == ASD_NAMES == ("talknet", "sync")
    with pytest.raises(UnknownAsdError, match="choose from talknet, sync"):
        load_detector("s3fd")
