"""Load test: concurrent clients against a real ``featstore serve`` process, then with abusers.

Bounded (``--warmup-s`` + 2 x ``--seconds``) and loopback only. A probe run on
``logfbank`` features (a planted dataset whose video ids hold spaces, non-ASCII
letters and URL syntax, trained here) is served by ``python -m featstore.cli.main serve``
on 127.0.0.1. After a warm-up of client load, two phases of ``--seconds`` each,
in one run:

(a) baseline: ``--clients`` clients loop for the whole phase, each request
    either ``POST /v1/score`` of a generated 2 s clip or ``GET`` of a stored
    video's scores (percent-encoded id), half and half at random;
(b) the same clients with abusers beside them, ``--abusers`` of each kind:
    *slow headers* (one header byte every 0.5 s until the server cuts them off),
    *oversized bodies* (a chunked upload streamed past ``--max-upload-mb``),
    *disconnects* (half an upload, then the socket closed), *field floods*
    (a form of thousands of small fields).

Reported per phase: requests/s of the clients, p50/p95/p99 latency, 5xx seen by
the clients and counted by the server's Prometheus metrics, and the server's
resident memory (VmRSS from /proc) sampled every 0.5 s; for (b), what each
abuser got back.

    python -m bench.load                  # writes the load section of bench/RESULTS.md
    python -m bench.load --seconds 10 --no-results
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import re
import select
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from urllib.parse import quote

import httpx
import numpy as np

TITLE = "Load test: featstore serve under concurrent clients and abusive ones"
DATASET = "load"
RUN = "probe"
# Stored ids as found in the wild: spaces, non-ASCII letters, URL syntax, paths.
_ID_STEMS = ("clip {i:03d}", "ünï/日本/{i:03d}", "{i:03d}#tag?x=1", "100%/{i:03d}+a")


@dataclass
class Served:
    """The prepared store, run and clip, and the server process once started."""

    root: Path
    store: Path
    run: Path
    clip: bytes
    video_ids: list[str]
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None


def prepare(root: Path) -> Served:
    """A store with a planted logfbank dataset of odd ids, a probe run on it, a 2 s clip."""
    import pandas as pd

    from featstore.encoder_info import EncoderInfo
    from featstore.sample import make_sample
    from featstore.store import open_store
    from featstore.trainers.kinds.probe import train as train_probe
    from featstore.trainers.probe import ProbeConfig

    store = open_store(root / "features.zarr", mode="a", durable=False)
    rng = np.random.default_rng(0)
    ids = [_ID_STEMS[i % len(_ID_STEMS)].format(i=i) for i in range(24)]
    rows = [
        {"video_id": v, "path": "", "label": i % 2, "split": "train"} for i, v in enumerate(ids)
    ]
    store.write_manifest(DATASET, pd.DataFrame(rows))
    u = rng.standard_normal(104)
    with store.writer(DATASET, EncoderInfo("logfbank", 25.0, {"last": 104})) as writer:
        for i, video_id in enumerate(ids):
            x = rng.standard_normal((100, 104)) + (2.0 * u if i % 2 else 0.0)  # [T, D]
            writer.add(video_id, {"last": x.astype(np.float16)})
    train_probe(
        store,
        features="logfbank:last",
        train=f"{DATASET}:train",
        val=None,
        out=root / "run",
        config=ProbeConfig(max_epochs=3),
    )
    make_sample(root / "sample", n_clips=2, size=96, duration_s=(2.0, 2.0))
    clip = next((root / "sample").rglob("*.mp4")).read_bytes()
    return Served(root, root / "features.zarr", root / "run", clip, ids)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def featstore_serve(served: Served, *, max_upload_mb: float) -> Iterator[Served]:
    """``featstore serve`` as its own process (the code of this checkout), ready."""
    served.port = _free_port()
    log = (served.root / "serve.log").open("wb")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cmd = [sys.executable, "-m", "featstore.cli.main", "serve", "--store", str(served.store)]
    cmd += ["--run", f"{RUN}={served.run}", "--host", "127.0.0.1", "--port", str(served.port)]
    cmd += ["--max-upload-mb", f"{max_upload_mb:g}", "--log-level", "warning"]
    served.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{served.port}"
    deadline = time.monotonic() + 120
    try:
        while True:
            try:
                if httpx.get(f"{base}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if served.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    "featstore serve did not become ready:\n"
                    + (served.root / "serve.log").read_text()[-3000:]
                )
            time.sleep(0.1)
        yield served
    finally:
        served.proc.terminate()
        try:
            served.proc.wait(30)
        except subprocess.TimeoutExpired:
            served.proc.kill()
        log.close()


# ------------------------------------------------------------------ measurements


def rss_mb(pid: int) -> float:
    """Resident memory of a process, from /proc (Linux)."""
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmRSS:\s+(\d+) kB", text, re.M).group(1)) / 1024  # type: ignore[union-attr]


class RssSampler(threading.Thread):
    """VmRSS of ``pid`` every ``every_s`` seconds, as (seconds since start, MB)."""

    def __init__(self, pid: int, every_s: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.pid, self.every_s = pid, every_s
        self.samples: list[tuple[float, float]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        t0 = time.monotonic()
        while not self.stop.is_set():
            self.samples.append((time.monotonic() - t0, rss_mb(self.pid)))
            self.stop.wait(self.every_s)


def server_statuses(base: str) -> Counter[str]:
    """Request counts by status from the server's Prometheus metrics."""
    counts: Counter[str] = Counter()
    text = httpx.get(f"{base}/metrics", timeout=60).text
    for m in re.finditer(r'^featstore_http_requests_total\{.*status="(\d+)"\} (\S+)$', text, re.M):
        counts[m.group(1)] += int(float(m.group(2)))
    return counts


