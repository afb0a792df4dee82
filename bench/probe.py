"""Benchmark: ``fit_probe`` against the authors' one-video-per-step loop.

Synthetic float16 features (``--videos`` x ``--frames`` x ``--dim``): Gaussian
noise rows drawn from a shared pool (cheap to make), fake videos carrying a
planted direction on one segment. In one run, with the same torch thread
count for every arm:

(a) ``fit_probe`` epoch time, features cached in memory (default batch size);
(b) the authors' loop: per video, upcast, ``F.normalize``, ``Linear(D, 1)``,
    logsumexp, cross-entropy over ``[-s, s]``, Adam step; ``--ref-steps``
    steps are timed and extrapolated to a full epoch;
(c) the floor: reading the same float16 bytes once from memory (copying the
    buffer chunk by chunk into a small reused buffer), median of 3;
(d) held-out AUC of ``fit_probe`` and of the authors' loop after the same
    number of epochs on a subset (``--auc-train`` / ``--auc-test`` videos).

    python -m bench.probe                          # full size, writes bench/RESULTS.md
    python -m bench.probe --videos 500 --no-results  # quick look
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from datetime import date

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from trainers.probe import ProbeConfig, auto_batch_videos, fit_probe, score_source
from trainers.sources import ArraySource

POOL_ROWS = 1 << 14
TITLE = "Linear probe: fit_probe vs the authors' one-video-per-step loop"


def make_features(
    n: int, frames: int, dim: int, *, amplitude: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flat float16 rows ``[n * frames, dim]``, labels ``[n]`` and the planted unit direction."""
    rng = np.random.default_rng(seed)
    pool = rng.standard_normal((POOL_ROWS, dim), dtype=np.float32).astype(np.float16)
    flat = np.empty((n * frames, dim), dtype=np.float16)
    block = 1 << 12
    for start in range(0, flat.shape[0], block):
        stop = min(start + block, flat.shape[0])
        flat[start:stop] = pool[rng.integers(0, POOL_ROWS, stop - start)]
    u = rng.standard_normal(dim)
    u /= np.linalg.norm(u)
    labels = (np.arange(n) % 2).astype(np.int8)
    shift = (amplitude * u).astype(np.float16)
    for i in np.flatnonzero(labels):
        seg = int(rng.integers(frames // 8, frames // 2))
        a = int(rng.integers(0, frames - seg))
        flat[i * frames + a : i * frames + a + seg] += shift
    return flat, labels, u


def as_source(flat: np.ndarray, labels: np.ndarray, frames: int, idx: np.ndarray) -> ArraySource:
    return ArraySource([flat[i * frames : (i + 1) * frames] for i in idx], labels[idx])


def read_floor(flat: np.ndarray, repeat: int = 3) -> float:
    """Seconds to read ``flat`` once: chunked copies into a small (cache-resident) buffer."""
    src = torch.from_numpy(flat)
    buf = torch.empty(4096, flat.shape[1], dtype=torch.float16)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        for lo in range(0, src.shape[0], 4096):
            chunk = src[lo : lo + 4096]
            buf[: chunk.shape[0]].copy_(chunk)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


class AuthorsLoop:
    """The reference: one video per Adam step, as in the authors' code."""

    def __init__(self, dim: int, seed: int = 43) -> None:
        torch.manual_seed(seed)
        self.model = torch.nn.Linear(dim, 1)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.rng = np.random.default_rng(seed)

    def _loss(self, x: np.ndarray, y: int) -> torch.Tensor:
        phi = F.normalize(torch.from_numpy(x).float(), dim=-1)  # [T, D]
        s = torch.logsumexp(self.model(phi)[:, 0], dim=0)
        return F.cross_entropy(torch.stack([-s, s])[None], torch.tensor([y]))

    def steps(self, source: ArraySource, limit: int | None = None) -> tuple[int, float]:
        order = self.rng.permutation(len(source))[:limit]
        start = time.perf_counter()
        for i in order:
            loss = self._loss(source.read([i])[0], int(source.labels[i]))
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
        return len(order), time.perf_counter() - start

    def scores(self, source: ArraySource) -> np.ndarray:
        with torch.no_grad():
            return np.array(
                [
                    float(
                        torch.logsumexp(
                            self.model(F.normalize(torch.from_numpy(x).float(), dim=-1))[:, 0], 0
                        )
                    )
                    for x in source.read(range(len(source)))
                ]
            )


def run(args: argparse.Namespace) -> str:
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    flat, labels, _ = make_features(args.videos, args.frames, args.dim, amplitude=args.amplitude)
    gen_s = time.perf_counter() - t0
    gib = flat.nbytes / 2**30
    print(f"features: {flat.shape} float16, {gib:.2f} GiB, made in {gen_s:.1f} s", flush=True)

    floor_s = read_floor(flat)
    print(f"(c) floor: {floor_s:.3f} s ({gib / floor_s:.1f} GiB/s)", flush=True)

    src = as_source(flat, labels, args.frames, np.arange(args.videos))
    bsz = auto_batch_videos(args.videos)
    t0 = time.perf_counter()
    fit = fit_probe(src, None, ProbeConfig(max_epochs=args.epochs))
    total_s = time.perf_counter() - t0
    epoch_times = [h.seconds for h in fit.history]
    ours_s = statistics.median(epoch_times)
    cache_s = total_s - sum(epoch_times)
    print(f"(a) fit_probe: {ours_s:.3f} s/epoch (B={bsz}), cache build {cache_s:.2f} s", flush=True)
    del fit
    per_video_ms = {}
    for b in (1, 16):  # what batching buys per video, one epoch each
        one = fit_probe(src, None, ProbeConfig(max_epochs=1, batch_videos=b))
        per_video_ms[b] = 1e3 * one.history[0].seconds / args.videos
    print(f"    fit_probe ms/video by batch size: {per_video_ms}", flush=True)

    ref = AuthorsLoop(args.dim)
    ref.steps(src, 20)  # warm-up
    steps, ref_t = ref.steps(src, args.ref_steps)
    ref_s = ref_t / steps * args.videos
    print(
        f"(b) authors' loop: {1e3 * ref_t / steps:.2f} ms/step -> {ref_s:.1f} s/epoch", flush=True
    )
    del src

    # (d) accuracy after the same number of epochs on a held-out split
    idx = np.random.default_rng(1).permutation(args.videos)
    n_tr = min(args.auc_train, args.videos - 2)
    tr_idx, te_idx = idx[:n_tr], idx[n_tr : n_tr + args.auc_test]
    train, test = (
        as_source(flat, labels, args.frames, tr_idx),
        as_source(flat, labels, args.frames, te_idx),
    )
    ours = fit_probe(train, None, ProbeConfig(max_epochs=args.auc_epochs))
    auc_ours = roc_auc_score(test.labels, score_source(ours.params, test)[0])
    ref = AuthorsLoop(args.dim)
    t0 = time.perf_counter()
    for _ in range(args.auc_epochs):
        ref.steps(train)
    ref_auc_s = time.perf_counter() - t0
    auc_ref = roc_auc_score(test.labels, ref.scores(test))
    ours_auc_s = sum(h.seconds for h in ours.history)
    print(
        f"(d) AUC ours {auc_ours:.4f} (B={ours.batch_videos}) vs authors {auc_ref:.4f}", flush=True
    )

    speedup, over_floor, gap = ref_s / ours_s, ours_s / floor_s, auc_ours - auc_ref
    verdict = lambda ok: "met" if ok else "not met"  # noqa: E731
    return "\n".join(
        [
            f"Machine: {platform.machine()}, {os.cpu_count()} cores (shared with other jobs), "
            f"torch {torch.__version__} with {args.threads} thread(s) for every arm, "
            f"Python {platform.python_version()}, {date.today().isoformat()}.",
            f"Features: {args.videos} videos x {args.frames} frames x {args.dim} float16 = {gib:.2f} GiB "
            f"(noise rows from a {POOL_ROWS}-row pool; fakes carry {args.amplitude} x a unit direction "
            f"on a segment of 1/8-1/2 of the video). fit_probe uses its default batch size "
            f"auto_batch_videos({args.videos}) = {bsz} videos per step at lr 1e-3 x {bsz} "
            "(ProbeConfig.scale_lr); the authors' loop steps once per video at lr 1e-3.",
            "",
            "| measurement | value | target |",
            "|---|---|---|",
            f"| (a) fit_probe epoch, cached (median of {len(epoch_times)}) | {ours_s:.3f} s "
            f"({gib / ours_s:.2f} GiB/s) | - |",
            f"| fit_probe, 1 / {bsz} / 16 videos per step (one epoch each) | "
            f"{per_video_ms[1]:.3f} / {1e3 * ours_s / args.videos:.3f} / {per_video_ms[16]:.3f} ms/video | - |",
            f"| (b) authors' loop epoch ({steps} steps timed, extrapolated to {args.videos}) | "
            f"{ref_s:.1f} s ({1e3 * ref_t / steps:.2f} ms/video) | - |",
            f"| (c) floor: read the float16 bytes once (median of 3) | {floor_s:.3f} s "
            f"({gib / floor_s:.1f} GiB/s) | - |",
            f"| speed-up over the authors' loop, (b)/(a) | {speedup:.1f}x | >= 20x: {verdict(speedup >= 20)} |",
            f"| fit_probe over the floor, (a)/(c) | {over_floor:.1f}x | <= 3x: {verdict(over_floor <= 3)} |",
            f"| (d) held-out AUC after {args.auc_epochs} epochs, fit_probe (B={ours.batch_videos}) | "
            f"{auc_ours:.4f} ({ours_auc_s:.1f} s) | - |",
            f"| (d) held-out AUC after {args.auc_epochs} epochs, authors' loop | {auc_ref:.4f} "
            f"({ref_auc_s:.1f} s) | - |",
            f"| AUC difference | {gap:+.4f} | within 0.01: {verdict(abs(gap) <= 0.01)} |",
            "",
            f"(d) trains on {len(train)} and tests on {len(test)} other videos of the same features. "
            f"Building the cache (one float16 copy plus row norms) took {cache_s:.1f} s once per fit.",
            "",
            "Where fit_probe's time goes on this CPU: each step upcasts its videos to a float32 "
            "buffer (reads the float16 bytes, writes twice as many), then makes two matrix-vector "
            "passes over that buffer (frame logits forward, w-gradient backward), then pays about "
            "0.1 ms of Python, autograd and Adam; one video per step is therefore no faster than "
            "the authors' loop, and batching amortises only the fixed part. Three passes over "
            "float32 plus step overhead is why it stays several times above the one-pass floor; "
            "timings on this shared 2-core VM move by 2-3x between runs (the same authors' loop "
            "measured 0.72 and 2.50 ms/video in two runs of this script). The authors' loop is "
            "given in-memory features here; theirs reads a file per video, which only widens the gap.",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--videos", type=int, default=5000)
    parser.add_argument("--frames", type=int, default=225)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--epochs", type=int, default=3, help="fit_probe epochs timed for (a)")
    parser.add_argument(
        "--ref-steps", type=int, default=1000, help="authors' loop steps timed for (b)"
    )
    parser.add_argument("--auc-train", type=int, default=2048, help="training videos for (d)")
    parser.add_argument("--auc-test", type=int, default=1000, help="held-out videos for (d)")
    parser.add_argument("--auc-epochs", type=int, default=5, help="epochs of both arms for (d)")
    parser.add_argument(
        "--amplitude", type=float, default=3.0, help="planted shift, noise rows ~ N(0, I)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads for every arm")
    parser.add_argument("--no-results", action="store_true", help="Do not update bench/RESULTS.md.")
    args = parser.parse_args()
    if args.videos < 4 or min(args.frames, args.dim, args.epochs, args.auc_epochs) < 1:
        parser.error("need --videos >= 4 and positive --frames, --dim, --epochs, --auc-epochs")
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
        write_section("probe", TITLE, " ".join(["python -m bench.probe", *flags]), body)


if __name__ == "__main__":
    main()
