"""End to end through the real server (uvicorn, featstore.api.server) on loopback.

What the test client cannot show: path decoding of percent-encoded ids, the
header deadline (slowloris), the connection limit, a client that disconnects.
"""

from __future__ import annotations

import logging
import select
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import numpy as np
import pytest
import uvicorn

from trainer_fixtures import write_planted_dataset  # isort: skip

from featstore.api.app import create_app
from featstore.api.server import server_config
from featstore.api.settings import RunSpec, Settings


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serve(settings: Settings) -> Iterator[str]:
    """``featstore serve``'s server (featstore.api.server) for ``settings`` in a thread; yields its URL."""
    port = _free_port()
    config = server_config(
        create_app(settings), settings, host="127.0.0.1", port=port, log_level="warning"
    )
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/readyz").status_code == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    else:
        raise AssertionError("server did not become ready")
    try:
        yield base
    finally:
        srv.should_exit = True
        thread.join(10)


# Ids the store accepts (any non-empty string): ids are paths, and names in the wild hold
# spaces, non-ASCII letters and URL syntax.
ODD_IDS = (
    "train/id01/with space",
    "ünïcödé/日本語/clip",
    "100%/50%25 off",
    "hash#tag",
    "what?q=1&r=2",
    "a+b=c",
    "/leading/slash",
    "trailing/",
    "double//slash",
    "dots/../up",
    "..",
    ".",
    "semi;colon,comma:colon",
    "quote\"'back\\slash",
    "tab\tand\nnewline",
    "emoji 🎬 ~tilde",
    "x/scores",
)


def encode_id(video_id: str) -> str:
    """The README's rule: percent-encode every reserved character, '/' too; an id that is
    all dots also needs its dots encoded, as clients drop '.' and '..' path segments."""
    quoted = quote(video_id, safe="")
    return quoted.replace(".", "%2E") if set(video_id) == {"."} else quoted


def _write_odd_ids(store: Any, dataset: str) -> None:
    import pandas as pd

    from featstore.encoder_info import EncoderInfo

    rng = np.random.default_rng(3)
    rows = [
        {"video_id": v, "path": "", "label": i % 2, "split": "test"} for i, v in enumerate(ODD_IDS)
    ]
    store.write_manifest(dataset, pd.DataFrame(rows))
    with store.writer(dataset, EncoderInfo("logfbank", 25.0, {"last": 104})) as writer:
        for i, v in enumerate(ODD_IDS):
            writer.add(v, {"last": rng.standard_normal((30 + i, 104)).astype(np.float16)})


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from featstore.sample import make_sample
    from featstore.store import open_store
    from featstore.trainers.kinds.probe import train as train_probe
    from featstore.trainers.probe import ProbeConfig

    root = tmp_path_factory.mktemp("server")
    store = open_store(root / "features.zarr", mode="a", durable=False)
    write_planted_dataset(store, "planted", n_videos=12, dim=104, encoder="logfbank")
    _write_odd_ids(store, "odd+ids")
    train_probe(
        store,
        features="logfbank:last",
        train="planted:train",
        out=root / "w",
        config=ProbeConfig(max_epochs=2),
    )
    make_sample(root / "sample", n_clips=2, size=64, duration_s=(2.0, 2.0))
    clip = next((root / "sample").rglob("*.mp4"))
    (root / "uploads").mkdir()
    settings = Settings(
        store_url=str(root / "features.zarr"),
        runs=(RunSpec("w", root / "w"),),
        max_upload_bytes=1 << 20,
        upload_dir=str(root / "uploads"),
        header_timeout_s=HEADER_TIMEOUT_S,
    )
    with serve(settings) as base:
        port = int(base.rsplit(":", 1)[1])
        yield {"base": base, "clip": clip, "port": port, "root": root, "settings": settings}


HEADER_TIMEOUT_S = 1.0


def test_score_sample_clip_over_http(server: dict[str, Any]) -> None:
    clip: Path = server["clip"]
    with clip.open("rb") as fh:
        r = httpx.post(
            f"{server['base']}/v1/score",
            files={"file": (clip.name, fh, "video/mp4")},
            timeout=60,
        )
    assert r.status_code == 200, r.text
    doc = r.json()
    (res,) = doc["results"]
    assert res["run"] == "w" and res["label"] in ("real", "fake")
    assert len(res["frame_scores"]) == round(doc["duration_s"] * 25)
    assert 0.0 <= res["probability"] <= 1.0
    assert httpx.get(f"{server['base']}/healthz").json()["status"] == "ok"
    assert 'endpoint="/v1/score"' in httpx.get(f"{server['base']}/metrics").text