@dataclass
class Tally:
    """What one phase's clients saw: latencies by kind, statuses, transport errors."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: {"upload": [], "stored": []})
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, kind: str, seconds: float, status: int) -> None:
        with self.lock:
            self.latencies[kind].append(seconds)
            self.statuses[status] += 1


def client(served: Served, tally: Tally, stop: threading.Event, seed: int) -> None:
    """A well-behaved client: uploads and stored-video queries, half and half."""
    rng = random.Random(seed)
    base = f"http://127.0.0.1:{served.port}"
    with httpx.Client(base_url=base, timeout=120) as http:
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                if rng.random() < 0.5:
                    kind = "upload"
                    r = http.post("/v1/score", files={"file": ("c.mp4", served.clip, "video/mp4")})
                else:
                    kind = "stored"
                    video_id = quote(rng.choice(served.video_ids), safe="")
                    r = http.get(f"/v1/datasets/{DATASET}/videos/{video_id}/scores?run={RUN}")
            except httpx.HTTPError as exc:
                with tally.lock:
                    tally.errors[type(exc).__name__] += 1
                continue
            tally.add(kind, time.perf_counter() - t0, r.status_code)


# ------------------------------------------------------------------ abusers


def _status(reply: bytes) -> str:
    parts = reply.split(b" ", 2)
    return parts[1].decode() if len(parts) > 1 and reply.startswith(b"HTTP/") else "closed"


def _read(sock: socket.socket, timeout_s: float = 60.0) -> bytes:
    sock.settimeout(timeout_s)
    data = b""
    try:
        while b"\r\n\r\n" not in data and (block := sock.recv(65536)):
            data += block
    except OSError:
        pass
    return data


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=60)


def slow_headers(
    port: int, outcomes: Counter[str], cutoffs: list[float], stop: threading.Event
) -> None:
    """Slowloris: one header byte every 0.5 s, until the server answers or closes."""
    while not stop.is_set():
        with _connect(port) as sock:
            t0 = time.monotonic()
            sock.sendall(b"POST /v1/score HTTP/1.1\r\n")
            pad = iter(b"Host: x\r\nX-Pad: " + b"a" * 100_000)
            try:
                while not select.select([sock], [], [], 0.5)[0] and not stop.is_set():
                    sock.sendall(bytes([next(pad)]))
            except OSError:
                pass
            if stop.is_set():
                outcomes["still open at the end"] += 1
                return
            outcomes[_status(_read(sock))] += 1
            cutoffs.append(time.monotonic() - t0)


def _multipart_head(boundary: bytes, *, length: int | None = None) -> bytes:
    framing = (
        b"Content-Length: %d" % length if length is not None else b"Transfer-Encoding: chunked"
    )
    return (
        b"POST /v1/score HTTP/1.1\r\nHost: x\r\n" + framing + b"\r\n"
        b"Content-Type: multipart/form-data; boundary=" + boundary + b"\r\n\r\n"
    )


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def oversized(port: int, outcomes: Counter[str], limit_bytes: int, stop: threading.Event) -> None:
    """A chunked upload (no Content-Length) streamed past the limit, up to 4 times it."""
    part = b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.mp4"\r\n\r\n'
    block = _chunk(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 65520)
    while not stop.is_set():
        with _connect(port) as sock:
            sent = 0
            try:
                sock.sendall(_multipart_head(b"b") + _chunk(part))
                while sent < 4 * limit_bytes and not select.select([sock], [], [], 0)[0]:
                    sock.sendall(block)
                    sent += len(block)
            except OSError:
                pass
            outcomes[_status(_read(sock))] += 1


def disconnects(port: int, outcomes: Counter[str], clip: bytes, stop: threading.Event) -> None:
    """Half an upload with its Content-Length, then the socket closed."""
    boundary = b"gone"
    body = (
        b"--gone\r\n"
        b'Content-Disposition: form-data; name="file"; filename="c.mp4"\r\n'
        b"Content-Type: video/mp4\r\n\r\n" + clip + b"\r\n--gone--\r\n"
    )
    while not stop.is_set():
        with _connect(port) as sock:
            sock.sendall(_multipart_head(boundary, length=len(body)) + body[: len(body) // 2])
            time.sleep(0.2)
        outcomes["closed mid-body"] += 1
        stop.wait(0.1)


def field_floods(port: int, outcomes: Counter[str], stop: threading.Event) -> None:
    """A form of 20,000 tiny fields (the first 17 parts are enough to refuse it)."""
    fields = b"".join(
        b'--f\r\nContent-Disposition: form-data; name="f%d"\r\n\r\nx\r\n' % i for i in range(20_000)
    )
    while not stop.is_set():
        with _connect(port) as sock:
            with suppress(OSError):
                sock.sendall(_multipart_head(b"f", length=len(fields) + 5) + fields + b"--f--")
            outcomes[_status(_read(sock))] += 1
        stop.wait(0.1)


# ------------------------------------------------------------------ phases


@dataclass
class Phase:
    name: str
    seconds: float
    tally: Tally
    server: Counter[str]  # statuses the server counted during the phase
    rss: list[tuple[float, float]]
    abusers: dict[str, Counter[str]] = field(default_factory=dict)
    cutoffs: list[float] = field(default_factory=list)


def run_phase(
    served: Served, name: str, *, clients: int, seconds: float, abusers: int, limit_bytes: int
) -> Phase:
    assert served.proc is not None
    base = f"http://127.0.0.1:{served.port}"
    before = server_statuses(base)
    tally, stop = Tally(), threading.Event()
    outcomes: dict[str, Counter[str]] = {
        k: Counter() for k in ("slow headers", "oversized", "disconnect", "field flood")
    }
    cutoffs: list[float] = []
    jobs: list[Callable[[], None]] = [
        (lambda i=i: client(served, tally, stop, seed=i)) for i in range(clients)
    ]
    for _ in range(abusers):
        jobs += [
            lambda: slow_headers(served.port, outcomes["slow headers"], cutoffs, stop),
            lambda: oversized(served.port, outcomes["oversized"], limit_bytes, stop),
            lambda: disconnects(served.port, outcomes["disconnect"], served.clip, stop),
            lambda: field_floods(served.port, outcomes["field flood"], stop),
        ]
    sampler = RssSampler(served.proc.pid)
    sampler.start()
    threads = [threading.Thread(target=job, daemon=True) for job in jobs]
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(120)
    time.sleep(1.0)  # let the server finish what the last abusers left
    sampler.stop.set()
    sampler.join()
    server = server_statuses(base) - before
    return Phase(
        name,
        seconds,
        tally,
        server,
        sampler.samples,
        {k: v for k, v in outcomes.items() if abusers},
        cutoffs,
    )


def _ms(values: list[float], q: float) -> str:
    return f"{np.percentile(np.asarray(values) * 1e3, q):.0f}" if values else "-"


def _five(counts: Counter[str] | Counter[int]) -> int:
    return sum(n for code, n in counts.items() if str(code).startswith("5"))


def report(phases: list[Phase], args: argparse.Namespace, served: Served, log: str) -> str:
    lines = [
        f"{date.today()} on {platform.machine()}, {os.cpu_count()} CPUs shared with other jobs "
        f"(load average {args.load_before:.1f} before the run), "
        f"featstore serve (uvicorn, defaults: --header-timeout-s 10, --limit-concurrency 64) "
        f"with --max-upload-mb {args.max_upload_mb:g}, one logfbank probe run on CPU; clients "
        f"upload a 2 s 96x96 clip ({len(served.clip) / 1e3:.0f} kB) or query one of "
        f"{len(served.video_ids)} stored videos by a percent-encoded odd id, half and half; "
        f"{args.clients} clients, {args.seconds:g} s per phase after {args.warmup_s:g} s of "
        "warm-up load.",
        "",
        "| phase | requests | req/s | p50 ms | p95 ms | p99 ms | upload p50 / p99 ms "
        "| stored p50 / p99 ms | client 5xx | server 5xx | transport errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in phases:
        every = p.tally.latencies["upload"] + p.tally.latencies["stored"]
        up, st = p.tally.latencies["upload"], p.tally.latencies["stored"]
        lines.append(
            f"| {p.name} | {len(every)} | {len(every) / p.seconds:.1f} | {_ms(every, 50)} | "
            f"{_ms(every, 95)} | {_ms(every, 99)} | {_ms(up, 50)} / {_ms(up, 99)} | "
            f"{_ms(st, 50)} / {_ms(st, 99)} | {_five(p.tally.statuses)} | {_five(p.server)} | "
            f"{sum(p.tally.errors.values())} |"
        )
    lines += [
        "",
        "Server memory (VmRSS, sampled every 0.5 s):",
        "",
        "| phase | start MB | min MB | max MB | end MB | end - start MB |",
        "|---|---|---|---|---|---|",
    ]
    for p in phases:
        mb = [m for _, m in p.rss]
        lines.append(
            f"| {p.name} | {mb[0]:.0f} | {min(mb):.0f} | {max(mb):.0f} | {mb[-1]:.0f} | "
            f"{mb[-1] - mb[0]:+.0f} |"
        )
    if len(phases) == 2 and args.abusers:
        growth = [p.rss[-1][1] - p.rss[0][1] for p in phases]
        refused = sum(p.abusers.get("oversized", Counter()).values())
        lines += [
            "",
            f"Memory growth over {args.seconds:g} s: {growth[0]:+.0f} MB without abusers, "
            f"{growth[1]:+.0f} MB with them (abusers add {growth[1] - growth[0]:+.0f} MB). "
            f"The abusers share the CPUs with the clients (the server parsed and refused "
            f"{refused} bodies past {args.max_upload_mb:g} MB, the bench process wrote them), "
            "which is what slows the clients down.",
        ]
    timeline = []
    for p in phases:
        step = max(1, len(p.rss) // 6)
        timeline += [f"{p.name[:1]}+{t:.0f}s {m:.0f}" for t, m in p.rss[::step]]
    lines += ["", "RSS over time (MB): " + ", ".join(timeline) + "."]
    for p in phases:
        if not p.abusers:
            continue
        lines += [
            "",
            f"Abusers in phase '{p.name}' ({args.abusers} of each kind), what they got back:",
            "",
            "| abuser | outcomes |",
            "|---|---|",
        ]
        for kind, outcomes in p.abusers.items():
            text = ", ".join(f"{code}: {n}" for code, n in sorted(outcomes.items()))
            if kind == "slow headers" and p.cutoffs:
                text += f"; cut off after {np.median(p.cutoffs):.1f} s (median)"
            lines.append(f"| {kind} | {text or '-'} |")
        server = ", ".join(f"{code}: {n}" for code, n in sorted(p.server.items()))
        lines += ["", f"Statuses the server counted in this phase (Prometheus): {server}."]
    levels = Counter(m.group(1) for m in re.finditer(r"^(ERROR|WARNING|CRITICAL)\b", log, re.M))
    tracebacks = log.count("Traceback")
    lines += [
        "",
        f"Server log over both phases: {levels['ERROR'] + levels['CRITICAL']} errors, "
        f"{levels['WARNING']} warnings, {tracebacks} tracebacks.",
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> str:
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
        served = prepare(Path(tmp))
        limit = int(args.max_upload_mb * 2**20)
        with featstore_serve(served, max_upload_mb=args.max_upload_mb):
            common = {"clients": args.clients, "limit_bytes": limit}
            # warm caches and the allocator's arenas first: their growth is not a leak
            run_phase(served, "warm-up", abusers=0, seconds=args.warmup_s, **common)
            common["seconds"] = args.seconds
            phases = [
                run_phase(served, "baseline", abusers=0, **common),
                run_phase(served, "with abusers", abusers=args.abusers, **common),
            ]
        return report(phases, args, served, (served.root / "serve.log").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=30.0, help="Length of each phase.")
    parser.add_argument("--warmup-s", type=float, default=10.0, help="Client load before (a).")
    parser.add_argument("--abusers", type=int, default=2, help="Abusers of each kind.")
    parser.add_argument("--max-upload-mb", type=float, default=5.0)
    parser.add_argument("--no-results", action="store_true", help="Print only.")
    args = parser.parse_args()
    args.load_before = os.getloadavg()[0]
    body = run(args)
    print(body)
    if not args.no_results:
        from bench.results import write_section

        command = "python -m bench.load" + "".join(
            f" --{k.replace('_', '-')} {getattr(args, k):g}"
            for k in ("clients", "seconds", "warmup_s", "abusers", "max_upload_mb")
            if getattr(args, k) != parser.get_default(k)
        )
        write_section("load", TITLE, command, body)


if __name__ == "__main__":
    main()
