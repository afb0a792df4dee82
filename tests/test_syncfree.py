"""Training-free synchronisation (paper Eq. 3): references, edge cases, detection, run shell."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from featstore.store import EncoderInfo
from featstore.trainers.kinds import score
from featstore.trainers.kinds.syncfree import run_syncscore
from featstore.trainers.metrics import auc, temporal_auc
from featstore.trainers.pairs import PairedVideo
from featstore.trainers.runs import load_run, read_frame_scores, read_predictions
from featstore.trainers.syncfree import (
    POOLS,
    PRESETS,
    SyncConfig,
    SyncError,
    pool_frames,
    shifted_cosines,
    sync_config,
    sync_video,
    syncscore,
)


def _cos(x: np.ndarray, y: np.ndarray) -> float:
    nx, ny = np.linalg.norm(x), np.linalg.norm(y)
    return 0.0 if nx == 0 or ny == 0 else float(x @ y / (nx * ny))


def speechforensics_reference(audio: np.ndarray, visual: np.ndarray, window: int = 15) -> float:
    """PEERS.md's SpeechForensics score written out: L2-normalise, zero-pad audio by +-window,
    cosine of each visual frame with audio at offsets -window..+window, mean over time, max."""
    t, dim = visual.shape
    a = audio / np.linalg.norm(audio, axis=1, keepdims=True)
    v = visual / np.linalg.norm(visual, axis=1, keepdims=True)
    padded = np.concatenate([np.zeros((window, dim)), a, np.zeros((window, dim))])
    sims = np.zeros((t, 2 * window + 1))
    for i in range(t):
        for j, offset in enumerate(range(-window, window + 1)):
            sims[i, j] = _cos(v[i], padded[i + window + offset])
    return float(sims.mean(axis=0).max())  # higher = real


def eq3_reference(
    audio: np.ndarray, visual: np.ndarray, shift: int, pool: str, padding: str | None = None
) -> float:
    """Eq. 3 with loops: min over delta of pool_t(-cos(a_t, v_{t+delta})); out-of-range
    positions count as 0 (padding "zero") or are left out ("exclude"); default as the pool's."""
    padding = padding or ("zero" if pool == "mean" else "exclude")
    t = audio.shape[0]
    pooled = []
    for delta in range(-shift, shift + 1):
        values = []
        for i in range(t):
            j = i + delta
            if 0 <= j < t:
                values.append(-_cos(audio[i], visual[j]))
            elif padding == "zero":
                values.append(0.0)
        if not values:
            continue  # this shift pairs no frame
        x, n = np.array(values), len(values)
        if pool == "mean":
            pooled.append(x.mean())
        elif pool == "min":
            pooled.append(x.min())
        elif pool == "max":
            pooled.append(x.max())
        elif pool == "logsumexp":
            pooled.append(math.log(sum(math.exp(n * xi) for xi in x)) / n)
        else:
            pooled.append(np.percentile(x, 3.0 if pool == "p3" else 97.0))
    return float(min(pooled))


