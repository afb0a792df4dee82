"""Next-token prediction anomaly detector: core maths, windows, run directories and CLI."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from featstore.cli.main import app
from featstore.store import EncoderInfo, open_store
from featstore.trainers.data import SelectionError
from featstore.trainers.kinds import load, score
from featstore.trainers.kinds.ntp import train as train_ntp
from featstore.trainers.metrics import temporal_auc
from featstore.trainers.ntp import (
    NextFrameTransformer,
    NTPConfig,
    NTPError,
    fit_ntp,
    fit_thresholds,
    frame_errors,
    frame_logits,
    probability,
    scoring_windows,
    training_windows,
    video_logits,
    video_scores,
)
from featstore.trainers.runs import RunExistsError, load_run
from featstore.trainers.sources import ArraySource

DIM = 16
HZ = 25.0
TINY = NTPConfig(
    d_model=32,
    n_layers=2,
    n_heads=2,
    d_ff=64,
    dropout=0.0,
    max_context=32,
    lr=3e-3,
    max_epochs=40,
    patience=5,
    batch_videos=8,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- synthetic data


def smooth_video(rng: np.random.Generator, n_frames: int, dim: int = DIM) -> np.ndarray:
    """A real video: every dimension a slow sinusoid of its own frequency and phase, plus noise."""
    t = np.arange(n_frames)[:, None]
    freq = rng.uniform(0.05, 0.3, size=(1, dim))
    phase = rng.uniform(0.0, 2 * np.pi, size=(1, dim))
    x = np.sin(freq * t + phase) + 0.05 * rng.standard_normal((n_frames, dim))
    return x.astype(np.float32)  # [T, D]


def noisy_video(rng: np.random.Generator, n_frames: int) -> tuple[np.ndarray, tuple[int, int]]:
    """A fake: a real video with one segment of 8-15 frames replaced by white noise."""
    x = smooth_video(rng, n_frames)
    length = int(rng.integers(8, 16))
    start = int(rng.integers(2, n_frames - length))
    x[start : start + length] = rng.standard_normal((length, DIM)).astype(np.float32)
    return x, (start, start + length)


def real_source(seed: int, n: int, lengths: tuple[int, int] = (40, 80)) -> ArraySource:
    rng = np.random.default_rng(seed)
    return ArraySource([smooth_video(rng, int(rng.integers(*lengths))) for _ in range(n)], [0] * n)


@pytest.fixture(scope="module")
def fitted():
    """The tiny model trained on 48 real videos, validated on 12 more."""
    train, val = real_source(0, 48), real_source(1, 12)
    return fit_ntp(train, val, TINY), train, val


@pytest.fixture(scope="module")
def heldout():
    """20 held-out reals and 20 fakes with an inserted noise segment (frames)."""
    rng = np.random.default_rng(2)
    reals = [smooth_video(rng, 60) for _ in range(20)]
    fakes = [noisy_video(rng, 60) for _ in range(20)]
    source = ArraySource(reals + [x for x, _ in fakes], [0] * 20 + [1] * 20)
    return source, [seg for _, seg in fakes]


# ----------------------------------------------------------------------------- detection


def test_detects_and_localizes_inserted_noise(fitted, heldout):
    result, _, _ = fitted
    source, segments = heldout
    errors = frame_errors(result.model, source)
    auc = roc_auc_score(source.labels, video_scores(errors))
    assert auc > 0.9
    videos = [
        (str(i), e, [[a / HZ, b / HZ]])
        for i, (e, (a, b)) in enumerate(zip(errors[20:], segments, strict=True))
    ]
    assert temporal_auc(videos, HZ).mean > 0.8
    # Training is what makes it work: the same architecture untrained is near chance.
    untrained = NextFrameTransformer(DIM, TINY).eval()
    assert roc_auc_score(source.labels, video_scores(frame_errors(untrained, source))) < 0.8


def test_training_lowers_the_validation_loss_and_follows_the_cosine(fitted):
    result, _, _ = fitted
    losses = [h.val_loss for h in result.history]
    assert min(losses) < 0.5 * losses[0]
    assert result.best_epoch == int(np.argmin(losses)) + 1
    lrs = [h.lr for h in result.history]
    assert all(a >= b for a, b in itertools.pairwise(lrs))
    assert result.planned_steps == 40 * 6  # 48 videos / 8 per step x 40 epochs
    if not result.stopped_early:
        assert lrs[-1] == pytest.approx(0.0, abs=1e-12)


def test_early_stopping_restores_the_best_weights():
    train, val = real_source(3, 16), real_source(4, 4, lengths=(10, 33))  # one window each
    cfg = NTPConfig(**{**TINY.to_dict(), "lr": 0.05, "max_epochs": 30, "patience": 2})
    result = fit_ntp(train, val, cfg)
    best = min(h.val_loss for h in result.history)
    assert result.stopped_early and len(result.history) < 30
    # The returned model is the best epoch's: its validation loss is the best one.
    errors = frame_errors(result.model, val)
    again = np.concatenate([e[1:] for e in errors]).astype(np.float64).mean()
    assert again == pytest.approx(best, rel=1e-4)


# ----------------------------------------------------------------------------- invariances


def test_padding_safe_errors_do_not_depend_on_the_batch(fitted):
    result, _, _ = fitted
    source = real_source(5, 9, lengths=(3, 90))  # lengths differ a lot, some exceed the context
    together = frame_errors(result.model, source, batch_videos=9)
    for i in range(len(source)):
        alone = frame_errors(result.model, ArraySource(source.read([i]), [0]))[0]
        np.testing.assert_allclose(together[i], alone, rtol=1e-5, atol=1e-6)


def test_causal_future_frames_do_not_change_earlier_predictions(fitted):
    result, _, _ = fitted
    x = torch.from_numpy(smooth_video(np.random.default_rng(6), 30))[None]  # [1, T, D]
    changed = x.clone()
    changed[:, 20:] = torch.randn(1, 10, DIM)
    with torch.no_grad():
        a, b = result.model(x), result.model(changed)
    torch.testing.assert_close(a[:, :20], b[:, :20], rtol=0, atol=1e-6)
    assert not torch.allclose(a[:, 20:], b[:, 20:])
    ea = frame_errors(result.model, ArraySource([x[0].numpy()], [0]))[0]
    eb = frame_errors(result.model, ArraySource([changed[0].numpy()], [0]))[0]
    np.testing.assert_allclose(ea[:20], eb[:20], atol=1e-6)


def test_seed_determinism():
    train, val = real_source(7, 8), real_source(8, 3)
    cfg = NTPConfig(**{**TINY.to_dict(), "max_epochs": 3, "dropout": 0.1})
    torch.manual_seed(0)
    a = fit_ntp(train, val, cfg)
    after_fit = torch.rand(3)
    torch.manual_seed(0)
    assert torch.equal(torch.rand(3), after_fit)  # the global RNG is forked, not consumed
    b = fit_ntp(train, val, cfg)
    other = fit_ntp(train, val, NTPConfig(**{**cfg.to_dict(), "seed": 44}))
    sa, sb = a.model.to_state(), b.model.to_state()
    assert all(np.array_equal(sa[k], sb[k]) for k in sa)
    assert [h.train_loss for h in a.history] == [h.train_loss for h in b.history]
    assert not np.array_equal(sa["input_proj.weight"], other.model.to_state()["input_proj.weight"])


# ----------------------------------------------------------------------------- windows, edges


@pytest.mark.parametrize("n_frames", [1, 2, 5, 31, 32, 33, 64, 100, 257])
@pytest.mark.parametrize("context", [2, 3, 8, 32])
def test_windows_cover_every_target_once(n_frames, context):
    transitions = [t for a, b in training_windows(n_frames, context) for t in range(a + 1, b)]
    assert sorted(transitions) == list(range(1, n_frames))
    assert all(b - a <= context for a, b in training_windows(n_frames, context))
    scored = []
    for a, b, keep in scoring_windows(n_frames, context):
        assert b - a <= context and a < keep <= b
        if a > 0:
            assert keep - a >= context // 2  # enough history
        scored.extend(range(keep, b))
    assert sorted(scored) == list(range(1, n_frames))


def test_long_videos_are_windowed_short_ones_scored_whole(fitted):
    result, _, _ = fitted
    long = smooth_video(np.random.default_rng(9), 100)  # context 32
    errors = frame_errors(result.model, ArraySource([long], [0]))[0]
    prefix = frame_errors(result.model, ArraySource([long[:32]], [0]))[0]
    np.testing.assert_allclose(errors[:32], prefix, atol=1e-6)  # window 0 = the prefix
    assert errors.shape == (100,) and np.isfinite(errors).all()


def test_single_frame_and_short_videos():
    model = NextFrameTransformer(DIM, TINY).eval()
    rng = np.random.default_rng(10)
    source = ArraySource(
        [smooth_video(rng, 1), smooth_video(rng, 2), smooth_video(rng, 5)], [0] * 3
    )
    one, two, five = frame_errors(model, source)
    assert one.tolist() == [0.0]  # nothing to predict
    assert two[0] == two[1] > 0 and five[0] == five[1]
    # Single-frame videos add no targets; a set of only those cannot train.
    with pytest.raises(NTPError, match="single frame"):
        fit_ntp(ArraySource([smooth_video(rng, 1)] * 3, [0] * 3, ["a", "b", "c"]), None, TINY)
    mixed = ArraySource([smooth_video(rng, 1), smooth_video(rng, 20)], [0, 0])
    fit_ntp(mixed, None, NTPConfig(**{**TINY.to_dict(), "max_epochs": 1}))


def test_thresholds_and_logit_mapping():
    errors = [np.array([5.0, 1.0, 2.0, 3.0]), np.array([9.0]), np.array([0.5, 0.5, 4.0])]
    th = fit_thresholds(errors, 0.5)
    # frame 0 copies frame 1 and is left out; the single-frame video too
    assert th.frame == pytest.approx(np.quantile([1.0, 2.0, 3.0, 0.5, 4.0], 0.5))
    assert th.video == pytest.approx(np.quantile([5.0, 4.0], 0.5))
    assert (th.n_videos, th.n_frames) == (2, 5)
    z = frame_logits(np.array([th.frame, 2 * th.frame, 0.0]), th)
    assert z[0] == pytest.approx(0.0) and z[1] > 0 and np.isfinite(z[2]) and z[2] < 0
    m = np.array([0.5, th.video, 10.0])
    p = probability(video_logits(m, th))
    np.testing.assert_allclose(p, m / (m + th.video))
    with pytest.raises(NTPError):
        fit_thresholds([np.array([1.0])])


@pytest.mark.parametrize(
    "bad",
    [
        {"d_model": 30, "n_heads": 4},
        {"positions": "rotary"},
        {"max_context": 1},
        {"threshold_quantile": 1.0},
        {"lr": 0.0},
        {"batch_videos": 0},
    ],
)
def test_config_validation(bad):
    with pytest.raises(NTPError):
        NTPConfig(**bad)


def test_sinusoidal_positions_train_and_round_trip():
    cfg = NTPConfig(**{**TINY.to_dict(), "positions": "sinusoidal", "max_epochs": 2, "d_model": 30})
    result = fit_ntp(real_source(11, 6), None, NTPConfig(**{**cfg.to_dict(), "n_heads": 3}))
    state = result.model.to_state()
    assert not any("positions" in k for k in state)  # fixed table, not a weight
    again = NextFrameTransformer.from_state(state, DIM, result.model.config)
    source = real_source(12, 2)
    np.testing.assert_array_equal(
        np.concatenate(frame_errors(again, source)),
        np.concatenate(frame_errors(result.model, source)),
    )


# ----------------------------------------------------------------------------- store, run, CLI


def write_smooth_dataset(store, name: str, *, seed: int, n_videos: int) -> pd.DataFrame:
    """Alternating real / fake videos over train/val/test; fakes carry a noise segment."""
    rng = np.random.default_rng(seed)
    rows, feats = [], {}
    bounds = (int(0.5 * n_videos), int(0.7 * n_videos))
    for i in range(n_videos):
        split = "train" if i < bounds[0] else "val" if i < bounds[1] else "test"
        label = i % 2
        n = int(rng.integers(40, 70))
        if label:
            x, (a, b) = noisy_video(rng, n)
            segments = [[a / HZ, b / HZ]]
        else:
            x, segments = smooth_video(rng, n), []
        vid = f"{split}/v{i:03d}"
        rows.append(
            {
                "video_id": vid,
                "path": f"/data/{vid}.mp4",
                "label": label,
                "split": split,
                "modify_type": "both_modified" if label else "real",
                "fake_segments": segments,
                "duration_s": n / HZ,
            }
        )
        feats[vid] = x
    manifest = pd.DataFrame(rows)
    store.write_manifest(name, manifest, attrs={"format": "synthetic", "protocol": None})
    info = EncoderInfo(name="enc", frame_hz=HZ, layer_dims={"last": DIM})
    with store.writer(name, info) as writer:
        for vid, x in feats.items():
            writer.add(vid, {"last": x.astype(np.float16)})
    return manifest


@pytest.fixture(scope="module")
def smooth_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("ntp")
    url = str(root / "features.zarr")
    store = open_store(url, mode="a", durable=False)
    write_smooth_dataset(store, "smooth", seed=20, n_videos=100)
    fakes = pd.DataFrame(
        [
            {"video_id": f"f{i}", "path": f"/d/f{i}.mp4", "label": 1, "split": "train"}
            for i in range(3)
        ]
    )
    store.write_manifest("allfake", fakes, attrs={"format": "synthetic"})
    info = EncoderInfo(name="enc", frame_hz=HZ, layer_dims={"last": DIM})
    with store.writer("allfake", info) as writer:
        for i in range(3):
            writer.add(f"f{i}", {"last": np.ones((10, DIM), np.float16)})
    return root, url, store


@pytest.fixture(scope="module")
def trained_run(smooth_store):
    root, _, store = smooth_store
    run = train_ntp(store, features="enc", train="smooth", out=root / "run", config=TINY)
    return run


def test_run_round_trip_and_evaluate(smooth_store, trained_run):
    from featstore.trainers.evaluate import evaluate

    _, _, store = smooth_store
    run = load_run(trained_run.path)
    cfg = run.config
    (feature,) = cfg["config"]["features"]["features"]
    assert cfg["kind"] == "ntp" and feature["frame_hz"] == HZ and feature["dim"] == DIM
    assert cfg["train"]["n"] == cfg["train"]["n_real"] == 25 and cfg["train"]["n_fake"] == 0
    assert cfg["val"]["selection"] == "smooth:val" and cfg["val"]["n_fake"] == 0
    thresholds = cfg["learnt"]["thresholds"]
    assert thresholds["learnt_on"] == "val" and thresholds["frame"] > 0
    hyper = cfg["config"]["hyperparameters"]
    assert hyper["d_model"] == 32 and hyper["max_context"] == 32
    assert len(run.history()) == cfg["fit"]["epochs"]
    detector = load(run)
    assert set(run.tensors()) == set(detector.model.state_dict())
    assert detector.kind == "ntp" and not detector.calibrated

    scored = score(run, store, "smooth:test")
    # the numeric core on the stored rows, mapped by the recorded thresholds
    rows = [store.video("smooth", "enc", v, "last") for v in scored.video_ids]
    errors = frame_errors(detector.model, ArraySource(rows, scored.labels))
    np.testing.assert_allclose(
        scored.scores,
        [0.5 * np.log(max(e.max(), 1e-12) / thresholds["video"]) for e in errors],
        rtol=1e-5, atol=1e-5,
    )  # fmt: skip
    assert ((scored.probabilities > 0) & (scored.probabilities < 1)).all()
    np.testing.assert_allclose(  # the video logit is the frame logits' max, shifted
        scored.scores,
        [f.max() + 0.5 * np.log(thresholds["frame"] / thresholds["video"])
         for f in scored.frame_scores],
        rtol=1e-5, atol=1e-5,
    )  # fmt: skip
    metrics = evaluate(run, store, "smooth:test")
    assert metrics["kind"] == "ntp" and metrics["binary"]["auc"] > 0.9
    assert metrics["temporal"]["mean"] > 0.8
    segments = json.loads((run.path / "predictions" / "smooth_test.segments.json").read_text())
    fakes = scored.manifest[scored.manifest["label"] == 1]["video_id"]
    assert sum(bool(segments[v]) for v in fakes) >= 0.8 * len(fakes)


def test_training_needs_real_videos(smooth_store, tmp_path):
    _, _, store = smooth_store
    with pytest.raises(SelectionError, match="real"):
        train_ntp(store, features="enc", train="allfake", val=None, out=tmp_path / "r", config=TINY)
    assert not (tmp_path / "r" / "config.json").exists()


def test_existing_run_is_not_overwritten(smooth_store, trained_run):
    _, _, store = smooth_store
    with pytest.raises(RunExistsError):
        train_ntp(store, features="enc", train="smooth", out=trained_run.path, config=TINY)


def test_cli_train_ntp_then_eval(smooth_store):
    root, url, _ = smooth_store
    runner = CliRunner()
    out = root / "cli-run"
    args = ["train", "ntp", "--store", url, "--encoder", "enc:last", "--train", "smooth"]
    opts = ["--out", str(out), "--epochs", "2", "--batch-videos", "16", "--max-context", "64"]
    result = runner.invoke(app, [*args, *opts])
    assert result.exit_code == 0, result.output
    assert (
        result.output.startswith("epoch   1  loss ") and "thresholds (99% of real" in result.output
    )
    assert f"run written to {out}" in result.output
    cfg = load_run(out).config
    hyper = cfg["config"]["hyperparameters"]
    assert hyper["d_model"] == 512 and hyper["n_layers"] == 4
    evaluated = runner.invoke(app, ["eval", str(out), "--on", "smooth:test", "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    metrics = json.loads(evaluated.output)
    assert metrics["kind"] == "ntp" and metrics["n_scored"] == 30
    again = runner.invoke(app, [*args, *opts])
    assert again.exit_code == 1 and "complete run" in again.output
    no_real = runner.invoke(
        app, ["train", "ntp", "--store", url, "--encoder", "enc", "--train", "allfake",
              "--out", str(root / "x"), "--no-val"],
    )  # fmt: skip
    assert no_real.exit_code == 1 and "real" in no_real.output
