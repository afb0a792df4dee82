"""Peak memory of ``featstore extract`` on hostile media (issue 13.5), bounded vs unbounded.

Makes, in a temporary folder, the two files of the issue:

- ``silent-10h``: ten hours of silent 8 kHz FLAC with a sparse 32x32 video (one
  frame every 50 s), about 10 MB, whose headers honestly say 10 h;
- ``lying-1h``: one hour of the same audio whose Matroska headers say 1 s;

each in a dataset beside one good clip, then runs ``featstore extract --encoder
logfbank`` (weight-free, audio) in a child process per case and reports its exit
status, wall time, peak RSS (``ru_maxrss`` of the child) and what it recorded:

- ``bounded``: the defaults (``--max-duration-s 600 --max-decode-mb 4096``);
- ``unbounded``: ``--max-duration-s 0 --max-decode-mb 0 --max-frame-pixels 0``, the
  behaviour before the bounds (the baseline, run here with the same code);
- ``before (LABEL)`` with ``--before-src DIR``: another source tree, run without the
  options it does not know; e.g. the commit before the bounds (issue 13), made with
  ``git archive 1f789f2 | tar -x -C DIR`` and labelled ``--before-label 1f789f2``.

Unbounded runs can need tens of GB (logfbank over 10 h of audio); every child runs
under an address-space cap (``--cap-gb``), so such a run ends with ``MemoryError``
(the issue's crash) instead of taking the machine down.

    python -m bench.hostile_media [--hours 10] [--lying-hours 1] [--cap-gb 8]
        [--before-src DIR --before-label REV]
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shlex
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
UNBOUNDED = ["--max-duration-s", "0", "--max-decode-mb", "0", "--max-frame-pixels", "0"]


def write_silence(
    path: Path, seconds: float, *, rate: int = 8_000, frame_every_s: float = 50.0
) -> Path:
    """Silent FLAC (digital silence compresses to almost nothing) and a sparse video."""
    import av

    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=25)
        vs.width = vs.height = 32
        vs.pix_fmt = "yuv420p"
        vs.codec_context.time_base = Fraction(1, 1000)
        as_ = out.add_stream("flac", rate=rate, layout="mono")
        for i, t in enumerate([*np.arange(0.0, seconds, frame_every_s), seconds - 0.04]):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 16 + i % 200, np.uint8))
            frame.pts, frame.time_base = round(t * 1000), Fraction(1, 1000)
            out.mux(vs.encode(frame))
        out.mux(vs.encode(None))
        step, total = 1 << 16, round(seconds * rate)
        zeros = np.zeros((1, step), np.int16)
        for start in range(0, total, step):
            frame = av.AudioFrame.from_ndarray(
                zeros[:, : min(step, total - start)], format="s16", layout="mono"
            )
            frame.sample_rate, frame.pts = rate, start
            out.mux(as_.encode(frame))
        out.mux(as_.encode(None))
    return path


def lie_about_duration(src: Path, dst: Path, seconds: float) -> Path:
    """Patch Matroska's segment Duration and the streams' DURATION tags to ``seconds``."""
    data = bytearray(src.read_bytes())
    at = data.find(b"\x44\x89\x88")
    data[at + 3 : at + 11] = struct.pack(">d", seconds * 1000.0)
    h, m, s = int(seconds // 3600), int(seconds % 3600 // 60), seconds % 60
    tag = f"{h:02d}:{m:02d}:{s:012.9f}".encode()
    dst.write_bytes(re.sub(rb"\d\d:\d\d:\d\d\.\d{9}", lambda _: tag, bytes(data)))
    return dst


@dataclass(frozen=True)
class Outcome:
    dataset: str
    mode: str
    exit_code: int
    seconds: float
    peak_rss_mb: float
    summary: str


def run_extract(
    src: Path, store: str, dataset: str, extra: list[str], cap_gb: float
) -> tuple[int, float, float, str]:
    """Run ``featstore extract`` from source tree ``src`` in a capped child process."""
    cap = int(cap_gb * 2**30)

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    code = "import sys; from featstore.cli.main import app; sys.argv[0] = 'featstore'; app()"
    args = [sys.executable, "-c", code, "extract", "--encoder", "logfbank", "--on", dataset,
            "--store", store, "--num-workers", "1", *extra]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(src), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    proc = subprocess.Popen(args, cwd=src, env=env, preexec_fn=limit, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    lines = [line for line in out.strip().splitlines() if line.strip()]
    said = [line for line in lines if " videos extracted, " in line or line.startswith("error")]
    tail = (said or lines or [""])[-1]
    if "MemoryError" in out or "Cannot allocate memory" in out or "can't allocate" in out:
        tail = "MemoryError: " + tail
    return proc.returncode, seconds, usage.ru_maxrss / 1024, tail[:160]


def failures(store: str, dataset: str, src: Path) -> str:
    """The failures the run recorded, read with that tree's own code."""
    code = (
        "import sys; from featstore.store import open_store\n"
        "f = open_store(sys.argv[1], mode='r').failures(sys.argv[2], 'logfbank')\n"
        "print('; '.join(f'{r.video_id}: {r.error_type}' for r in f.itertuples()) or 'none')"
    )
    env = {**os.environ, "PYTHONPATH": str(src)}
    run = subprocess.run([sys.executable, "-c", code, store, dataset], env=env, cwd=src,
                         capture_output=True, text=True)  # fmt: skip
    return run.stdout.strip() or f"(unreadable: {run.stderr.strip().splitlines()[-1:]})"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hours", type=float, default=10.0)
    parser.add_argument("--lying-hours", type=float, default=1.0)
    parser.add_argument("--cap-gb", type=float, default=8.0)
    parser.add_argument("--before-src", type=Path, default=None)
    parser.add_argument("--before-label", default=None, help="names the before tree")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)

    import pandas as pd

    from featstore.sample import make_sample
    from featstore.store import open_store

    with tempfile.TemporaryDirectory(prefix="featstore-hostile-") as tmp:
        d = Path(tmp)
        t0 = time.perf_counter()
        silent = write_silence(d / f"silent-{args.hours:g}h.mkv", args.hours * 3600)
        lying = lie_about_duration(
            write_silence(d / "one.mkv", args.lying_hours * 3600),
            d / f"lying-{args.lying_hours:g}h.mkv",
            1.0,
        )
        good = sorted(
            make_sample(d / "sample", n_clips=2, seed=0, size=64, duration_s=(2.0, 2.0)).root.rglob(
                "*.mp4"
            )
        )[0]
        size_mb = silent.stat().st_size / 1e6
        print(f"files made in {time.perf_counter() - t0:.0f} s: {size_mb:.1f} MB, "
              f"{lying.stat().st_size / 1e6:.1f} MB", flush=True)  # fmt: skip
        datasets = {silent.stem: silent, lying.stem: lying}
        modes: list[tuple[str, Path, list[str]]] = [
            ("bounded (defaults)", ROOT, []),
            ("unbounded", ROOT, UNBOUNDED),
        ]
        if args.before_src is not None:
            label = args.before_label or args.before_src.name
            modes.append((f"before ({label})", args.before_src.resolve(), []))
        outcomes = []
        for name, path in datasets.items():
            for mode, src, extra in modes:
                store = str(d / f"{name}-{len(outcomes)}.zarr")
                table = pd.DataFrame({"video_id": ["good", name], "path": [str(good), str(path)]})
                open_store(store, mode="a").write_manifest(name, table, attrs={"root": "/"})
                code, seconds, rss, tail = run_extract(src, store, name, extra, args.cap_gb)
                recorded = failures(store, name, src) if code == 0 else "nothing (the run crashed)"
                outcomes.append(
                    Outcome(name, mode, code, seconds, rss, f"{tail} | failures: {recorded}")
                )
                print(outcomes[-1], flush=True)

    lines = [
        f"{args.hours:g} h of silent FLAC + sparse video ({size_mb:.1f} MB, honest "
        f"headers) and {args.lying_hours:g} h whose headers say 1 s, each beside one good clip; "
        f"`featstore extract --encoder logfbank --num-workers 1` in a child process capped at "
        f"{args.cap_gb:g} GB of address space. {os.cpu_count()} CPUs; peak RSS of the child.",
        "",
        "| file | mode | exit | wall s | peak RSS MB | outcome |",
        "|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        cells = [o.dataset, o.mode, str(o.exit_code), f"{o.seconds:.0f}", f"{o.peak_rss_mb:.0f}"]
        lines.append("| " + " | ".join([*cells, o.summary.replace("|", "/")]) + " |")
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        from bench.results import write_section

        command = "python -m bench.hostile_media " + " ".join(
            shlex.quote(a) for a in (argv or sys.argv[1:])
        )
        write_section(
            "hostile_media",
            "Hostile media: peak memory of extract, bounded vs unbounded",
            command.strip(),
            body,
        )


if __name__ == "__main__":
    main()
