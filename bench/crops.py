"""Decode + mouth-crop throughput on one CPU core, 224p and 720p.

Run: ``python bench/crops.py`` (updates the ``crops`` section of bench/RESULTS.md)

One core: the process is pinned to a single CPU (``sched_setaffinity``), and OpenMP,
OpenBLAS, MKL and OpenCV run one thread each (set before numpy/cv2 are imported); PyAV's
decoder runs one thread. Clips: a real clip of ``featstore.sample`` (224x224, libx264), and
the same clip upscaled bicubic to 720x720 and padded to 1280x720 (re-encoded, libx264 crf 20).
Each figure is frames per CPU-second of the process (so other load on a shared machine does
not count), best of ``--repeats`` passes over the clip, beside its baselines measured in the
same process: decoding alone, and detecting on every frame (k=1, no tracking).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from featstore.crops import crop_face, crop_mouth  # noqa: E402
from featstore.landmarks import TrackerConfig, load_face_models, track_faces  # noqa: E402


def decode(path: Path) -> np.ndarray:
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)])


def make_720p(src: Path, dst: Path) -> None:
    import av
    import cv2

    frames = decode(src)
    with av.open(str(dst), "w", format="mp4") as out:
        vs = out.add_stream("libx264", rate=25)
        vs.width, vs.height, vs.pix_fmt = 1280, 720, "yuv420p"
        vs.options = {"crf": "20", "preset": "veryfast", "threads": "1"}
        for f in frames:
            big = cv2.resize(f, (720, 720), interpolation=cv2.INTER_CUBIC)
            big = cv2.copyMakeBorder(big, 0, 0, 280, 280, cv2.BORDER_REPLICATE)
            for p in vs.encode(av.VideoFrame.from_ndarray(big, format="rgb24")):
                out.mux(p)
        for p in vs.encode():
            out.mux(p)


def best_fps(fn: Callable[[], int], repeats: int) -> float:
    """Frames per CPU-second of this (single-threaded, pinned) process, best of ``repeats``.

    CPU time, not wall time: on a shared machine other processes steal the core, which
    wall time would count against us; CPU time counts every thread of the process.
    """
    best = 0.0
    for _ in range(repeats):
        t0 = time.process_time()
        n = fn()
        best = max(best, n / max(time.process_time() - t0, 1e-9))
    return best


def run_clip(
    path: Path, label: str, configs: list[tuple[str, TrackerConfig]], repeats: int
) -> list[dict]:
    rows = []
    frames = decode(path)
    h, w = frames.shape[1:3]
    dec = best_fps(lambda: len(decode(path)), repeats)
    rows.append(
        {"clip": label, "size": f"{w}x{h}", "what": "decode only", "fps": dec, "detected": None}
    )
    for name, cfg in configs:
        state: dict = {}

        def full(cfg: TrackerConfig = cfg, state: dict = state) -> int:
            f = decode(path)
            state["tracks"] = track_faces(f, config=cfg)
            crop_mouth(f, state["tracks"])
            return len(f)

        fps = best_fps(full, repeats)
        track_only = best_fps(
            lambda cfg=cfg: len(track_faces(frames, config=cfg).detected), repeats
        )
        crop_only = best_fps(lambda state=state: len(crop_mouth(frames, state["tracks"])), repeats)
        face_only = best_fps(lambda state=state: len(crop_face(frames, state["tracks"])), repeats)
        rows.append(
            {
                "clip": label,
                "size": f"{w}x{h}",
                "what": name,
                "fps": fps,
                "track_fps": track_only,
                "crop_fps": crop_only,
                "face_fps": face_only,
                "detected": state["tracks"].detection_rate,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-results", action="store_true", help="do not update bench/RESULTS.md")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--cpu", type=int, default=None, help="core to pin to (default: the first allowed)"
    )
    args = ap.parse_args()

    cpu = args.cpu if args.cpu is not None else min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    models = load_face_models()
    models.cv2.setNumThreads(1)

    from featstore.sample import clip_path, make_sample

    with tempfile.TemporaryDirectory() as tmp:
        info = make_sample(Path(tmp) / "sample", n_clips=2, seed=0, duration_s=(8.0, 8.0))
        entry = next(
            e for e in json.loads(info.train_metadata.read_text()) if e["modify_type"] == "real"
        )
        clip224 = clip_path(info.root, entry)
        clip720 = Path(tmp) / "clip720.mp4"
        make_720p(clip224, clip720)
        rows = run_clip(
            clip224,
            "sample 224p",
            [
                ("k=1 (detect every frame; baseline)", TrackerConfig(detect_every=1)),
                ("k=5", TrackerConfig(detect_every=5)),
                ("k=10 (default)", TrackerConfig(detect_every=10)),
                ("k=25", TrackerConfig(detect_every=25)),
            ],
            args.repeats,
        )
        rows += run_clip(
            clip720,
            "sample upscaled 720p",
            [
                ("k=1, detect at 720 (baseline)", TrackerConfig(detect_every=1, detect_height=720)),
                ("k=10, detect at 720", TrackerConfig(detect_every=10, detect_height=720)),
                (
                    "k=10, detect at 360 (default)",
                    TrackerConfig(detect_every=10, detect_height=360),
                ),
                ("k=10, detect at 240", TrackerConfig(detect_every=10, detect_height=240)),
            ],
            args.repeats,
        )

    title = "Mouth crops: decode + track + crop, one CPU core"
    command = " ".join(["python", *sys.argv])
    lines = [
        f"On {platform.processor() or platform.machine()}, "
        f"pinned to CPU {cpu}, OMP/OpenBLAS/MKL/OpenCV 1 thread, PyAV decoder 1 thread; "
        f"frames per CPU-second of the process, best of {args.repeats}. `total` = decode + track + 96x96 mouth crop; `track`, "
        "`mouth crop` and `face crop` (224x224 bicubic) measured alone on decoded frames.",
        "",
        "| clip | frame size | config | total frames/s | track frames/s | mouth crop frames/s "
        "| face crop frames/s | frames with a face |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r["what"] == "decode only":
            lines.append(
                f"| {r['clip']} | {r['size']} | decode only (baseline) | {r['fps']:.0f} | | | | |"
            )
        else:
            lines.append(
                f"| {r['clip']} | {r['size']} | {r['what']} | {r['fps']:.0f} | {r['track_fps']:.0f} "
                f"| {r['crop_fps']:.0f} | {r['face_fps']:.0f} | {r['detected']:.1%} |"
            )
    lines += [
        "",
        "- `total` must beat 100 frames/s on 224p (the target); the k=1 row is the naive",
        "  baseline (HOG detection on every frame), `decode only` the ceiling.",
        "- Tracking dominates: the 68-point predictor costs ~0.7 ms a frame, a HOG detection",
        "  ~5 ms on a 224x224 frame (~80 ms at 1280x720, ~20 ms at 640x360), so detecting every",
        "  k-th frame on a frame downscaled to `detect_height` rows is what makes it fast; the",
        "  crops themselves are a single warp per frame.",
        "- Defaults: `detect_every=10` (0.4 s; a lost track re-detects at once), `detect_height=360`",
        "  (HOG needs faces of ~80 px: 360 keeps faces from 22% of the frame height up; 240 is",
        "  faster but drops faces under a third of the height).",
        f"- Machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end of the run"
        " (CPU time is robust to that load; wall time is not).",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_results:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from bench.results import write_section

        write_section("crops", title, command, text)


if __name__ == "__main__":
    main()
