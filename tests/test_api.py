"""The scoring service: HTTP mapping with a fake scorer, and the real path with a trained probe."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from featstore.api.app import create_app, get_settings
from featstore.api.batching import MicroBatcher
from featstore.api.models import ScoreResponse, StoredScoreResponse
from featstore.api.scoring import NotReadyError, ScoreOptions, UnknownRunError
from featstore.api.settings import RunSpec, Settings, SettingsError, parse_checkpoints, parse_run
from featstore.encoders.base import Clip, ClipError
from featstore.errors import UnknownVideoError

from trainer_fixtures import write_planted_dataset  # isort: skip

# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A store with a planted logfbank dataset and an extracted sample dataset; a probe run."""
    from featstore.datasets import read_dataset
    from featstore.extract import extract
    from featstore.sample import make_sample
    from featstore.store import open_store
    from featstore.trainers.evaluate import fuse
    from featstore.trainers.kinds.probe import train as train_probe
    from featstore.trainers.probe import ProbeConfig

    root = tmp_path_factory.mktemp("api")
    store = open_store(root / "features.zarr", mode="a", durable=False)
    write_planted_dataset(store, "planted", n_videos=16, dim=104, encoder="logfbank")
    train_probe(
        store,
        features="logfbank:last",
        train="planted:train",
        out=root / "runs" / "probe",
        # centred bias (an option) and lr 0.01: after 3 epochs of 16 videos the probe localizes
        config=ProbeConfig(max_epochs=3, lr=0.01, center_bias=True),
    )
    train_probe(
        store,
        features="logfbank:last",
        train="planted:train",
        out=root / "runs" / "probe2",
        config=ProbeConfig(max_epochs=3, lr=0.01, seed=7, center_bias=True),
    )
    fuse([root / "runs" / "probe", root / "runs" / "probe2"], store, "planted:test",
         out=root / "runs" / "fused")  # fmt: skip
    make_sample(root / "sample", n_clips=2, size=64, duration_s=(2.0, 3.0), seed=1)
    imported = read_dataset("av1m", root / "sample")
    manifest = imported.manifest
    store.write_manifest("sample", manifest, attrs={"root": str(imported.root)})
    summary = extract(store, dataset="sample", encoder="logfbank", num_workers=1)
    assert summary.videos_done == 2, summary
    clips = {row.video_id: root / "sample" / row.path for row in manifest.itertuples()}
    return {"root": root, "store": str(root / "features.zarr"), "clips": clips}


def real_settings(world: dict[str, Any], **kw: Any) -> Settings:
    runs = (
        RunSpec("probe", world["root"] / "runs" / "probe"),
        RunSpec("fused", world["root"] / "runs" / "fused"),
    )
    return Settings(store_url=world["store"], runs=runs, **kw)


