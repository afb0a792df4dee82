"""Eq. 3's padding rule (issue 15, item 11): positions a shift leaves without a partner are
left out of every pool but the SpeechForensics mean, which counts them as cosine 0."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest

from featstore.store import EncoderInfo
from featstore.trainers.kinds import score
from featstore.trainers.kinds.syncfree import run_syncscore
from featstore.trainers.runs import load_run
from featstore.trainers.syncfree import (
    PADDINGS,
    POOLS,
    PRESETS,
    SyncConfig,
    SyncError,
    default_padding,
    pool_frames,
    shift_mask,
    shifted_cosines,
    sync_config,
    sync_video,
)


def _cos(x: np.ndarray, y: np.ndarray) -> float:
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))


def _pool(values: list[float], pool: str) -> float:
    x, n = np.asarray(values, dtype=np.float64), len(values)
    if pool == "mean":
        return float(x.mean())
    if pool == "min":
        return float(x.min())
    if pool == "max":
        return float(x.max())
    if pool == "logsumexp":  # (1/n) log sum exp(n x), computed stably
        return float(x.max() + np.log(np.exp(n * (x - x.max())).sum()) / n)
    return float(np.percentile(x, 3.0 if pool == "p3" else 97.0))


def brute_force(audio, visual, shift, pool, padding):
    """Per-shift loop: ``{delta: pooled}`` over the pairs of each shift (+ zeros if padded)."""
    t = audio.shape[0]
    out = {}
    for delta in range(-shift, shift + 1):
        values = [-_cos(audio[i], visual[i + delta]) for i in range(t) if 0 <= i + delta < t]
        if padding == "zero":
            values += [0.0] * (t - len(values))
        if values:
            out[delta] = _pool(values, pool)
    return out


def aligned_pair(t: int, lag: int, seed: int = 0, dim: int = 12):
    """Visual = audio delayed by ``lag`` frames plus noise: at the true shift every -cos < 0."""
    rng = np.random.default_rng(seed)
    audio = rng.standard_normal((t + abs(lag), dim))
    visual = np.roll(audio, lag, axis=0) + 0.3 * rng.standard_normal(audio.shape)
    return audio[:t].astype(np.float32), visual[:t].astype(np.float32)


@pytest.mark.parametrize("pool", POOLS)
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize(
    ("t", "shift", "lag"), [(40, 15, 12), (30, 15, -15), (9, 15, 3), (1, 2, 0)]
)
def test_every_pool_matches_the_per_shift_loop(pool, padding, t, shift, lag):
    audio, visual = aligned_pair(t, lag, seed=t + shift)
    # Negative aligned scores at the true shift: the case where zeros used to win.
    fake = -shifted_cosines(audio, visual, shift)
    assert np.all(fake[shift_mask(t, shift)[:, shift + lag], shift + lag] < 0) or t == 1
    result = sync_video(audio, visual, SyncConfig(shift=shift, pool=pool, padding=padding))
    expected = brute_force(audio, visual, shift, pool, padding)
    got = {d: v for d, v in zip(range(-shift, shift + 1), result.pooled, strict=True)}
    assert {d for d, v in got.items() if np.isfinite(v)} == set(expected)
    for delta, value in expected.items():
        assert got[delta] == pytest.approx(value, abs=1e-5), delta
    best = min(expected.values())
    assert result.score == pytest.approx(best, abs=1e-5)
    ties = [d for d, v in expected.items() if abs(v - best) <= 1e-6]
    assert abs(result.best_shift) == min(abs(d) for d in ties)


@pytest.mark.parametrize("pool", ["max", "p97", "logsumexp"])
def test_max_pools_find_a_large_shift_when_padding_is_excluded(pool):
    """Regression: with zeros, max/p97 of a shift with padding is at least 0, so when every
    pair scores negative (features that share a direction: cosines positive at every shift)
    the unpadded shift 0 always won, however much better the true lag of 12 frames aligns."""
    rng = np.random.default_rng(3)
    common = 3.0 * rng.standard_normal(12)  # a shared direction: every cosine is positive
    stream = common + rng.standard_normal((72, 12))
    audio = stream[12:].astype(np.float32)  # [60, 12]
    visual = (stream[:60] + 0.2 * rng.standard_normal((60, 12))).astype(np.float32)
    # v[t] = stream[t] + noise = a[t - 12] + noise: the visual lags the audio by 12 frames
    assert np.all(shifted_cosines(audio, visual, 15)[shift_mask(60, 15)] > 0)
    excluded = sync_video(audio, visual, SyncConfig(shift=15, pool=pool))
    assert excluded.best_shift == 12 and excluded.score < 0
    zero = sync_video(audio, visual, SyncConfig(shift=15, pool=pool, padding="zero"))
    assert zero.best_shift == 0


def test_frame_scores_of_unpaired_rows_are_the_least_fake():
    audio, visual = aligned_pair(50, 10, seed=4)
    result = sync_video(audio, visual, SyncConfig(shift=15, pool="max"))
    assert result.best_shift == 10
    fake = -shifted_cosines(audio, visual, 15)[:, 15 + 10]  # [T], rows 40..49 unpaired
    np.testing.assert_array_equal(result.frame_scores[:40], fake[:40])
    assert np.all(result.frame_scores[40:] == fake[:40].min())
    zero = sync_video(audio, visual, SyncConfig(shift=15, pool="max", padding="zero"))
    assert zero.frame_scores.base is None or not np.shares_memory(zero.frame_scores, fake)


def test_speechforensics_preset_is_unchanged():
    """The preset pools every position, zeros included, bit for bit as before."""
    assert PRESETS["speechforensics"] == SyncConfig(shift=15, pool="mean", padding="zero")
    audio, visual = aligned_pair(37, 5, seed=5)
    result = sync_video(audio, visual, PRESETS["speechforensics"])
    pooled = pool_frames(-shifted_cosines(audio, visual, 15), "mean")  # all T rows, zeros in
    np.testing.assert_array_equal(result.pooled, pooled)
    assert result.score == float(pooled[result.best_shift + 15]) == float(pooled.min())


def test_padding_defaults_and_validation():
    assert default_padding("mean") == "zero"
    assert {default_padding(p) for p in POOLS if p != "mean"} == {"exclude"}
    assert SyncConfig(15, "max").padding == "exclude" and SyncConfig(15, "mean").padding == "zero"
    assert sync_config(shift=15, pool="mean", padding="exclude").padding == "exclude"
    assert SyncConfig(15, "p3", "zero").to_dict() == {"shift": 15, "pool": "p3", "padding": "zero"}
    with pytest.raises(SyncError, match="unknown padding"):
        SyncConfig(15, "max", padding="edge")
    with pytest.raises(SyncError, match="not both"):
        sync_config("speechforensics", padding="exclude")


@pytest.mark.parametrize("pool", POOLS)
def test_pool_frames_with_a_mask_equals_slices(pool):
    rng = np.random.default_rng(6)
    x = rng.uniform(-1, 1, size=(23, 7))
    valid = shift_mask(23, 3)
    valid[:, 0] = False  # a column with nothing to pool
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow / invalid-value warnings on the mask
        got = pool_frames(x, pool, valid=valid)
    assert np.isnan(got[0])
    for k in range(1, 7):
        assert got[k] == pytest.approx(_pool(list(x[valid[:, k], k]), pool), rel=1e-12)
    with pytest.raises(SyncError, match="valid mask"):
        pool_frames(x, pool, valid=valid[:3])


def test_long_videos_pool_without_overflow():
    x = np.full((4000, 3), -0.9)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = pool_frames(x, "logsumexp", valid=shift_mask(4000, 1))
    n = np.array([3999, 4000, 3999])  # (1/n) log(n exp(n x)) = x + log(n) / n
    np.testing.assert_allclose(got, -0.9 + np.log(n) / n, rtol=1e-12)


def _write_pair_store(store, n: int = 12):
    rng = np.random.default_rng(7)
    rows = []
    feats = {}
    for i in range(n):
        audio, visual = aligned_pair(40, 11 if i % 2 == 0 else 0, seed=100 + i)
        if i % 2:
            visual = rng.standard_normal(visual.shape).astype(np.float32)  # fake: unrelated
        feats[f"v{i:02d}"] = (audio, visual)
        rows.append(
            {
                "video_id": f"v{i:02d}",
                "label": i % 2,
                "split": "test",
                "modify_type": "both_modified" if i % 2 else "real",
                "fake_segments": json.dumps([[0.0, 0.8]] if i % 2 else []),
            }
        )
    store.write_manifest("syn", pd.DataFrame(rows))
    for enc, side in (("aud", 0), ("vis", 1)):
        info = EncoderInfo(name=enc, frame_hz=25.0, layer_dims={"last": 12}, dtype="float32")
        with store.writer("syn", info) as writer:
            for vid, pair in feats.items():
                writer.add(vid, {"last": pair[side]})
    return feats


def test_runs_record_the_padding_and_old_runs_read_as_zero(store, tmp_path):
    feats = _write_pair_store(store)
    config = SyncConfig(shift=15, pool="max")
    metrics = run_syncscore(store, "syn", "aud", "vis", config=config, out=tmp_path / "run")
    assert metrics["sync"] == {"shift": 15, "pool": "max", "padding": "exclude"}
    assert load_run(tmp_path / "run").config["config"]["sync"]["padding"] == "exclude"
    # The real videos lag by 11 frames: found only because zeros do not win.
    assert metrics["best_shift_counts"].get("11", 0) >= 6
    # A run written before the rule was recorded was computed with zeros: it still is.
    doc = json.loads((tmp_path / "run" / "config.json").read_text())
    del doc["config"]["sync"]["padding"]
    (tmp_path / "run" / "config.json").write_text(json.dumps(doc))
    rescored = score(load_run(tmp_path / "run"), store, "syn:test")
    zero = SyncConfig(15, "max", padding="zero")
    expected = [sync_video(*feats[v], zero).score for v in rescored.video_ids]
    np.testing.assert_allclose(rescored.scores, expected, atol=1e-6)
