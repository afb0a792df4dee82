"""CPU speed of registered encoders at full size, random init, on one synthetic clip.

For each encoder: load it with ``random_init=True`` (the default checkpoint's
architecture; no weights needed), warm up on a 1 s clip, then time ``encode`` of a
``--seconds`` clip (25 fps: 5 s = 125 frames) for layer ``last``, best of
``--repeats``. The baseline beside each family is the weight-free encoder on the
same input (``logfbank`` for audio, ``mouth-pixels`` for mouth crops): the cost of
the input path alone. One section of ``bench/RESULTS.md`` per family, so runs for
different families do not overwrite each other.

    python -m bench.encoder_speed --encoders avhubert-a,avhubert-v,avhubert-av --seconds 5
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections import defaultdict

import numpy as np

from bench.results import write_section
from featstore.encoders import Clip, EncoderSpec, get_spec, load_encoder

BASELINES = {"audio": "logfbank", "mouth": "mouth-pixels"}


def make_clip(spec: EncoderSpec, seconds: float, *, seed: int = 0) -> Clip:
    """A synthetic clip with the inputs ``spec`` needs (audio tone + noise, random crops)."""
    rng = np.random.default_rng(seed)
    n_frames = round(seconds * 25)
    audio = frames = None
    if spec.needs_audio:
        t = np.arange(n_frames * 640) / 16000
        audio = (0.3 * np.sin(2 * np.pi * 200 * t) + 0.05 * rng.standard_normal(t.size)).astype(
            np.float32
        )
    if spec.needs_video:
        shape = {"none": (224, 224, 3), "face": (224, 224, 3), "mouth": (96, 96)}[spec.crop]
        frames = rng.integers(0, 256, (n_frames, *shape), dtype=np.uint8)
    return Clip("bench", frames=frames, audio=audio)


def measure(name: str, seconds: float, repeats: int) -> dict[str, float | str]:
    """Load ``name`` (random init) and time ``encode``; returns the row of the table."""
    spec = get_spec(name)
    start = time.perf_counter()
    enc = load_encoder(name, random_init=True) if spec.has_weights else load_encoder(name)
    load_s = time.perf_counter() - start
    model = getattr(enc, "model", None)
    params = sum(p.numel() for p in model.parameters()) / 1e6 if model is not None else 0.0
    enc.encode([make_clip(spec, 1.0, seed=1)], ["last"])  # warm-up
    clip = make_clip(spec, seconds)
    best = float("inf")
    rows = 0
    for _ in range(repeats):
        start = time.perf_counter()
        out = enc.encode([clip], ["last"])
        best = min(best, time.perf_counter() - start)
        rows = out[0]["last"].shape[0]
    n_frames = clip.duration_frames
    return {
        "encoder": name,
        "params_m": params,
        "load_s": load_s,
        "encode_s": best,
        "rows": rows,
        "fps": n_frames / best,
        "realtime": n_frames / best / 25.0,
    }


def table(rows: list[dict[str, float | str]]) -> str:
    lines = [
        "| encoder | params (M) | load s | encode s | rows | frames/s | x real time |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['encoder']} | {r['params_m']:.1f} | {r['load_s']:.1f} | {r['encode_s']:.2f} "
            f"| {r['rows']} | {r['fps']:.1f} | {r['realtime']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoders", required=True, help="comma-separated registered names")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    names = [n.strip() for n in args.encoders.split(",") if n.strip()]
    by_family: dict[str, list[str]] = defaultdict(list)
    for name in names:
        by_family[get_spec(name).family].append(name)
    for family, members in by_family.items():
        rows = [measure(name, args.seconds, args.repeats) for name in members]
        kinds = {get_spec(m).crop if get_spec(m).needs_video else "audio" for m in members}
        kinds |= {"audio" for m in members if get_spec(m).needs_audio}
        baselines = sorted(BASELINES[k] for k in kinds if k in BASELINES)
        rows += [measure(b, args.seconds, args.repeats) for b in baselines]
        machine = (
            f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible, "
            f"torch {torch.__version__}, {torch.get_num_threads()} threads"
        )
        body = (
            f"CPU, float32, random init at full size, one {args.seconds:g} s clip "
            f"({round(args.seconds * 25)} frames at 25 fps), layer `last`, best of "
            f"{args.repeats}; {machine}. Baseline rows: the weight-free encoder on the same "
            f"input (the input path alone).\n\n{table(rows)}"
        )
        print(f"## {family}\n{body}\n")
        if not args.no_write:
            command = (
                f"python -m bench.encoder_speed --encoders {','.join(members)} "
                f"--seconds {args.seconds:g}"
            )
            write_section(
                f"encoder-speed-{family}", f"Encoder speed on CPU: {family}", command, body
            )


if __name__ == "__main__":
    main()