def wait_ready(client: TestClient, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        r = client.get("/readyz")
        if r.status_code == 200:
            return
        time.sleep(0.02)
    raise AssertionError(f"not ready: {r.json()}")


@pytest.fixture(scope="module")
def real(world: dict[str, Any]) -> Any:
    with TestClient(create_app(real_settings(world))) as client:
        wait_ready(client)
        yield client


def clip_bytes(world: dict[str, Any], i: int = 0) -> tuple[str, bytes]:
    video_id, path = sorted(world["clips"].items())[i]
    return video_id, path.read_bytes()


class FakeService:
    """Stands in for ScoringService: records calls, can be slow or not ready."""

    def __init__(self, *, ready: bool = True, delay_s: float = 0.0) -> None:
        self.ready, self.error, self.delay_s = ready, None, delay_s
        self.release = threading.Event()
        self.seen: list[dict[str, Any]] = []

    def load(self) -> None:
        self.release.wait(10)
        self.ready = True

    def check_ready(self) -> None:
        if not self.ready:
            raise NotReadyError("models are loading")

    def upload_runs(self, names: list[str] | None) -> list[str]:
        self.check_ready()
        if names and "nope" in names:
            raise UnknownRunError("no run named 'nope'")
        return names or ["fake"]

    async def score_upload(
        self, path: str, runs: Any, *, filename: str | None, options: Any = None
    ) -> ScoreResponse:
        self.seen.append(
            {
                "path": path,
                "exists": os.path.exists(path),
                "runs": runs,
                "filename": filename,
                "options": options,
            }
        )
        await asyncio.sleep(self.delay_s)
        return ScoreResponse(
            filename=filename, size_bytes=os.path.getsize(path), duration_s=1.0, results=[]
        )

    def score_stored(
        self, dataset: str, video_id: str, run: str, options: Any = None
    ) -> StoredScoreResponse:
        raise UnknownVideoError(f"no committed features for video {video_id!r}")

    def datasets(self) -> Any:
        return {"datasets": []}

    def models(self) -> Any:
        self.check_ready()
        return {"models": []}

    async def close(self) -> None:
        pass


def fake_app(tmp_path: Path, service: FakeService, **kw: Any) -> Any:
    kw.setdefault("upload_dir", str(tmp_path / "uploads"))
    (tmp_path / "uploads").mkdir(exist_ok=True)
    settings = Settings(store_url="unused", runs=(RunSpec("fake", tmp_path),), **kw)
    return create_app(settings, service=service)


def post(client: TestClient, media: bytes, ctype: str = "video/mp4", **kw: Any) -> Any:
    return client.post("/v1/score", files={"file": ("clip.mp4", media, ctype)}, **kw)


# ------------------------------------------------------------------ settings


def test_parse_run_and_checkpoints() -> None:
    assert parse_run("runs/w2v/") == RunSpec("w2v", Path("runs/w2v"))
    assert parse_run("a=runs/x") == RunSpec("a", Path("runs/x"))
    with pytest.raises(SettingsError, match="run name"):
        parse_run("bad name=runs/x")
    assert parse_checkpoints(["clip=/ckpt"]) == {"clip": "/ckpt"}
    with pytest.raises(SettingsError, match="ENCODER=PATH"):
        parse_checkpoints(["clip"])
    with pytest.raises(SettingsError, match="unique"):
        Settings(store_url="s", runs=(RunSpec("a", Path("x")), RunSpec("a", Path("y"))))


# ------------------------------------------------------------------ HTTP mapping (fake scorer)


def test_health_and_readiness(tmp_path: Path) -> None:
    service = FakeService(ready=False)
    with TestClient(fake_app(tmp_path, service)) as client:
        try:
            assert client.get("/healthz").json()["status"] == "ok"
            r = client.get("/readyz")
            assert r.status_code == 503 and r.json() == {"detail": "models are loading"}
            assert client.get("/v1/models").status_code == 503
        finally:
            service.release.set()
        wait_ready(client)
        assert client.get("/v1/models").status_code == 200


def test_upload_reaches_scorer_and_temp_file_is_removed(tmp_path: Path, world: Any) -> None:
    service = FakeService()
    _, data = clip_bytes(world)
    with TestClient(fake_app(tmp_path, service)) as client:
        r = client.post(
            "/v1/score",
            files={"file": ("c.mp4", data, "video/mp4")},
            data={"runs": "probe, other"},
        )
    assert r.status_code == 200, r.text
    assert r.json()["size_bytes"] == len(data)
    (seen,) = service.seen
    assert seen["exists"] and seen["runs"] == ["probe", "other"] and seen["filename"] == "c.mp4"
    assert not os.path.exists(seen["path"])
    assert list((tmp_path / "uploads").iterdir()) == []
    assert seen["options"] == ScoreOptions()  # the runs' own cards, windows on
    with TestClient(fake_app(tmp_path, service)) as client:
        query = {"threshold": "paper", "smooth_s": 0.1, "merge_gap_s": 0, "windows": "off"}
        r = client.post("/v1/score", files={"file": ("c.mp4", data, "video/mp4")}, params=query)
        assert r.status_code == 200, r.text
        assert service.seen[-1]["options"] == ScoreOptions(
            threshold="paper", smooth_s=0.1, merge_gap_s=0.0, windows=False
        )
        for bad in ({"smooth_s": -1}, {"windows": "always"}):
            r = client.post("/v1/score", files={"file": ("c.mp4", data, "video/mp4")}, params=bad)
            assert r.status_code == 422, r.text


def test_upload_size_limit_413(tmp_path: Path) -> None:
    """A chunked body (no Content-Length) passing the limit; tests/test_api_server.py
    shows over a socket that the 413 comes before the rest is sent."""
    service = FakeService()
    boundary = "xyz"

    def body() -> Any:
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.mp4"\r\n'
            "Content-Type: video/mp4\r\n\r\n"
        ).encode()
        for _ in range(200):
            yield b"\x00" * 65536

    with TestClient(fake_app(tmp_path, service, max_upload_bytes=100_000)) as client:
        r = client.post(
            "/v1/score",
            content=body(),
            headers={"content-type": f"multipart/form-data; boundary={boundary}"},
        )
        assert r.status_code == 413 and "limit" in r.json()["detail"]
        # a declared Content-Length above the limit is refused before any body is read
        r = post(client, b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 200_000)
        assert r.status_code == 413
    assert not service.seen
    assert list((tmp_path / "uploads").iterdir()) == []


