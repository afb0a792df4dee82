"""Benchmark: ``fit_probe`` against the authors' PyTorch loop and the memory-read floor.

Synthetic float16 features (``--videos`` x ``--frames`` x ``--dim``): Gaussian
noise rows drawn from a shared pool (cheap to make), fake videos carrying a
planted direction on one segment. Every arm uses one thread. The timing arms
are interleaved and repeated ``--repeats`` times; the table gives medians and
the range, and the load average says how busy the (shared) machine was.

(a) ``fit_probe`` epoch time, features cached, the default: one video per step;
(e) the same with the batching option, ``batch_videos=16`` (lr x 16);
(b) the authors' loop (bit-ml/ssr-dfd ``linear_probing``): per video, upcast,
    L2-normalise, ``nn.Linear(D, 1)``, logsumexp, cross-entropy over
    ``[-s, s]``, ``backward``, ``Adam.step``; ``--ref-steps`` steps timed and
    extrapolated to an epoch. (b') the same loop on features normalised to
    float32 beforehand (their DataLoader workers' share done for free);
(c) the floor: reading the float16 bytes once, the faster of a chunked copy
    into a small buffer and an integer sum (median of 3 each);
(d) held-out AUC after the same epochs of ``fit_probe`` (default and
    batched) and of the authors' loop with their random draws (seed 43,
    ``nn.Linear``, a shuffled DataLoader), trained on ``--auc-train`` videos.

    python -m bench.probe                            # full size, writes bench/RESULTS.md
    python -m bench.probe --videos 500 --no-results  # quick look
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import statistics
import time
from datetime import date

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch.utils.data import DataLoader

from featstore.trainers.probe import ProbeConfig, fit_probe, score_source
from featstore.trainers.sources import ArraySource

POOL_ROWS = 1 << 14
BATCHED = 16
TITLE = "Linear probe: fit_probe vs the authors' one-video-per-step loop"
NOTE = (
    "Where the time goes: a step of fit_probe (trainers/probe_step.py, compiled) reads its "
    "video's float16 rows from memory once for the frame logits and again, from the CPU's "
    "L2 cache, for the closed-form gradient, then updates the D+1 Adam values; batching "
    "saves only that update, so one video per step and 16 per step cost about the same. "
    "The authors' loop pays, per video, the float32 upcast and normalisation (b) - (b'), "
    "and autograd's graph, backward and optimizer step."
)


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


def _clock() -> tuple[float, float]:
    """Wall seconds and this thread's CPU seconds (what a busy shared machine leaves it)."""
    return time.perf_counter(), time.thread_time()


def _since(start: tuple[float, float]) -> tuple[float, float]:
    wall, cpu = _clock()
    return wall - start[0], cpu - start[1]


def read_floor(flat: np.ndarray, repeat: int = 3) -> tuple[float, float]:
    """Wall and CPU seconds to read ``flat`` once: the faster (by wall time) of a chunked copy
    into a small buffer and an integer sum over its bytes (median of ``repeat`` each)."""
    src = torch.from_numpy(flat)
    buf = torch.empty(4096, flat.shape[1], dtype=torch.float16)
    words = flat.reshape(-1).view(np.uint64)  # 4 float16 per word

    def copy() -> None:
        for lo in range(0, src.shape[0], 4096):
            chunk = src[lo : lo + 4096]
            buf[: chunk.shape[0]].copy_(chunk)

    def total() -> None:
        words.sum()

    best = []
    for read in (copy, total):
        walls, cpus = [], []
        for _ in range(repeat):
            start = _clock()
            read()
            wall, cpu = _since(start)
            walls.append(wall)
            cpus.append(cpu)
        best.append((statistics.median(walls), statistics.median(cpus)))
    return min(best)


