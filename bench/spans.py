"""A 10 s segment at the end of a long file: span decode (seek) vs decoding from the start.

Generates, in a temporary folder, one long H.264 video (x264 ``veryfast``, its default
keyframe interval of 250 frames = 10 s, so a seek lands up to 10 s before the span;
moving content) with AAC 44.1 kHz stereo audio, then measures in this process, one
decoder thread, frames and audio of the last ``--span-s`` seconds:

- ``seek``: ``media.decode(path, start_s=T - span, until_s=T)`` (what ``featstore
  extract`` does for a segment dataset's row);
- baseline ``from the start``: ``media.iter_chunks(path, until_s=T)`` keeping only the
  chunks of the span: the same decoder without seeking, streamed (a whole-file
  ``decode`` would hold every frame of the file).

The two outputs are checked to be equal before any figure is written. Throughput is per
second of this process's CPU time (least-CPU run of the repeats, as ``bench.media``),
with wall time beside it.

    python -m bench.spans [--minutes 10] [--span-s 10] [--size 640x360] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from featstore import media

TITLE = "Segment decoding: seek vs decoding from the start"


@dataclass(frozen=True)
class Row:
    method: str
    frames: int
    samples: int
    wall_s: float
    cpu_s: float


def make_long_clip(path: Path, *, seconds: float, width: int, height: int) -> Path:
    """H.264 (x264 veryfast, default GOP) of a moving gradient; AAC 44.1 kHz stereo tones."""
    n = round(seconds * 25)
    yy, xx = np.mgrid[0:height, 0:width]
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=25)
        vs.width, vs.height, vs.pix_fmt = width, height, "yuv420p"
        vs.options = {"preset": "veryfast", "crf": "23"}
        as_ = out.add_stream("aac", rate=44_100, layout="stereo")
        for i in range(n):
            base = ((xx + 3 * i) % 256 * 0.6 + (yy + 2 * i) % 256 * 0.4).astype(np.uint8)
            img = np.stack([base, np.roll(base, i, axis=1), base[::-1]], axis=-1)  # [H, W, 3]
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            out.mux(vs.encode(frame))
        out.mux(vs.encode(None))
        step = as_.codec_context.frame_size
        total = round(seconds * 44_100)
        for s in range(0, total, step):
            t = np.arange(s, min(s + step, total)) / 44_100
            sig = 0.3 * np.stack([np.sin(2 * np.pi * 220 * t), np.sin(2 * np.pi * 330 * t)])
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(sig.astype(np.float32)), format="fltp", layout="stereo"
            )
            frame.sample_rate, frame.pts = 44_100, s
            out.mux(as_.encode(frame))
        out.mux(as_.encode(None))
    return path


def _from_start(path: Path, start_s: float, until_s: float) -> tuple[np.ndarray, np.ndarray]:
    """The span's frames and audio, decoded from the start of the file (no seek)."""
    k0, i0 = round(start_s * 25), round(start_s * 16_000)
    frames, audio = [], []
    for chunk in media.iter_chunks(path, chunk_frames=250, until_s=until_s, threads=1):
        f, a = chunk.frames, chunk.audio
        if f is not None and chunk.start_frame + len(f) > k0:
            frames.append(f[max(0, k0 - chunk.start_frame) :])
        if a is not None and chunk.start_frame * 640 + len(a) > i0:
            audio.append(a[max(0, i0 - chunk.start_frame * 640) :])
    return np.concatenate(frames), np.concatenate(audio)


def _seek(path: Path, start_s: float, until_s: float) -> tuple[np.ndarray, np.ndarray]:
    m = media.decode(path, start_s=start_s, until_s=until_s, threads=1)
    return m.frames, m.audio


def _measure(
    fn: Callable[[], tuple[np.ndarray, np.ndarray]], repeats: int
) -> tuple[tuple[np.ndarray, np.ndarray], float, float]:
    best: tuple[tuple[np.ndarray, np.ndarray], float, float] | None = None
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        if best is None or cpu < best[2]:
            best = (out, wall, cpu)
    assert best is not None
    return best


def run(
    *, minutes: float, span_s: float, size: tuple[int, int], repeats: int, workdir: Path
) -> tuple[list[Row], float]:
    seconds = minutes * 60
    t0 = time.perf_counter()
    path = make_long_clip(workdir / "long.mp4", seconds=seconds, width=size[0], height=size[1])
    print(f"made a {seconds:.0f} s clip in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    start_s, until_s = seconds - span_s, seconds
    rows = []
    results = {}
    for method, fn, n in (
        ("seek: decode(start_s, until_s)", lambda: _seek(path, start_s, until_s), repeats),
        ("from the start (baseline)", lambda: _from_start(path, start_s, until_s), 1),
    ):
        out, wall, cpu = _measure(fn, n)
        results[method] = out
        rows.append(Row(method, len(out[0]), len(out[1]), wall, cpu))
    (fa, aa), (fb, ab) = results.values()
    if not (np.array_equal(fa, fb) and aa.shape == ab.shape):
        raise SystemExit("seek and decode-from-start gave different frames: not measuring")
    audio_diff = float(np.abs(aa - ab).max())
    return rows, audio_diff


def to_markdown(
    rows: list[Row], *, minutes: float, span_s: float, size: tuple[int, int], audio_diff: float
) -> str:
    lines = [
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, PyAV {av.__version__}, {time.strftime('%Y-%m-%d')}. "
        f"A {minutes:g} min {size[0]}x{size[1]} H.264 file (x264 veryfast, keyframe every "
        f"10 s) with AAC 44.1 kHz stereo; the last {span_s:g} s decoded to 25 fps RGB and "
        "16 kHz mono, one decoder thread; CPU time of this process (least of the repeats). "
        "Frames are equal in both; audio differs by at most "
        f"{audio_diff:.1e} (AAC noise substitution, see `featstore.seeking`).",
        "",
        "| method | frames | samples | wall s | cpu s | speed-up (cpu) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    base = rows[-1].cpu_s
    for r in rows:
        lines.append(
            f"| {r.method} | {r.frames} | {r.samples} | {r.wall_s:.2f} | {r.cpu_s:.2f} "
            f"| {base / r.cpu_s:.1f}x |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the long file")
    parser.add_argument("--span-s", type=float, default=10.0, help="the segment at its end")
    parser.add_argument("--size", default="640x360", help="WIDTHxHEIGHT")
    parser.add_argument("--repeats", type=int, default=3, help="runs of the seek (best kept)")
    parser.add_argument("--no-results", action="store_true", help="Do not update bench/RESULTS.md.")
    args = parser.parse_args(argv)
    size = tuple(int(x) for x in args.size.split("x"))
    command = "python -m bench.spans " + shlex.join(sys.argv[1:] if argv is None else argv)
    with tempfile.TemporaryDirectory() as tmp:
        rows, audio_diff = run(
            minutes=args.minutes,
            span_s=args.span_s,
            size=size,
            repeats=args.repeats,
            workdir=Path(tmp),
        )
    body = to_markdown(
        rows, minutes=args.minutes, span_s=args.span_s, size=size, audio_diff=audio_diff
    )
    sys.stdout.write(f"## {TITLE}\n\nCommand: `{command.strip()}`\n\n{body}")
    if not args.no_results:
        from bench.results import write_section

        write_section("spans", TITLE, command.strip(), body)


if __name__ == "__main__":
    main()
