"""Runs written by featstore 0.1 (run format 1) load and score as they did, or fail naming
what to re-run.

The configs below are literal copies of what featstore 0.1's ``train probe``,
``train ntp``, ``train sync``, ``syncscore --out`` and ``fuse --out`` wrote (tiny
settings; only the store path is a placeholder). Their weights are made here with the
numeric cores, and every upgraded run is checked against those cores applied by hand.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from featstore.store import EncoderInfo, FeatureStore
from featstore.trainers import kinds
from featstore.trainers.evaluate import evaluate
from featstore.trainers.runs import read_predictions

V1_PROBE: dict[str, Any] = {
    "kind": "probe",
    "encoder": "aud",
    "layer": "last",
    "frame_hz": 25.0,
    "dim": 8,
    "encoder_info": {
        "checkpoint": None,
        "checkpoint_sha256": None,
        "random_init": False,
        "preprocessing_version": "1",
    },
    "store": "STORE",
    "train": {
        "selection": "toy:train",
        "dataset": "toy",
        "split": "train",
        "split_hash": "8cfcb157d2334139",
        "n": 6,
        "n_real": 3,
        "n_fake": 3,
    },
    "val": {
        "selection": "toy:val",
        "dataset": "toy",
        "split": "val",
        "split_hash": "3fd1f60e3d289961",
        "n": 2,
        "n_real": 1,
        "n_fake": 1,
    },
    "hyperparameters": {
        "l2_normalize": True,
        "lr": 0.001,
        "max_epochs": 2,
        "patience": 10,
        "batch_videos": None,
        "seed": 43,
        "cache_bytes": 8589934592,
        "device": "cpu",
        "scale_lr": True,
        "center_bias": True,
    },
    "best_epoch": 2,
    "epochs": 2,
    "stopped_early": False,
    "package_version": "0.1.0",
    "created": "2026-12-06T18:02:11+00:00",
}

V1_NTP: dict[str, Any] = {
    "kind": "ntp",
    "encoder": "aud",
    "layer": "last",
    "frame_hz": 25.0,
    "dim": 8,
    "encoder_info": {
        "checkpoint": None,
        "checkpoint_sha256": None,
        "random_init": False,
        "preprocessing_version": "1",
    },
    "store": "STORE",
    "train": {
        "selection": "toy:train",
        "dataset": "toy",
        "split": "train",
        "split_hash": "5a89f2670024c01e",
        "n": 3,
        "n_real": 3,
        "n_fake": 0,
    },
    "val": {
        "selection": "toy:val",
        "dataset": "toy",
        "split": "val",
        "split_hash": "aac2144dd6751aab",
        "n": 1,
        "n_real": 1,
        "n_fake": 0,
    },
    "architecture": {
        "type": "decoder-only transformer, pre-LayerNorm, causal",
        "input_dim": 8,
        "d_model": 8,
        "n_layers": 1,
        "n_heads": 2,
        "d_ff": 16,
        "positions": "learned",
        "max_context": 16,
    },
    "hyperparameters": {
        "d_model": 8,
        "n_layers": 1,
        "n_heads": 2,
        "d_ff": 16,
        "dropout": 0.1,
        "positions": "learned",
        "max_context": 16,
        "l2_normalize": True,
        "lr": 0.001,
        "max_epochs": 2,
        "patience": 10,
        "batch_videos": 16,
        "seed": 43,
        "threshold_quantile": 0.99,
        "cache_bytes": 8589934592,
        "device": "cpu",
    },
    "thresholds": {
        "frame": 0.8830579805374145,
        "video": 0.8894551992416382,
        "quantile": 0.99,
        "n_videos": 1,
        "n_frames": 49,
        "learnt_on": "val",
    },
    "score": {
        "video": "0.5 * log(max_t e_t / thresholds.video)",
        "frame": "0.5 * log(e_t / thresholds.frame); e_0 = e_1",
        "probability": "sigmoid(2 s) = m / (m + thresholds.video); not calibrated",
    },
    "best_epoch": 2,
    "epochs": 2,
    "planned_steps": 2,
    "stopped_early": False,
    "package_version": "0.1.0",
    "created": "2026-12-06T18:02:11+00:00",
}

V1_SYNC: dict[str, Any] = {
    "kind": "sync",
    "audio": {
        "encoder": "aud",
        "layer": "last",
        "frame_hz": 25.0,
        "checkpoint": None,
        "checkpoint_sha256": None,
        "random_init": False,
        "preprocessing_version": "1",
    },
    "visual": {
        "encoder": "vis",
        "layer": "last",
        "frame_hz": 25.0,
        "checkpoint": None,
        "checkpoint_sha256": None,
        "random_init": False,
        "preprocessing_version": "1",
    },
    "audio_dim": 8,
    "visual_dim": 8,
    "frame_hz": 25.0,
    "resample_hz": None,
    "trim_silence": False,
    "store": "STORE",
    "train": {
        "selection": "toy:train",
        "dataset": "toy",
        "split": "train",
        "split_hash": "5a89f2670024c01e",
        "n": 3,
        "n_real": 3,
        "n_fake": 0,
        "n_frames": 188,
    },
    "val": {
        "selection": "toy:val",
        "dataset": "toy",
        "split": "val",
        "split_hash": "aac2144dd6751aab",
        "n": 1,
        "n_real": 1,
        "n_fake": 0,
        "n_frames": 50,
    },
    "architecture": {
        "type": "AVH-Align: L2-normalised inputs, projections, MLP on [visual; audio]",
        "proj_dim": 4,
        "hidden": [4],
        "tau": 15,
    },
    "hyperparameters": {
        "lr": 1e-05,
        "max_epochs": 2,
        "patience": 10,
        "lr_patience": 5,
        "lr_factor": 0.1,
        "batch_frames": 1024,
        "tau": 15,
        "proj_dim": 4,
        "hidden": [4],
        "seed": 43,
        "device": "cpu",
    },
    "thresholds": {
        "frame": 0.3350837528705597,
        "video": 3.5950808793086133,
        "frame_quantile": 0.99,
        "video_quantile": 0.95,
        "n_videos": 1,
        "n_frames": 50,
        "learnt_on": "val",
    },
    "score": {
        "frame": "-Phi(a_t, v_t) - thresholds.frame",
        "video": "logsumexp_t(-Phi(a_t, v_t)) - thresholds.video",
        "probability": "sigmoid(2 s); monotone, not calibrated",
    },
    "best_epoch": 2,
    "epochs": 2,
    "stopped_early": False,
    "package_version": "0.1.0",
    "created": "2026-12-06T18:02:11+00:00",
}

V1_SYNCFREE: dict[str, Any] = {
    "kind": "syncfree",
    "store": "STORE",
    "audio": "aud:last",
    "visual": "vis:last",
    "shift": 15,
    "pool": "mean",
    "trim_silence": False,
    "frame_hz": None,
    "package_version": "0.1.0",
    "created": "2026-12-06T18:02:11+00:00",
}

V1_FUSION: dict[str, Any] = {
    "kind": "fusion",
    "members": [
        {"name": "probe", "path": "members/00-probe", "kind": "probe", "source": "/runs/probe"},
        {"name": "probe2", "path": "members/01-probe2", "kind": "probe", "source": "/runs/probe2"},
    ],
    "how": "intersect",
    "weights": None,
    "fused_on": "toy:test",
    "store": "STORE",
    "package_version": "0.1.0",
    "created": "2026-12-06T18:02:11+00:00",
}
VIDEOS = 6
ENCODERS = ("aud", "vis", "logfbank", "mouth-pixels")  # the last two are registered names


@pytest.fixture
def toy(store: FeatureStore) -> FeatureStore:
    """``toy:test``: six videos of four 8-wide 25 Hz encoders (independent noise each)."""
    rows = [
        {"video_id": f"v{i}", "label": i % 2, "split": "test", "modify_type": "both_modified"}
        for i in range(VIDEOS)
    ]
    store.write_manifest("toy", pd.DataFrame(rows))
    rng = np.random.default_rng(7)
    lengths = rng.integers(30, 50, size=VIDEOS)
    for name in ENCODERS:
        info = EncoderInfo(name=name, frame_hz=25.0, layer_dims={"last": 8})
        with store.writer("toy", info) as writer:
            for row, n in zip(rows, lengths, strict=True):
                x = rng.standard_normal((int(n) + len(name) % 3, 8)).astype(np.float16)
                writer.add(row["video_id"], {"last": x})
    return store


def _write(path: Path, config: dict[str, Any], store: FeatureStore, tensors: Any = None) -> Path:
    """A run directory as featstore 0.1 left it (config.json written verbatim)."""
    from safetensors.numpy import save_file

    path.mkdir(parents=True, exist_ok=True)
    if tensors is not None:
        save_file(
            {k: np.ascontiguousarray(v) for k, v in tensors.items()},
            str(path / "model.safetensors"),
        )
    doc = {**config, **({"store": store.url} if "store" in config else {})}
    (path / "config.json").write_text(json.dumps(doc, indent=2))
    return path


def _ids() -> list[str]:
    return [f"v{i}" for i in range(VIDEOS)]


def _probe_params(seed: int) -> Any:
    from featstore.trainers.probe import ProbeParams

    rng = np.random.default_rng(seed)
    return ProbeParams(w=rng.standard_normal(8), b=float(rng.normal()), l2_normalize=True)


def test_probe(toy: FeatureStore, tmp_path: Path) -> None:
    from featstore.trainers.probe import video_logit

    params = _probe_params(1)
    path = _write(tmp_path / "probe", V1_PROBE, toy, params.to_state())
    detector = kinds.load(path)
    (feature,) = detector.features
    assert (feature.encoder, feature.dim, feature.frame_hz, feature.dtype) == ("aud", 8, 25.0, None)
    hyper = detector.config.hyperparameters  # what the run was trained with, not today's defaults
    assert (hyper.batch_videos, hyper.center_bias, hyper.scale_lr) == (None, True, True)
    assert hyper.rng == "numpy"
    scored = detector.score_selection(toy, "toy:test")
    expected = [video_logit(params, toy.video("toy", "aud", v, "last")) for v in _ids()]
    np.testing.assert_allclose(scored.scores, expected, atol=1e-5)
    evaluate(path, toy, "toy:test")  # writes metrics and predictions, leaves the config alone
    assert json.loads((path / "config.json").read_text())["hyperparameters"]["max_epochs"] == 2
    assert "format" not in json.loads((path / "config.json").read_text())
    np.testing.assert_allclose(read_predictions(path, "toy_test")["score"], expected, atol=1e-5)


def test_ntp(toy: FeatureStore, tmp_path: Path) -> None:
    from featstore.trainers.ntp import NextFrameTransformer, NTPConfig, frame_errors
    from featstore.trainers.sources import ArraySource

    torch.manual_seed(3)
    model = NextFrameTransformer(8, NTPConfig.from_dict(V1_NTP["hyperparameters"])).eval()
    path = _write(tmp_path / "ntp", V1_NTP, toy, model.to_state())
    scored = kinds.load(path).score_selection(toy, "toy:test")
    rows = [toy.video("toy", "aud", v, "last") for v in _ids()]
    errors = frame_errors(model, ArraySource(rows, [0] * VIDEOS))
    video = V1_NTP["thresholds"]["video"]
    np.testing.assert_allclose(
        scored.scores, [0.5 * np.log(e.max() / video) for e in errors], atol=1e-5
    )


def test_sync(toy: FeatureStore, tmp_path: Path) -> None:
    from featstore.trainers.pairs import load_pairs
    from featstore.trainers.sync import SyncNet, net_to_state, score_pairs

    torch.manual_seed(4)
    net = SyncNet(8, 8, proj_dim=4, hidden=(4,)).eval()
    path = _write(tmp_path / "sync", V1_SYNC, toy, net_to_state(net))
    detector = kinds.load(path)
    assert [i.role for i in detector.required_features] == ["audio", "visual"]
    scored = detector.score_selection(toy, "toy:test")
    raw, frames = score_pairs(net, load_pairs(toy, "toy:test", "aud", "vis"))
    thresholds = V1_SYNC["thresholds"]
    np.testing.assert_allclose(scored.scores, raw - thresholds["video"], atol=1e-5)
    np.testing.assert_allclose(scored.frame_scores[2], frames[2] - thresholds["frame"], atol=1e-5)


@pytest.mark.parametrize("resample", [None, 25.0])
def test_syncfree(toy: FeatureStore, tmp_path: Path, resample: float | None) -> None:
    """0.1 recorded no rates (``"frame_hz": null`` unless resampling): registered encoders
    declare theirs; other names cannot be upgraded, and the error says what to re-run."""
    from featstore.trainers.pairs import load_pairs
    from featstore.trainers.syncfree import PRESETS, syncscore

    with pytest.raises(kinds.RunFormatError, match="re-run `featstore syncscore"):
        kinds.load(_write(tmp_path / "unregistered", V1_SYNCFREE, toy))
    config = {
        **V1_SYNCFREE,
        "audio": "logfbank:last",
        "visual": "mouth-pixels",
        "frame_hz": resample,
    }
    detector = kinds.load(_write(tmp_path / "registered", config, toy))
    assert detector.frame_hz == 25.0 and detector.config.sync == PRESETS["speechforensics"]
    scored = detector.score_selection(toy, "toy:test")
    direct = syncscore(
        load_pairs(toy, "toy:test", "logfbank", "mouth-pixels"), shift=15, pool="mean"
    )
    np.testing.assert_allclose(scored.scores, direct.scores, atol=1e-6)
    assert scored.frame_hz == 25.0


def test_fusion_of_old_probes(toy: FeatureStore, tmp_path: Path) -> None:
    from featstore.trainers.fusion import fused_score
    from featstore.trainers.probe import video_logit

    params = [_probe_params(1), _probe_params(2)]
    path = tmp_path / "fusion"
    for member, p in zip(V1_FUSION["members"], params, strict=True):
        _write(path / member["path"], V1_PROBE, toy, p.to_state())
    _write(path, V1_FUSION, toy, {"weights": np.full(2, 0.5)})
    scored = kinds.load(path).score_selection(toy, "toy:test")
    probs = [
        [1 / (1 + np.exp(-2 * video_logit(p, toy.video("toy", "aud", v, "last")))) for v in _ids()]
        for p in params
    ]
    np.testing.assert_allclose(scored.scores, fused_score(np.mean(probs, axis=0)), atol=1e-5)


@pytest.mark.parametrize(
    ("config", "needle"),
    [
        ({k: v for k, v in V1_PROBE.items() if k != "dim"}, "re-run `featstore train probe"),
        ({**V1_NTP, "thresholds": {}}, "re-run `featstore train ntp"),
        ({k: v for k, v in V1_SYNC.items() if k != "audio_dim"}, "re-run `featstore train sync"),
        ({**V1_FUSION, "members": []}, "at least two runs"),
    ],
)
def test_unreadable_old_runs_name_what_to_rerun(
    toy: FeatureStore, tmp_path: Path, config: dict[str, Any], needle: str
) -> None:
    with pytest.raises(kinds.RunError, match=needle):
        kinds.load(_write(tmp_path / "run", config, toy))
