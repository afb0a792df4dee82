"""``POST /v1/score?segment=true`` through a real uvicorn server: uploads from the wild.

The upload is a synthetic two-speaker video (``wild_fixtures.make_two_speaker_video``:
speaker A, a faceless cut-away under a voice-over, speaker B). The reference is the
offline path run by the CLI before the server starts: the same file as a dataset, cut by
``featstore datasets segment`` and extracted by ``featstore extract`` (a seek per
segment, crops from the stored track), then scored from the store by
``GET /v1/datasets/.../scores``. The server segments and scores the upload on its own;
each segment must have the span and the scores of the stored segment of the same id.
Two runs: a logfbank probe (audio) and a mouth-pixels probe (the segment's mouth crops).
"""

from __future__ import annotations

import itertools
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

pytest.importorskip("dlib")
pytest.importorskip("cv2")
pytest.importorskip("silero_vad")

import uvicorn
from typer.testing import CliRunner

from featstore.api.app import create_app
from featstore.api.settings import RunSpec, Settings, SettingsError
from featstore.cli.main import app as cli

from trainer_fixtures import write_planted_dataset  # isort: skip
from wild_fixtures import make_two_speaker_video  # isort: skip

MOUTH_DIM = 22 * 22  # mouth-pixels: an 88x88 mouth crop pooled by 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cli(*args: object) -> str:
    out = CliRunner().invoke(cli, [str(a) for a in args])
    assert out.exit_code == 0, out.output
    return out.output


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from featstore.store import open_store
    from featstore.trainers.kinds.probe import train as train_probe
    from featstore.trainers.probe import ProbeConfig

    root = tmp_path_factory.mktemp("segments-api")
    video = make_two_speaker_video(root)
    url = str(root / "features.zarr")
    store = open_store(url, mode="a", durable=False)
    for encoder, dim, run in (("logfbank", 104, "audio"), ("mouth-pixels", MOUTH_DIM, "mouth")):
        write_planted_dataset(store, "planted", n_videos=12, dim=dim, encoder=encoder)
        train_probe(
            store,
            features=f"{encoder}:last",
            train="planted:train",
            out=root / run,
            config=ProbeConfig(max_epochs=2),
        )
    # the offline reference: the upload as a dataset, segmented and extracted by the CLI
    upload = pd.DataFrame(
        [dict(video_id="up", path=video.path.name, label=0, split="test", fake_segments=[])]
    )
    store.write_manifest("up", upload, attrs={"root": str(video.path.parent)})
    _cli("datasets", "segment", "up", "--store", url, "--asd", "sync")
    for encoder in ("logfbank", "mouth-pixels"):
        _cli("extract", "--encoder", encoder, "--on", "up-segments", "--store", url)
    settings = Settings(
        store_url=url,
        runs=(RunSpec("audio", root / "audio"), RunSpec("mouth", root / "mouth")),
        asd="sync",
        request_timeout_s=300,
    )
    port = _free_port()
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/readyz").status_code == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    else:
        raise AssertionError("server did not become ready")
    yield {"base": base, "video": video, "store": url}
    srv.should_exit = True
    thread.join(10)


def _post(base: str, path: Path, query: str = "?segment=true") -> httpx.Response:
    with path.open("rb") as fh:
        return httpx.post(
            f"{base}/v1/score{query}", files={"file": (path.name, fh, "video/mp4")}, timeout=300
        )


def test_an_upload_is_scored_in_single_speaker_segments(server: dict[str, Any]) -> None:
    from featstore.store import open_store

    base, video = server["base"], server["video"]
    r = _post(base, video.path)
    assert r.status_code == 200, r.text
    doc = r.json()
    seg = doc["segmentation"]
    assert seg["asd"] == "sync"
    spans = [(s["start_s"], s["end_s"]) for s in seg["segments"]]
    assert len(spans) == len(video.speaking) == 2
    for (s, e), (ks, ke) in zip(spans, video.speaking, strict=True):
        assert abs(s - ks) <= 0.2 and abs(e - ke) <= 0.2, (spans, video.speaking)
    # the faceless cut-away is dropped as no_face; the dropped spans and segments tile the video
    cut = video.spans["cutaway"]
    no_face = [d for d in seg["dropped"] if d["reason"] == "no_face"]
    assert any(
        abs(d["start_s"] - cut[0]) < 0.05 and abs(d["end_s"] - cut[1]) < 0.05 for d in no_face
    )
    covered = sorted([*spans, *((d["start_s"], d["end_s"]) for d in seg["dropped"])])
    assert covered[0][0] == 0.0 and covered[-1][1] == pytest.approx(doc["duration_s"])
    assert all(a[1] == pytest.approx(b[0]) for a, b in itertools.pairwise(covered))

    # each segment scores as the stored segment of the same span does (the offline path)
    stored = open_store(server["store"]).manifest("up-segments")
    assert sorted(zip(stored["start_s"], stored["end_s"], strict=True)) == spans
    _check_segments(base, doc, stored, {})
    _check_video_verdicts(doc)