@pytest.mark.parametrize(
    ("ctype", "data", "status"),
    [
        ("text/plain", b"\x00\x00\x00\x18ftypmp42", 415),  # declared type
        ("application/octet-stream", b"hello, I am text" * 10, 415),  # sniffed content
        ("video/mp4", b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x00" * 64, 415),  # audio, not video
        ("video/mp4", b"\x00\x00\x00\x18ftypmp42" + b"\x01" * 500, 422),  # undecodable
        ("video/mp4", b"", 422),  # empty
    ],
)
def test_bad_media(tmp_path: Path, ctype: str, data: bytes, status: int) -> None:
    service = FakeService()
    with TestClient(fake_app(tmp_path, service)) as client:
        r = post(client, data, ctype)
    assert r.status_code == status, r.text
    assert isinstance(r.json()["detail"], str)
    assert str(tmp_path) not in r.json()["detail"]  # no server paths in messages
    assert not service.seen


def test_not_multipart_and_missing_file(tmp_path: Path) -> None:
    with TestClient(fake_app(tmp_path, FakeService())) as client:
        r = client.post("/v1/score", content=b"abc", headers={"content-type": "video/mp4"})
        assert r.status_code == 415
        r = client.post("/v1/score", files={"other": ("a", b"x")}, data={"runs": "a"})
        assert r.status_code == 422 and "'file'" in r.json()["detail"]
        r = client.post("/v1/score", files=[("file", ("a", b"x")), ("file", ("b", b"y"))])
        assert r.status_code == 422 and "exactly one" in r.json()["detail"]
        r = post(client, b"\x00\x00\x00\x18ftypmp42", data={"runs": "nope"})
        assert r.status_code == 404 and "nope" in r.json()["detail"]


_MP4_HEAD = b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 64


def _part(boundary: str, name: str, value: bytes, *, filename: str | None = None) -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    kind = "Content-Type: video/mp4\r\n" if filename else ""
    return (
        f"--{boundary}\r\nContent-Disposition: {disposition}\r\n{kind}\r\n".encode()
        + value
        + b"\r\n"
    )


def _fields(boundary: str, n: int, size: int) -> Any:
    """A chunked body (no Content-Length) of ``n`` fields of ``size`` bytes, then a file."""
    for i in range(n):
        yield _part(boundary, f"f{i}", b"x" * size)
    yield _part(boundary, "file", _MP4_HEAD, filename="a.mp4") + f"--{boundary}--\r\n".encode()


_B = "bnd"
_FILE = _part(_B, "file", _MP4_HEAD, filename="a.mp4")
_END = f"--{_B}--\r\n".encode()


@pytest.mark.parametrize(
    ("body", "boundary", "status", "needle"),
    [
        # the 7-million-fields body of issue 13 (at 6 MB here): refused at the 17th part
        (_fields(_B, 100_000, 1), _B, 400, "more than 16 parts"),
        # fields count toward the body limit (100 kB here), chunked, no Content-Length
        (_fields(_B, 12, 10_000), _B, 413, "limit of 0.1 MB"),
        (_part(_B, "runs", b"a" * 20_000) + _FILE + _END, _B, 413, "longer than 16384 bytes"),
        (_FILE + _END, "b" * 300, 400, "boundary"),  # python-multipart refuses > 256
        (_FILE + _END, "", 400, "no boundary"),
        (b"this is not multipart at all", _B, 400, "malformed multipart body"),
        (_FILE, _B, 400, "closing boundary"),  # truncated: no closing boundary
        (  # a part header line beyond python-multipart's 4 KiB
            f'--{_B}\r\nContent-Disposition: form-data; name="file"; filename="{"a" * 5000}"\r\n'
            "\r\n".encode()
            + _MP4_HEAD
            + b"\r\n"
            + _END,
            _B,
            400,
            "header",
        ),
        (  # 12 kB of header lines in one part, each within python-multipart's bounds
            f'--{_B}\r\nContent-Disposition: form-data; name="file"\r\n'.encode()
            + b"".join(b"X-%d: %s\r\n" % (i, b"y" * 2000) for i in range(6))
            + b"\r\n"
            + _MP4_HEAD
            + b"\r\n"
            + _END,
            _B,
            400,
            "part headers longer than 8192 bytes",
        ),
        (  # more header lines in one part than python-multipart allows (8)
            f'--{_B}\r\nContent-Disposition: form-data; name="file"\r\n'.encode()
            + b"".join(b"X-%d: y\r\n" % i for i in range(20))
            + b"\r\n"
            + _MP4_HEAD
            + b"\r\n"
            + _END,
            _B,
            400,
            "header",
        ),
    ],
    ids=[
        "many-fields",
        "fields-count",
        "long-field",
        "long-boundary",
        "no-boundary",
        "garbage",
        "truncated",
        "long-part-header",
        "long-part-headers",
        "many-part-headers",
    ],
)
def test_multipart_abuse(
    tmp_path: Path, body: Any, boundary: str, status: int, needle: str
) -> None:
    """Hostile multipart bodies get a 4xx with a clear message; nothing is scored or left."""
    service = FakeService()
    ctype = "multipart/form-data" + (f"; boundary={boundary}" if boundary else "")
    # the test client sends a body in one piece: the fields-count case needs a limit below it
    limit = 100_000 if status == 413 else 200 * 2**20
    with TestClient(fake_app(tmp_path, service, max_upload_bytes=limit)) as client:
        t0 = time.monotonic()
        r = client.post("/v1/score", content=body, headers={"content-type": ctype})
        assert time.monotonic() - t0 < 10
        assert r.status_code == status, r.text
        assert needle in r.json()["detail"], r.json()
        assert "Traceback" not in r.text
        metrics = client.get("/metrics").text
    assert f'endpoint="/v1/score",method="POST",status="{status}"' in metrics
    assert not service.seen
    assert list((tmp_path / "uploads").iterdir()) == []


def test_small_form_within_limits_is_accepted(tmp_path: Path, world: Any) -> None:
    """The limits leave room for what clients send: a file and a few small fields; fields
    the endpoint does not take are refused by name once the body is read (never ignored)."""
    service = FakeService()
    _, clip = clip_bytes(world)
    fields = [_part(_B, f"f{i}", b"x" * 16384) for i in range(14)]  # 16 parts with the file
    body = b"".join(
        [*fields, _part(_B, "runs", b"fake"), _part(_B, "file", clip, filename="c.mp4"), _END]
    )
    ctype = f"multipart/form-data; boundary={_B}"
    with TestClient(fake_app(tmp_path, service, max_upload_bytes=len(body))) as client:
        r = client.post("/v1/score", content=body, headers={"content-type": ctype})
        assert r.status_code == 422, r.text  # within every limit, but f0... are not taken
        assert "unknown form fields 'f0', 'f1'" in r.json()["detail"]
        assert "the form takes 'file', 'runs'" in r.json()["detail"]
        r = client.post("/v1/score", content=body + b"\r\n", headers={"content-type": ctype})
        assert r.status_code == 413  # two bytes over: the whole body counts
        taken = b"".join([_part(_B, "runs", b"fake"), _part(_B, "file", clip, filename="c.mp4")])
        r = client.post("/v1/score", content=taken + _END, headers={"content-type": ctype})
        assert r.status_code == 200, r.text
        twice = _part(_B, "runs", b"fake") + taken + _END
        r = client.post("/v1/score", content=twice, headers={"content-type": ctype})
        assert r.status_code == 422 and "'runs' given more than once" in r.json()["detail"]
    assert [s["runs"] for s in service.seen] == [["fake"]]


def test_slow_upload_is_408_not_504(tmp_path: Path) -> None:
    """A client too slow to send its body is the client's fault (408), not a gateway's (504)."""

    def slow() -> Any:
        yield _FILE
        time.sleep(1.0)
        yield _END

    service = FakeService()
    with TestClient(fake_app(tmp_path, service, request_timeout_s=0.3)) as client:
        r = client.post(
            "/v1/score",
            content=slow(),
            headers={"content-type": f"multipart/form-data; boundary={_B}"},
        )
    assert r.status_code == 408 and "not received within 0.3 s" in r.json()["detail"], r.text
    assert not service.seen
    assert list((tmp_path / "uploads").iterdir()) == []


def test_too_long_checked_from_header(tmp_path: Path, world: Any) -> None:
    service = FakeService()
    _, data = clip_bytes(world)
    with TestClient(fake_app(tmp_path, service, max_duration_s=1.0)) as client:
        r = post(client, data)
    assert r.status_code == 422
    assert "limit of 1 s" in r.json()["detail"]
    assert not service.seen


def test_timeout_504(tmp_path: Path, world: Any) -> None:
    service = FakeService(delay_s=5.0)
    _, data = clip_bytes(world)
    with TestClient(fake_app(tmp_path, service, request_timeout_s=0.3)) as client:
        t0 = time.monotonic()
        r = post(client, data)
        assert r.status_code == 504 and "0.3 s" in r.json()["detail"]
        assert time.monotonic() - t0 < 3.0
    assert list((tmp_path / "uploads").iterdir()) == []


def test_api_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, world: Any) -> None:
    with pytest.raises(SettingsError, match="FEATSTORE_TEST_KEY"):
        fake_app(tmp_path, FakeService(), api_key_env="FEATSTORE_TEST_KEY")
    monkeypatch.setenv("FEATSTORE_TEST_KEY", "s3cret")
    service = FakeService()
    _, data = clip_bytes(world)
    with TestClient(fake_app(tmp_path, service, api_key_env="FEATSTORE_TEST_KEY")) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 200
        for headers in ({}, {"X-API-Key": "wrong"}, {"X-API-Key": "s3cret "}):
            assert client.get("/v1/models", headers=headers).status_code == 401
            assert client.get("/metrics", headers=headers).status_code == 401
            r = post(client, data, headers=headers)
            assert r.status_code == 401 and "X-API-Key" in r.json()["detail"]
        assert not service.seen  # the body of a refused upload is never read
        ok = {"X-API-Key": "s3cret"}
        assert client.get("/v1/models", headers=ok).status_code == 200
        assert client.get("/metrics", headers=ok).status_code == 200
        assert post(client, data, headers=ok).status_code == 200