class AuthorsLoop:
    """The authors' training loop: ``torch.manual_seed(seed)``, ``nn.Linear(D, 1)``, Adam lr
    1e-3, a shuffled DataLoader of one video per step (their random draws, in order)."""

    def __init__(self, dim: int, seed: int = 43) -> None:
        torch.manual_seed(seed)
        self.model = torch.nn.Linear(dim, 1)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-3)

    def _loss(self, phi: torch.Tensor, y: int) -> torch.Tensor:
        s = torch.logsumexp(self.model(phi)[:, 0], dim=0)
        return F.cross_entropy(torch.stack([-s, s])[None], torch.tensor([y]))

    @staticmethod
    def normalised(x: np.ndarray) -> torch.Tensor:
        return F.normalize(torch.from_numpy(x).float(), dim=-1)  # [T, D]

    def epoch(
        self, source: ArraySource, *, limit: int | None = None, phis=None
    ) -> tuple[int, float, float]:
        """Steps over a shuffled epoch (the first ``limit``), their wall and CPU seconds;
        ``phis`` are pre-normalised videos."""
        loader = DataLoader(range(len(source)), batch_size=1, shuffle=True)
        start = _clock()
        steps = 0
        for (i,) in loader:
            if limit is not None and steps == limit:
                break
            i = int(i)
            phi = phis[i] if phis is not None else self.normalised(source.read([i])[0])
            loss = self._loss(phi, int(source.labels[i]))
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
            steps += 1
        return steps, *_since(start)

    def scores(self, source: ArraySource) -> np.ndarray:
        with torch.no_grad():
            return np.array(
                [
                    float(torch.logsumexp(self.model(self.normalised(x))[:, 0], 0))
                    for x in source.read(range(len(source)))
                ]
            )


def _epoch_seconds(src: ArraySource, epochs: int, batch_videos: int) -> tuple[float, float]:
    """Median wall and CPU seconds of epochs 2.. of a fit (the time between epoch callbacks)."""
    marks: list[tuple[float, float]] = []
    config = ProbeConfig(max_epochs=epochs, batch_videos=batch_videos)
    fit_probe(src, None, config, on_epoch=lambda _: marks.append(_clock()))
    walls = [b[0] - a[0] for a, b in itertools.pairwise(marks)]
    cpus = [b[1] - a[1] for a, b in itertools.pairwise(marks)]
    return statistics.median(walls), statistics.median(cpus)


def _range(values: list[float], fmt: str) -> str:
    med = statistics.median(values)
    if len(values) == 1:
        return format(med, fmt)
    return f"{format(med, fmt)} ({format(min(values), fmt)}-{format(max(values), fmt)})"


def _ratios(num: list[float], den: list[float]) -> list[float]:
    return [n / d for n, d in zip(num, den, strict=True)]


