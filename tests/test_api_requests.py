"""No silent surprises in what the API takes and says (issue 20, item 1).

Two logfbank probes on a planted dataset (with a view) and two generated clips, served
through the FastAPI test client. Every number is checked against an independent
re-computation: the probe applied by hand to the clip's encoder rows or to the stored
rows, ``featstore eval --json`` and scikit-learn on the predictions it wrote, pandas on
the manifest.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from featstore.api.app import create_app
from featstore.api.settings import RunSpec, Settings
from featstore.cli.main import app as cli_app

from media_factory import write_media  # isort: skip
from trainer_fixtures import write_planted_dataset  # isort: skip

STORED = "/v1/datasets/planted/videos/{}/scores"


def _cli(*args: Any) -> str:
    result = CliRunner().invoke(cli_app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def _wait_ready(client: TestClient) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        r = client.get("/readyz")
        if r.status_code == 200:
            return
        assert "failed" not in r.text, r.text
        time.sleep(0.02)
    raise AssertionError("not ready")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from featstore.datasets import add_view, read_dataset
    from featstore.extract import extract
    from featstore.sample import make_sample
    from featstore.store import open_store
    from featstore.trainers.kinds.probe import train
    from featstore.trainers.probe import ProbeConfig

    root = tmp_path_factory.mktemp("requests")
    url = str(root / "features.zarr")
    store = open_store(url, mode="a", durable=False)
    write_planted_dataset(store, "planted", n_videos=16, dim=104, encoder="logfbank")
    manifest = store.manifest("planted")
    half = np.where(np.arange(len(manifest)) % 4 < 2, "train", "test")
    half[-3:] = ""  # three videos outside the view
    manifest = add_view(
        manifest, "half", pd.Series(half, index=manifest.index), {"protocol": "custom"}
    )
    store.write_manifest("planted", manifest, attrs=manifest.attrs)
    for name, seed in (("a", 43), ("b", 7)):
        train(
            store,
            features="logfbank:last",
            train="planted:train",
            out=root / "runs" / name,
            config=ProbeConfig(max_epochs=3, seed=seed),
        )
    # a run trained on 8-10 s videos: the 2-3 s clips are under its minimum duration
    write_planted_dataset(
        store, "long", n_videos=8, dim=104, encoder="logfbank", n_frames=(200, 250), seed=1
    )
    train(
        store,
        features="logfbank:last",
        train="long:train",
        out=root / "runs" / "long",
        config=ProbeConfig(max_epochs=2),
    )
    make_sample(root / "sample", n_clips=2, size=64, duration_s=(2.0, 3.0), seed=1)
    imported = read_dataset("av1m", root / "sample")
    store.write_manifest("sample", imported.manifest, attrs={"root": str(imported.root)})
    assert extract(store, dataset="sample", encoder="logfbank", num_workers=1).videos_done == 2
    clip = root / "sample" / imported.manifest["path"].iloc[0]
    silent = write_media(root / "silent.mp4", video_size=(64, 64), n_frames=50)
    return {"root": root, "url": url, "clip": clip, "silent": silent}


def _settings(world: dict[str, Any], *names: str, runs: Path | None = None) -> Settings:
    base = runs or world["root"] / "runs"
    return Settings(
        store_url=world["url"], runs=tuple(RunSpec(n, base / n) for n in names), max_wait_ms=0
    )


@pytest.fixture(scope="module")
def client(world: dict[str, Any]) -> Iterator[TestClient]:
    with TestClient(create_app(_settings(world, "a", "b"))) as c:
        _wait_ready(c)
        yield c


def _upload(client: TestClient, path: Path, query: str = "", **kw: Any) -> Any:
    files = {"file": (path.name, path.read_bytes(), "video/mp4")}
    return client.post(f"/v1/score{query}", files=files, **kw)


def _params(world: dict[str, Any], name: str) -> Any:
    from featstore.trainers.probe import ProbeParams
    from featstore.trainers.runs import load_run

    return ProbeParams.from_state(load_run(world["root"] / "runs" / name).tensors())


def _by_hand(world: dict[str, Any], name: str) -> float:
    """Probe ``name``'s video logit of the clip, from the clip's logfbank rows as stored."""
    from featstore.encoders import load_encoder
    from featstore.extract.decode import prepare_clip
    from featstore.trainers.probe import video_logit

    enc = load_encoder("logfbank")
    clip = prepare_clip("x", str(world["clip"]), spec=enc.spec, n_rows=enc.n_rows)
    rows = enc.encode([clip.clip], ["last"])[0]["last"].astype(np.float16)
    return float(video_logit(_params(world, name), rows))


# ------------------------------------------------------------------ which runs score


def test_runs_as_query_parameter_or_form_field(client: TestClient, world: dict[str, Any]) -> None:
    # windows=off: scored whole, as the paper (and the probe by hand) does
    r = _upload(client, world["clip"], "?runs=b&windows=off")
    assert r.status_code == 200, r.text
    (only,) = r.json()["results"]
    assert only["run"] == "b" and r.json()["skipped"] == []
    assert only["score"] == pytest.approx(_by_hand(world, "b"), abs=1e-5)
    form = _upload(client, world["clip"], "?windows=off", data={"runs": "b"})
    assert [x["run"] for x in form.json()["results"]] == ["b"]
    assert form.json()["results"][0]["score"] == only["score"]
    # every loaded run by default, in the order they were loaded, none skipped
    doc = _upload(client, world["clip"], "?windows=off").json()
    assert [x["run"] for x in doc["results"]] == ["a", "b"] and doc["skipped"] == []
    assert doc["results"][0]["score"] == pytest.approx(_by_hand(world, "a"), abs=1e-5)
    # never silently ignored: both ways at once, a misspelt parameter, an unknown form field
    both = _upload(client, world["clip"], "?runs=a", data={"runs": "b"})
    assert both.status_code == 422 and "give it once" in both.json()["detail"]
    typo = _upload(client, world["clip"], "?run=b")
    assert typo.status_code == 422, typo.text
    assert "unknown query parameter 'run' for POST /v1/score" in typo.json()["detail"]
    assert "(did you mean 'runs' instead of 'run'?)" in typo.json()["detail"]
    field = _upload(client, world["clip"], data={"run": "b"})
    assert field.status_code == 422
    assert field.json()["detail"] == "unknown form field 'run': the form takes 'file', 'runs'"
    again = _upload(client, world["clip"], "?runs=a&runs=b")
    assert again.status_code == 422
    assert again.json()["detail"] == (
        "query parameter 'runs' given more than once: give it once (several runs: runs=a,b)"
    )
    ghost = _upload(client, world["clip"], "?runs=ghost")
    assert ghost.status_code == 404 and "ghost" in ghost.json()["detail"]


@pytest.mark.parametrize(
    ("method", "path", "query", "takes"),
    [
        ("GET", "/v1/models", "?run=a", "it takes no query parameters"),
        ("GET", "/v1/datasets", "?view=half", "it takes no query parameters"),
        (
            "GET",
            STORED.format("x"),
            "?runs=a",
            "for GET /v1/datasets/{dataset}/videos/{video_id}/scores: it takes run, explain, "
            "explain_frames, threshold",
        ),
        ("GET", "/readyz", "?verbose=1", "it takes no query parameters"),
        ("POST", "/v1/score", "?explain=spatial&frames=3", "it takes explain, explain_frames"),
    ],
)
def test_unknown_query_parameters_are_refused_on_every_route(
    client: TestClient, method: str, path: str, query: str, takes: str
) -> None:
    r = client.request(method, path + query)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert isinstance(detail, str) and "unknown query parameter" in detail and takes in detail


def test_an_upload_without_audio(client: TestClient, world: dict[str, Any]) -> None:
    """Every loaded run reads audio: nothing can score it, and the client is told so in
    HTTP terms (the runs, their encoder, what to send), never Python's ``audio=False``."""
    r = _upload(client, world["silent"])
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert detail.startswith("none of the loaded runs can score this upload")
    assert "run a: no audio stream: its encoder logfbank reads audio" in detail
    assert "run b: no audio stream" in detail and "upload a file with an audio track" in detail
    named = _upload(client, world["silent"], "?runs=a")
    assert named.status_code == 422
    assert named.json()["detail"].startswith("these requested runs cannot score this upload")
    assert "run b" not in named.json()["detail"]
    assert "audio=False" not in detail + named.json()["detail"]