@pytest.mark.parametrize(
    "path",
    [
        "/v1/datasets/..%2F..%2Fetc/videos/x/scores",
        "/v1/datasets/planted/videos/../../etc/passwd/scores",
        "/v1/datasets/planted/videos/a/%2E%2E/b/scores",
        "/v1/datasets/planted/videos/a//b/scores",
        "/v1/datasets/bad%00name/videos/a/scores",
        "/v1/datasets/planted/videos/ok/scores",  # valid id; the (fake) store lacks it
    ],
)
def test_path_parameters_404(tmp_path: Path, path: str) -> None:
    with TestClient(fake_app(tmp_path, FakeService())) as client:
        r = client.get(path, params={"run": "probe"})
    assert r.status_code == 404, r.text
    assert isinstance(r.json()["detail"], str)


def test_dependency_override_of_settings(tmp_path: Path, world: Any) -> None:
    app = fake_app(tmp_path, FakeService())
    small = Settings(store_url="unused", runs=(RunSpec("fake", tmp_path),), max_upload_bytes=10)
    app.dependency_overrides[get_settings] = lambda: small
    _, data = clip_bytes(world)
    with TestClient(app) as client:
        assert post(client, data).status_code == 413


def test_metrics_counts_requests(tmp_path: Path, world: Any) -> None:
    _, data = clip_bytes(world)
    with TestClient(fake_app(tmp_path, FakeService())) as client:
        post(client, data)
        post(client, b"text" * 40, "text/plain")
        text = client.get("/metrics").text
    assert 'featstore_http_requests_total{endpoint="/v1/score",method="POST",status="200"} 1.0' in (
        text
    )
    assert 'endpoint="/v1/score",method="POST",status="415"' in text
    assert "featstore_http_request_duration_seconds_bucket" in text
    assert f"featstore_upload_bytes_total {float(len(data))}" in text


