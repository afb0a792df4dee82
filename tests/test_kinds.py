"""Run kinds: one contract suite over every registered kind, the registry, feature sets.

The contract (DESIGN.md "Run kinds"): each kind trains on tiny stored features,
its run directory loads back through ``featstore.trainers.kinds.load``, and the loaded
detector's ``score_rows`` on one video's stored rows gives exactly what
``evaluate`` (the batched ``score_selection``) wrote into the run's predictions.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.special import expit

from featstore.store import EncoderInfo, FeatureStore, open_store
from featstore.timebase import RateError, common_rate, concat_aligned, resampled_length
from featstore.trainers import kinds
from featstore.trainers.data import FeatureKey, SelectionError
from featstore.trainers.evaluate import evaluate, fuse
from featstore.trainers.explain import explain_temporal
from featstore.trainers.inputs import (
    FEATURES,
    FeatureInput,
    InputError,
    InputSource,
    LayerConflictError,
    StoredFeature,
    parse_feature_set,
    read_video,
    select_videos,
)
from featstore.trainers.kinds.base import Detector, VideoScore
from featstore.trainers.runs import load_run, read_frame_scores, read_predictions, save_run
from featstore.trainers.training import EarlyStopping, TrainingError

from trainer_fixtures import write_planted_dataset  # isort: skip

# "aud" and "visual" get different noise (the fixture seeds it with the name's length).
AUD, VIS = "aud", "visual"


def _probe(store: FeatureStore, root: Path, runs: dict[str, Path]) -> Path:
    from featstore.trainers.kinds.probe import train
    from featstore.trainers.probe import ProbeConfig

    config = ProbeConfig(max_epochs=4, lr=0.05, batch_videos=2)
    return train(
        store, features=f"{AUD}+{VIS}", train="toy", out=root / "probe", config=config
    ).path


def _ntp(store: FeatureStore, root: Path, runs: dict[str, Path]) -> Path:
    from featstore.trainers.kinds.ntp import train
    from featstore.trainers.ntp import NTPConfig

    config = NTPConfig(
        d_model=16, n_layers=1, n_heads=2, d_ff=32, max_context=16, max_epochs=2, batch_videos=4
    )
    return train(store, features=[AUD, VIS], train="toy", out=root / "ntp", config=config).path


def _sync(store: FeatureStore, root: Path, runs: dict[str, Path]) -> Path:
    from featstore.trainers.kinds.sync import train
    from featstore.trainers.sync import SyncConfig

    config = SyncConfig(max_epochs=2, lr=1e-3, proj_dim=8, hidden=(8,), batch_frames=256)
    return train(store, audio=AUD, visual=VIS, train="toy", out=root / "sync", config=config).path


def _syncfree(store: FeatureStore, root: Path, runs: dict[str, Path]) -> Path:
    from featstore.trainers.kinds.syncfree import train
    from featstore.trainers.syncfree import PRESETS

    config = PRESETS["speechforensics"]
    return train(store, audio=AUD, visual=VIS, on="toy", out=root / "syncfree", config=config).path


def _fusion(store: FeatureStore, root: Path, runs: dict[str, Path]) -> Path:
    fuse([runs["probe"], runs["sync"]], store, "toy:val", out=root / "fusion")
    return root / "fusion"


# How each registered kind is trained here; a new kind must add its recipe.
RECIPES: dict[str, Callable[[FeatureStore, Path, dict[str, Path]], Path]] = {
    "probe": _probe,
    "ntp": _ntp,
    "sync": _sync,
    "syncfree": _syncfree,
    "fusion": _fusion,
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[FeatureStore, dict[str, Path]]:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("kinds")
    store = open_store(root / "features.zarr", mode="a", durable=False)
    for encoder in (AUD, VIS):
        write_planted_dataset(store, "toy", n_videos=16, dim=8, encoder=encoder, seed=2)
    runs: dict[str, Path] = {}
    for kind, recipe in RECIPES.items():
        runs[kind] = recipe(store, root, runs)
    return store, runs


def test_every_registered_kind_has_a_recipe() -> None:
    assert set(RECIPES) == set(kinds.kinds())


@pytest.mark.parametrize("kind", list(RECIPES))
def test_contract(trained: tuple[FeatureStore, dict[str, Path]], kind: str) -> None:
    store, runs = trained
    path = runs[kind]
    metrics = evaluate(path, store, "toy:test")  # the batched path writes the predictions
    assert metrics["kind"] == kind
    detector = kinds.load(path)
    assert type(detector) is kinds.get(kind) and detector.run is not None
    # the typed config round-trips and is what config.json holds
    config = detector.config
    assert type(config).from_dict(config.to_dict()) == config
    assert load_run(path).config["config"] == config.to_dict()
    # every required feature is recorded as the store holds it
    assert detector.required_features and detector.frame_hz == 25.0
    for inp in detector.required_features:
        for f in inp.features:
            info = store.encoder_info("toy", f.encoder)
            assert (f.dim, f.frame_hz, f.dtype) == (info.dim(f.layer), info.frame_hz, info.dtype)
    # score_rows on each video's stored rows equals what evaluation wrote
    preds = read_predictions(path, "toy_test")
    frames = read_frame_scores(path, "toy_test")
    keys = [f.key for f in detector.features]
    assert len(preds) == 5  # toy:test: 30 % of 16 videos
    for row in preds.itertuples():
        result = detector.score_rows(read_video(store, "toy", row.video_id, keys))
        assert result.score == pytest.approx(row.score, abs=1e-5), row.video_id
        assert row.probability == pytest.approx(expit(2 * row.score), abs=1e-6)
        assert result.frame_scores is not None
        np.testing.assert_allclose(result.frame_scores, frames[row.video_id], atol=1e-5)
    # uncalibrated kinds say so; the probe and a fusion with a sync member do too
    assert detector.calibrated == (kind == "probe")


def test_feature_set_runs_read_both_features(trained: tuple[FeatureStore, dict[str, Path]]) -> None:
    store, runs = trained
    for kind in ("probe", "ntp"):
        detector = kinds.load(runs[kind])
        (inp,) = detector.required_features
        assert inp.role == FEATURES and inp.label == f"{AUD}:last+{VIS}:last" and inp.dim == 16
    probe = kinds.load(runs["probe"])
    vid = read_predictions(runs["probe"], "toy_test")["video_id"].iloc[0]
    a = store.video("toy", AUD, vid, "last")
    v = store.video("toy", VIS, vid, "last")
    from featstore.trainers.probe import frame_logits

    expected = frame_logits(probe.params, np.concatenate([a, v], axis=1))  # by hand
    got = probe.score_rows({FeatureKey(AUD): a, FeatureKey(VIS): v}).frame_scores
    np.testing.assert_allclose(got, expected, atol=1e-6)
    with pytest.raises(InputError, match="needs visual:last rows"):
        probe.score_rows({FeatureKey(AUD): a})
    with pytest.raises(InputError, match=r"\[T, 8\]"):
        probe.score_rows({FeatureKey(AUD): a, FeatureKey(VIS): v[:, :4]})


def test_fusion_members_and_frames(trained: tuple[FeatureStore, dict[str, Path]]) -> None:
    store, runs = trained
    fusion = kinds.load(runs["fusion"])
    assert [m.kind for m in fusion.members] == ["probe", "sync"]
    assert {i.label for i in fusion.required_features} == {
        f"{AUD}:last+{VIS}:last",
        f"{AUD}:last",
        f"{VIS}:last",
    }
    # the fused frame scores are the members' frame probabilities averaged
    vid = read_predictions(runs["fusion"], "toy_test")["video_id"].iloc[2]
    rows = read_video(store, "toy", vid, [f.key for f in fusion.features])
    members = [m.score_rows(rows) for m in fusion.members]
    n = min(len(m.frame_scores) for m in members)
    p = np.mean([expit(2 * m.frame_scores[:n]) for m in members], axis=0)
    got = fusion.score_rows(rows).frame_scores
    np.testing.assert_allclose(expit(2 * got), p, atol=1e-5)
    e = explain_temporal(runs["fusion"], store, "toy", vid)  # every kind explains
    np.testing.assert_allclose(e.frame_scores, got, atol=1e-5)


def test_registering_a_new_kind_touches_nothing_else(
    monkeypatch: pytest.MonkeyPatch, trained: tuple[FeatureStore, dict[str, Path]], tmp_path: Path
) -> None:
    """A kind defined here scores, evaluates and explains through the same interface."""
    store, _ = trained

    class MeanDetector(Detector):
        kind = "mean-test"
        config_type = dict

        @classmethod
        def from_run(cls, run: Any, doc: Any, *, device: str = "cpu") -> Detector:
            inp = FeatureInput.from_dict(doc["config"]["features"])
            det = cls(doc["config"], run=run, device=device)
            det._input = inp
            return det

        @property
        def inputs(self) -> tuple[FeatureInput, ...]:
            return (self._input,)

        def score_rows(self, rows: Any, *, leading_silence_s: float | None = None) -> VideoScore:
            x = self._input.assemble(rows).astype(np.float32)
            frames = x.mean(axis=1)
            return VideoScore(float(frames.max()), frames)

    monkeypatch.setitem(kinds._REGISTRY, "mean-test", MeanDetector)
    feature = StoredFeature.of_store(store, "toy", FeatureKey(AUD))
    doc = {"features": FeatureInput(FEATURES, (feature,), 25.0).to_dict()}
    save_run(tmp_path / "mean", config={"kind": "mean-test", "config": doc})
    metrics = evaluate(tmp_path / "mean", store, "toy:test")
    preds = read_predictions(tmp_path / "mean", "toy_test")
    vid = preds["video_id"].iloc[0]
    x = store.video("toy", AUD, vid, "last").astype(np.float32)
    assert preds["score"].iloc[0] == pytest.approx(float(x.mean(axis=1).max()), abs=1e-6)
    assert metrics["kind"] == "mean-test" and metrics["temporal"] is not None


# ------------------------------------------------------------------ the registry and formats


def test_registry_errors(tmp_path: Path) -> None:
    assert list(kinds.kinds()) == sorted(RECIPES)
    with pytest.raises(
        kinds.UnknownKindError, match=r"no run kind 'nope' is registered \(known: fusion"
    ):
        kinds.get("nope")
    future = save_run(tmp_path / "future", config={"kind": "probe", "format": 3})
    with pytest.raises(kinds.RunFormatError, match=r"run format 3.*use a newer featstore"):
        kinds.load(future)
    bad = save_run(tmp_path / "bad", config={"kind": "ntp", "config": {"features": {}}})
    with pytest.raises(kinds.RunError, match=r"malformed ntp run config.*featstore train ntp"):
        kinds.load(bad)


# ------------------------------------------------------------------ feature sets and rates


def test_parse_feature_set() -> None:
    assert parse_feature_set("avhubert-a+avhubert-v:12") == (
        FeatureKey("avhubert-a", "last"),
        FeatureKey("avhubert-v", 12),
    )
    assert parse_feature_set(["a", "b:6+c"], layer=6) == (
        FeatureKey("a", 6), FeatureKey("b", 6), FeatureKey("c", 6),
    )  # fmt: skip
    # a named layer and another --layer: an error naming both, never one silently winning
    with pytest.raises(LayerConflictError, match="--encoder a:2 names its layer and --layer 6"):
        parse_feature_set("a:2", layer=6)
    with pytest.raises(LayerConflictError, match="b:3"):
        parse_feature_set(["a", "b:3+c"], layer=6)
    with pytest.raises(SelectionError, match="named twice"):
        parse_feature_set("a+a:last")
    with pytest.raises(SelectionError, match="joined by '\\+'"):
        parse_feature_set("a++b")


def test_timebase_rates() -> None:
    assert resampled_length(5, src_hz=12.5, dst_hz=25.0) == 10
    assert resampled_length(7, src_hz=25.0, dst_hz=12.5) == 4
    with pytest.raises(RateError, match=r"25, 12\.5 Hz.*frame_hz=25"):
        common_rate([25.0, 12.5])
    assert common_rate([25.0, 12.5], frame_hz=25.0) == 25.0
    fast = np.arange(12, dtype=np.float16).reshape(6, 2)
    slow = np.arange(3, dtype=np.float16).reshape(3, 1)  # 12.5 Hz: each row twice at 25 Hz
    out = concat_aligned([fast, slow], [25.0, 12.5], frame_hz=25.0)
    assert out.dtype == np.float16 and out.shape == (6, 3)
    np.testing.assert_array_equal(out[:, 2], [0, 0, 1, 1, 2, 2])
    mixed = concat_aligned([fast[:4], slow.astype(np.float32)], [25.0, 12.5], frame_hz=25.0)
    assert mixed.dtype == np.float32 and mixed.shape == (4, 3)  # trimmed to the shorter


def _rates_store(store: FeatureStore) -> None:
    rows = [{"video_id": f"v{i}", "label": i % 2, "split": "train"} for i in range(4)]
    store.write_manifest("r", pd.DataFrame(rows))
    rng = np.random.default_rng(0)
    for name, hz, dim, n in (("fast", 25.0, 3, 20), ("slow", 12.5, 2, 9)):
        with store.writer("r", EncoderInfo(name=name, frame_hz=hz, layer_dims={"last": dim})) as w:
            for row in rows:
                w.add(row["video_id"], {"last": rng.standard_normal((n, dim)).astype(np.float16)})


def test_feature_sets_at_different_rates(store: FeatureStore) -> None:
    _rates_store(store)
    keys = parse_feature_set("fast+slow")
    with pytest.raises(InputError, match=r"fast:last\+slow:last: .*frame_hz=25"):
        FeatureInput.of_store(store, "r", FEATURES, keys)
    inp = FeatureInput.of_store(store, "r", FEATURES, keys, frame_hz=25.0)
    assert inp.frame_hz == 25.0 and inp.dim == 5 and inp.resampled
    rows = select_videos(store, "r:train", keys)
    source = InputSource(store, "r", inp, rows)
    assert source.lengths.tolist() == [18] * 4  # min(20, 9 rows at 12.5 Hz -> 18 at 25 Hz)
    (x,) = source.read([1])
    slow = store.video("r", "slow", "v1", "last")
    assert x.shape == (18, 5)
    np.testing.assert_array_equal(x[:, :3], store.video("r", "fast", "v1", "last")[:18])
    np.testing.assert_array_equal(x[:, 3:], np.repeat(slow, 2, axis=0))
    assert source.nbytes == 4 * 18 * 5 * 2


def test_probe_on_a_resampled_feature_set(store: FeatureStore, tmp_path: Path) -> None:
    from featstore.trainers.kinds.probe import train
    from featstore.trainers.probe import ProbeConfig

    _rates_store(store)
    with pytest.raises(InputError, match="frame_hz=25"):
        train(store, features="fast+slow", train="r", val=None, out=tmp_path / "p")
    run = train(store, features="fast+slow", train="r", val=None, out=tmp_path / "p",
                frame_hz=25.0, config=ProbeConfig(max_epochs=1))  # fmt: skip
    detector = kinds.load(run)
    (inp,) = detector.required_features
    assert inp.frame_hz == 25.0 and [f.frame_hz for f in inp.features] == [25.0, 12.5]
    scored = detector.score_selection(store, "r:train")
    assert [len(f) for f in scored.frame_scores] == [18] * 4


# ------------------------------------------------------------------ shared training code


def test_early_stopping_keeps_the_best_weights() -> None:
    weights = [0]
    stop = EarlyStopping(2, snapshot=lambda: weights[0])
    losses = [3.0, 2.0, 2.5, 1.5, 1.6, 1.7, 1.0]
    stopped_at = None
    for epoch, loss in enumerate(losses, 1):
        weights[0] = epoch
        if stop.update(epoch, loss):
            stopped_at = epoch
            break
    assert stopped_at == 6 and stop.stopped
    assert (stop.best, stop.best_epoch, stop.best_loss) == (4, 4, 1.5)
    last = EarlyStopping(1, snapshot=lambda: weights[0])
    for epoch in (1, 2, 3):
        weights[0] = 10 * epoch
        assert not last.update(epoch, None)  # no validation: never stops, keeps the latest
    assert (last.best, last.best_epoch, last.stopped) == (30, 3, False)
    with pytest.raises(TrainingError, match="patience"):
        EarlyStopping(0, snapshot=lambda: 0)


def test_cli_feature_sets(trained: tuple[FeatureStore, dict[str, Path]], tmp_path: Path) -> None:
    """``--encoder A --encoder B`` (a repeated option) is the set ``A+B``; eval reads it."""
    from typer.testing import CliRunner

    from featstore.cli.main import app

    store, _ = trained
    out = tmp_path / "cli-probe"
    args = ["train", "probe", "--store", store.url, "--encoder", AUD, "--encoder", f"{VIS}:last",
            "--train", "toy", "--epochs", "1", "--out", str(out)]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    (inp,) = kinds.load(out).required_features
    assert inp.label == f"{AUD}:last+{VIS}:last"
    result = CliRunner().invoke(app, ["eval", str(out), "--on", "toy:test", "--json"])
    assert result.exit_code == 0, result.output
    bad = CliRunner().invoke(app, [*args[:-2], "--out", str(tmp_path / "x"), "--frame-hz", "-1"])
    assert bad.exit_code == 1 and "error:" in bad.output and "frame_hz" in bad.output