def _random(t: int, dim: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (
        rng.standard_normal((t, dim)).astype(np.float32),
        rng.standard_normal((t, dim)).astype(np.float32),
    )


@pytest.mark.parametrize("t", [1, 3, 20, 31, 45])
def test_speechforensics_preset_is_minus_the_peer_score(t):
    audio, visual = _random(t, seed=t)
    result = sync_video(audio, visual, PRESETS["speechforensics"])
    assert result.score == pytest.approx(-speechforensics_reference(audio, visual), abs=1e-5)


@pytest.mark.parametrize("pool", POOLS)
@pytest.mark.parametrize(("t", "shift"), [(1, 0), (1, 3), (5, 15), (40, 0), (40, 4)])
def test_every_pool_matches_the_loop_reference(pool, t, shift):
    audio, visual = _random(t, seed=7 * t + shift)
    result = sync_video(audio, visual, SyncConfig(shift=shift, pool=pool))
    assert result.score == pytest.approx(eq3_reference(audio, visual, shift, pool), abs=1e-5)
    assert result.pooled.shape == (2 * shift + 1,)
    assert result.frame_scores.shape == (t,)


@pytest.mark.parametrize("pool", POOLS)
def test_pool_frames_against_numpy(pool):
    x = np.random.default_rng(3).uniform(-1, 1, size=(37, 5))
    expected = {
        "mean": x.mean(0),
        "min": x.min(0),
        "max": x.max(0),
        "p3": np.percentile(x, 3, axis=0),
        "p97": np.percentile(x, 97, axis=0),
        "logsumexp": np.log(np.exp(37 * x).sum(0)) / 37,
    }[pool]
    np.testing.assert_allclose(pool_frames(x, pool), expected, rtol=1e-12)


def test_scaled_logsumexp_tracks_max_and_is_stable():
    x = np.random.default_rng(4).uniform(-1, 1, size=(500, 3))
    lse = pool_frames(x, "logsumexp")
    assert np.all(lse >= x.max(0)) and np.all(lse <= x.max(0) + math.log(500) / 500)
    assert np.isfinite(pool_frames(np.full((2000, 1), 1.0), "logsumexp")).all()


def test_shifted_cosines_layout_and_zero_padding():
    audio, visual = _random(6, seed=1)
    c = shifted_cosines(audio, visual, 2)  # [6, 5]: column k is delta = k - 2
    assert c.shape == (6, 5)
    for i in range(6):
        for k, delta in enumerate(range(-2, 3)):
            j = i + delta
            expected = _cos(audio[i], visual[j]) if 0 <= j < 6 else 0.0
            assert c[i, k] == pytest.approx(expected, abs=1e-6)
    zero = np.zeros_like(audio)
    assert np.all(shifted_cosines(zero, visual, 1) == 0)  # zero rows: cosine 0, no NaN


def test_shift_direction_and_ties():
    rng = np.random.default_rng(5)
    audio = rng.standard_normal((60, 8)).astype(np.float32)
    visual = np.roll(audio, 4, axis=0)  # v[t + 4] = a[t]: the visual lags by 4 frames
    result = sync_video(audio, visual, SyncConfig(shift=6, pool="mean"))
    assert result.best_shift == 4
    assert result.frame_scores[10] == pytest.approx(-1.0, abs=1e-5)
    tied = sync_video(np.zeros((3, 4)), np.zeros((3, 4)), SyncConfig(shift=5, pool="mean"))
    assert tied.best_shift == 0 and tied.score == 0.0  # all shifts tie: the one closest to 0


def test_shape_and_config_errors():
    audio, visual = _random(5)
    with pytest.raises(SyncError, match="reconcile"):
        shifted_cosines(audio, visual[:4], 1)
    with pytest.raises(SyncError, match="one width"):
        shifted_cosines(audio, visual[:, :8], 1)
    with pytest.raises(SyncError, match="no frames"):
        sync_video(audio[:0], visual[:0], PRESETS["factor"])
    with pytest.raises(SyncError, match="unknown pool"):
        SyncConfig(shift=1, pool="median")
    with pytest.raises(SyncError, match=">= 0"):
        SyncConfig(shift=-1, pool="mean")
    with pytest.raises(SyncError, match="not both"):
        sync_config("factor", shift=3)
    with pytest.raises(SyncError, match="unknown preset"):
        sync_config("avh")
    with pytest.raises(SyncError, match="both a shift and a pool"):
        sync_config(shift=3)
    assert sync_config("factor") == SyncConfig(shift=0, pool="p97")


def _desync_pairs(n: int, *, seed: int = 0, dim: int = 24, frame_hz: float = 25.0):
    """Visual = noisy function of audio; fakes shift the visual stream by 9 frames in a segment."""
    rng = np.random.default_rng(seed)
    pairs = []
    for i in range(n):
        t = int(rng.integers(60, 100))
        audio = rng.standard_normal((t + 20, dim))
        visual = np.tanh(audio) + 0.6 * rng.standard_normal((t + 20, dim))
        audio, visual = audio[10 : t + 10], visual[10 : t + 10]
        segments: tuple[tuple[float, float], ...] = ()
        if i % 2:
            lo = int(rng.integers(5, t - 30))
            hi = lo + int(rng.integers(15, 25))
            shifted = np.tanh(audio) + 0.6 * rng.standard_normal((t, dim))
            visual[lo:hi] = np.roll(shifted, 9, axis=0)[lo:hi]
            segments = ((lo / frame_hz, hi / frame_hz),)
        pairs.append(
            PairedVideo(
                f"v{i:03d}",
                i % 2,
                audio.astype(np.float32),
                visual.astype(np.float32),
                segments,
                frame_hz,
                t,
                t,
            )
        )
    return pairs


@pytest.mark.parametrize("preset", ["speechforensics", "factor"])
def test_detects_desynchronised_segments(preset):
    pairs = _desync_pairs(60)
    result = syncscore(pairs, config=PRESETS[preset])
    assert result.video_ids == tuple(p.video_id for p in pairs)
    assert auc(result.labels, result.scores) > 0.9
    localized = temporal_auc(
        ((p.video_id, f, p.fake_segments) for p, f in zip(pairs, result.frame_scores, strict=True)),
        25.0,
    )
    assert localized.mean > 0.9
    assert np.all(result.best_shifts[result.labels == 0] == 0)


def test_syncscore_arguments():
    pairs = _desync_pairs(4)
    with pytest.raises(SyncError, match="not both"):
        syncscore(pairs, shift=1, pool="mean", config=PRESETS["factor"])
    with pytest.raises(SyncError, match="no paired videos"):
        syncscore([], shift=1, pool="mean")
    by_args = syncscore(pairs, shift=15, pool="mean")
    np.testing.assert_array_equal(
        by_args.scores, syncscore(pairs, config=PRESETS["speechforensics"]).scores
    )
    assert np.all((by_args.probabilities > 0) & (by_args.probabilities < 1))


def test_silence_skipped_rows_are_padded_back():
    audio, visual = _random(10)
    pair = PairedVideo("x", 1, audio, visual, (), 25.0, 10, 10, silence_skip_rows=3)
    frames = syncscore([pair], shift=0, pool="mean").frame_scores[0]
    assert frames.shape == (13,)
    assert np.all(frames[:3] == frames[3:].min())


def _write_store(store, pairs):
    rows = [
        {
            "video_id": p.video_id,
            "label": p.label,
            "split": "test",
            "modify_type": "both_modified" if p.label else "real",
            "fake_segments": [list(s) for s in p.fake_segments],
        }
        for p in pairs
    ]
    store.write_manifest("syn", pd.DataFrame(rows))
    dim = pairs[0].audio.shape[1]
    for enc, side in (("aud", "audio"), ("vis", "visual")):
        info = EncoderInfo(name=enc, frame_hz=25.0, layer_dims={"last": dim}, dtype="float32")
        with store.writer("syn", info) as writer:
            for p in pairs:
                writer.add(p.video_id, {"last": getattr(p, side)})


def test_run_syncscore_writes_a_scorable_run(store, tmp_path):
    pairs = _desync_pairs(20, seed=2)
    _write_store(store, pairs)
    metrics = run_syncscore(
        store, "syn", "aud", "vis", config=PRESETS["speechforensics"], out=tmp_path / "run"
    )
    assert metrics["selection"] == "syn:test" and metrics["n_evaluated"] == 20
    assert metrics["binary"]["auc"] > 0.9
    assert metrics["temporal"]["mean"] > 0.9
    assert sum(metrics["best_shift_counts"].values()) == 20
    run = load_run(tmp_path / "run")
    assert run.kind == "syncfree" and run.config["config"]["sync"]["shift"] == 15
    assert run.metrics()["syn:test"]["binary"]["auc"] == metrics["binary"]["auc"]
    preds = read_predictions(run, "syn_test")
    direct = syncscore(pairs, config=PRESETS["speechforensics"])
    np.testing.assert_allclose(preds["score"], direct.scores, atol=1e-6)
    frames = read_frame_scores(run, "syn_test")
    np.testing.assert_allclose(frames["v001"], direct.frame_scores[1], atol=1e-6)
    rescored = score(run, store, "syn:test")
    np.testing.assert_allclose(rescored.scores, direct.scores, atol=1e-6)