def test_a_run_the_upload_is_too_short_for(world: dict[str, Any]) -> None:
    """Skipped by default (with the minimum it needs), refused when named."""
    with TestClient(create_app(_settings(world, "long", "a"))) as c:
        _wait_ready(c)
        need = {
            m["name"]: m["windows"]["min_duration_s"] for m in c.get("/v1/models").json()["models"]
        }
        doc = _upload(c, world["clip"], "?windows=off").json()
        named = _upload(c, world["clip"], "?runs=long")
    assert need["long"] > 3.0 > 2.0 > need["a"]
    assert [x["run"] for x in doc["results"]] == ["a"]
    assert doc["results"][0]["score"] == pytest.approx(_by_hand(world, "a"), abs=1e-5)
    ((skipped,),) = [doc["skipped"]]
    assert skipped["run"] == "long" and skipped["reason"] == "too_short"
    assert "needs at least" in skipped["detail"]
    assert named.status_code == 422
    detail = named.json()["detail"]
    assert detail.startswith("these requested runs cannot score this upload (run long: ")
    assert "needs at least" in detail and detail.endswith(": upload a longer clip")


# ------------------------------------------------------------------ stored videos


def test_stored_video_without_run(client: TestClient, world: dict[str, Any]) -> None:
    from featstore.store import open_store
    from featstore.trainers.probe import frame_logits, video_logit

    video_id = "planted/test/v0011"
    url = STORED.format(quote(video_id, safe=""))
    several = client.get(url)
    assert several.status_code == 422, several.text
    assert (
        several.json()["detail"]
        == "2 runs are loaded (a, b): name the one to score with, e.g. ?run=a"
    )
    misspelt = client.get(url, params={"runs": "a"})
    assert misspelt.status_code == 422
    assert misspelt.json()["detail"].endswith("(did you mean 'run' instead of 'runs'?)")
    with TestClient(create_app(_settings(world, "b"))) as single:
        _wait_ready(single)
        r = single.get(url, params={"windows": "off"})
        assert r.status_code == 200, r.text
        assert r.json() == single.get(url, params={"run": "b", "windows": "off"}).json()
    rows = open_store(world["url"]).video("planted", "logfbank", video_id, "last")
    params = _params(world, "b")
    assert r.json()["run"] == "b"
    assert r.json()["score"] == pytest.approx(video_logit(params, rows), abs=1e-5)
    np.testing.assert_allclose(r.json()["frame_scores"], frame_logits(params, rows), atol=1e-5)