# the request's segment rules and windowing reach every segment's verdict
PAPER_READING = {
    "threshold": "paper",
    "smooth_s": 0,
    "min_segment_s": 0,
    "merge_gap_s": 0,
    "windows": "off",
}


def test_segment_rules_and_windows_apply_to_every_segment(server: dict[str, Any]) -> None:
    from featstore.store import open_store

    base = server["base"]
    query = "?segment=true&" + "&".join(f"{k}={v}" for k, v in PAPER_READING.items())
    r = _post(base, server["video"].path, query=query)
    assert r.status_code == 200, r.text
    doc = r.json()
    stored = open_store(server["store"]).manifest("up-segments")
    _check_segments(base, doc, stored, PAPER_READING)
    for s in doc["segmentation"]["segments"]:
        for res in s["results"]:
            loc = res["localization"]
            assert (loc["threshold_name"], loc["frame_threshold"]) == ("paper", 0.0)
            assert (loc["smooth_s"], loc["min_segment_s"], loc["merge_gap_s"]) == (0, 0, 0)
            assert not res["windows"]["applied"] and res["windows"]["scores"] == []
            assert res["score"] == res["windows"]["whole_score"]
            # the paper's reading: runs of frames above 0, in the upload's seconds
            hz, frames = res["frame_hz"], np.asarray(res["frame_scores"])
            above = np.flatnonzero(frames > 0)
            runs = np.split(above, np.flatnonzero(np.diff(above) > 1) + 1) if above.size else []
            expected = [(s["start_s"] + x[0] / hz, s["start_s"] + (x[-1] + 1) / hz) for x in runs]
            got = [(x["start_s"], x["end_s"]) for x in loc["segments"] if not x["below_threshold"]]
            np.testing.assert_allclose(
                np.reshape(got, (-1, 2)), np.reshape(expected, (-1, 2)), atol=1e-6
            )
    _check_video_verdicts(doc)


def _check_segments(base: str, doc: dict[str, Any], stored: Any, params: dict[str, Any]) -> None:
    """Every segment's verdict equals the stored segment's (same ``params``), with every
    time but the frame scores' moved to the upload's seconds."""
    for s in doc["segmentation"]["segments"]:
        row = stored[(stored["start_s"] == s["start_s"]) & (stored["end_s"] == s["end_s"])].iloc[0]
        assert [x["run"] for x in s["results"]] == ["audio", "mouth"]
        t0 = s["start_s"]
        for res in s["results"]:
            ref = httpx.get(
                f"{base}/v1/datasets/up-segments/videos/{row['video_id']}/scores",
                params={"run": res["run"], **params},
            ).json()
            assert res["score"] == pytest.approx(ref["score"], rel=1e-5, abs=1e-6)
            np.testing.assert_allclose(
                res["frame_scores"], ref["frame_scores"], rtol=1e-5, atol=1e-6
            )
            shifted = [[a + t0, b + t0, v] for a, b, v in ref["segments"]]
            np.testing.assert_allclose(
                np.reshape(res["segments"], (-1, 3)),
                np.reshape(shifted, (-1, 3)),
                rtol=1e-6,
                atol=1e-6,
            )
            loc, ref_loc = res["localization"], ref["localization"]
            assert loc["threshold_name"] == ref_loc["threshold_name"]
            assert loc["frame_threshold"] == pytest.approx(ref_loc["frame_threshold"])
            assert [x["below_threshold"] for x in loc["segments"]] == [
                x["below_threshold"] for x in ref_loc["segments"]
            ]
            _close(
                [(x["start_s"], x["end_s"]) for x in loc["segments"]],
                [(x["start_s"] + t0, x["end_s"] + t0) for x in ref_loc["segments"]],
                2,
            )
            _close(loc["proposals"], [(c, a + t0, b + t0) for c, a, b in ref_loc["proposals"]], 3)
            win, ref_win = res["windows"], ref["windows"]
            assert win["applied"] == ref_win["applied"]
            assert win["whole_score"] == pytest.approx(ref_win["whole_score"], rel=1e-5, abs=1e-6)
            _close(
                [(w["start_s"], w["end_s"], w["score"]) for w in win["scores"]],
                [(w["start_s"] + t0, w["end_s"] + t0, w["score"]) for w in ref_win["scores"]],
                3,
            )