# ------------------------------------------------------------------ micro-batcher


def test_batcher_isolates_a_failing_clip() -> None:
    calls: list[list[str]] = []

    def encode(clips: Any, layers: Any) -> list[dict[Any, np.ndarray]]:
        calls.append([c.video_id for c in clips])
        if any(c.video_id == "bad" for c in clips):
            raise ClipError("clip 'bad' is too short")
        return [{"last": np.full((2, 3), len(c.video_id), np.float32)} for c in clips]

    async def main() -> list[Any]:
        batcher = MicroBatcher(encode, name="fake", max_batch=4, max_wait_s=0.5)
        try:
            return await asyncio.gather(
                batcher.encode(Clip("good"), ["last"]),
                batcher.encode(Clip("bad"), ["last"]),
                batcher.encode(Clip("fine!"), ["last"]),
                return_exceptions=True,
            )
        finally:
            await batcher.close()

    good, bad, fine = asyncio.run(main())
    assert calls[0] == ["good", "bad", "fine!"]  # one batched call, then one per clip
    assert sorted(map(tuple, calls[1:])) == [("bad",), ("fine!",), ("good",)]
    assert good["last"][0, 0] == 4 and fine["last"][0, 0] == 5
    assert isinstance(bad, ClipError)


# ------------------------------------------------------------------ the real path


def test_upload_scores_equal_direct_scoring(real: TestClient, world: Any) -> None:
    from featstore.encoders import load_encoder
    from featstore.extract.decode import prepare_clip
    from featstore.trainers.fusion import fused_score
    from featstore.trainers.probe import ProbeParams, frame_logits, probability, video_logit
    from featstore.trainers.runs import load_run

    video_id, data = clip_bytes(world)
    r = post(real, data)
    assert r.status_code == 200, r.text
    body = r.json()
    results = {x["run"]: x for x in body["results"]}
    assert list(results) == ["probe", "fused"]  # every loaded run, in order
    res = results["probe"]
    assert res["kind"] == "probe" and res["features"] == ["logfbank:last"]

    enc = load_encoder("logfbank")
    clip = prepare_clip("x", str(world["clips"][video_id]), spec=enc.spec, n_rows=enc.n_rows)
    x = enc.encode([clip.clip], ["last"])[0]["last"].astype(np.float16)  # [T, 104] as stored
    probes = [
        ProbeParams.from_state(load_run(world["root"] / "runs" / name).tensors())
        for name in ("probe", "probe2")
    ]
    np.testing.assert_array_equal(np.float32(res["frame_scores"]), frame_logits(probes[0], x))
    s = video_logit(probes[0], x)
    window = res["windows"]
    assert window["whole_score"] == pytest.approx(s, abs=1e-6)
    if window["applied"]:  # longer than the run's training clips: the best window
        rows = round(window["window_s"] * 25)
        starts = [round(w["start_s"] * 25) for w in window["scores"]]
        s = max(video_logit(probes[0], x[a : a + rows]) for a in starts)
        assert starts[-1] + rows == len(x) and len(x) > rows
    assert res["score"] == pytest.approx(s, abs=1e-6)
    assert res["calibrated"] and res["probability"] == pytest.approx(probability(s), abs=1e-6)
    assert res["rank_score"] == res["probability"]
    assert res["label"] == ("fake" if s > 0 else "real")
    assert res["frame_hz"] == 25.0 and body["duration_s"] == pytest.approx(clip.n_frames / 25)
    assert set(res["timings"]) == {"decode_ms", "encode_ms", "score_ms"}

    # the fused run: the average of both probes' probabilities, back on the logit scale
    fused = results["fused"]
    p = np.mean([probability(video_logit(params, x)) for params in probes])
    assert fused["kind"] == "fusion" and fused["calibrated"]
    whole = float(fused_score(np.array([p]))[0])
    assert fused["windows"]["whole_score"] == pytest.approx(whole, abs=1e-5)
    if fused["windows"]["applied"]:  # each window fused, the best one the video's
        rows = round(fused["windows"]["window_s"] * 25)
        starts = [round(w["start_s"] * 25) for w in fused["windows"]["scores"]]
        ps = [np.mean([probability(video_logit(q, x[a : a + rows])) for q in probes])
              for a in starts]  # fmt: skip
        p = max(ps)
    assert fused["score"] == pytest.approx(float(fused_score(np.array([p]))[0]), abs=1e-5)
    assert fused["probability"] == pytest.approx(p, abs=1e-6)
    frame_p = np.mean([probability(frame_logits(params, x)) for params in probes], axis=0)
    np.testing.assert_allclose(fused["frame_scores"], fused_score(frame_p), atol=1e-4)

    # the same clip, already extracted into the store, scores the same from stored rows
    stored = real.get(
        f"/v1/datasets/sample/videos/{quote(video_id)}/scores", params={"run": "probe"}
    )
    assert stored.status_code == 200, stored.text
    doc = stored.json()
    assert doc["score"] == pytest.approx(res["score"], abs=1e-5)
    np.testing.assert_allclose(doc["frame_scores"], res["frame_scores"], atol=1e-5)
    assert doc["annotated_label"] in (0, 1)


