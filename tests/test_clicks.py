"""The numbers of paper Fig. 4 on hand-made clicks (featstore.trainers.clicks)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from featstore.trainers.clicks import (
    ClickError,
    click_errors,
    clicks_of_row,
    curve,
    face_centres,
    random_points,
    to_output_frame,
    tool_to_frame,
    video_errors,
)


def test_click_error_is_the_mean_absolute_error_of_both_coordinates() -> None:
    pred = np.array([[0.5, 0.5], [0.1, 0.9], [0.0, 0.0]])
    click = np.array([[0.6, 0.3], [0.1, 0.9], [1.0, 1.0]])
    np.testing.assert_allclose(click_errors(pred, click), [(0.1 + 0.2) / 2, 0.0, 1.0])
    with pytest.raises(ClickError):
        click_errors(pred, click[:2])


def test_source_frames_become_25fps_frames_by_time() -> None:
    assert [to_output_frame(f, 25.0) for f in (0, 7, 100)] == [0, 7, 100]
    # 30 fps: frame 30 is at 1 s = frame 25; frame 1 (33 ms) is nearest to frame 1 (40 ms)
    assert [to_output_frame(f, 30.0) for f in (0, 1, 30, 59)] == [0, 1, 25, 49]
    with pytest.raises(ClickError):
        to_output_frame(3, 0.0)


def test_exddv_tool_coordinates() -> None:
    # a 16:9 frame is shown 600x337 in the 600x500 box: y/500 of its bottom edge is 0.674
    assert tool_to_frame(1.0, 337 / 500, (720, 1280)) == pytest.approx((1.0, 1.0))
    # a portrait frame is shown 281x500 (int(500 * 1080 / 1920) = 281)
    x, y = tool_to_frame(281 / 600 / 2, 0.5, (1920, 1080))
    assert (x, y) == pytest.approx((0.5, 0.5))


def test_clicks_of_every_annotator() -> None:
    row = {
        "clicks": [{"frame": 30, "x": 0.2, "y": 0.3}],
        "annotations": [
            {"username": "a", "clicks": [{"frame": 30, "x": 0.2, "y": 0.3}]},
            {"username": "b", "clicks": [{"frame": 60, "x": 0.4, "y": 0.5}]},
        ],
    }
    got = clicks_of_row("v", row, source_fps=30.0)
    assert [(c.annotator, c.source_frame, c.frame, c.x) for c in got] == [
        ("a", 30, 25, 0.2),
        ("b", 60, 50, 0.4),
    ]
    only = clicks_of_row("v", {"clicks": row["clicks"]}, source_fps=25.0)
    assert [(c.frame, c.y) for c in only] == [(30, 0.3)]
    with pytest.raises(ClickError, match="frame size"):
        clicks_of_row("v", row, source_fps=25.0, coords="exddv-tool")


def test_baselines() -> None:
    boxes = np.array([[9.5, 19.5, 29.5, 59.5]])  # pixel-centre box: edges 10..30, 20..60
    np.testing.assert_allclose(face_centres(boxes, (100, 200)), [[20 / 200, 40 / 100]])
    a, b = random_points(1000, seed=3), random_points(1000, seed=3)
    np.testing.assert_array_equal(a, b)
    assert a.min() >= 0 and a.max() <= 1
    # the random baseline against a click at the centre: E|U - 0.5| = 0.25
    err = click_errors(a, np.full_like(a, 0.5))
    assert abs(err.mean() - 0.25) < 0.02


def test_video_errors_and_the_curve_by_hand() -> None:
    table = pd.DataFrame(
        {
            "video_id": ["a", "a", "b", "c", "c", "c"],
            "score": [0.9, 0.9, 0.5, 0.2, 0.2, 0.2],
            "explanation": [0.1, 0.3, 0.4, 0.0, 0.6, 0.3],
            "centre": [0.2, 0.2, 0.1, np.nan, 0.5, 0.5],
        }
    )
    per_video = video_errors(table, ["explanation", "centre"])
    assert per_video["video_id"].tolist() == ["a", "b", "c"]
    np.testing.assert_allclose(per_video["explanation"], [0.2, 0.4, 0.3])
    np.testing.assert_allclose(per_video["centre"], [0.2, 0.1, 0.5])  # NaN click skipped
    got = curve(per_video, ["explanation", "centre"], thresholds=[0.0, 0.5, 0.95])
    exp = got[got["method"] == "explanation"].set_index("threshold")
    assert exp["n_videos"].tolist() == [3, 2, 0]
    np.testing.assert_allclose(exp.loc[0.0, "mean"], 0.3)
    np.testing.assert_allclose(exp.loc[0.0, "std"], np.std([0.2, 0.4, 0.3]))
    np.testing.assert_allclose(exp.loc[0.5, ["mean", "std"]].to_numpy(float), [0.3, 0.1])
    assert math.isnan(exp.loc[0.95, "mean"])
    cen = got[got["method"] == "centre"].set_index("threshold")
    np.testing.assert_allclose(cen.loc[0.5, "mean"], 0.15)


def test_choose_frames() -> None:
    from featstore.spatial import SpatialError
    from featstore.trainers.spatial import choose_frames

    z = np.array([0.1, 3.0, -1.0, 3.0, 2.0])
    assert choose_frames("top", frame_scores=z, frame_hz=25.0, last_frame=5, top_k=3) == [1, 3, 4]
    # 12.5 Hz rows (VideoMAE): a row's first frame; rows past the last whole window dropped
    assert choose_frames("top", frame_scores=z, frame_hz=12.5, last_frame=8, top_k=2) == [2, 6]
    assert choose_frames("top", frame_scores=z, frame_hz=12.5, last_frame=4, top_k=2) == [2]
    assert choose_frames("all", frame_scores=z, frame_hz=25.0, last_frame=3) == [0, 1, 2]
    assert choose_frames([4, 0, 4], frame_scores=z, frame_hz=25.0, last_frame=5) == [4, 0]
    with pytest.raises(SpatialError):
        choose_frames("best", frame_scores=z, frame_hz=25.0, last_frame=5)