def _close(got: Any, expected: Any, width: int) -> None:
    np.testing.assert_allclose(
        np.reshape(got, (-1, width)), np.reshape(expected, (-1, width)), rtol=1e-5, atol=1e-5
    )


def _check_video_verdicts(doc: dict[str, Any]) -> None:
    """The video's verdict per run: the maximum over its segments, with every segment's
    fake segments and localization, the windows of the segment whose score it is."""
    seg = doc["segmentation"]
    for i, res in enumerate(doc["results"]):
        per_segment = [s["results"][i] for s in seg["segments"]]
        scores = [x["score"] for x in per_segment]
        assert res["run"] == seg["segments"][0]["results"][i]["run"]
        assert res["score"] == max(scores) and res["segment"] == int(np.argmax(scores))
        assert res["label"] == ("fake" if max(scores) > res["threshold"] else "real")
        assert res["frame_scores"] == []
        assert res["windows"] == per_segment[res["segment"]]["windows"]
        every = [x for r in per_segment for x in r["localization"]["segments"]]
        assert res["localization"]["segments"] == sorted(
            every, key=lambda x: (x["start_s"], x["end_s"])
        )
        assert [x[:2] for x in res["segments"]] == [
            [x["start_s"], x["end_s"]] for x in res["localization"]["segments"]
        ]
        proposals = [p for r in per_segment for p in r["localization"]["proposals"]]
        assert (
            res["localization"]["proposals"]
            == sorted(proposals, key=lambda p: (-p[0], p[1], p[2]))[:100]
        )
        if res["label"] == "fake":  # a fake verdict points somewhere
            assert res["localization"]["segments"]


def test_an_upload_without_a_segment_is_refused(server: dict[str, Any]) -> None:
    r = _post(server["base"], server["video"].silent_path)  # no audio stream
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert detail.startswith("no single-speaker segment") and "no_audio 2.0 s" in detail
    # without segment=true and without runs: the mouth probe scores it, the audio probe is
    # skipped and the response says why
    plain = _post(server["base"], server["video"].silent_path, query="")
    assert plain.status_code == 200, plain.text
    doc = plain.json()
    assert [r["run"] for r in doc["results"]] == ["mouth"]
    ((skipped,),) = [doc["skipped"]]
    assert skipped["run"] == "audio" and skipped["reason"] == "no_audio_stream"
    assert "logfbank" in skipped["detail"]
    # the audio probe named: a 422 for an HTTP client (the run, its encoder, what to send)
    named = _post(server["base"], server["video"].silent_path, query="?runs=audio")
    assert named.status_code == 422, named.text
    detail = named.json()["detail"]
    assert "run audio: no audio stream: its encoder logfbank reads audio" in detail
    assert "upload a file with an audio track" in detail and "runs=mouth" in detail
    assert "audio=False" not in detail and "no single-speaker segment" not in detail


def test_a_server_without_the_faces_extra_refuses_segment_true(
    server: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default detector may be missing (then only segment=true is refused, 501); one
    asked for by name must load."""
    from fastapi.testclient import TestClient

    from featstore.api import segments
    from featstore.api.scoring import ScoringService
    from featstore.landmarks import FacesUnavailableError

    monkeypatch.setattr(segments, "_importable", lambda module: module != "dlib")
    settings = Settings(store_url=server["store"], runs=(RunSpec("x", tmp_path),))
    service = ScoringService(settings)
    service._load_asd()
    service.ready = True  # nothing else to load for this check
    with TestClient(create_app(settings, service=service)) as client:
        r = client.post(
            "/v1/score?segment=true", files={"file": ("a.mp4", b"\0" * 64, "video/mp4")}
        )
    assert r.status_code == 501 and "dlib" in r.json()["detail"], r.text
    named = ScoringService(Settings(store_url=server["store"], runs=settings.runs, asd="sync"))
    with pytest.raises(FacesUnavailableError, match="dlib"):
        named._load_asd()
    with pytest.raises(SettingsError, match="--asd must be one of"):
        Settings(store_url=server["store"], runs=settings.runs, asd="nope")


def test_segments_and_spatial_explanations_do_not_combine_yet(server: dict[str, Any]) -> None:
    r = _post(server["base"], server["video"].silent_path, query="?segment=true&explain=spatial")
    assert r.status_code == 422 and "segment=true" in r.json()["detail"], r.text