def reference_segments(
    frames: np.ndarray,
    hz: float,
    threshold: float,
    *,
    smooth_s: float,
    min_segment_s: float,
    merge_gap_s: float,
) -> list[list[float]]:
    """Segments by hand: scipy's median filter, runs above, merged, long enough."""
    from scipy.ndimage import median_filter

    from featstore.timebase import mask_to_segments

    k = round(smooth_s * hz)
    k = k + 1 - k % 2 if k > 1 else 1
    s = median_filter(np.asarray(frames, np.float64), size=k, mode="nearest")
    out: list[list[float]] = []
    for a, b in mask_to_segments(s > threshold, frame_hz=hz):
        if out and a - out[-1][1] <= merge_gap_s + 1e-9:
            out[-1][1] = b
        else:
            out.append([a, b])
    return [seg for seg in out if seg[1] - seg[0] >= min_segment_s - 1e-9]


def test_stored_scores_segments_and_errors(real: TestClient, world: Any) -> None:
    from featstore.store import open_store
    from featstore.trainers.probe import ProbeParams, frame_logits, video_logit
    from featstore.trainers.runs import load_run
    from featstore.trainers.temporal import scores_to_segments

    url = "/v1/datasets/planted/videos/planted/test/v0011/scores"
    r = real.get(url, params={"run": "probe"})
    assert r.status_code == 200, r.text
    doc = r.json()
    params = ProbeParams.from_state(load_run(world["root"] / "runs" / "probe").tensors())
    x = open_store(world["store"]).video("planted", "logfbank", doc["video_id"], "last")
    frames = frame_logits(params, x)
    assert doc["windows"]["whole_score"] == pytest.approx(video_logit(params, x), abs=1e-5)
    windows = doc["windows"]
    if windows["applied"]:  # longer than the median training video: the best window
        rows = round(windows["window_s"] * 25)
        starts = [round(w["start_s"] * 25) for w in windows["scores"]]
        best = max(video_logit(params, x[a : a + rows]) for a in starts)
        assert doc["score"] == pytest.approx(best, abs=1e-5)
    # segments under the run's card: smoothed, above its calibrated threshold, merged, long enough
    card = load_run(world["root"] / "runs" / "probe").config["localization"]
    on = card["calibrated_on"]  # segment F1 where it finds a fake segment, else the budget
    assert on["selection"] == "planted:val" and on["n_fake_annotated"] > 0
    assert card["chosen"] == ("segment_f1" if on["segment_f1"] else "real_videos")
    loc = doc["localization"]
    assert loc["frame_threshold"] == card["threshold"] and loc["threshold_name"] == card["chosen"]
    expected = reference_segments(frames, 25.0, card["threshold"], **card["rules"])
    above = [[x["start_s"], x["end_s"]] for x in loc["segments"] if not x["below_threshold"]]
    assert len(above) == len(expected) and all(
        np.allclose(a, e) for a, e in zip(above, expected, strict=True)
    )
    assert len(doc["segments"]) == len(loc["segments"]) >= (doc["label"] == "fake")
    assert doc["annotated_label"] == 1 and doc["annotated_segments"]
    # a threshold given as a number: the same rules at that level
    level = float(np.quantile(frames, 0.7))
    r = real.get(url, params={"run": "probe", "threshold": str(level)})
    loc = r.json()["localization"]
    expected = reference_segments(frames, 25.0, level, **card["rules"])
    assert expected and loc["threshold_name"] == "given"
    np.testing.assert_allclose([[x["start_s"], x["end_s"]] for x in loc["segments"]], expected)
    # the paper's reading on request: frames above 0, nothing else (none here: the probe's
    # frame logits are all negative) but the top-ranked segment of a fake verdict, flagged
    paper = {"run": "probe", "threshold": "paper", "smooth_s": 0, "min_segment_s": 0,
             "merge_gap_s": 0}  # fmt: skip
    r = real.get("/v1/datasets/planted/videos/planted/test/v0011/scores", params=paper)
    doc = r.json()
    assert scores_to_segments(frames, 25.0) == [] and doc["label"] == "fake"
    (top,) = doc["localization"]["segments"]
    assert top["below_threshold"] and doc["segments"] == [
        [top["start_s"], top["end_s"], top["score"]]
    ]
    assert doc["localization"]["proposals"][0][1:] == [top["start_s"], top["end_s"]]
    for path, params, needle in [
        ("/v1/datasets/nope/videos/a/scores", {"run": "probe"}, "nope"),
        ("/v1/datasets/planted/videos/planted/test/v9999/scores", {"run": "probe"}, "v9999"),
        ("/v1/datasets/planted/videos/planted/test/v0011/scores", {"run": "ghost"}, "ghost"),
    ]:
        r = real.get(path, params=params)
        assert r.status_code == 404 and needle in r.json()["detail"], r.text


