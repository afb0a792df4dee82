"""A tiny-CLIP probe explained end to end: ``explain spatial``, ``explain clicks`` and HTTP.

References are independent of the code under test: frame choices and stored logits
are recomputed from the stored rows and the probe's weights in numpy, click errors
from the peaks ``explain spatial`` wrote, HTTP peaks against the CLI's.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from featstore.cli.main import app
from featstore.spatial import FrameHead

from spatial_fixtures import CLICK_FRAMES, H, W, SpatialSetup, build, click_point  # isort: skip

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> SpatialSetup:
    return build(tmp_path_factory.mktemp("spatial-e2e"))


def probe_head(run_dir: Path) -> FrameHead:
    from safetensors.numpy import load_file

    state = load_file(str(run_dir / "model.safetensors"))
    return FrameHead(state["w"], float(state["b"][0]), bool(state["l2_normalize"][0]))


def stored_logits(setup: SpatialSetup, video_id: str) -> np.ndarray:
    from featstore.store import open_store

    rows = open_store(setup.store).video("exddv", "clip", video_id, "last")
    return probe_head(setup.run_dir).logits_np(rows.astype(np.float32))


def invoke(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def explain(setup: SpatialSetup, out: Path, videos: list[str], frames: str, *extra: str) -> None:
    args = ["explain", "spatial", str(setup.run_dir), "--on", "exddv", "--frames", frames]
    for v in videos:
        args += ["--video", v]
    invoke(*args, "--out", str(out), *extra)


def test_explain_spatial_top_frames(setup: SpatialSetup, tmp_path: Path) -> None:
    out = tmp_path / "expl"
    videos = list(setup.fakes)
    explain(setup, out, videos, "top", "--top-k", "3")
    assert (out / "contact_sheet.png").stat().st_size > 0
    for vid in videos:
        z = stored_logits(setup, vid)  # [30] reference from the stored rows
        npz = np.load(out / f"{vid}.npz")
        doc = json.loads((out / f"{vid}.json").read_text())
        top = np.argsort(-z, kind="stable")[:3]
        assert npz["frames"].tolist() == top.tolist()  # 25 Hz rows = frames
        np.testing.assert_allclose(npz["stored_logits"], z[top], atol=1e-5)
        # the explanation's own forward of the media reproduces the stored rows' logits
        np.testing.assert_allclose(npz["logits"], z[top], atol=2e-2)
        assert npz["maps"].shape == (3, 7, 7) and npz["frame_maps"].shape[1:] == (77, 128)
        assert np.all((npz["peaks"] >= 0) & (npz["peaks"] <= 1))
        assert [f["frame"] for f in doc["frames"]] == top.tolist()
        np.testing.assert_allclose([f["peak"] for f in doc["frames"]], npz["peaks"])
        assert doc["method"] == "gradcam" and doc["target"].endswith("layers[1].layer_norm1")
        for f in top:
            assert (out / f"{vid}_f{int(f):05d}.png").stat().st_size > 0
        # CLIP sees the centre square of the 160x96 frame: every peak lies inside it
        x = npz["peaks"][:, 0] * W
        assert np.all((x > (W - H) / 2) & (x < (W + H) / 2))


def test_explain_spatial_frame_list_and_errors(setup: SpatialSetup, tmp_path: Path) -> None:
    out = tmp_path / "list"
    explain(setup, out, [setup.fakes[0]], "29,0")
    assert np.load(out / f"{setup.fakes[0]}.npz")["frames"].tolist() == [29, 0]
    bad = CliRunner().invoke(
        app,
        ["explain", "spatial", str(setup.run_dir), "--on", "exddv", "--video",
         setup.fakes[0], "--frames", "40", "--out", str(out)],
    )  # fmt: skip
    assert bad.exit_code == 1 and bad.output.startswith("error:") and "outside" in bad.output


def test_explain_clicks_against_hand_computed_errors(setup: SpatialSetup, tmp_path: Path) -> None:
    click = click_point()
    preds = tmp_path / "clickmodel.csv"
    pd.DataFrame(
        [
            {"video_id": v, "frame": f, "x": click["x"] if f == 5 else 0.5,
             "y": click["y"] if f == 5 else 0.5}
            for v in setup.fakes
            for f in CLICK_FRAMES
        ]
    ).to_csv(preds, index=False)  # fmt: skip
    out = tmp_path / "clicks"
    invoke(
        "explain", "clicks", str(setup.run_dir), "--on", "exddv:test", "--out", str(out),
        "--predictions", str(preds), "--thresholds", "0,0.5", "--grid", "2",
    )  # fmt: skip
    clicks = pd.read_csv(out / "clicks.csv")
    assert len(clicks) == len(setup.fakes) * len(CLICK_FRAMES)
    centre = (abs(0.5 - click["x"]) + abs(0.5 - click["y"])) / 2
    np.testing.assert_allclose(clicks["frame centre"], centre)
    model = np.where(clicks["source_frame"] == 5, 0.0, centre)
    np.testing.assert_allclose(clicks["clickmodel"], model, atol=1e-12)
    assert clicks["face centre"].isna().all()  # no cached face tracks
    # the explanation's errors from the peaks `explain spatial` gives for the clicked frames
    spatial = tmp_path / "spatial"
    explain(setup, spatial, list(setup.fakes), ",".join(map(str, CLICK_FRAMES)))
    for vid in setup.fakes:
        peaks = np.load(spatial / f"{vid}.npz")["peaks"]
        want = np.abs(peaks - [click["x"], click["y"]]).mean(axis=1)
        got = clicks[clicks["video_id"] == vid].sort_values("frame")["explanation"]
        np.testing.assert_allclose(got, want, atol=1e-9)
    videos = pd.read_csv(out / "videos.csv")
    summary = json.loads((out / "clicks.json").read_text())
    assert (
        summary["n_videos"] == len(setup.fakes)
        and summary["n_videos_per_method"]["face centre"] == 0
    )
    for method in ("explanation", "frame centre", "clickmodel", "random"):
        assert summary["mae"][method] == pytest.approx(videos[method].mean())
    curve = pd.read_csv(out / "curve.csv")
    assert set(curve["threshold"]) == {0.0, 0.5}
    assert curve[(curve["threshold"] == 0.0)]["n_videos"].max() == len(setup.fakes)
    for png in ("clicks_mae.png", "clicks_grid.png"):
        assert (out / png).stat().st_size > 0


def test_http_explain_spatial(setup: SpatialSetup, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from featstore.api.app import create_app
    from featstore.api.settings import RunSpec, Settings

    settings = Settings(store_url=setup.store, runs=(RunSpec("clip", setup.run_dir),))
    vid = setup.fakes[0]
    with TestClient(create_app(settings)) as client:
        deadline = time.monotonic() + 120
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, client.get("/readyz").text
            time.sleep(0.05)
        with (setup.root / f"{vid}.mp4").open("rb") as fh:
            r = client.post("/v1/score?explain=spatial&explain_frames=3", files={"file": fh})
        assert r.status_code == 200, r.text
        result = r.json()["results"][0]
        spatial = result["spatial"]
        scores = np.asarray(result["frame_scores"])
        frames = [f["frame"] for f in spatial["frames"]]
        assert frames == np.argsort(-scores, kind="stable")[:3].tolist()
        assert spatial["map_hw"] == [10, 16] and spatial["method"] == "gradcam"
        for f in spatial["frames"]:
            assert len(f["map"]) == 10 and all(len(row) == 16 for row in f["map"])
        stored = client.get(
            f"/v1/datasets/exddv/videos/{vid}/scores",
            params={"run": "clip", "explain": "spatial", "explain_frames": 3},
        )
        assert stored.status_code == 200, stored.text
        assert stored.json()["spatial"]["frames"], stored.text
        too_many = client.post("/v1/score?explain=spatial&explain_frames=99", files={"file": b"x"})
        assert too_many.status_code == 422
    # the same frames through the CLI give the same peaks (the upload is the stored file)
    out = tmp_path / "cli"
    explain(setup, out, [vid], ",".join(map(str, frames)))
    np.testing.assert_allclose(
        [f["peak"] for f in spatial["frames"]], np.load(out / f"{vid}.npz")["peaks"], atol=1e-9
    )


def test_an_encoder_that_does_not_compute_the_stored_rows_is_refused(tmp_path: Path) -> None:
    """FSFM loaded with CLS pooling cannot explain rows extracted with mean pooling."""
    from featstore.encoders import load_encoder
    from featstore.encoders.fsfm_tiny import save_tiny_checkpoint
    from featstore.spatial import SpatialError
    from featstore.trainers.inputs import StoredFeature
    from featstore.trainers.spatial import _check_encoder

    ckpt = str(save_tiny_checkpoint(tmp_path / "fsfm" / "checkpoint.pth"))
    stored = load_encoder("fsfm", ckpt).info(layers=["last"])  # what extraction recorded
    feature = StoredFeature(encoder="fsfm", layer="last", frame_hz=25.0, dim=16)
    _check_encoder(load_encoder("fsfm", ckpt), feature, stored, "ds")  # the same: fine
    with pytest.raises(SpatialError, match="pooling"):
        _check_encoder(load_encoder("fsfm", ckpt, pooling="cls"), feature, stored, "ds")
