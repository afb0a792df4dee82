"""Tests of featstore.timebase: rates, rows, pairing, reconciliation."""

from __future__ import annotations

import numpy as np
import pytest

from featstore import timebase as tb


def test_constants_agree() -> None:
    assert tb.SAMPLES_PER_FRAME == tb.SAMPLE_RATE_HZ / tb.FRAME_HZ == 640
    assert tb.samples_per_frame() == 640
    assert tb.samples_per_frame(sample_rate_hz=16_000, frame_hz=50.0) == 320
    with pytest.raises(ValueError, match="whole number"):
        tb.samples_per_frame(sample_rate_hz=44_100, frame_hz=30.0 * 1.001)
    with pytest.raises(ValueError):
        tb.samples_per_frame(frame_hz=0)


def test_row_times_cover_half_open_intervals() -> None:
    np.testing.assert_allclose(tb.row_times_s(4, 25.0), [0.0, 0.04, 0.08, 0.12])
    np.testing.assert_allclose(tb.row_times_s(3, 12.5), [0.0, 0.08, 0.16])
    bounds = tb.row_bounds_s(3, 25.0)
    assert bounds.shape == (3, 2)
    np.testing.assert_allclose(bounds[:, 1], bounds[:, 0] + 0.04)
    np.testing.assert_allclose(bounds[1:, 0], bounds[:-1, 1])  # contiguous, no gaps
    assert tb.row_times_s(0, 25.0).shape == (0,)
    with pytest.raises(ValueError):
        tb.row_times_s(-1, 25.0)


def test_seconds_frames_round_trip() -> None:
    frames = np.arange(0, 10_000)
    secs = tb.frames_to_seconds(frames)
    np.testing.assert_array_equal(tb.seconds_to_frames(secs), frames)  # despite float noise
    assert tb.frames_to_seconds(50) == 2.0
    assert tb.seconds_to_frames(0.12) == 3  # 0.12 * 25 = 2.9999999999999996 in floats
    assert tb.seconds_to_frames(0.079) == 1  # inside row 1 = [0.04, 0.08)
    assert tb.seconds_to_frames(1.0, frame_hz=12.5) == 12


def test_samples_frames_conversions() -> None:
    assert tb.frames_to_samples(3) == 1920
    assert tb.samples_to_frames(1920) == 3
    assert tb.samples_to_frames(1921) == 3
    assert tb.samples_to_frames(1921, partial=True) == 4
    assert tb.samples_to_frames(1920, partial=True) == 3
    assert tb.samples_to_frames(0) == 0
    assert tb.frames_to_samples(2, sample_rate_hz=48_000, frame_hz=30.0) == 3_200
    with pytest.raises(ValueError):
        tb.samples_to_frames(-1)


def test_pair_frames_even_and_odd() -> None:
    x = np.arange(8, dtype=np.float32).reshape(4, 2)  # [T=4, D=2]
    y = tb.pair_frames(x)
    assert y.shape == (2, 4) and y.dtype == np.float32
    np.testing.assert_array_equal(y, [[0, 1, 2, 3], [4, 5, 6, 7]])
    odd = tb.pair_frames(x[:3])
    assert odd.shape == (2, 4)
    np.testing.assert_array_equal(odd[1], [4, 5, 4, 5])  # the last frame repeated
    assert tb.pair_frames(x[:1]).shape == (1, 4)
    assert tb.pair_frames(x[:0]).shape == (0, 4)