def test_too_short_uploads_are_422(real: TestClient, world: Any, tmp_path: Path) -> None:
    from featstore.sample import talking_clip, write_clip

    models = {m["name"]: m for m in real.get("/v1/models").json()["models"]}
    windows = models["probe"]["windows"]
    lengths = windows["lengths"]
    assert lengths["selection"] == "planted:train" and windows["window_s"] == pytest.approx(
        lengths["median_rows"] / 25
    )
    need = windows["min_duration_s"]
    assert need == pytest.approx(np.ceil(lengths["p5_rows"] / 2) / 25)
    video, audio = talking_clip(seed=3, duration_s=1.0, size=64)
    n = 8  # 0.32 s
    write_clip(tmp_path / "short.mp4", video[:n], audio[: n * 640])
    r = post(real, (tmp_path / "short.mp4").read_bytes())
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert "probe run probe needs at least" in detail and "0.32 s" in detail
    assert "trained on clips" in detail
    _, data = clip_bytes(world)
    r = post(real, data, params={"threshold": "best"})
    assert r.status_code == 422 and "neither a number nor one of" in r.json()["detail"], r.text
    r = post(real, data, params={"threshold": "paper", "windows": "off"})
    assert r.status_code == 200, r.text
    for res in r.json()["results"]:
        assert res["localization"]["threshold_name"] == "paper"
        assert not res["windows"]["applied"] and res["score"] == res["windows"]["whole_score"]


def test_stored_scores_of_other_run_kinds(real: TestClient, world: Any) -> None:
    # a fusion run scores one stored video through its registered scorer
    from featstore.trainers.runs import read_predictions

    url = "/v1/datasets/planted/videos/planted/test/v0011/scores"
    r = real.get(url, params={"run": "fused", "windows": "off"})  # whole, as eval scores
    assert r.status_code == 200, r.text
    doc = r.json()
    # what `fuse --out` wrote when it evaluated the fusion on planted:test
    ref = read_predictions(world["root"] / "runs" / "fused", "planted_test")
    i = ref["video_id"].tolist().index("planted/test/v0011")
    assert doc["kind"] == "fusion" and doc["score"] == pytest.approx(ref["score"][i], abs=1e-6)
    assert doc["probability"] == pytest.approx(ref["probability"][i], abs=1e-6)
    r = real.get(url.replace("v0011", "v9999"), params={"run": "fused"})
    assert r.status_code == 404 and "v9999" in r.json()["detail"], r.text


def test_models_and_datasets(real: TestClient, world: Any) -> None:
    models = {m["name"]: m for m in real.get("/v1/models").json()["models"]}
    assert set(models) == {"probe", "fused"}
    probe, fused = models["probe"], models["fused"]
    assert probe["kind"] == "probe" and probe["calibrated"] and probe["frame_hz"] == 25.0
    ((feature,),) = [i["features"] for i in probe["inputs"]]
    assert feature["encoder"] == "logfbank" and feature["layer"] == "last"
    assert feature["dim"] == 104 and feature["dtype"] == "float16"
    assert feature["source_encoder"] == "logfbank" and probe["inputs"][0]["role"] == "features"
    assert fused["kind"] == "fusion" and len(fused["inputs"]) == 1  # both members read the same
    datasets = {d["name"]: d for d in real.get("/v1/datasets").json()["datasets"]}
    assert datasets["planted"]["n_videos"] == 16 and datasets["planted"]["n_fake"] == 8
    assert datasets["planted"]["encoders"][0]["name"] == "logfbank"
    assert datasets["sample"]["encoders"][0]["n_videos"] == 2
    _, data = clip_bytes(world)
    r = real.post("/v1/score", files={"file": ("c.mp4", data, "video/mp4")}, data={"runs": "fused"})
    assert r.status_code == 200 and [x["run"] for x in r.json()["results"]] == ["fused"]
    assert "/v1/score" in real.get("/openapi.json").json()["paths"]
    assert real.get("/docs").status_code == 200


def test_concurrent_clients_are_micro_batched(world: Any) -> None:
    """Four clients at once share encoder calls; a clip failing in a batch fails alone."""
    settings = real_settings(world, max_batch_clips=4, max_wait_ms=400)
    app = create_app(settings)
    clips = [clip_bytes(world, i)[1] for i in range(2)]
    with TestClient(app) as client:
        wait_ready(client)
        slot = next(iter(app.state.service.encoders.values()))
        real_encode = slot.batcher._encode
        bad_audio = None

        def encode(batch: Any, layers: Any) -> Any:
            if bad_audio is not None and any(np.array_equal(c.audio, bad_audio) for c in batch):
                raise ClipError("this clip breaks the encoder")
            return real_encode(batch, layers)

        slot.batcher._encode = encode

        def run_all(datas: list[bytes]) -> list[Any]:
            out: list[Any] = [None] * len(datas)

            def one(i: int) -> None:
                out[i] = post(client, datas[i])

            threads = [threading.Thread(target=one, args=(i,)) for i in range(len(datas))]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            return out

        slot.batcher.batch_sizes.clear()
        rs = run_all([clips[0], clips[1], clips[0], clips[1]])
        assert [r.status_code for r in rs] == [200] * 4
        assert max(slot.batcher.batch_sizes) > 1
        assert rs[0].json()["results"][0]["score"] == rs[2].json()["results"][0]["score"]

        from featstore.media import decode

        bad_audio = decode(world["clips"][sorted(world["clips"])[1]], video=False).audio
        slot.batcher.batch_sizes.clear()
        rs = run_all([clips[0], clips[1], clips[0]])
        assert [r.status_code for r in rs] == [200, 422, 200]
        assert "breaks the encoder" in rs[1].json()["detail"]
        assert max(slot.batcher.batch_sizes) > 1
        metrics = client.get("/metrics").text
        assert 'featstore_encoder_batch_size_count{encoder="logfbank"}' in metrics


