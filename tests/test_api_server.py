"""End to end through a real uvicorn server on loopback: score a sample clip over HTTP."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from trainer_fixtures import write_planted_dataset  # isort: skip

from api.app import create_app
from api.settings import RunSpec, Settings


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from featstore.sample import make_sample
    from featstore.store import open_store
    from trainers.probe import ProbeConfig
    from trainers.probe_run import train_probe

    root = tmp_path_factory.mktemp("server")
    store = open_store(root / "features.zarr", mode="a", durable=False)
    write_planted_dataset(store, "planted", n_videos=12, dim=104, encoder="logfbank")
    train_probe(
        store,
        feature="logfbank:last",
        train="planted:train",
        out=root / "w",
        config=ProbeConfig(max_epochs=2),
    )
    make_sample(root / "sample", n_clips=2, size=64, duration_s=(2.0, 2.0))
    clip = next((root / "sample").rglob("*.mp4"))
    settings = Settings(
        store_url=str(root / "features.zarr"),
        runs=(RunSpec("w", root / "w"),),
        max_upload_bytes=1 << 20,
    )
    port = _free_port()
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
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
    yield {"base": base, "clip": clip, "port": port}
    srv.should_exit = True
    thread.join(10)


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