def test_oversized_upload_is_refused_before_it_is_all_sent(server: dict[str, Any]) -> None:
    """A chunked upload passing the 1 MiB limit gets 413 while the client is still sending."""
    boundary = "b0undary"
    head = (
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="file"; filename="big.mp4"\r\n'
        "Content-Type: video/mp4\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", server["port"]), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/score HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Type: multipart/form-data; boundary=" + boundary.encode() + b"\r\n\r\n"
        )
        chunk = b"\x00" * 65536
        sock.sendall(b"%x\r\n%s\r\n" % (len(head), head))
        for _ in range(24):  # 1.5 MiB of the 64 MiB this client "means" to send
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        sock.settimeout(10)
        reply = _read_response(sock)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert b"limit" in reply


def _read_response(sock: socket.socket) -> bytes:
    """Headers and the whole Content-Length body (they may arrive in separate segments)."""
    data = b""
    while b"\r\n\r\n" not in data:
        block = sock.recv(4096)
        if not block:
            return data
        data += block
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        (
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        ),
        0,
    )
    while len(body) < length:
        block = sock.recv(4096)
        if not block:
            break
        body += block
    return head + b"\r\n\r\n" + body


# ------------------------------------------------------------------ ids


def test_every_stored_id_answers_when_percent_encoded(server: dict[str, Any]) -> None:
    """Each odd id, sent percent-encoded through uvicorn's path decoding, scores like its rows."""
    from featstore.store import open_store
    from featstore.trainers.probe import ProbeParams, frame_logits, video_logit
    from featstore.trainers.runs import load_run

    store = open_store(server["settings"].store_url)
    params = ProbeParams.from_state(load_run(server["root"] / "w").tensors())
    with httpx.Client(base_url=server["base"], timeout=30) as client:
        for video_id in ODD_IDS:
            r = client.get(f"/v1/datasets/odd%2Bids/videos/{encode_id(video_id)}/scores?run=w")
            assert r.status_code == 200, (video_id, r.text)
            doc = r.json()
            x = store.video("odd+ids", "logfbank", video_id, "last")  # [T, 104]
            assert doc["video_id"] == video_id and doc["dataset"] == "odd+ids"
            assert doc["score"] == pytest.approx(video_logit(params, x), abs=1e-5)
            assert len(doc["frame_scores"]) == len(frame_logits(params, x))
        # '/' in ids may also go unencoded: ids are paths
        r = client.get("/v1/datasets/odd+ids/videos/train/id01/with%20space/scores?run=w")
        assert r.status_code == 200 and r.json()["video_id"] == "train/id01/with space"
        metrics = client.get("/metrics").text
    assert 'endpoint="/v1/datasets/{dataset}/videos/{video_id}/scores"' in metrics


@pytest.mark.parametrize(
    "path",
    [
        "/v1/datasets/odd+ids/videos/..%2F..%2F..%2Fetc%2Fpasswd/scores",
        "/v1/datasets/odd+ids/videos/%2Fetc%2Fpasswd/scores",
        "/v1/datasets/odd+ids/videos/dots%2F%2E%2E%2F%2E%2E%2Fw%2Fconfig.json/scores",
        "/v1/datasets/%2E%2E/videos/x/scores",
        "/v1/datasets/..%2Fw/videos/x/scores",
        "/v1/datasets/odd+ids%2F..%2Fplanted/videos/planted%2Ftest%2Fv0011/scores",
    ],
)
def test_traversal_reaches_no_file(server: dict[str, Any], path: str) -> None:
    """Ids are keys in the store's index, datasets names the store vets: 404, nothing read."""
    r = httpx.get(server["base"] + path, params={"run": "w"}, timeout=30)
    assert r.status_code == 404, r.text
    assert isinstance(r.json()["detail"], str) and "score" not in r.json()


# ------------------------------------------------------------------ connections