# ------------------------------------------------------------------ schema-driven fuzzing

_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)


def _strategy(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    if schema.get("format") == "binary":
        return st.one_of(
            st.binary(max_size=600),
            st.sampled_from([b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 64, b"\x1a\x45\xdf\xa3"]),
        )
    return _TEXT


@hsettings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_fuzz_openapi_no_5xx(real: TestClient, data: st.DataObject) -> None:
    """Every operation of the OpenAPI document, with parameters drawn from its schema."""
    spec = real.app.openapi()
    ops = [(p, m, op) for p, item in spec["paths"].items() for m, op in item.items()]
    path, method, op = data.draw(st.sampled_from(ops))
    url, query = path, {}
    for param in op.get("parameters", []):
        if param["in"] == "path":
            value = data.draw(_strategy(param["schema"]))
            safe = "/" if param["name"] == "video_id" else ""
            url = url.replace(
                "{" + param["name"] + (":path}" if "{" + param["name"] + ":path}" in url else "}"),
                quote(value, safe=safe) or "x",
            )
        elif param["in"] == "query" and (param.get("required") or data.draw(st.booleans())):
            query[param["name"]] = data.draw(_strategy(param["schema"]))
    kwargs: dict[str, Any] = {"params": query}
    body = op.get("requestBody", {}).get("content", {}).get("multipart/form-data")
    if body is not None:
        props = body["schema"]["properties"]
        ctype = data.draw(st.sampled_from(["video/mp4", "text/plain", "application/octet-stream"]))
        kwargs["files"] = {"file": ("f.mp4", data.draw(_strategy(props["file"])), ctype)}
        if data.draw(st.booleans()):
            kwargs["data"] = {"runs": data.draw(_TEXT)}
    r = real.request(method.upper(), url, **kwargs)
    assert r.status_code < 500, (method, url, kwargs.get("params"), r.status_code, r.text)
    if r.status_code >= 400:
        assert "detail" in r.json()


# ------------------------------------------------------------------ CLI


def test_serve_cli_user_errors(tmp_path: Path, world: Any) -> None:
    from typer.testing import CliRunner

    from featstore.cli.main import app

    runner = CliRunner()
    r = runner.invoke(app, ["serve", "--store", world["store"], "--run", str(tmp_path / "none")])
    assert r.exit_code == 1 and "error:" in r.output and "no run directory" in r.output
    r = runner.invoke(app, ["serve", "--store", str(tmp_path / "nostore"), "--run", "x"])
    assert r.exit_code == 1 and "error:" in r.output
    probe = str(world["root"] / "runs" / "probe")
    r = runner.invoke(
        app, ["serve", "--store", world["store"], "--run", probe, "--api-key-env", "NO_SUCH_VAR_X"]
    )
    assert r.exit_code == 1 and "NO_SUCH_VAR_X" in r.output
    r = runner.invoke(app, ["serve", "--store", world["store"], "--run", f"a b={probe}"])
    assert r.exit_code == 1 and "run name" in r.output


@pytest.mark.parametrize(
    ("config", "needle"),
    [
        (
            {"format": 1, "kind": "probe", "encoder": "no-such-encoder", "layer": "last",
             "frame_hz": 25.0, "dim": 104, "hyperparameters": {}},
            "no-such-encoder",
        ),  # a format-1 probe of an encoder nothing registers
        ({"kind": "anomaly", "encoder": "logfbank"}, "no run kind 'anomaly'"),
        ({"kind": "probe", "format": 9}, "run format 9"),
    ],
)  # fmt: skip
def test_failed_model_load_is_reported_by_readyz(
    tmp_path: Path, world: Any, config: dict[str, Any], needle: str
) -> None:
    from featstore.trainers.runs import load_run, save_run

    save_run(
        tmp_path / "ghost",
        config=config,
        tensors=load_run(world["root"] / "runs" / "probe").tensors(),
    )
    settings = Settings(store_url=world["store"], runs=(RunSpec("ghost", tmp_path / "ghost"),))
    with TestClient(create_app(settings)) as client:
        deadline = time.monotonic() + 10
        while client.app.state.service.error is None and time.monotonic() < deadline:
            time.sleep(0.02)
        r = client.get("/readyz")
        assert r.status_code == 503 and needle in r.json()["detail"], r.json()
        assert client.get("/v1/models").status_code == 503
