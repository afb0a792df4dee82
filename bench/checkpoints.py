"""What ``--checkpoint-every 1`` costs: epochs with a checkpoint after each vs without.

The paper-sized sync network (AV-HuBERT 1024-wide audio and visual inputs)
and next-token predictor (d=512 on 1024-wide features) train a few epochs on
synthetic videos twice in one process: without checkpoints (the baseline) and
writing a checkpoint after every epoch (the worst case of
``--checkpoint-every``). Also reported: one checkpoint's size and the time to
write and read it back.

    PYTHONPATH=. python bench/checkpoints.py [--videos 24] [--frames 250] [--epochs 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.results import write_section
from featstore.trainers import checkpoints
from featstore.trainers.checkpoints import load_checkpoint
from featstore.trainers.ntp import NTPConfig, fit_ntp
from featstore.trainers.sources import ArraySource
from featstore.trainers.sync import SyncConfig, fit_sync
from featstore.trainers.training import TrainingControl


@dataclasses.dataclass(frozen=True)
class Pair:
    audio: np.ndarray
    visual: np.ndarray


def measure(fit, folder: Path, epochs: int) -> dict[str, float]:
    """Seconds per epoch without and with a checkpoint after each epoch, and the checkpoint."""
    start = time.perf_counter()
    fit(None)
    plain = (time.perf_counter() - start) / epochs
    control = TrainingControl(folder, checkpoint_every=1)
    writes: list[float] = []
    save = checkpoints.save_checkpoint

    def timed_save(*args, **kwargs):  # the loop looks it up at each fit
        t0 = time.perf_counter()
        try:
            return save(*args, **kwargs)
        finally:
            writes.append(time.perf_counter() - t0)

    checkpoints.save_checkpoint = timed_save
    try:
        start = time.perf_counter()
        fit(control)  # checkpoints after epochs 1 .. epochs-1 (none after the last: run done)
        with_ck = (time.perf_counter() - start) / epochs
    finally:
        checkpoints.save_checkpoint = save
    size = sum(p.stat().st_size for p in folder.iterdir())
    start = time.perf_counter()
    load_checkpoint(folder)
    load_s = time.perf_counter() - start
    write_s = float(np.mean(writes))
    return {"plain": plain, "with": with_ck, "mb": size / 2**20, "load": load_s, "write": write_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--videos", type=int, default=24)
    parser.add_argument("--frames", type=int, default=250)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    shape = (args.frames, 1024)
    pairs = [
        Pair(rng.standard_normal(shape, np.float32), rng.standard_normal(shape, np.float32))
        for _ in range(args.videos)
    ]
    source = ArraySource([p.audio for p in pairs], [0] * args.videos)
    # patience above the epoch count: every run trains exactly `epochs` epochs
    sync_cfg = SyncConfig(max_epochs=args.epochs, patience=args.epochs + 1)
    ntp_cfg = NTPConfig(max_epochs=args.epochs, patience=args.epochs + 1)
    rows = []
    root = Path(tempfile.mkdtemp(prefix="bench-ck-"))
    try:
        for name, fit in (
            ("sync (AVH-Align, 1024+1024 -> 512, paper)", lambda c: fit_sync(pairs, pairs[:4], sync_cfg, control=c)),
            ("ntp (d=512, 4 layers, on 1024-d, paper)", lambda c: fit_ntp(source, None, ntp_cfg, control=c)),
        ):  # fmt: skip
            m = measure(fit, root / name.split()[0], args.epochs)
            rows.append(
                f"| {name} | {m['plain']:.2f} | {m['with']:.2f} | {m['write']:.2f} "
                f"({m['write'] / m['plain']:.1%} of an epoch) | {m['mb']:.1f} | {m['load']:.2f} |"
            )
            print(rows[-1], flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    body = (
        f"{args.videos} synthetic videos of {args.frames} frames, {args.epochs} epochs per "
        "measurement, one CPU thread; a checkpoint after every epoch but the last. Load "
        f"average at the end: {os.getloadavg()[0]:.1f} (a shared 2-core machine).\n\n"
        "| trainer | s/epoch, no checkpoints (baseline) | s/epoch, --checkpoint-every 1 | "
        "s per checkpoint write | checkpoint MB | load s |\n|---|---|---|---|---|---|\n"
        + "\n".join(rows)
        + "\n\nA checkpoint holds the weights, Adam's two moments and the best weights "
        "(about 4x the model), written with fsync. The per-epoch columns are two separate "
        "fits, so machine noise can exceed the write time; the write column times the writes "
        "themselves."
    )
    if not args.no_write:
        command = "PYTHONPATH=. python bench/checkpoints.py " + " ".join(
            f"--{k} {v}" for k, v in (("videos", args.videos), ("frames", args.frames),
                                      ("epochs", args.epochs))
        )  # fmt: skip
        write_section(
            "checkpoints", "Training checkpoints: the cost of --checkpoint-every", command, body
        )


if __name__ == "__main__":
    main()
