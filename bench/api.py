"""Benchmark: the scoring service over HTTP against the same scorer called in-process.

A probe run on ``logfbank`` features (a planted synthetic dataset, trained here)
scores a generated 5 s clip (224x224 H.264 + AAC). In one run:

(a) latency, p50/p95 over ``--requests`` sequential requests: ``POST /v1/score``
    through uvicorn on loopback (httpx client, multipart upload) against the
    baseline, the same :class:`~featstore.api.scoring.ScoringService` awaited in-process
    (container probe + decode + encode + score, no HTTP, no upload);
(b) throughput with ``--clients`` concurrent clients, each sending
    ``--per-client`` requests, with micro-batching (``--max-batch`` clips,
    ``--max-wait-ms``) and without (batches of one), and the mean batch size.

    python -m bench.api                 # writes the API section of bench/RESULTS.md
    python -m bench.api --requests 10 --no-results
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import socket
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import uvicorn

from featstore.api.app import create_app
from featstore.api.scoring import ScoringService
from featstore.api.settings import RunSpec, Settings
from featstore.api.uploads import check_duration

TITLE = "Scoring service: HTTP vs in-process, micro-batching"


def _prepare(root: Path) -> tuple[Settings, Path]:
    """A store with a planted logfbank dataset, a probe run, and a 5 s clip."""
    import pandas as pd

    from featstore.encoder_info import EncoderInfo
    from featstore.sample import make_sample
    from featstore.store import open_store
    from featstore.trainers.kinds.probe import train as train_probe
    from featstore.trainers.probe import ProbeConfig

    store = open_store(root / "features.zarr", mode="a", durable=False)
    rng = np.random.default_rng(0)
    rows = [{"video_id": f"v{i}", "path": "", "label": i % 2, "split": "train"} for i in range(24)]
    store.write_manifest("planted", pd.DataFrame(rows))
    u = rng.standard_normal(104)
    with store.writer("planted", EncoderInfo("logfbank", 25.0, {"last": 104})) as writer:
        for i, row in enumerate(rows):
            x = rng.standard_normal((100, 104)) + (2.0 * u if i % 2 else 0.0)
            writer.add(row["video_id"], {"last": x.astype(np.float16)})
    train_probe(
        store,
        features="logfbank:last",
        train="planted:train",
        val=None,
        out=root / "run",
        config=ProbeConfig(max_epochs=3),
    )
    make_sample(root / "sample", n_clips=2, duration_s=(5.0, 5.0))
    clip = next((root / "sample").rglob("*.mp4"))
    settings = Settings(
        store_url=str(root / "features.zarr"), runs=(RunSpec("probe", root / "run"),)
    )
    return settings, clip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def _server(settings: Settings) -> Iterator[tuple[str, Any]]:
    app = create_app(settings)
    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
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
        raise RuntimeError("server did not become ready")
    try:
        yield base, app
    finally:
        srv.should_exit = True
        thread.join(30)


def _post(client: httpx.Client, base: str, data: bytes) -> float:
    t0 = time.perf_counter()
    r = client.post(f"{base}/v1/score", files={"file": ("clip.mp4", data, "video/mp4")})
    if r.status_code != 200:
        raise RuntimeError(f"HTTP {r.status_code}: {r.text}")
    return time.perf_counter() - t0


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1e3, q))


class _InProcess:
    """The baseline: a ScoringService on its own event loop thread, awaited per call."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.service = ScoringService(settings)
        self.service.load()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    async def _score(self, clip: Path) -> None:
        await asyncio.to_thread(check_duration, clip, self.settings.max_duration_s)
        await self.service.score_upload(str(clip))

    def score(self, clip: Path) -> float:
        t0 = time.perf_counter()
        asyncio.run_coroutine_threadsafe(self._score(clip), self.loop).result()
        return time.perf_counter() - t0

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.service.close(), self.loop).result()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def _throughput(
    settings: Settings, data: bytes, clients: int, per_client: int
) -> tuple[float, float]:
    with _server(settings) as (base, app):
        with httpx.Client(timeout=120) as c:
            _post(c, base, data)
        slot = next(iter(app.state.service.encoders.values()))
        slot.batcher.batch_sizes.clear()

        def worker() -> None:
            with httpx.Client(timeout=120) as c:
                for _ in range(per_client):
                    _post(c, base, data)

        threads = [threading.Thread(target=worker) for _ in range(clients)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds = time.perf_counter() - t0
        sizes = slot.batcher.batch_sizes
        return clients * per_client / seconds, statistics.mean(sizes) if sizes else 0.0


def run(args: argparse.Namespace) -> str:
    with tempfile.TemporaryDirectory(prefix="bench-api-") as tmp:
        settings, clip = _prepare(Path(tmp))
        data = clip.read_bytes()
        baseline = _InProcess(settings)
        inproc, http = [], []
        with _server(settings) as (base, _), httpx.Client(timeout=120) as client:
            for i in range(args.requests + 2):  # alternate, so drift hits both alike
                t_in, t_http = baseline.score(clip), _post(client, base, data)
                if i >= 2:  # the first calls warm caches
                    inproc.append(t_in)
                    http.append(t_http)
        baseline.close()
        batched = replace(settings, max_batch_clips=args.max_batch, max_wait_ms=args.max_wait_ms)
        single = replace(settings, max_batch_clips=1, max_wait_ms=0.0)
        rps_single, mean_single = _throughput(single, data, args.clients, args.per_client)
        rps_batched, mean_batched = _throughput(batched, data, args.clients, args.per_client)
    ratio = statistics.median(http) / statistics.median(inproc)
    lines = [
        f"{date.today()} on {platform.machine()}, {os.cpu_count()} CPUs (shared), "
        f"encoder logfbank on CPU, one probe run, a 5 s 224x224 clip of {len(data) / 1e3:.0f} kB.",
        "",
        "| path | p50 ms | p95 ms |",
        "|---|---|---|",
        f"| in-process `ScoringService` (baseline) | {_pct(inproc, 50):.1f} | {_pct(inproc, 95):.1f} |",
        f"| HTTP `POST /v1/score` via uvicorn | {_pct(http, 50):.1f} | {_pct(http, 95):.1f} |",
        "",
        f"HTTP overhead ratio (p50 HTTP / p50 in-process): **{ratio:.2f}x** "
        f"over {args.requests} sequential requests.",
        "",
        f"| {args.clients} concurrent clients x {args.per_client} requests | requests/s | mean batch |",
        "|---|---|---|",
        f"| no micro-batching (batches of 1, baseline) | {rps_single:.1f} | {mean_single:.2f} |",
        f"| micro-batching (max {args.max_batch} clips, {args.max_wait_ms:g} ms wait) | "
        f"{rps_batched:.1f} | {mean_batched:.2f} |",
        "",
        "logfbank is a per-clip numpy front end (a batch costs the sum of its clips) and "
        "decoding dominates, so batching is not expected to help here; it is meant for "
        "encoders whose batched forward costs less than one call per clip (transformers, GPUs).",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--per-client", type=int, default=4)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--max-wait-ms", type=float, default=10.0)
    parser.add_argument("--no-results", action="store_true", help="Print only.")
    args = parser.parse_args()
    body = run(args)
    print(body)
    if not args.no_results:
        from bench.results import write_section

        write_section("api", TITLE, "python -m bench.api", body)


if __name__ == "__main__":
    main()
