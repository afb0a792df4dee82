"""Run directories and the probe kind end to end through a real store."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from featstore.store import open_store
from featstore.trainers.data import SelectionError
from featstore.trainers.evaluate import evaluate
from featstore.trainers.explain import explain_temporal
from featstore.trainers.kinds import UnknownKindError, load, score
from featstore.trainers.kinds.probe import train as train_probe
from featstore.trainers.probe import ProbeConfig
from featstore.trainers.runs import (
    FORMAT,
    IncompleteRunError,
    RunError,
    RunExistsError,
    Scored,
    load_run,
    read_frame_scores,
    read_predictions,
    save_run,
    write_metrics,
    write_predictions,
)

from trainer_fixtures import write_planted_dataset  # isort: skip

# lr 1e-3 needs thousands of steps; 60 tiny videos give a few hundred.
FAST = ProbeConfig(lr=0.05, max_epochs=30, patience=5, batch_videos=4)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A planted dataset and a probe trained on it (shared: training is the slow part)."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("probe")
    store = open_store(root / "features.zarr", mode="a", durable=False)
    write_planted_dataset(
        store, "toy", n_videos=60, dim=16, encoder="enc", seed=3, single_modality_fakes=0.3
    )
    epochs = []
    run = train_probe(
        store, features="enc", train="toy", out=root / "run", config=FAST, on_epoch=epochs.append
    )
    return store, run, epochs


def _scored(n: int = 4, frames: bool = True) -> Scored:
    manifest = pd.DataFrame(
        {
            "video_id": [f"d/v{i}" for i in range(n)],
            "label": [i % 2 for i in range(n)],
            "fake_segments": [json.dumps([[0.1, 0.3]]) if i % 2 else "[]" for i in range(n)],
        }
    )
    scores = np.linspace(-1, 1, n)
    return Scored(
        selection="d:test",
        manifest=manifest,
        scores=scores,
        probabilities=1 / (1 + np.exp(-2 * scores)),
        frame_scores=[np.arange(i + 1, dtype=np.float32) for i in range(n)] if frames else None,
        frame_hz=25.0,
    )


def test_run_round_trip(tmp_path):
    w = np.arange(6, dtype=np.float32)
    run = save_run(
        tmp_path / "run",
        config={"kind": "probe", "encoder": "enc", "layer": "last"},
        tensors={"w": w, "b": np.zeros(1, np.float32)},
        history=[{"epoch": 1, "train_loss": 0.5, "val_loss": float("nan")}],
    )
    loaded = load_run(run.path)
    assert loaded.config == run.config and loaded.kind == "probe"
    assert loaded.config["package_version"] and loaded.config["created"]
    assert loaded.config["format"] == FORMAT
    np.testing.assert_array_equal(loaded.tensors()["w"], w)
    assert loaded.history()[0]["train_loss"] == 0.5
    assert not list(tmp_path.glob("run/*.pkl")) and (run.path / "model.safetensors").is_file()


def test_incomplete_and_existing_runs(tmp_path):
    path = tmp_path / "run"
    with pytest.raises(RunError, match="no run directory"):
        load_run(path)
    path.mkdir()
    (path / "model.safetensors").write_bytes(b"")
    with pytest.raises(IncompleteRunError, match="incomplete run"):
        load_run(path)
    save_run(path, config={"kind": "probe"})
    with pytest.raises(RunExistsError, match="complete run"):
        save_run(path, config={"kind": "probe"})
    write_metrics(path, "d:test", {"auc": 0.5})
    run = save_run(path, config={"kind": "probe", "x": 1}, overwrite=True)
    assert run.metrics() == {}  # stale outputs of the replaced run are gone
    (path / "config.json").write_text("{not json")
    with pytest.raises(RunError, match="not valid JSON"):
        load_run(path)


def test_predictions_files(tmp_path):
    run = save_run(tmp_path / "run", config={"kind": "probe"})
    scored = _scored()
    write_predictions(
        run,
        scored,
        evaluated=np.array([True, False, True, True]),
        segments=[[], [[0.0, 0.04, 1.5]], [], []],
        slug="d_test",
    )
    frame = read_predictions(run, "d_test")
    assert frame.columns.tolist() == ["video_id", "label", "score", "probability", "evaluated"]
    assert frame["evaluated"].tolist() == [1, 0, 1, 1]
    np.testing.assert_allclose(frame["score"], scored.scores)
    frames = read_frame_scores(run, "d_test")
    assert list(frames) == scored.video_ids
    np.testing.assert_array_equal(frames["d/v2"], [0, 1, 2])
    with np.load(run.path / "predictions" / "d_test.frames.npz", allow_pickle=False) as data:
        assert data["offsets"].tolist() == [0, 1, 3, 6, 10]
    segs = json.loads((run.path / "predictions" / "d_test.segments.json").read_text())
    assert segs["d/v1"] == [[0.0, 0.04, 1.5]]
    assert scored.fake_segments()[1] == [(0.1, 0.3)] and scored.fake_segments()[0] == []


def test_unknown_kinds_are_named(tmp_path, store):
    run = save_run(tmp_path / "run", config={"kind": "constant"})
    with pytest.raises(UnknownKindError, match=r"no run kind 'constant'.*probe"):
        score(run, store, "d:test")


# ------------------------------------------------------------- probe kind


def test_train_probe_writes_a_complete_run(trained):
    _, run, epochs = trained
    cfg = load_run(run.path).config
    assert cfg["kind"] == "probe" and cfg["format"] == FORMAT
    (feature,) = cfg["config"]["features"]["features"]
    assert (feature["encoder"], feature["layer"], feature["dim"]) == ("enc", "last", 16)
    assert feature["frame_hz"] == 25.0 and feature["dtype"] == "float16"
    assert cfg["config"]["features"]["frame_hz"] == 25.0
    assert cfg["train"]["selection"] == "toy:train" and cfg["val"]["selection"] == "toy:val"
    assert cfg["train"]["n"] == 30 and cfg["train"]["n_real"] + cfg["train"]["n_fake"] == 30
    assert len(cfg["train"]["split_hash"]) == 16
    hyper = cfg["config"]["hyperparameters"]
    assert hyper["batch_videos"] == 4 and hyper["seed"] == 43
    assert len(epochs) == cfg["fit"]["epochs"] == len(run.history())
    assert 1 <= cfg["fit"]["best_epoch"] <= cfg["fit"]["epochs"]
    assert set(run.tensors()) == {"w", "b", "l2_normalize"}
    detector = load(run.path)
    assert detector.kind == "probe" and detector.calibrated and detector.frame_hz == 25.0
    assert [i.label for i in detector.required_features] == ["enc:last"]


def test_probe_run_recorded_before_the_authors_defaults_loads_and_scores(trained, tmp_path):
    """A format-2 probe written before ``rng`` existed: its config says what it used."""
    import shutil

    store, run, _ = trained
    old = tmp_path / "old"
    shutil.copytree(run.path, old)
    doc = json.loads((old / "config.json").read_text())
    hyper = doc["config"]["hyperparameters"]
    del hyper["rng"]
    hyper.update(batch_videos=None, center_bias=True, scale_lr=True)  # as they were written
    del doc["fit"]["engine"]
    (old / "config.json").write_text(json.dumps(doc))
    detector = load(old)
    cfg = detector.config.hyperparameters
    assert (cfg.batch_videos, cfg.center_bias, cfg.scale_lr, cfg.rng) == (None, True, True, "numpy")
    before = load(run.path).score_selection(store, "toy:test")
    after = detector.score_selection(store, "toy:test")
    np.testing.assert_array_equal(after.scores, before.scores)


def test_probe_detects_and_localizes_planted_fakes(trained):
    store, run, _ = trained
    metrics = evaluate(run.path, store, "toy:test")
    assert metrics["binary"]["auc"] > 0.95
    assert metrics["temporal"]["mean"] > 0.9 and metrics["temporal"]["n_videos"] > 0
    assert metrics["n_evaluated"] < metrics["n_scored"]  # audio-only fakes left out of AUC
    assert "AP@0.5" in metrics["localization"] and "AR@50" in metrics["localization"]
    stored = load_run(run.path).metrics()["toy:test"]
    assert stored["binary"]["auc"] == metrics["binary"]["auc"]
    preds = read_predictions(run.path, "toy_test")
    assert len(preds) == metrics["n_scored"] and preds["evaluated"].sum() == metrics["n_evaluated"]
    frames = read_frame_scores(run.path, "toy_test")
    assert len(frames) == len(preds)
    segments = json.loads((run.path / "predictions" / "toy_test.segments.json").read_text())
    assert set(segments) == set(preds["video_id"])


def test_score_run_matches_single_video_scores(trained):
    store, run, _ = trained
    scored = score(run, store, "toy:test")
    vid = scored.video_ids[1]
    e = explain_temporal(run.path, store, "toy", vid)
    assert e.score == pytest.approx(float(scored.scores[1]), abs=1e-4)
    np.testing.assert_allclose(e.frame_scores, scored.frame_scores[1], atol=1e-4)
    assert np.allclose(scored.probabilities, 1 / (1 + np.exp(-2 * scored.scores)))


def test_explain_localizes_a_fake(trained, tmp_path):
    store, run, _ = trained
    manifest = store.manifest("toy")
    fake = manifest[(manifest["label"] == 1) & (manifest["split"] == "test")].iloc[0]
    # logsumexp pooling leaves frame logits inside a long fake segment near -log(n frames):
    # a threshold below 0 finds the segment in a briefly trained probe.
    e = explain_temporal(
        run.path, store, "toy", fake["video_id"], out_png=tmp_path / "t.png", threshold=-2.0
    )
    assert e.label == 1 and e.truth_segments and e.predicted_segments
    assert (tmp_path / "t.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert e.times_s.shape == e.frame_scores.shape
    truth_mid = [(a + b) / 2 for a, b in e.truth_segments]
    assert any(s.start_s <= m <= s.end_s for s in e.predicted_segments for m in truth_mid)
    with pytest.raises(SelectionError, match="no video 'nope'"):
        explain_temporal(run.path, store, "toy", "nope")


def test_train_probe_refuses_a_complete_run(trained):
    store, run, _ = trained
    with pytest.raises(RunExistsError, match="complete run"):
        train_probe(store, features="enc", train="toy", out=run.path, config=FAST)


def test_train_probe_selection_errors(trained, tmp_path):
    store, _, _ = trained
    with pytest.raises(SelectionError, match="no split 'dev'"):
        train_probe(store, features="enc", train="toy:dev", out=tmp_path / "r", config=FAST)
    with pytest.raises(SelectionError, match="is the training selection"):
        train_probe(
            store, features="enc", train="toy", val="toy:train", out=tmp_path / "r", config=FAST
        )
    assert not (tmp_path / "r").exists()


def test_score_run_rejects_other_widths(trained, tmp_path):
    store, run, _ = trained
    write_planted_dataset(store, "wide", n_videos=4, dim=8, encoder="enc", seed=0)
    with pytest.raises(RunError, match="16-wide"):
        score(run, store, "wide:test")