def run(args: argparse.Namespace) -> str:
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    flat, labels, _ = make_features(args.videos, args.frames, args.dim, amplitude=args.amplitude)
    gib = flat.nbytes / 2**30
    print(f"features: {flat.shape} float16, {gib:.2f} GiB ({time.perf_counter() - t0:.1f} s)")
    src = as_source(flat, labels, args.frames, np.arange(args.videos))
    n_ref = min(args.ref_steps, args.videos)
    ref_idx = np.arange(n_ref)
    phis = {int(i): AuthorsLoop.normalised(src.read([i])[0]) for i in ref_idx}
    ref_src = as_source(flat, labels, args.frames, ref_idx)

    # arm -> per repeat (wall, cpu) seconds per epoch
    arms: dict[str, list[tuple[float, float]]] = {k: [] for k in ("a", "e", "b", "b'", "c")}
    for r in range(args.repeats):
        arms["c"].append(read_floor(flat))
        arms["a"].append(_epoch_seconds(src, args.epochs, 1))
        arms["e"].append(_epoch_seconds(src, args.epochs, BATCHED))
        for key, pre in (("b", None), ("b'", phis)):
            ref = AuthorsLoop(args.dim)
            ref.epoch(ref_src, limit=20, phis=pre)  # warm-up
            steps, wall, cpu = ref.epoch(ref_src, phis=pre)
            arms[key].append((wall / steps * args.videos, cpu / steps * args.videos))
        print(
            f"repeat {r + 1} (wall / CPU s per epoch): "
            + ", ".join(f"({k}) {w:.3f} / {c:.3f}" for k, v in arms.items() for w, c in v[-1:]),
            flush=True,
        )
    del phis
    wall = {k: [w for w, _ in v] for k, v in arms.items()}
    cpu = {k: [c for _, c in v] for k, v in arms.items()}

    # (d) accuracy after the same number of epochs on a held-out split of weaker features
    n_tr = args.auc_train
    flat_d, labels_d, _ = make_features(
        n_tr + args.auc_test, args.frames, args.dim, amplitude=args.auc_amplitude, seed=1
    )
    train = as_source(flat_d, labels_d, args.frames, np.arange(n_tr))
    test = as_source(flat_d, labels_d, args.frames, np.arange(n_tr, n_tr + args.auc_test))
    ours = fit_probe(train, None, ProbeConfig(max_epochs=args.auc_epochs))
    auc_ours = roc_auc_score(test.labels, score_source(ours.params, test)[0])
    ours_b = fit_probe(train, None, ProbeConfig(max_epochs=args.auc_epochs, batch_videos=BATCHED))
    auc_ours_b = roc_auc_score(test.labels, score_source(ours_b.params, test)[0])
    ref = AuthorsLoop(args.dim)
    ref_auc_s = sum(ref.epoch(train)[1] for _ in range(args.auc_epochs))
    auc_ref = roc_auc_score(test.labels, ref.scores(test))
    w_gap = float(np.abs(ours.params.w - ref.model.weight.detach()[0].numpy()).max())
    gap, gap_b = auc_ours - auc_ref, auc_ours_b - auc_ref
    print(f"(d) AUC ours {auc_ours:.4f}, B={BATCHED} {auc_ours_b:.4f}, authors {auc_ref:.4f}")
    load_after = os.getloadavg()

    verdict = lambda ok: "met" if ok else "not met"  # noqa: E731
    med = statistics.median
    per_video = lambda s: 1e6 * s / args.videos  # noqa: E731  seconds per epoch -> us per video

    def timing(key: str, what: str, fmt: str) -> str:
        return (
            f"| {what} | {_range(wall[key], fmt)} | {_range(cpu[key], fmt)} | "
            f"{per_video(med(cpu[key])):.1f} |"
        )

    def ratio(num: str, den: str, what: str, target: str = "-", ok=None) -> str:
        w, c = _ratios(wall[num], wall[den]), _ratios(cpu[num], cpu[den])
        check = target
        if ok is not None:
            check = f"{target}: wall {verdict(ok(med(w)))}, CPU {verdict(ok(med(c)))}"
        return f"| {what} | {_range(w, '.2f')}x | {_range(c, '.2f')}x | {check} |"

    return "\n".join(
        [
            f"Machine: {platform.machine()}, {os.cpu_count()} cores shared with other jobs "
            f"(load average {load_before[0]:.1f} before, {load_after[0]:.1f} after), torch "
            f"{torch.__version__} with {args.threads} thread(s) for every arm, Python "
            f"{platform.python_version()}, {date.today().isoformat()}.",
            f"Features: {args.videos} videos x {args.frames} frames x {args.dim} float16 = "
            f"{gib:.2f} GiB (noise rows from a {POOL_ROWS}-row pool; fakes carry {args.amplitude} "
            "x a unit direction on a segment of 1/8-1/2 of the video), cached in memory. "
            f"Timings: median (min-max) over {args.repeats} interleaved repeats of wall time and "
            "of the thread's CPU time (on a machine shared with other jobs, wall time also "
            "counts the time the other jobs held the core); a fit_probe repeat is the median "
            f"of epochs 2-{args.epochs} of a fit, an authors' loop repeat {n_ref} steps "
            f"extrapolated to {args.videos}.",
            "",
            "| measurement (seconds per epoch) | wall | CPU | CPU us per video |",
            "|---|---|---|---|",
            timing("a", "(a) fit_probe, default: one video per step", ".3f"),
            timing("e", f"(e) fit_probe, batch_videos={BATCHED} (lr x {BATCHED})", ".3f"),
            timing("b", "(b) authors' loop (upcast + normalise + Linear + Adam per video)", ".2f"),
            timing("b'", "(b') authors' loop on pre-normalised float32", ".2f"),
            timing("c", "(c) floor: read the float16 bytes once", ".3f"),
            "",
            "| ratio | wall | CPU | target |",
            "|---|---|---|---|",
            ratio(
                "b",
                "a",
                "speed-up, default over the authors' loop, (b)/(a)",
                ">= 10x",
                lambda x: x >= 10,
            ),
            ratio("b'", "a", "speed-up over the pre-normalised loop, (b')/(a)"),
            ratio("a", "c", "default over the floor, (a)/(c)"),
            ratio("e", "c", "batched over the floor, (e)/(c)", "<= 3x", lambda x: x <= 3),
            "",
            f"(d) held-out AUC after {args.auc_epochs} epochs on features with a weaker signal "
            f"(fakes carry {args.auc_amplitude} x the direction; {len(train)} training, "
            f"{len(test)} test videos), every arm from the same seed:",
            "",
            "| (d) | AUC | training time (wall) | target |",
            "|---|---|---|---|",
            f"| fit_probe, default | {auc_ours:.4f} | {sum(h.seconds for h in ours.history):.1f} s "
            "| - |",
            f"| fit_probe, batch_videos={BATCHED} | {auc_ours_b:.4f} | "
            f"{sum(h.seconds for h in ours_b.history):.1f} s | - |",
            f"| authors' loop (their draws: seed 43, nn.Linear, shuffled DataLoader) | "
            f"{auc_ref:.4f} | {ref_auc_s:.1f} s | - |",
            f"| AUC difference, default - authors | {gap:+.4f} | | within 0.005: "
            f"{verdict(abs(gap) <= 0.005)} |",
            f"| AUC difference, batched - authors (an option, not the default) | {gap_b:+.4f} "
            "| | - |",
            "",
            f"After {args.auc_epochs} epochs the default's weights differ from the authors' loop's "
            f"by at most {w_gap:.1e} (the same steps in the same order, float32 rounding apart).",
            "",
            NOTE,
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--videos", type=int, default=5000)
    parser.add_argument("--frames", type=int, default=225)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--epochs", type=int, default=4, help="fit_probe epochs per repeat")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats of (a)-(c)")
    parser.add_argument(
        "--ref-steps", type=int, default=1000, help="authors' loop steps timed per repeat"
    )
    parser.add_argument("--auc-train", type=int, default=2048, help="training videos for (d)")
    parser.add_argument("--auc-test", type=int, default=1000, help="held-out videos for (d)")
    parser.add_argument("--auc-epochs", type=int, default=5, help="epochs of every arm for (d)")
    parser.add_argument(
        "--amplitude", type=float, default=3.0, help="planted shift, noise rows ~ N(0, I)"
    )
    parser.add_argument(
        "--auc-amplitude", type=float, default=1.0, help="planted shift of the (d) features"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads for every arm")
    parser.add_argument("--no-results", action="store_true", help="Do not update bench/RESULTS.md.")
    args = parser.parse_args()
    if args.videos < 4 or min(args.frames, args.dim, args.auc_epochs) < 1 or args.epochs < 2:
        parser.error("need --videos >= 4, --epochs >= 2 and positive --frames, --dim, --auc-epochs")
    if args.auc_train < 2 or args.auc_test < 2:
        parser.error("need --auc-train >= 2 and --auc-test >= 2")
    if args.repeats < 1 or args.ref_steps < 1:
        parser.error("need --repeats >= 1 and --ref-steps >= 1")
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
