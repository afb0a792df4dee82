"""The AVH-Align sync network: loss against a per-frame loop, learning, runs and the CLI.

Synthetic pairs: audio rows are i.i.d. Gaussian, the visual stream is a fixed
random linear map of the same time step plus noise (``v_t = A a_t + e_t``).
A fake video has one segment whose visual rows are desynchronised: taken
from 20 frames later in the same video, or made from unrelated audio.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from featstore.cli.main import app
from featstore.store import EncoderInfo, open_store
from featstore.trainers.kinds import RunFormatError, load, score
from featstore.trainers.kinds.sync import train as train_sync
from featstore.trainers.metrics import auc, temporal_auc
from featstore.trainers.runs import load_run
from featstore.trainers.sync import (
    SyncConfig,
    SyncError,
    SyncNet,
    candidates,
    fit_sync,
    frame_scores,
    net_from_state,
    net_to_state,
    pairs_loss,
    score_pairs,
    video_loss,
)

FRAME_HZ = 25.0
DA, DV = 8, 6
# Narrow network and a large lr: the paper's 512-wide net at lr 1e-5 needs far more steps.
SMALL = SyncConfig(
    lr=1e-3, max_epochs=30, patience=5, batch_frames=256, proj_dim=32, hidden=(32, 16, 8)
)


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@dataclass(frozen=True)
class Pair:
    audio: np.ndarray  # [T, Da]
    visual: np.ndarray  # [T, Dv]
    label: int = 0
    fake_segments: tuple[tuple[float, float], ...] = ()


def make_pairs(n: int, seed: int, *, fakes: bool = False, lengths=(40, 80)) -> list[Pair]:
    """``n`` videos; with ``fakes`` every other one has a desynchronised segment."""
    rng = np.random.default_rng(seed)
    mix = np.random.default_rng(1234).standard_normal((DV, DA))  # the same A for every set
    out = []
    for i in range(n):
        t = int(rng.integers(*lengths))
        a = rng.standard_normal((t, DA)).astype(np.float32)
        v = (a @ mix.T + 0.5 * rng.standard_normal((t, DV))).astype(np.float32)
        label, segments = 0, ()
        if fakes and i % 2:
            label, length = 1, int(rng.integers(10, 20))
            start = int(rng.integers(0, t - length - 20))
            if i % 4 == 1:  # shifted: the visual of 20 frames later
                v[start : start + length] = v[start + 20 : start + 20 + length]
            else:  # replaced: lips of some other speech
                other = rng.standard_normal((length, DA))
                v[start : start + length] = other @ mix.T + 0.5 * rng.standard_normal((length, DV))
            segments = ((start / FRAME_HZ, (start + length) / FRAME_HZ),)
        out.append(Pair(a, v, label, segments))
    return out


def loop_loss(net: SyncNet, a: np.ndarray, v: np.ndarray, tau: int = 15) -> float:
    """The loss written the obvious way: one frame, one candidate at a time."""
    at, vt = torch.from_numpy(a).double(), torch.from_numpy(v).double()
    total = 0.0
    with torch.no_grad():
        for i in range(at.shape[0]):
            logits = []
            for k in range(-tau, tau + 1):
                j = i + k
                aj = at[j] if 0 <= j < at.shape[0] else torch.zeros(at.shape[1], dtype=at.dtype)
                logits.append(net(aj[None], vt[i][None])[0])
            total -= float(F.log_softmax(torch.stack(logits), dim=0)[tau])
    return total


def tiny_net(seed: int = 0) -> SyncNet:
    torch.manual_seed(seed)
    return SyncNet(DA, DV, proj_dim=8, hidden=(8, 4, 3)).double().eval()


# ----------------------------------------------------------------------------- network and loss


def test_default_network_is_avh_align():
    net = SyncNet(1024, 768)
    assert (net.visual_proj.in_features, net.visual_proj.out_features) == (768, 512)
    assert (net.audio_proj.in_features, net.audio_proj.out_features) == (1024, 512)
    kinds = [type(m).__name__ for m in net.head]
    assert kinds == ["Linear", "LayerNorm", "ReLU"] * 3 + ["Linear"]
    widths = [(m.in_features, m.out_features) for m in net.head if isinstance(m, torch.nn.Linear)]
    assert widths == [(1024, 512), (512, 256), (256, 128), (128, 1)]


def test_candidates_pad_with_zeros():
    a = torch.arange(1, 4, dtype=torch.float64)[:, None].expand(-1, 2)  # [3, 2], rows 1, 2, 3
    c = candidates(a, tau=2)  # [3, 5, 2]
    assert c.shape == (3, 5, 2)
    assert c[:, :, 0].tolist() == [[0, 0, 1, 2, 3], [0, 1, 2, 3, 0], [1, 2, 3, 0, 0]]


@pytest.mark.parametrize("length", [1, 5, 40])  # a single frame, shorter than 31, longer
def test_video_loss_matches_the_loop(length):
    rng = np.random.default_rng(length)
    a, v = rng.standard_normal((length, DA)), rng.standard_normal((length, DV))
    net = tiny_net()
    got = float(video_loss(net, torch.from_numpy(a), torch.from_numpy(v)).detach())
    assert got == pytest.approx(loop_loss(net, a, v), rel=1e-10)


def test_training_loss_matches_the_loop_across_videos():
    """The packed, projected-once path: videos end to end, candidates never cross a video."""
    pairs = [Pair(p.audio, p.visual) for p in make_pairs(3, 0, lengths=(3, 45))]
    pairs.append(Pair(np.ones((1, DA), np.float32), np.ones((1, DV), np.float32)))
    net = tiny_net()
    ref = sum(loop_loss(net, p.audio, p.visual) for p in pairs)
    n = sum(p.audio.shape[0] for p in pairs)
    # float32 storage of the packed rows bounds the agreement
    assert pairs_loss(net, pairs, batch_frames=7) == pytest.approx(ref / n, rel=1e-5)


def test_single_frame_loss_is_the_closed_form():
    """One frame: its own audio against 30 zero vectors, which all score alike."""
    net = tiny_net()
    a, v = torch.randn(1, DA, dtype=torch.float64), torch.randn(1, DV, dtype=torch.float64)
    with torch.no_grad():
        true = float(net(a, v)[0])
        zero = float(net(torch.zeros(1, DA, dtype=torch.float64), v)[0])
    expected = -true + math.log(math.exp(true) + 30 * math.exp(zero))
    assert float(video_loss(net, a, v).detach()) == pytest.approx(expected, rel=1e-10)


def test_state_round_trip():
    net = SyncNet(DA, DV, proj_dim=16, hidden=(8, 4))
    back = net_from_state(net_to_state(net))
    assert back.hidden == (8, 4) and back.proj_dim == 16
    a, v = torch.randn(5, DA), torch.randn(5, DV)
    with torch.no_grad():
        torch.testing.assert_close(back(a, v), net.eval()(a, v))
    state = net_to_state(net)
    del state["audio_proj.bias"]
    with pytest.raises(SyncError, match="does not fit"):
        net_from_state(state)


# ----------------------------------------------------------------------------- fitting and scoring


@pytest.fixture(scope="module")
def fitted():
    torch.set_num_threads(1)
    epochs = []
    result = fit_sync(make_pairs(40, 1), make_pairs(10, 2), SMALL, on_epoch=epochs.append)
    return result, epochs


def test_detects_and_localizes_desynchronised_segments(fitted):
    result, epochs = fitted
    assert epochs[0].train_loss == pytest.approx(math.log(31), abs=0.3)  # chance at the start
    assert epochs[-1].val_loss < 0.5 * epochs[0].val_loss
    test = make_pairs(40, 3, fakes=True)
    scores, frames = score_pairs(result.net, test)
    labels = np.array([p.label for p in test])
    assert auc(labels, scores) > 0.9
    videos = [
        (str(i), f, p.fake_segments) for i, (f, p) in enumerate(zip(frames, test, strict=True))
    ]
    assert temporal_auc(videos, FRAME_HZ).mean > 0.8


def test_best_weights_are_restored(fitted):
    result, epochs = fitted
    best = min(epochs, key=lambda e: e.val_loss)
    assert result.best_epoch == best.epoch
    val_loss = pairs_loss(result.net, make_pairs(10, 2), batch_frames=256)
    assert val_loss == pytest.approx(best.val_loss, rel=1e-5)


def test_plateau_schedule_and_early_stopping(monkeypatch):
    """A validation loss that never improves: lr / 10 after 1 + 6 epochs, stop after 1 + 10."""
    monkeypatch.setattr("featstore.trainers.sync._mean_loss", lambda *args: 1.0)
    train, config = (
        make_pairs(2, 6, lengths=(20, 30)),
        dataclasses.replace(SMALL, max_epochs=50, patience=10),
    )
    result = fit_sync(train, train, config)
    assert len(result.history) == 11 and result.stopped_early and result.best_epoch == 1
    assert [h.lr for h in result.history] == pytest.approx([1e-3] * 7 + [1e-4] * 4)
    first = fit_sync(train, train, dataclasses.replace(config, max_epochs=1))
    for key, value in net_to_state(first.net).items():  # the best (first) epoch's weights
        np.testing.assert_array_equal(value, net_to_state(result.net)[key])


def test_fit_is_seed_deterministic():
    train, config = make_pairs(6, 5), dataclasses.replace(SMALL, max_epochs=2)
    first, again = fit_sync(train, None, config), fit_sync(train, None, config)
    other = fit_sync(train, None, dataclasses.replace(config, seed=7))
    for key, value in net_to_state(first.net).items():
        np.testing.assert_array_equal(value, net_to_state(again.net)[key])
    assert not np.array_equal(
        net_to_state(first.net)["audio_proj.weight"], net_to_state(other.net)["audio_proj.weight"]
    )
    assert [h.train_loss for h in first.history] == [h.train_loss for h in again.history]


def test_short_single_and_unequal_videos():
    rng = np.random.default_rng(0)
    videos = [
        Pair(rng.standard_normal((1, DA)), rng.standard_normal((1, DV))),  # a single frame
        Pair(rng.standard_normal((12, DA)), rng.standard_normal((9, DV))),  # audio longer
        Pair(rng.standard_normal((7, DA)), rng.standard_normal((10, DV))),  # visual longer
    ]
    config = dataclasses.replace(SMALL, max_epochs=2)
    result = fit_sync(videos, videos, config)
    assert all(math.isfinite(h.train_loss) and math.isfinite(h.val_loss) for h in result.history)
    scores, frames = score_pairs(result.net, videos)
    assert [f.shape[0] for f in frames] == [1, 9, 7]
    assert scores[0] == pytest.approx(float(frames[0][0]))  # logsumexp of one frame
    net = tiny_net().float()
    assert frame_scores(net, videos[1].audio, videos[1].visual).shape == (9,)


def test_bad_inputs_raise():
    good = make_pairs(2, 0)
    with pytest.raises(SyncError, match="no videos"):
        fit_sync([], None, SMALL)
    with pytest.raises(SyncError, match="no frames"):
        fit_sync([Pair(np.zeros((0, DA)), np.zeros((3, DV)))], None, SMALL)
    with pytest.raises(SyncError, match="mix feature widths"):
        fit_sync([*good, Pair(np.zeros((3, DA + 1)), np.zeros((3, DV)))], None, SMALL)
    with pytest.raises(SyncError, match="validation features"):
        fit_sync(good, [Pair(np.zeros((3, DA)), np.zeros((3, DV + 2)))], SMALL)
    with pytest.raises(SyncError, match="network expects"):
        frame_scores(tiny_net().float(), np.zeros((3, DA + 1)), np.zeros((3, DV)))
    with pytest.raises(SyncError, match="lr"):
        SyncConfig(lr=0)
    with pytest.raises(SyncError, match="hidden"):
        SyncConfig(hidden=())


# ----------------------------------------------------------------------------- runs and the CLI


def write_store(root, *, silence: bool = False) -> str:
    """Dataset ``avs`` (train/val reals; test half fakes with segments), encoders ``aud``/``vis``."""
    url = str(root / "features.zarr")
    store = open_store(url, mode="a", durable=False)
    rows, audio, visual = [], {}, {}
    for split, n, seed, fakes in (
        ("train", 24, 11, False),
        ("val", 8, 12, False),
        ("test", 24, 13, True),
    ):
        for i, p in enumerate(make_pairs(n, seed, fakes=fakes)):
            vid = f"{split}/v{i:03d}"
            a, v = p.audio, p.visual
            if split == "train":
                a = a[
                    : a.shape[0] - 2
                ]  # stored lengths differ: reconciled by featstore.trainers.pairs
            rows.append(
                {
                    "video_id": vid,
                    "path": f"/data/{vid}.mp4",
                    "label": p.label,
                    "split": split,
                    "modify_type": "both_modified" if p.label else "real",
                    "fake_segments": [list(s) for s in p.fake_segments],
                    "leading_silence_s": 0.05,  # skips int(0.05 * 25) + 1 = 2 rows
                }
            )
            audio[vid], visual[vid] = a, v
    manifest = pd.DataFrame(rows)
    if not silence:
        manifest = manifest.drop(columns="leading_silence_s")
    store.write_manifest("avs", manifest, attrs={"format": "synthetic", "protocol": None})
    for name, dim, feats in (("aud", DA, audio), ("vis", DV, visual)):
        info = EncoderInfo(name=name, frame_hz=FRAME_HZ, layer_dims={"last": dim})
        with store.writer("avs", info) as writer:
            for vid, x in feats.items():
                writer.add(vid, {"last": x.astype(np.float16)})
    return url


@pytest.fixture(scope="module")
def run_env(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("sync")
    url = write_store(root)
    store = open_store(url)
    run = train_sync(store, audio="aud", visual="vis", train="avs", out=root / "run", config=SMALL)
    return root, url, run


def test_run_round_trip(run_env):
    _, url, run = run_env
    loaded = load_run(run.path)
    cfg = loaded.config
    audio, visual = cfg["config"]["audio"], cfg["config"]["visual"]
    assert cfg["kind"] == "sync" and audio["frame_hz"] == visual["frame_hz"] == FRAME_HZ
    (a,), (v,) = audio["features"], visual["features"]
    assert (a["encoder"], a["layer"], a["dim"]) == ("aud", "last", DA)
    assert (v["encoder"], v["layer"], v["dim"]) == ("vis", "last", DV)
    assert cfg["train"]["selection"] == "avs:train" and cfg["train"]["n_real"] == 24
    assert cfg["val"]["selection"] == "avs:val" and len(cfg["train"]["split_hash"]) == 16
    thresholds = cfg["learnt"]["thresholds"]
    assert cfg["config"]["hyperparameters"]["lr"] == SMALL.lr and thresholds["learnt_on"] == "val"
    assert len(loaded.history()) == cfg["fit"]["epochs"]
    detector = load(loaded)
    assert detector.kind == "sync" and not detector.calibrated
    scored = score(detector, open_store(url), "avs:test")
    assert auc(scored.labels, scored.scores) > 0.9
    assert np.all((scored.probabilities > 0) & (scored.probabilities < 1))
    assert np.all(np.diff(scored.probabilities[np.argsort(scored.scores)]) >= 0)  # monotone
    # the run's logits are the paper's scores shifted by the recorded thresholds
    net = net_from_state(loaded.tensors())
    pairs = make_pairs(24, 13, fakes=True)
    raw, frames = score_pairs(
        net, [Pair(p.audio.astype(np.float16), p.visual.astype(np.float16)) for p in pairs]
    )
    np.testing.assert_allclose(scored.scores, raw - thresholds["video"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(scored.frame_scores[3], frames[3] - thresholds["frame"], atol=1e-5)


def test_val_thresholds_flag_few_real_frames(run_env):
    _, url, run = run_env
    scored = score(run, open_store(url), "avs:val")
    flat = np.concatenate(scored.frame_scores)
    assert (flat > 0).mean() == pytest.approx(0.01, abs=0.005)  # the 99 % quantile


def test_cli_train_and_eval(run_env):
    root, url, _ = run_env
    runner = CliRunner()
    out = root / "cli-run"
    args = ["train", "sync", "--store", url, "--audio", "aud:last", "--visual", "vis", "--train", "avs:train",
            "--val", "avs:val", "--out", str(out), "--epochs", "2", "--lr", "1e-3", "--batch-frames", "512"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert result.output.startswith("epoch   1  loss ") and "lr 1.0e-03" in result.output
    assert (
        "thresholds (-Phi, on val reals)" in result.output
        and f"run written to {out}" in result.output
    )
    assert load_run(out).config["config"]["hyperparameters"]["hidden"] == [512, 256, 128]
    again = runner.invoke(app, args)
    assert again.exit_code == 1 and "complete run" in again.output
    result = runner.invoke(app, ["eval", str(root / "run"), "--on", "avs:test", "--json"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((root / "run" / "metrics.json").read_text())["avs:test"]
    assert metrics["kind"] == "sync" and metrics["binary"]["auc"] > 0.9
    assert metrics["temporal"]["mean"] > 0.8
    segments = json.loads((root / "run" / "predictions" / "avs_test.segments.json").read_text())
    assert len(segments) == 24


def test_trim_silence(tmp_path):
    url = write_store(tmp_path, silence=True)
    config = dataclasses.replace(SMALL, max_epochs=2)
    run = train_sync(open_store(url), audio="aud", visual="vis", train="avs", out=tmp_path / "r",
                     config=config, trim_silence=True)  # fmt: skip
    assert run.config["config"]["trim_silence"] is True
    assert run.config["train"]["n_frames"] == sum(p.audio.shape[0] - 4 for p in make_pairs(24, 11))
    scored = score(run, open_store(url), "avs:test")
    lengths = [p.audio.shape[0] for p in make_pairs(24, 13, fakes=True)]
    assert [f.shape[0] for f in scored.frame_scores] == lengths  # back on the stored timeline
    assert all(f[0] == f[1] == f.min() for f in scored.frame_scores)  # the 2 trimmed rows
    plain = write_store(tmp_path / "plain")
    with pytest.raises(Exception, match="leading_silence_s"):
        train_sync(open_store(plain), audio="aud", visual="vis", train="avs", out=tmp_path / "p",
                   config=config, trim_silence=True)  # fmt: skip


def test_unreadable_run_and_reals_only(run_env, tmp_path):
    from featstore.trainers.runs import save_run

    _, url, _ = run_env
    store = open_store(url)
    other = save_run(tmp_path / "other", config={"kind": "sync", "format": 1})
    with pytest.raises(RunFormatError, match="re-run `featstore train sync"):
        score(other, store, "avs:test")
    config = dataclasses.replace(SMALL, max_epochs=1)
    run = train_sync(store, audio="aud", visual="vis", train="avs:test", val=None,
                     out=tmp_path / "reals", config=config)  # fmt: skip
    assert (run.config["train"]["n_real"], run.config["train"]["n_fake"]) == (12, 0)
    assert run.config["val"] is None and run.config["learnt"]["thresholds"]["learnt_on"] == "train"
