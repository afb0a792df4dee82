"""Measurement: localization before/after calibration, and score drift with clip length.

On the generated sample (known fake segments, AV-Deepfake1M format), in one run:

1. two sample datasets are generated with different seeds (so different
   speakers): ``sample`` to train and calibrate on (its ``train`` and ``val``
   splits), ``heldout`` to measure on (every clip, every fake counted);
   ``logfbank`` (audio) and ``mouth-pixels`` (visual) features are extracted;
2. a probe (``logfbank``) and the sync network (``logfbank`` vs
   ``mouth-pixels``, real videos only) are trained on ``sample:train`` with
   ``sample:val`` as validation, which is where each run's frame threshold is
   calibrated (``featstore.trainers.calibration``);
3. on ``heldout``, segments are read two ways and scored against the
   annotations (``featstore.trainers.localization_metrics``): **before** (the paper's
   reading: frames above 0, no post-processing), at the run's ``real_videos``
   threshold (the 5 % real-video budget) and **after** (the run's card:
   calibrated threshold, 0.2 s median smoothing, 0.2 s merge gap, 0.2 s
   minimum length); each run's card (named thresholds, what the chosen one
   gave on validation) is printed;
4. every real ``heldout`` clip's stored rows are looped 1x, 3x and 10x and
   scored whole (the paper) and in windows of the run's training length
   (``Detector.score_video``): mean and worst change of ``sigmoid(2 s)``.

    python -m bench.localization                 # writes bench/RESULTS.md
    python -m bench.localization --clips 24 --no-results
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

TITLE = "Localization at a calibrated threshold, and scores vs clip length (generated sample)"


def _dataset(store: Any, root: Path, name: str, *, clips: int, seed: int) -> None:
    from featstore.datasets import read_dataset
    from featstore.extract import extract
    from featstore.sample import make_sample

    make_sample(root / name, n_clips=clips, seed=seed, duration_s=(3.0, 5.0))
    imported = read_dataset("av1m", root / name)
    store.write_manifest(name, imported.manifest, attrs={"root": str(imported.root)})
    for encoder in ("logfbank", "mouth-pixels"):
        summary = extract(store, dataset=name, encoder=encoder, num_workers=1)
        if summary.videos_done != clips:
            raise RuntimeError(f"{name}/{encoder}: {summary}")


def _train(store: Any, runs: Path, epochs: int) -> dict[str, Path]:
    from featstore.trainers.kinds import probe, sync
    from featstore.trainers.probe import ProbeConfig
    from featstore.trainers.sync import SyncConfig

    out = {}
    out["probe"] = probe.train(
        store,
        features="logfbank",
        train="sample:train",
        val="sample:val",
        out=runs / "probe",
        config=ProbeConfig(max_epochs=epochs, lr=0.05),
    ).path
    out["sync"] = sync.train(
        store,
        audio="logfbank",
        visual="mouth-pixels",
        train="sample:train",
        val="sample:val",
        out=runs / "sync",
        config=SyncConfig(max_epochs=epochs, lr=1e-3),
    ).path
    return out


def _localization_rows(name: str, metrics: dict[str, dict[str, Any]]) -> list[str]:
    rows = []
    for reading, m in metrics.items():
        at = m["at_threshold"]
        frame = m["frame_threshold"]
        pct = lambda v: "-" if v is None else f"{100 * v:.1f}"  # noqa: E731
        rows.append(
            f"| {name} | {reading} | {frame['value']:+.3f} ({frame['name']}) "
            f"| {at['fakes_with_segment']}/{at['n_fakes']} "
            f"| {at['reals_with_segment']}/{at['n_reals']} ({at['false_segments_on_reals']}) "
            f"| {at['n_predicted'] / max(at['n_fakes'] + at['n_reals'], 1):.1f} "
            f"| {pct(at['mean_iou'])} | {pct(at['frame_f1'])} "
            f"| {pct(at['segment_precision'])} / {pct(at['segment_recall'])} "
            f"| {pct(m['localization']['AP@0.5'] if m['localization'] else None)} |"
        )
    return rows


def _card(path: Path) -> str:
    """The run's card: its named thresholds and what the chosen one gave on validation."""
    from featstore.trainers import kinds

    card = kinds.load(path).localization
    on = card.calibrated_on or {}
    named = ", ".join(f"{k} {v:+.3f}" for k, v in sorted(card.thresholds.items()))
    pct = lambda v: "-" if v is None else f"{100 * v:.1f} %"  # noqa: E731
    return (
        f"{card.describe()}; thresholds: {named}; on {on.get('selection')} at segment_f1: "
        f"segment F1 {pct(on.get('segment_f1'))}, frame F1 {pct(on.get('frame_f1'))}, "
        f"fakes with a segment {on.get('fakes_with_segment')}/{on.get('n_fake_annotated')}, "
        f"reals with a segment {on.get('reals_with_segment')}/{on.get('n_real')}"
    )