def _raw(port: int, timeout_s: float = 30.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    while block := sock.recv(4096):
        data += block
    return data


@pytest.mark.parametrize("after_a_request", [False, True])
def test_slow_headers_are_cut_off(server: dict[str, Any], after_a_request: bool) -> None:
    """A client sending its headers a byte at a time gets 408 and is closed after the header
    timeout, on a fresh connection and on a kept-alive one (where uvicorn's own keep-alive
    timer stops at the first byte)."""
    with _raw(server["port"]) as sock:
        if after_a_request:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert _read_response(sock).startswith(b"HTTP/1.1 200")
        request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 1000
        t0 = time.monotonic()
        for byte in request:  # one byte every 20 ms until the server answers
            if select.select([sock], [], [], 0.02)[0]:
                break
            sock.sendall(bytes([byte]))
        else:
            raise AssertionError("the slow client was never cut off")
        closed_after = time.monotonic() - t0
        reply = _read_all(sock)
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    assert b"not received within 1 s" in reply
    assert HEADER_TIMEOUT_S * 0.9 <= closed_after < 15


def test_idle_connection_is_closed_and_slow_bodies_are_not(server: dict[str, Any]) -> None:
    """A connection that never sends is closed silently; a request whose headers came in
    time may take longer than the header timeout to send its body."""
    with _raw(server["port"]) as sock:
        t0 = time.monotonic()
        assert _read_all(sock) == b""
        assert HEADER_TIMEOUT_S * 0.9 <= time.monotonic() - t0 < 20

    clip: Path = server["clip"]
    boundary = "slowbody"
    body = (
        (
            f"--{boundary}\r\n"
            'Content-Disposition: form-data; name="file"; filename="c.mp4"\r\n'
            "Content-Type: video/mp4\r\n\r\n"
        ).encode()
        + clip.read_bytes()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    with _raw(server["port"]) as sock:
        sock.sendall(
            b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
            b"Content-Type: multipart/form-data; boundary=%s\r\n\r\n"
            % (len(body), boundary.encode())
        )
        third = len(body) // 3 + 1
        for i in range(3):
            time.sleep(HEADER_TIMEOUT_S * 0.6)
            sock.sendall(body[i * third : (i + 1) * third])
        reply = _read_response(sock)
    assert reply.startswith(b"HTTP/1.1 200"), reply[:300]


def test_refused_body_is_drained_then_closed(server: dict[str, Any]) -> None:
    """After a 413 the rest of the body is read (so the client can read the 413), but a client
    that keeps sending is closed after the header timeout instead of forever."""
    with _raw(server["port"]) as sock:
        sock.sendall(
            b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\n\r\n"
        )
        assert _read_response(sock).startswith(b"HTTP/1.1 413")
        t0 = time.monotonic()
        with pytest.raises(OSError):  # reset or broken pipe once the server closes
            while time.monotonic() - t0 < 30:
                sock.sendall(b"\x00" * 8192)
                time.sleep(0.01)
    assert time.monotonic() - t0 < 20


def test_client_disconnect_is_499_not_500(
    server: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """A client leaving mid-upload: 499 in the metrics (never 5xx), an info line, no temp file."""
    boundary = "gone"
    head = (
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="file"; filename="c.mp4"\r\n'
        "Content-Type: video/mp4\r\n\r\n"
    ).encode()
    caplog.set_level(logging.INFO, logger="featstore.api.app")
    with _raw(server["port"]) as sock:
        sock.sendall(
            b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Length: 900000\r\n"
            b"Content-Type: multipart/form-data; boundary=%s\r\n\r\n" % boundary.encode()
        )
        sock.sendall(head + b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 200_000)
        deadline = time.monotonic() + 20
        while not list((server["root"] / "uploads").iterdir()):  # the upload has begun
            assert time.monotonic() < deadline
            time.sleep(0.02)
    deadline = time.monotonic() + 20
    while "499" not in (text := _score_statuses(server)):
        assert time.monotonic() < deadline, text
        time.sleep(0.05)
    assert not any(code.startswith("5") for code in text), text
    assert any("client went away" in r.getMessage() for r in caplog.records)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    deadline = time.monotonic() + 10
    while list((server["root"] / "uploads").iterdir()):
        assert time.monotonic() < deadline, "the temporary file was left behind"
        time.sleep(0.02)


def _score_statuses(server: dict[str, Any]) -> list[str]:
    text = httpx.get(f"{server['base']}/metrics", timeout=30).text
    prefix = 'featstore_http_requests_total{endpoint="/v1/score",method="POST",status="'
    return [
        line[len(prefix) :].split('"')[0] for line in text.splitlines() if line.startswith(prefix)
    ]


def test_connection_limit(server: dict[str, Any]) -> None:
    """Requests beyond ``limit_concurrency`` open connections get 503 until some close."""
    settings = replace(server["settings"], limit_concurrency=3, header_timeout_s=60.0)
    with serve(settings) as base:
        port = int(base.rsplit(":", 1)[1])
        idle = [_raw(port) for _ in range(3)]
        try:
            time.sleep(0.2)  # let the server accept them
            r = httpx.get(f"{base}/healthz", timeout=30)
            assert r.status_code == 503, r.text
        finally:
            for sock in idle:
                sock.close()
        deadline = time.monotonic() + 20
        while (status := httpx.get(f"{base}/healthz", timeout=30).status_code) != 200:
            assert time.monotonic() < deadline, status
            time.sleep(0.05)