# ------------------------------------------------------------------ listings


def test_models_give_each_evaluation_headline_metrics(
    world: dict[str, Any], tmp_path: Path
) -> None:
    from sklearn.metrics import average_precision_score, roc_auc_score

    from featstore.trainers.runs import read_predictions

    runs = tmp_path / "runs"
    shutil.copytree(world["root"] / "runs" / "a", runs / "a")
    reference = {}
    for on, extra in (("planted:test", ["--ci"]), ("planted@half:train", [])):
        out = _cli("eval", runs / "a", "--store", world["url"], "--on", on, "--json", *extra)
        reference[on] = json.loads(out)
    with TestClient(create_app(_settings(world, "a", runs=runs))) as c:
        _wait_ready(c)
        (model,) = c.get("/v1/models").json()["models"]
    metrics = model["metrics"]
    assert set(metrics) == set(reference)
    for on, ref in reference.items():
        got = metrics[on]
        preds = read_predictions(runs / "a", on.replace(":", "_"))
        counted = preds[preds["evaluated"] == 1]
        assert got["auc"] == pytest.approx(roc_auc_score(counted["label"], counted["score"]))
        assert got["ap"] == pytest.approx(
            average_precision_score(counted["label"], counted["score"])
        )
        assert got["n_evaluated"] == len(counted) == ref["n_evaluated"]
        assert got["n_real"] == int((counted["label"] == 0).sum())
        assert got["n_fake"] == int((counted["label"] == 1).sum())
        assert got["eer"] == pytest.approx(ref["binary"]["eer"])
        assert got["temporal_auc"] == pytest.approx(ref["temporal"]["mean"])
        assert got["selection"] == ref["selection"] and got["fakes"] == ref["fakes"]
        assert got["split_hash"] == ref["split_hash"] and got["view"] == ref["view"]
    assert metrics["planted:test"]["auc_ci"] == pytest.approx(
        reference["planted:test"]["binary"]["auc_ci"]
    )
    assert metrics["planted@half:train"]["auc_ci"] is None
    localization = reference["planted:test"]["localization"]
    for key, value in metrics["planted:test"]["localization"].items():
        assert value == pytest.approx(localization[key])


def test_datasets_list_their_views(client: TestClient, world: dict[str, Any]) -> None:
    from featstore.store import open_store

    manifest = open_store(world["url"]).manifest("planted")
    datasets = {d["name"]: d for d in client.get("/v1/datasets").json()["datasets"]}
    planted = datasets["planted"]
    assert planted["default_view"] is None
    assert planted["splits"] == manifest["split"].value_counts().to_dict()
    (view,) = planted["views"]
    column = manifest["split.half"]
    inside = manifest[column != ""]
    assert view["name"] == "half" and view["protocol"] == "custom" and not view["default"]
    assert (
        view["splits"] == column[column != ""].value_counts().to_dict() == {"train": 7, "test": 6}
    )
    assert view["n_videos"] == len(inside) == 13
    assert (view["n_real"], view["n_fake"]) == (
        int((inside["label"] == 0).sum()),
        int((inside["label"] == 1).sum()),
    )
    assert datasets["sample"]["views"] == []