def _loops(store: Any, path: Path, loops: tuple[int, ...]) -> dict[str, Any]:
    """P(fake) of every real heldout clip looped ``loops`` times, whole and windowed."""
    from featstore.trainers import kinds
    from featstore.trainers.inputs import read_video

    detector = kinds.load(path)
    manifest = store.manifest("heldout")
    reals = manifest[manifest["label"] == 0]["video_id"].astype(str).tolist()
    keys = [f.key for f in detector.features]
    silence = detector.needs_silence
    probs: dict[tuple[str, int], list[float]] = {}
    for video_id in reals:
        rows = read_video(store, "heldout", video_id, keys)
        n = min(len(x) for x in rows.values())
        rows = {k: x[:n] for k, x in rows.items()}  # one length, so loops stay aligned
        for k in loops:
            looped = {key: np.tile(x, (k, 1)) for key, x in rows.items()}
            for mode, windowed in (("whole", False), ("windows", True)):
                s = detector.score_video(
                    looped, windowed=windowed, leading_silence_s=0.0 if silence else None
                )
                probs.setdefault((mode, k), []).append(float(kinds.probability(s.score)))
    out: dict[str, Any] = {"n": len(reals), "window_s": None}
    rule = detector.window_rule
    if rule.window_rows:
        out["window_s"] = rule.window_rows / rule.frame_hz
    for mode in ("whole", "windows"):
        base = np.asarray(probs[(mode, 1)])
        for k in loops:
            p = np.asarray(probs[(mode, k)])
            out[(mode, k)] = (float(p.mean()), float(np.abs(p - base).max()))
    return out


