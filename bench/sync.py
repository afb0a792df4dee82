"""Benchmark: sync-network training throughput (frames/s), vectorised vs per-frame candidates.

Synthetic float32 features (``--videos`` x ``--frames``, audio and visual
``--dim`` wide, the paper's 512-wide network). One training step = 1,024
frames, their 31 audio candidates each, forward, backward and an Adam step.
In one run, with the same torch thread count for every arm:

(a) ``fit_sync`` epochs: every audio row a batch needs is projected once and
    the first head layer is split so nothing 1,024-wide is formed per
    candidate (``featstore.trainers.sync``);
(b) the explicit candidate tensor: ``[N, 31, Da]`` by zero padding + unfold
    per video (no loop over frames), then the network on every candidate;
(c) the per-frame loop baseline: each frame's 31 candidates gathered in
    Python (zero vectors out of range), stacked, then as (b).

(b) and (c) time ``--ref-steps`` steps and report frames/s; the first batch's
loss of every arm is compared (the same maths).

    python -m bench.sync                     # writes bench/RESULTS.md
    python -m bench.sync --no-results --videos 8
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from dataclasses import dataclass
from datetime import date

import numpy as np
import torch
import torch.nn.functional as F

from featstore.trainers.sync import TAU, SyncConfig, SyncNet, candidates, fit_sync, pairs_loss

TITLE = "Sync network (AVH-Align): training throughput, vectorised vs per-frame candidates"


@dataclass(frozen=True)
class Pair:
    audio: np.ndarray  # [T, Da]
    visual: np.ndarray  # [T, Dv]


def make_pairs(n: int, frames: int, dim: int, seed: int = 0) -> list[Pair]:
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((dim, dim), dtype=np.float32) / np.sqrt(dim)
    out = []
    for _ in range(n):
        a = rng.standard_normal((frames, dim), dtype=np.float32)
        v = a @ mix.T + 0.5 * rng.standard_normal((frames, dim), dtype=np.float32)
        out.append(Pair(a, v.astype(np.float32)))
    return out


def _batches(pairs: list[Pair], batch_frames: int) -> list[list[tuple[int, int, int]]]:
    """Consecutive frames as ``(video, first, stop)`` spans, ``batch_frames`` per batch."""
    spans, batches, size = [], [], 0
    for i, p in enumerate(pairs):
        t = 0
        while t < p.audio.shape[0]:
            take = min(p.audio.shape[0] - t, batch_frames - size)
            spans.append((i, t, t + take))
            t, size = t + take, size + take
            if size == batch_frames:
                batches.append(spans)
                spans, size = [], 0
    return batches + ([spans] if spans else [])


def unfold_candidates(pairs: list[Pair], spans: list[tuple[int, int, int]]) -> torch.Tensor:
    """(b): ``[N, 31, Da]`` by padding + unfold per video, no loop over frames."""
    return torch.cat(
        [candidates(torch.from_numpy(pairs[i].audio), TAU)[a:b] for i, a, b in spans]
    ).contiguous()  # [N, K, Da]; cat keeps the unfold view's strides, slow for the matmuls


def loop_candidates(pairs: list[Pair], spans: list[tuple[int, int, int]]) -> torch.Tensor:
    """(c): each frame's candidates gathered one by one."""
    rows = []
    for i, a, b in spans:
        audio = torch.from_numpy(pairs[i].audio)
        zero = torch.zeros(audio.shape[1])
        for t in range(a, b):
            rows.append(
                torch.stack(
                    [
                        audio[j] if 0 <= j < audio.shape[0] else zero
                        for j in range(t - TAU, t + TAU + 1)
                    ]
                )
            )
    return torch.stack(rows)  # [N, K, Da]


def explicit_step(
    net: SyncNet,
    opt: torch.optim.Optimizer,
    pairs: list[Pair],
    spans: list[tuple[int, int, int]],
    build,
) -> float:
    cand = build(pairs, spans)  # [N, K, Da]
    visual = torch.cat([torch.from_numpy(pairs[i].visual[a:b]) for i, a, b in spans])  # [N, Dv]
    logits = net(cand, visual[:, None, :].expand(-1, cand.shape[1], -1))  # [N, K]
    loss = -F.log_softmax(logits, dim=1)[:, TAU].sum()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach())


def time_explicit(pairs, batches, build, steps: int) -> float:
    """Frames/s of (b) or (c) over ``steps`` batches."""
    torch.manual_seed(0)
    net = SyncNet(pairs[0].audio.shape[1], pairs[0].visual.shape[1])
    opt = torch.optim.Adam(net.parameters(), lr=1e-5)
    n = 0
    t0 = time.perf_counter()
    for spans in batches[:steps]:
        explicit_step(net, opt, pairs, spans, build)
        n += sum(b - a for _, a, b in spans)
    return n / (time.perf_counter() - t0)


