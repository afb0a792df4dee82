"""The service builds the encoder that wrote a run's stored rows, loader options included.

Features stored with non-default loader options: a tiny FSFM with ``pooling=cls`` (the
default is mean pooling) and a tiny random AV-HuBERT initialised BERT-style
(``random_init_scheme=bert``; the default is AV-HuBERT's own scheme). A probe trained on
each is served; an uploaded clip must score as ``featstore eval`` scores the same clip's
stored rows, which only the encoder built with the recorded options reproduces (checked:
the default-built encoder gives other rows). A run that does not record the options (as
runs written before them) falls back on the store, and is refused when the store cannot
say either.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("dlib")  # FSFM's face crops need the faces extra

from fastapi.testclient import TestClient
from typer.testing import CliRunner

from featstore.api.app import create_app
from featstore.api.settings import RunSpec, Settings
from featstore.cli.main import app as cli_app
from featstore.trainers.runs import read_predictions

FEATURES = {  # run name -> (registered encoder, store name, random_init, loader options)
    "fsfm-cls": ("fsfm", "fsfm", False, {"pooling": "cls"}),
    "avhubert-bert": ("avhubert-a", "avhubert-a-random", True, {"random_init_scheme": "bert"}),
}


def _cli(*args: Any) -> str:
    result = CliRunner().invoke(cli_app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def _wait_ready(client: TestClient, timeout_s: float = 120.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        r = client.get("/readyz")
        if r.status_code == 200 or "failed" in r.text:
            return {**r.json(), "code": r.status_code}
        time.sleep(0.05)
    raise AssertionError("the service neither loaded nor failed")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    import torch

    from featstore.datasets import read_dataset
    from featstore.encoders.avhubert.tiny import save_tiny_checkpoint as tiny_avhubert
    from featstore.encoders.fsfm_tiny import save_tiny_checkpoint as tiny_fsfm
    from featstore.extract import extract
    from featstore.sample import make_sample
    from featstore.store import open_store
    from featstore.trainers.kinds.probe import train
    from featstore.trainers.probe import ProbeConfig

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("rebuild")
    url = str(root / "features.zarr")
    make_sample(root / "sample", n_clips=4, seed=2, size=128, duration_s=(1.2, 1.6))
    imported = read_dataset("av1m", root / "sample")
    store = open_store(url, mode="a", durable=False)
    store.write_manifest("sample", imported.manifest, attrs={"root": str(imported.root)})
    checkpoints = {
        "fsfm": str(tiny_fsfm(root / "fsfm" / "checkpoint-min_val_loss.pth")),
        "avhubert-a": str(tiny_avhubert(root / "avhubert.pt")),
    }
    for run, (encoder, stored, random_init, options) in FEATURES.items():
        summary = extract(
            store,
            dataset="sample",
            encoder=encoder,
            checkpoint=checkpoints[encoder],
            random_init=random_init,
            store_as=None if stored == encoder else stored,
            encoder_options=options,
            num_workers=1,
            batch_frames=1,
        )
        assert summary.videos_done == 4, summary
        train(
            store,
            features=f"{stored}:last",
            train="sample:*",
            out=root / "runs" / run,
            config=ProbeConfig(max_epochs=2),
        )
        _cli("eval", root / "runs" / run, "--store", url, "--on", "sample:*", "--fakes", "all")
    manifest = store.manifest("sample")
    clips = {row.video_id: root / "sample" / row.path for row in manifest.itertuples()}
    return {"root": root, "url": url, "clips": clips, "checkpoints": checkpoints}


def _settings(world: dict[str, Any], runs: dict[str, Path], store: str | None = None) -> Settings:
    return Settings(
        store_url=store or world["url"],
        runs=tuple(RunSpec(name, path) for name, path in runs.items()),
        max_wait_ms=0,
    )


@pytest.fixture(scope="module")
def client(world: dict[str, Any]) -> Iterator[TestClient]:
    runs = {name: world["root"] / "runs" / name for name in FEATURES}
    with TestClient(create_app(_settings(world, runs))) as c:
        assert _wait_ready(c)["code"] == 200
        yield c


def _post(client: TestClient, clip: Path) -> dict[str, Any]:
    r = client.post("/v1/score", files={"file": (clip.name, clip.read_bytes(), "video/mp4")})
    assert r.status_code == 200, r.text
    return {x["run"]: x for x in r.json()["results"]}


def test_runs_record_the_stored_options(world: dict[str, Any]) -> None:
    for run, (_, stored, _, options) in FEATURES.items():
        config = json.loads((world["root"] / "runs" / run / "config.json").read_text())
        (feature,) = config["config"]["features"]["features"]
        assert feature["encoder"] == stored
        assert options.items() <= feature["extra"].items()


def test_uploads_score_as_eval_with_non_default_options(
    client: TestClient, world: dict[str, Any]
) -> None:
    from featstore.encoders import load_encoder
    from featstore.extract.decode import prepare_clip
    from featstore.store import open_store

    video_id, clip = sorted(world["clips"].items())[0]
    results = _post(client, clip)
    assert set(results) == set(FEATURES)
    store = open_store(world["url"])
    for run, (encoder, stored, random_init, _) in FEATURES.items():
        preds = read_predictions(world["root"] / "runs" / run, "sample_all").set_index("video_id")
        assert results[run]["score"] == pytest.approx(preds.loc[video_id, "score"], abs=1e-5), run
        # the test can fail: the encoder built with default options gives other rows
        default = load_encoder(encoder, world["checkpoints"][encoder], random_init=random_init)
        prepared = prepare_clip("x", str(clip), spec=default.spec, n_rows=default.n_rows)
        rows = default.encode([prepared.clip], ["last"])[0]["last"].astype(np.float16)
        held = store.video("sample", stored, video_id, "last")
        assert rows.shape == held.shape and np.abs(rows - held).max() > 1e-2, run


def test_models_show_the_options(client: TestClient) -> None:
    models = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
    (feature,) = models["avhubert-bert"]["inputs"][0]["features"]
    assert feature["random_init"] and feature["source_encoder"] == "avhubert-a"
    assert feature["encoder"] == "avhubert-a-random"


def _strip_extra(src: Path, dst: Path) -> Path:
    """A copy of a run as featstore wrote it before stored options were recorded."""
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    for feature in config["config"]["features"]["features"]:
        del feature["extra"]
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def test_older_runs_take_the_options_from_the_store_or_are_refused(
    world: dict[str, Any], tmp_path: Path
) -> None:
    from featstore.store import open_store

    runs = {name: _strip_extra(world["root"] / "runs" / name, tmp_path / name) for name in FEATURES}
    video_id, clip = sorted(world["clips"].items())[1]
    with TestClient(create_app(_settings(world, runs))) as c:
        assert _wait_ready(c)["code"] == 200
        results = _post(c, clip)
    for run in FEATURES:
        preds = read_predictions(world["root"] / "runs" / run, "sample_all").set_index("video_id")
        assert results[run]["score"] == pytest.approx(preds.loc[video_id, "score"], abs=1e-5), run
    # a store without the training dataset cannot say which options made the rows: refused
    empty = str(tmp_path / "empty.zarr")
    open_store(empty, mode="a", durable=False)
    for run, missing in (("fsfm-cls", "pooling"), ("avhubert-bert", "random initialisation")):
        with TestClient(create_app(_settings(world, {run: runs[run]}, store=empty))) as c:
            ready = _wait_ready(c)
        assert ready["code"] == 503
        assert f"run {run}" in ready["detail"] and missing in ready["detail"], ready


def test_an_encoder_that_cannot_be_rebuilt_is_refused(
    world: dict[str, Any], tmp_path: Path
) -> None:
    """A recorded option this featstore would not reproduce (a seed it does not use)."""
    run = tmp_path / "seeded"
    shutil.copytree(world["root"] / "runs" / "avhubert-bert", run)
    config = json.loads((run / "config.json").read_text())
    config["config"]["features"]["features"][0]["extra"]["random_init_seed"] = 7
    (run / "config.json").write_text(json.dumps(config))
    with TestClient(create_app(_settings(world, {"seeded": run}))) as c:
        ready = _wait_ready(c)
    assert ready["code"] == 503
    assert "random_init_seed: 7 stored, 0 given" in ready["detail"], ready