def run(args: argparse.Namespace) -> str:
    import torch

    from featstore.store import open_store
    from featstore.trainers.evaluate import evaluate

    torch.set_num_threads(max(1, args.threads))
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-local-") as tmp:
        root = Path(tmp)
        store = open_store(root / "features.zarr", mode="a", durable=False)
        _dataset(store, root, "sample", clips=args.clips, seed=args.seed)
        _dataset(store, root, "heldout", clips=args.clips, seed=args.seed + 1)
        t_data = time.perf_counter() - t0
        t1 = time.perf_counter()
        runs = _train(store, root / "runs", args.epochs)
        t_train = time.perf_counter() - t1
        table, loops, bias, cards = [], {}, {}, {}
        for name, path in runs.items():
            readings = {
                "before (0, raw)": evaluate(
                    path, store, "heldout:*", fakes="all", threshold="paper", smooth_s=0,
                    min_segment_s=0, merge_gap_s=0, write=False,
                ),
                "budget (real_videos)": evaluate(
                    path, store, "heldout:*", fakes="all", threshold="real_videos", write=False
                ),
                "after (run card)": evaluate(path, store, "heldout:*", fakes="all", write=False),
            }  # fmt: skip
            cards[name] = _card(path)
            table += _localization_rows(name, readings)
            loops[name] = _loops(store, path, (1, 3, 10))
            windowed = evaluate(path, store, "heldout:*", fakes="all", windows=True, write=False)
            bias[name] = (readings["after (run card)"]["duration"], windowed["duration"])
    elapsed = time.perf_counter() - t0
    lines = [
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, torch threads {args.threads}, {date.today()}. "
        f"Two generated samples of {args.clips} clips (3-5 s, seeds {args.seed} and "
        f"{args.seed + 1}); runs trained on `sample:train` ({args.epochs} epochs at most, "
        "probe lr 0.05, sync lr 1e-3), calibrated on `sample:val`, measured on every clip of "
        f"`heldout` (every fake). Data {t_data:.0f} s, training + calibration {t_train:.0f} s, "
        f"total {elapsed:.0f} s.",
        "",
        "**Segments on the held-out sample.** Before: the paper's reading (frames above 0, "
        "nothing else). Budget: the run's `real_videos` threshold (at most 5 % of `sample:val`'s "
        "real videos with a segment) with its post-processing. After: the run's card (threshold of the best segment F1 at IoU 0.5 on "
        "`sample:val` among those leaving at most 5 % of its real videos with a segment, or "
        "the budget's threshold where segment F1 is 0 at all of them; "
        "0.2 s median smoothing, merge gap and minimum length). Reals with a "
        "segment: videos (segments); per video: segments per video; mean IoU: frame IoU per "
        "annotated fake, averaged; P / R: segments matched one-to-one at IoU > 0.5; AP@0.5: "
        "AV-Deepfake1M's (official semantics) of the ranked proposals.",
        "",
        "| run | reading | frame threshold | fakes with a segment | reals with a segment "
        "| segments / video | mean IoU % | frame F1 % | segment P / R % | AP@0.5 % |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
        *table,
        "",
        "**The runs' cards** (`config.json` `localization`, as `/v1/models` shows them):",
        "",
        *(f"- {name}: {text}" for name, text in cards.items()),
        "",
        "**Looped real clips.** Each real held-out clip's stored rows tiled 1x, 3x, 10x; mean "
        "`sigmoid(2 s)` and the worst change from 1x over the clips, scored whole (the paper) "
        "and in windows of the run's training length (the median, hop half a window, "
        "the maximum over windows).",
        "",
        "| run | window | scoring | 1x | 3x (worst change) | 10x (worst change) |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for name, r in loops.items():
        for mode in ("whole", "windows"):
            cells = [f"{r[(mode, 1)][0]:.3f}"] + [
                f"{r[(mode, k)][0]:.3f} ({r[(mode, k)][1]:.3f})" for k in (3, 10)
            ]
            window = "-" if r["window_s"] is None else f"{r['window_s']:.2f} s"
            lines.append(
                f"| {name} ({r['n']} reals) | {window} | {mode} | " + " | ".join(cells) + " |"
            )
    lines += [
        "",
        "**Real scores vs duration on the held-out sample** (`eval`'s `duration`: Pearson r of "
        "real videos' scores with their length; the clips are 3-5 s, inside the training "
        "range, so only those longer than the window are windowed):",
        "",
    ]
    for name, (whole, windowed) in bias.items():
        fmt = lambda d: "-" if d is None else f"r = {d['pearson_r']:+.2f}"  # noqa: E731
        lines.append(f"- {name}: whole {fmt(whole)}, windowed {fmt(windowed)}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clips", type=int, default=60, help="clips per generated sample")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-results", action="store_true", help="print only")
    args = parser.parse_args()
    body = run(args)
    print(body)
    if not args.no_results:
        from bench.results import write_section

        flags = [f"--clips {args.clips}", f"--epochs {args.epochs}", f"--seed {args.seed}"]
        write_section(
            "localization", TITLE, " ".join(["python -m bench.localization", *flags]), body
        )


if __name__ == "__main__":
    main()