@pytest.mark.parametrize("t", [1, 2, 49, 50, 51, 250])
def test_pair_frames_against_reference(t: int) -> None:
    rng = np.random.default_rng(t)
    x = rng.normal(size=(t, 5)).astype(np.float32)
    padded = np.concatenate([x, x[-1:]]) if t % 2 else x
    ref = np.stack(
        [np.concatenate([padded[2 * i], padded[2 * i + 1]]) for i in range(len(padded) // 2)]
    )
    out = tb.pair_frames(x)
    assert out.shape == (-(-t // 2), 10)
    np.testing.assert_array_equal(out, ref)


def test_pair_frames_rejects_wrong_rank() -> None:
    with pytest.raises(ValueError, match=r"\[T, D\]"):
        tb.pair_frames(np.zeros(4))


def test_reconcile_trims_to_shorter_and_records_lengths() -> None:
    a = np.arange(10)[:, None] * np.ones((1, 3))  # [10, 3]
    v = np.arange(8)[:, None] * np.ones((1, 5))  # [8, 5]
    r = tb.reconcile(a, v)
    assert (r.n_rows, r.n_audio_rows, r.n_visual_rows, r.length_diff) == (8, 10, 8, 2)
    assert r.audio.shape == (8, 3) and r.visual.shape == (8, 5)
    np.testing.assert_array_equal(r.audio[:, 0], np.arange(8))  # trimmed at the end, not the start
    r2 = tb.reconcile(v[:3], a)
    assert (r2.n_rows, r2.length_diff) == (3, -7)
    same = tb.reconcile(a, a)
    assert same.n_rows == 10 and same.length_diff == 0


def test_resample_rows() -> None:
    x = np.arange(5)[:, None]  # 12.5 Hz rows
    up = tb.resample_rows(x, src_hz=12.5, dst_hz=25.0)
    np.testing.assert_array_equal(up[:, 0], [0, 0, 1, 1, 2, 2, 3, 3, 4, 4])
    down = tb.resample_rows(np.arange(10)[:, None], src_hz=50.0, dst_hz=25.0)
    np.testing.assert_array_equal(down[:, 0], [0, 2, 4, 6, 8])
    padded = tb.resample_rows(x, src_hz=12.5, dst_hz=25.0, n_rows=12)
    np.testing.assert_array_equal(padded[-2:, 0], [4, 4])  # past the end: the last row
    assert tb.resample_rows(x[:0], src_hz=12.5, dst_hz=25.0).shape == (0, 1)


def test_segments_to_mask_and_back() -> None:
    mask = tb.segments_to_mask([[0.1, 0.2], [0.5, 0.52]], 20)
    # row t covers [0.04 t, 0.04 (t+1)): [0.1, 0.2] touches rows 2..4, [0.5, 0.52] row 12
    assert np.flatnonzero(mask).tolist() == [2, 3, 4, 12]
    assert not tb.segments_to_mask([[0.0, 0.04]], 3)[1]  # ends exactly where row 1 starts
    assert tb.mask_to_segments(mask) == [(0.08, 0.2), (0.48, 0.52)]
    assert tb.mask_to_segments(np.zeros(5, bool)) == []
    assert tb.mask_to_segments(np.ones(3, bool)) == [(0.0, 0.12)]
    with pytest.raises(ValueError):
        tb.segments_to_mask([[0.3, 0.2]], 10)


@pytest.mark.parametrize("sil", [0.0, 0.01, 0.039, 0.04, 0.3000625, 1.234])
def test_silence_trim_counts_match_avh_align(sil: float) -> None:
    frames, samples = tb.silence_trim_counts(sil)
    assert frames == int(sil * 25) + 1
    assert samples == int(sil * 25) * 640 + 640
    assert samples == frames * tb.SAMPLES_PER_FRAME
    with pytest.raises(ValueError):
        tb.silence_trim_counts(-0.1)


def test_row_bounds_are_exact_multiples_of_the_row_length():
    # 2/25 + 1/25 is 0.12000000000000001 in floating point; a segment starting at
    # 0.12 s must not mark row 2, which ends at 0.12 s.
    bounds = tb.row_bounds_s(10, 25.0)
    assert bounds[2, 1] == 3 / 25
    assert np.array_equal(bounds[1:, 0], bounds[:-1, 1])
    mask = tb.segments_to_mask([[0.12, 0.2]], 10, frame_hz=25.0)
    assert np.flatnonzero(mask).tolist() == [3, 4]
