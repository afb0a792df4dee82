"""Benchmark: training-free synchronisation scoring (paper Eq. 3), vectorised vs a per-offset loop.

Synthetic paired features (``--videos`` x ``--frames`` x ``--dim`` float32,
audio and visual): the videos cycle through a pool of ``--pool`` distinct
random pairs (memory stays small; every video is still scored in full). In
one run:

(a) ``featstore.trainers.syncfree.syncscore`` with the ``speechforensics`` preset
    (shift 15, mean): one batched matmul against a sliding-window view of the
    zero-padded visual rows per video, ``[T, 31]`` at once;
(b) the per-offset loop it replaces (as SpeechForensics-style code is
    written): per video, L2-normalise, then for each of the 31 offsets a
    row-wise dot product of the overlapping slices, mean, min over offsets;
(c) ``syncscore`` with the ``factor`` preset (shift 0, p97) and with every
    pool at shift 15, with either padding rule (zeros counted, or excluded).

Both arms' scores are compared (max abs difference).

    python -m bench.syncfree                       # full size, writes bench/RESULTS.md
    python -m bench.syncfree --videos 100 --no-results
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from datetime import date

import numpy as np

from bench.results import write_section
from featstore.trainers.pairs import PairedVideo
from featstore.trainers.syncfree import (
    PADDINGS,
    POOLS,
    PRESETS,
    SyncConfig,
    default_padding,
    syncscore,
)

TITLE = "Training-free sync score (Eq. 3): vectorised vs per-offset loop"


def make_pairs(n: int, frames: int, dim: int, *, pool: int, seed: int = 0) -> list[PairedVideo]:
    """``n`` paired videos cycling through ``pool`` distinct random ``[frames, dim]`` pairs."""
    rng = np.random.default_rng(seed)
    distinct = []
    for _ in range(min(pool, n)):
        a = rng.standard_normal((frames, dim), dtype=np.float32)  # [T, D]
        v = (a + rng.standard_normal((frames, dim), dtype=np.float32)).astype(np.float32)
        distinct.append((a, v))
    return [
        PairedVideo(f"v{i:05d}", i % 2, *distinct[i % len(distinct)], (), 25.0, frames, frames)
        for i in range(n)
    ]


def loop_score(audio: np.ndarray, visual: np.ndarray, shift: int) -> float:
    """The per-offset reference: one row-wise dot product per offset, mean pool, min over offsets."""
    a = audio / np.maximum(np.linalg.norm(audio, axis=1, keepdims=True), 1e-12)
    v = visual / np.maximum(np.linalg.norm(visual, axis=1, keepdims=True), 1e-12)
    t = a.shape[0]
    best = np.inf
    for delta in range(-shift, shift + 1):
        lo, hi = max(0, -delta), max(max(0, -delta), min(t, t - delta))
        total = float(np.einsum("td,td->", a[lo:hi], v[lo + delta : hi + delta]))
        best = min(best, -total / t)  # out-of-range positions contribute 0
    return best


def _median_time(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=1000)
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--pool", type=int, default=64, help="distinct random pairs to cycle")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="BLAS threads for every arm")
    parser.add_argument("--no-results", action="store_true", help="do not write bench/RESULTS.md")
    args = parser.parse_args(argv)

    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=args.threads, user_api="blas"):
        _run(args)


def _run(args: argparse.Namespace) -> None:
    pairs = make_pairs(args.videos, args.frames, args.dim, pool=args.pool)
    n = len(pairs)
    sf = PRESETS["speechforensics"]
    t_vec, vec = _median_time(lambda: syncscore(pairs, config=sf), args.repeats)
    t_loop, loop = _median_time(
        lambda: np.array([loop_score(p.audio, p.visual, sf.shift) for p in pairs]), args.repeats
    )
    diff = float(np.abs(vec.scores - loop).max())
    t_factor, _ = _median_time(lambda: syncscore(pairs, config=PRESETS["factor"]), args.repeats)
    configs = [SyncConfig(15, pool, padding) for pool in POOLS for padding in PADDINGS]
    per_pool = {
        (c.pool, c.padding): _median_time(lambda c=c: syncscore(pairs, config=c), 1)[0]
        for c in configs
    }

    lines = [
        f"Machine: {platform.machine()}, {os.cpu_count()} cores (shared with other jobs), "
        f"numpy {np.__version__} ({args.threads} BLAS thread(s) for every arm), Python {platform.python_version()}, "
        f"{date.today().isoformat()}.",
        f"Features: {n} videos x {args.frames} frames x {args.dim} float32, audio and visual "
        f"(cycling {min(args.pool, n)} distinct random pairs); median of {args.repeats} runs.",
        "",
        "| measurement | time | videos/s |",
        "|---|---|---|",
        f"| (a) syncscore, speechforensics (shift 15, mean) | {t_vec:.3f} s | {n / t_vec:,.0f} |",
        f"| (b) per-offset loop, 31 offsets | {t_loop:.3f} s | {n / t_loop:,.0f} |",
        f"| speed-up (b)/(a) | {t_loop / t_vec:.1f}x | - |",
        f"| (c) syncscore, factor (shift 0, p97) | {t_factor:.3f} s | {n / t_factor:,.0f} |",
        *(
            f"| (c) syncscore, shift 15, {pool}, padding {padding}"
            f"{' (default)' if default_padding(pool) == padding else ''} (1 run) "
            f"| {t:.3f} s | {n / t:,.0f} |"
            for (pool, padding), t in per_pool.items()
        ),
        "",
        f"Max abs difference between (a) and (b) scores: {diff:.2e}.",
    ]
    body = "\n".join(lines)
    print(body)
    if not args.no_results:
        flags = [] if args.threads == 1 else [f"--threads {args.threads}"]
        write_section("syncfree", TITLE, " ".join(["python -m bench.syncfree", *flags]), body)


if __name__ == "__main__":
    main()
