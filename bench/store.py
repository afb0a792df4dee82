"""Benchmark: the Zarr feature store against one ``.npy`` file per video.

2,000 synthetic videos of 75-400 frames at D=1024 float16 (~1 GB), written
both ways in the same run, then: write time, full sequential scan (every
video materialised as an array), 200 random single-video reads (same ids for
both), and the number of files. Reads are measured with a warm page cache
and a cold one (every file of the layout dropped from the
page cache with posix_fadvise(DONTNEED) first), each the median of 3 runs.

    python bench/store.py                 # full size, writes bench/RESULTS.md
    python bench/store.py --videos 200    # quick look, does not write RESULTS.md
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.results import write_section
from featstore.store import EncoderInfo, open_store
from featstore.synthetic import synthetic_lengths

DIM = 1024


def _drop_cache(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def _count_files(root: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(root))


def _timed(
    fn: Callable[[], object], repeat: int, before: Callable[[], None] | None = None
) -> float:
    times = []
    for _ in range(repeat):
        if before is not None:
            before()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--videos", type=int, default=2000)
    parser.add_argument("--random-reads", type=int, default=200)
    parser.add_argument("--workdir", default=None, help="Where to write (default: a temp dir).")
    parser.add_argument("--no-results", action="store_true", help="Do not update bench/RESULTS.md.")
    args = parser.parse_args()

    work = Path(args.workdir or tempfile.mkdtemp(prefix="featstore-bench-"))
    npy_dir, zarr_dir = work / "npy", work / "features.zarr"
    shutil.rmtree(npy_dir, ignore_errors=True)
    shutil.rmtree(zarr_dir, ignore_errors=True)

    lengths = synthetic_lengths(args.videos, low=75, high=400, seed=0)
    ids = [f"id{i // 10:05d}/clip{i % 10:02d}" for i in range(args.videos)]
    rng = np.random.default_rng(0)
    # One pool of random rows, sliced per video: generation stays out of the timings.
    pool = rng.standard_normal((int(lengths.max()) + 4096, DIM), dtype=np.float32).astype(
        np.float16
    )
    videos = [pool[i % 4096 : i % 4096 + n] for i, n in enumerate(lengths)]
    total_bytes = sum(v.nbytes for v in videos)
    print(
        f"{args.videos} videos, {int(lengths.sum())} frames, {total_bytes / 2**20:.0f} MiB -> {work}"
    )

    # ---- write: 3 rounds, the three writers alternating, median of each. Every write
    # starts with no dirty pages left by the previous one (os.sync), and the outputs
    # of all but the last round are removed.
    info = EncoderInfo(name="bench", frame_hz=25.0, layer_dims={"last": DIM})

    def write_npy_to(path: Path) -> float:
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        os.sync()
        start = time.perf_counter()
        for vid, x in zip(ids, videos, strict=True):
            out = path / f"{vid}.npy"
            out.parent.mkdir(exist_ok=True)
            np.save(out, x)
        return time.perf_counter() - start

    def write_store_to(path: Path, durable: bool) -> float:
        shutil.rmtree(path, ignore_errors=True)
        store = open_store(path, mode="a", durable=durable)
        os.sync()
        start = time.perf_counter()
        with store.writer("bench", info) as writer:
            for vid, x in zip(ids, videos, strict=True):
                writer.add(vid, {"last": x})
        return time.perf_counter() - start

    scratch = work / "scratch.zarr"
    rounds: dict[str, list[float]] = {"npy": [], "nosync": [], "store": []}
    for _ in range(3):
        rounds["npy"].append(write_npy_to(npy_dir))
        rounds["nosync"].append(write_store_to(scratch, durable=False))
        rounds["store"].append(write_store_to(zarr_dir, durable=True))
    shutil.rmtree(scratch)
    write_npy = statistics.median(rounds["npy"])
    write_store_nosync = statistics.median(rounds["nosync"])
    write_store = statistics.median(rounds["store"])

    # ---- open (listing commits, building the index)
    def open_index() -> object:
        s = open_store(zarr_dir)
        s.video_ids("bench", "bench", "last")
        return s

    open_time = _timed(open_index, 3)
    reader = open_index()

    # ---- full scan
    def scan_npy() -> int:
        n = 0
        for vid in ids:
            n += len(np.load(npy_dir / f"{vid}.npy"))
        return n

    def scan_store() -> int:
        s = open_store(zarr_dir)
        n = 0
        for _, x in s.iter_videos("bench", "bench", "last"):
            n += len(x)
        return n

    assert scan_npy() == scan_store() == int(lengths.sum())

    # ---- random single-video reads
    picks = [
        ids[i]
        for i in np.random.default_rng(1).choice(
            len(ids), min(args.random_reads, len(ids)), replace=False
        )
    ]

    def random_npy() -> None:
        for vid in picks:
            np.load(npy_dir / f"{vid}.npy")

    def random_store() -> None:
        for vid in picks:
            reader.video("bench", "bench", vid, "last")

    for vid in picks[:20]:
        assert np.array_equal(
            np.load(npy_dir / f"{vid}.npy"), reader.video("bench", "bench", vid, "last")
        )

    results = {}
    for cache in ("warm", "cold"):
        repeat = 3  # cold reads on this VM vary run to run: median of 3 as for warm

        def drop_npy(cache=cache) -> None:
            if cache == "cold":
                _drop_cache(npy_dir)

        def drop_store(cache=cache) -> None:
            if cache == "cold":
                _drop_cache(zarr_dir)
                reader._readers.clear()
                reader.backend.close()

        results[cache] = {
            "scan_npy": _timed(scan_npy, repeat, drop_npy),
            "scan_store": _timed(scan_store, repeat, drop_store),
            "rand_npy": _timed(random_npy, repeat, drop_npy),
            "rand_store": _timed(random_store, repeat, drop_store),
        }

    files_npy, files_store = _count_files(npy_dir), _count_files(zarr_dir)
    gib = total_bytes / 2**30
    lines = [
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d')}. {args.videos} videos, {int(lengths.sum())} frames x {DIM} "
        f"float16 = {total_bytes / 2**20:.0f} MiB; store parts of 128 MiB, 512-row inner chunks, "
        "one shard per part, no compression. np.save does not fsync; the store fsyncs every "
        "object before its commit record (power-loss safety) unless opened with durable=False.",
        "",
        "| measurement | one .npy per video | featstore | ratio | target |",
        "|---|---|---|---|---|",
        f"| write (median of 3), store with fsync (default) | {write_npy:.2f} s | {write_store:.2f} s | "
        f"{write_store / write_npy:.2f}x slower | - |",
        f"| write (median of 3), store without fsync (durable=False) | {write_npy:.2f} s | {write_store_nosync:.2f} s | "
        f"{write_store_nosync / write_npy:.2f}x slower | - |",
    ]
    for cache in ("warm", "cold"):
        r = results[cache]
        scan_ratio = r["scan_npy"] / r["scan_store"]
        rand_ratio = r["rand_store"] / r["rand_npy"]
        lines += [
            f"| full scan, {cache} cache | {r['scan_npy']:.3f} s ({gib / r['scan_npy']:.2f} GiB/s) | "
            f"{r['scan_store']:.3f} s ({gib / r['scan_store']:.2f} GiB/s) | {scan_ratio:.2f}x faster | "
            f">= 1.5x faster: {'met' if scan_ratio >= 1.5 else 'MISSED'} |",
            f"| {args.random_reads} random video reads, {cache} cache | "
            f"{r['rand_npy'] * 1e3 / args.random_reads:.3f} ms/video | "
            f"{r['rand_store'] * 1e3 / args.random_reads:.3f} ms/video | "
            f"{rand_ratio:.2f}x {'slower' if rand_ratio >= 1 else 'the time'} | "
            f"<= 1.5x slower: {'met' if rand_ratio <= 1.5 else 'MISSED'} |",
        ]
    file_ratio = files_npy / files_store
    lines += [
        f"| files | {files_npy} | {files_store} | {file_ratio:.0f}x fewer | "
        f">= 50x fewer: {'met' if file_ratio >= 50 else 'MISSED'} |",
        f"| open store + build index | - | {open_time * 1e3:.1f} ms | - | - |",
    ]
    lines += [
        "",
        "Writes carry no target. On this VM they mostly measure the kernel's page cache: the same "
        "944 MiB written as 8 plain files took 0.27 s in one run and 3.3 s in the next, so the "
        "write rows move by several times between runs. The writer's own work (validation, one "
        "copy into the shard buffer, crc32c) is about 0.5 s of CPU for these 944 MiB.",
    ]
    table = "\n".join(lines)
    print(table)
    shutil.rmtree(work, ignore_errors=True)
    if not args.no_results and args.videos == 2000 and args.random_reads == 200:
        write_section(
            "store", "Store: featstore vs one .npy file per video", "python bench/store.py", table
        )


if __name__ == "__main__":
    main()