def check_losses(pairs: list[Pair], n_videos: int) -> tuple[float, float, float]:
    """Mean per-frame loss of the first videos under one network, by (a), (b) and (c)."""
    torch.manual_seed(0)
    net = SyncNet(pairs[0].audio.shape[1], pairs[0].visual.shape[1]).eval()
    subset = pairs[:n_videos]
    spans = [(i, 0, p.audio.shape[0]) for i, p in enumerate(subset)]
    visual = torch.cat([torch.from_numpy(p.visual) for p in subset])  # [N, Dv]
    out = [pairs_loss(net, subset)]
    with torch.no_grad():
        for build in (unfold_candidates, loop_candidates):
            cand = build(subset, spans)  # [N, K, Da]
            logits = net(cand, visual[:, None, :].expand(-1, cand.shape[1], -1))  # [N, K]
            out.append(float(-F.log_softmax(logits, dim=1)[:, TAU].mean()))
    return out[0], out[1], out[2]


def run(args: argparse.Namespace) -> str:
    torch.set_num_threads(args.threads)
    pairs = make_pairs(args.videos, args.frames, args.dim)
    n_frames = args.videos * args.frames
    batches = _batches(pairs, 1024)
    config = SyncConfig(max_epochs=args.epochs, seed=0)

    losses = check_losses(pairs, min(args.videos, 4))
    fit = fit_sync(pairs, None, config)
    epoch_s = min(h.seconds for h in fit.history)
    fps_a = n_frames / epoch_s
    print(f"(a) fit_sync: {epoch_s:.2f} s/epoch, {fps_a:.0f} frames/s", flush=True)
    fps_b = time_explicit(pairs, batches, unfold_candidates, args.ref_steps)
    print(f"(b) unfold candidates: {fps_b:.0f} frames/s", flush=True)
    fps_c = time_explicit(pairs, batches, loop_candidates, args.ref_steps)
    print(f"(c) per-frame loop: {fps_c:.0f} frames/s", flush=True)
    spread = max(losses) - min(losses)
    return "\n".join(
        [
            f"Machine: {platform.machine()}, {os.cpu_count()} cores (shared with other jobs), "
            f"torch {torch.__version__} with {args.threads} thread(s) for every arm, CPU, "
            f"Python {platform.python_version()}, {date.today().isoformat()}.",
            f"Features: {args.videos} videos x {args.frames} frames, audio and visual "
            f"{args.dim}-wide float32; the paper's network (projections 512, MLP 512-256-128-1), "
            "batches of 1,024 frames, 31 candidates per frame, Adam.",
            "",
            "| arm | frames/s | vs (c) |",
            "|---|---|---|",
            f"| (a) fit_sync (project each audio row once, split first layer; best of "
            f"{len(fit.history)} epochs) | {fps_a:.0f} | {fps_a / fps_c:.1f}x |",
            f"| (b) explicit [N, 31, Da] candidates by unfold ({args.ref_steps} steps) "
            f"| {fps_b:.0f} | {fps_b / fps_c:.1f}x |",
            f"| (c) per-frame loop baseline ({args.ref_steps} steps) | {fps_c:.0f} | 1.0x |",
            "",
            f"Mean loss per frame of the first {min(args.videos, 4)} videos, one untrained "
            f"network: (a) {losses[0]:.6f}, "
            f"(b) {losses[1]:.6f}, (c) {losses[2]:.6f} (spread {spread:.1e}; log 31 = "
            f"{np.log(31):.6f}). (a) and (b) differ only in where the affine maps are applied: "
            "each audio row is projected once and the first head layer's 1,024 inputs are split "
            "into its visual and audio halves, so per candidate only the 512-wide sum, LayerNorm "
            "and the 512-256-128-1 tail remain. (b) and (c) run the same network on the same "
            "candidate tensor and differ only in how it is gathered: the network dominates both, "
            f"so vectorising the gather alone buys little at this width ((b) is {fps_b / fps_c:.1f}x "
            "(c) here), and the gain of (a) comes from not running "
            "the projections and the first layer once per candidate. Timings on this shared VM "
            "move by 2-3x between runs.",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--videos", type=int, default=24)
    parser.add_argument("--frames", type=int, default=128)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--epochs", type=int, default=2, help="fit_sync epochs timed for (a)")
    parser.add_argument("--ref-steps", type=int, default=2, help="steps timed for (b) and (c)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for every arm")
    parser.add_argument("--no-results", action="store_true", help="Do not update bench/RESULTS.md.")
    args = parser.parse_args()
    if min(args.videos, args.frames, args.dim, args.epochs, args.ref_steps) < 1:
        parser.error("all sizes must be positive")
    body = run(args)
    print(body)
    if not args.no_results:
        from bench.results import write_section

        defaults = {a.dest: a.default for a in parser._actions if a.dest != "help"}
        flags = [
            f"--{k.replace('_', '-')} {v}"
            for k, v in vars(args).items()
            if k != "no_results" and v != defaults.get(k)
        ]
        write_section("sync", TITLE, " ".join(["python -m bench.sync", *flags]), body)


if __name__ == "__main__":
    main()
