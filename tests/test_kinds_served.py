"""Every run kind scores uploads: through a real uvicorn, an uploaded clip gets the score
``featstore eval`` gives the same clip's stored features.

One sample dataset (generated clips, faces tracked) with four extracted encoders: the
weight-free ``logfbank`` (audio) and ``mouth-pixels`` (visual, mouth crops), and a tiny
random AV-HuBERT's ``avhubert-a`` / ``avhubert-v`` (one width, for the training-free
score). Runs are trained and evaluated with the CLI, as a user would, then served
together: a probe, a next-token predictor on the feature set ``logfbank+mouth-pixels``,
a sync network trained with leading-silence trimming, ``featstore syncscore --out``
without ``--frame-hz``, a syncfree run in the format featstore 0.1 wrote (``"frame_hz":
null``), and a fusion.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

pytest.importorskip("dlib")  # mouth crops need the faces extra

import uvicorn
from typer.testing import CliRunner

from featstore.api.app import create_app
from featstore.api.settings import RunSpec, Settings
from featstore.cli.main import app
from featstore.trainers import kinds
from featstore.trainers.runs import read_frame_scores, read_predictions

RUNS = ("probe", "ntp-set", "sync", "syncfree", "syncfree-v1", "fusion")


def _cli(*args: Any) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    import torch

    from featstore.datasets import read_dataset
    from featstore.encoders.avhubert.tiny import save_tiny_checkpoint
    from featstore.extract import extract
    from featstore.sample import make_sample
    from featstore.silence import measure_store_silence
    from featstore.store import open_store

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("served")
    url = str(root / "features.zarr")
    make_sample(root / "sample", n_clips=8, seed=4, duration_s=(1.2, 1.6))
    imported = read_dataset("av1m", root / "sample")
    store = open_store(url, mode="a", durable=False)
    store.write_manifest("sample", imported.manifest, attrs={"root": str(imported.root)})
    avhubert = save_tiny_checkpoint(root / "avhubert.pt")
    for encoder, checkpoint in (
        ("logfbank", None),
        ("mouth-pixels", None),
        ("avhubert-a", avhubert),
        ("avhubert-v", avhubert),
    ):
        summary = extract(
            store,
            dataset="sample",
            encoder=encoder,
            checkpoint=None if checkpoint is None else str(checkpoint),
            num_workers=1,
            batch_frames=1,  # one clip per forward pass, as the service encodes an upload
        )
        assert summary.videos_done == 8, summary
    measure_store_silence(store, "sample")  # the sync run trims leading silence
    runs = root / "runs"
    common = ["--store", url, "--train", "sample:train", "--no-val"]
    _cli("train", "probe", "--encoder", "logfbank", *common, "--epochs", "3",
         "--out", runs / "probe")  # fmt: skip
    _cli("train", "ntp", "--encoder", "logfbank+mouth-pixels", *common, "--epochs", "2",
         "--max-context", "32", "--out", runs / "ntp-set")  # fmt: skip
    _cli("train", "sync", "--audio", "logfbank", "--visual", "mouth-pixels", *common,
         "--epochs", "2", "--lr", "1e-3", "--trim-silence", "--out", runs / "sync")  # fmt: skip
    _cli("syncscore", "--store", url, "--audio", "avhubert-a", "--visual", "avhubert-v",
         "--on", "sample:val", "--preset", "speechforensics", "--fakes", "all",
         "--out", runs / "syncfree")  # fmt: skip
    old = runs / "syncfree-v1"  # what featstore 0.1 wrote without --frame-hz
    old.mkdir()
    (old / "config.json").write_text(json.dumps(V1_SYNCFREE | {"store": url}))
    # fused on train: the tiny val split has no fake of both modalities for fuse's metrics
    _cli("fuse", runs / "probe", runs / "sync", "--store", url, "--on", "sample:train",
         "--out", runs / "fusion")  # fmt: skip
    for name in RUNS:
        _cli("eval", runs / name, "--store", url, "--on", "sample:val", "--fakes", "all")
    settings = Settings(
        store_url=url,
        runs=tuple(RunSpec(name, runs / name) for name in RUNS),
        # the 0.1 run recorded no checkpoint: name the one its features came from
        checkpoints={"avhubert-a": str(avhubert), "avhubert-v": str(avhubert)},
    )
    port = _free_port()
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            r = httpx.get(f"{base}/readyz")
            if r.status_code == 200:
                break
            assert "failed" not in r.text, r.text
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    else:
        raise AssertionError("server did not become ready")
    manifest = store.manifest("sample")
    clips = {
        row.video_id: root / "sample" / row.path
        for row in manifest[manifest["split"] == "val"].itertuples()
    }
    yield {"base": base, "runs": runs, "clips": clips}
    server.should_exit = True
    thread.join(10)


# featstore 0.1's config of a `featstore syncscore --out R` run without --frame-hz.
V1_SYNCFREE = {
    "kind": "syncfree",
    "audio": "avhubert-a:last",
    "visual": "avhubert-v:last",
    "shift": 15,
    "pool": "mean",
    "trim_silence": False,
    "frame_hz": None,
    "package_version": "0.1.0",
    "created": "2026-12-06T18:02:11+00:00",
}


def test_every_kind_is_served(served: dict[str, Any]) -> None:
    models = {m["name"]: m for m in httpx.get(f"{served['base']}/v1/models").json()["models"]}
    assert set(models) == set(RUNS)
    assert {m["kind"] for m in models.values()} == set(kinds.kinds())
    (ntp_input,) = models["ntp-set"]["inputs"]
    assert [f["encoder"] for f in ntp_input["features"]] == ["logfbank", "mouth-pixels"]
    assert [i["role"] for i in models["sync"]["inputs"]] == ["audio", "visual"]
    assert models["syncfree-v1"]["frame_hz"] == 25.0  # was "frame_hz": null


@pytest.mark.parametrize("which", [0, 1])
def test_uploads_score_as_eval_scores_stored_features(served: dict[str, Any], which: int) -> None:
    video_id, path = sorted(served["clips"].items())[which]
    with path.open("rb") as fh:
        r = httpx.post(
            f"{served['base']}/v1/score",
            files={"file": (path.name, fh, "video/mp4")},
            timeout=120,
        )
    assert r.status_code == 200, r.text
    results = {x["run"]: x for x in r.json()["results"]}
    assert list(results) == list(RUNS)
    for name, res in results.items():
        preds = read_predictions(served["runs"] / name, "sample_val").set_index("video_id")
        frames = read_frame_scores(served["runs"] / name, "sample_val")[video_id]
        # eval scores whole clips (the paper); the service windows clips longer than the
        # run's median training length and says so, the whole clip's score beside
        whole = res["windows"]["whole_score"]
        assert whole == pytest.approx(preds.loc[video_id, "score"], abs=1e-5), name
        np.testing.assert_allclose(res["frame_scores"], frames, atol=1e-4, err_msg=name)
        if not res["windows"]["applied"]:
            assert res["score"] == whole
            assert res["rank_score"] == pytest.approx(preds.loc[video_id, "probability"], abs=1e-6)
        else:
            assert res["score"] == max(w["score"] for w in res["windows"]["scores"]), name
        assert res["calibrated"] == (res["kind"] == "probe")
        assert (res["probability"] is None) == (not res["calibrated"]), name
        assert res["label"] == ("fake" if res["score"] > 0 else "real")
    assert results["ntp-set"]["features"] == ["logfbank:last", "mouth-pixels:last"]


def _upload(served: dict[str, Any], path: Any, runs: str, **params: Any) -> httpx.Response:
    with path.open("rb") as fh:
        return httpx.post(
            f"{served['base']}/v1/score",
            files={"file": (path.name, fh, "video/mp4")},
            data={"runs": runs},
            params=params,
            timeout=120,
        )


def test_a_looped_real_clip_keeps_its_probability(served: dict[str, Any], tmp_path: Any) -> None:
    """A real clip as long as the probe's training clips, looped 3x and 10x: windows of the
    training length keep P(fake) within 0.05; the whole clip's log-sum-exp would not."""
    from featstore.sample import talking_clip, write_clip

    models = {m["name"]: m for m in httpx.get(f"{served['base']}/v1/models").json()["models"]}
    card = models["probe"]
    window_s = card["windows"]["window_s"]
    assert card["windows"]["lengths"]["selection"] == "sample:train"
    assert card["localization"]["calibrated_on"]["selection"] == "sample:train"  # --no-val
    video, audio = talking_clip(seed=21, duration_s=window_s)
    results = {}
    for loops in (1, 3, 10):
        path = tmp_path / f"loop{loops}.mp4"
        write_clip(path, np.concatenate([video] * loops), np.concatenate([audio] * loops))
        r = _upload(served, path, runs="probe")
        assert r.status_code == 200, r.text
        (results[loops],) = r.json()["results"]
    once = results[1]
    assert not once["windows"]["applied"]
    for loops in (3, 10):
        res = results[loops]
        assert res["windows"]["applied"] and len(res["windows"]["scores"]) == 2 * loops - 1
        assert res["score"] == max(w["score"] for w in res["windows"]["scores"])
        assert abs(res["probability"] - once["probability"]) < 0.05, (loops, res, once)
    # scored whole, the 10x clip's log-sum-exp grows by about log(10)
    assert results[10]["windows"]["whole_score"] > once["score"] + 1.5
    off = _upload(served, tmp_path / "loop10.mp4", runs="probe", windows="off").json()
    assert off["results"][0]["score"] == pytest.approx(results[10]["windows"]["whole_score"])


def test_too_short_uploads_name_the_minimum(served: dict[str, Any], tmp_path: Any) -> None:
    from featstore.sample import talking_clip, write_clip

    video, audio = talking_clip(seed=22, duration_s=1.0)
    path = tmp_path / "short.mp4"
    write_clip(path, video[:20], audio[: 20 * 640])  # 0.8 s: 20 rows
    r = _upload(served, path, runs="sync")
    assert r.status_code == 422, r.text
    assert (
        "needs at least 31 rows" in r.json()["detail"]
        and "15 rows either side" in r.json()["detail"]
    )
    r = _upload(served, path, runs="probe")  # its training clips: 1.28-1.6 s
    assert r.status_code == 200, r.text
    write_clip(path, video[:8], audio[: 8 * 640])
    r = _upload(served, path, runs="probe")
    assert r.status_code == 422 and "trained on clips" in r.json()["detail"], r.text
