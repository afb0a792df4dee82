"""Extraction throughput: ``featstore extract`` against the bare forward pass and a naive loop.

Two small random models are built here from transformers configs (4 layers, 256 wide):
a CLIP-like image model (224 px, 32 px patches) and a wav2vec2-like audio model (the
real conv front end, narrow channels), saved with ``save_pretrained`` and loaded
through ``featstore.encoders.load_encoder``. On generated sample clips, in one run:

- ceiling: the model's forward pass alone on pre-decoded, pre-processed, pre-batched
  tensors (no decoding, no preprocessing, no writing);
- naive: one video at a time: decode, preprocess + forward (``encode([clip])``), one
  ``np.save`` per video, as per-video feature scripts do;
- featstore: :func:`featstore.extract.extract` (decode threads, length-bucketed
  batches, background writer) with the same loaded encoder.

Frames are 25 fps input frames. Each figure is the best of ``--repeat`` interleaved runs.

    python -m bench.extract [--clips 12] [--repeat 2] [--no-results]
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.results import write_section

log = logging.getLogger("bench.extract")

WIDTH = {"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4}


def save_clip_like(directory: Path) -> Path:
    """A CLIP-like model: ViT 4 x 256, 224 px, 32 px patches (50 tokens), 256-d projection."""
    import torch
    from transformers import CLIPConfig, CLIPModel
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={
            **WIDTH,
            "intermediate_size": 1024,
            "vocab_size": 99,
            "bos_token_id": 0,
            "eos_token_id": 2,
            "pad_token_id": 1,
            "max_position_embeddings": 16,
        },
        vision_config={**WIDTH, "intermediate_size": 1024, "image_size": 224, "patch_size": 32},
        projection_dim=256,
    )
    CLIPModel(config).eval().save_pretrained(directory)
    CLIPImageProcessorPil().save_pretrained(directory)
    return directory


def save_wav2vec2_like(directory: Path) -> Path:
    """A wav2vec2-like model: XLS-R's conv strides (320 samples per 50 Hz frame), 4 x 256."""
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2ForPreTraining

    torch.manual_seed(0)
    config = Wav2Vec2Config(
        **WIDTH,
        intermediate_size=1024,
        conv_dim=(128,) * 7,
        conv_kernel=(10, 3, 3, 3, 3, 2, 2),
        conv_stride=(5, 2, 2, 2, 2, 2, 2),
        conv_bias=True,
        feat_extract_norm="layer",
        do_stable_layer_norm=True,
        num_conv_pos_embeddings=32,
        num_conv_pos_embedding_groups=16,
        codevector_dim=64,
        proj_codevector_dim=64,
        vocab_size=32,
    )
    Wav2Vec2ForPreTraining(config).eval().save_pretrained(directory)
    Wav2Vec2FeatureExtractor(
        feature_size=1,
        sampling_rate=16_000,
        padding_value=0.0,
        do_normalize=True,
        return_attention_mask=True,
    ).save_pretrained(directory)
    return directory


@dataclass(frozen=True)
class Row:
    encoder: str
    frames: int
    ceiling_s: float
    naive_s: float
    featstore_s: float
    decode_s: float

    def fps(self, seconds: float) -> float:
        return self.frames / seconds

    @property
    def overlap_bound(self) -> float:
        """The most any pipeline can gain over the naive loop on this machine: decoding
        fully hidden behind the forward pass (or the reverse), i.e. naive / max(parts)."""
        return self.naive_s / max(self.decode_s, self.ceiling_s)


def best_of(repeat: int, fn: Callable[[], Any]) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def ceiling_clip(encoder: Any, decoded: list[Any], per_batch: int) -> Callable[[], None]:
    """The vision model's forward on pre-processed, pre-batched pixels."""
    import torch

    pixels = np.concatenate([encoder.preprocess(m.frames) for m in decoded])  # [N, 3, 224, 224]
    batches = [
        torch.from_numpy(pixels[i : i + per_batch]) for i in range(0, len(pixels), per_batch)
    ]

    def run() -> None:
        with torch.inference_mode():
            for x in batches:
                encoder.model(pixel_values=x)

    return run


def ceiling_wav2vec2(encoder: Any, decoded: list[Any], *, batched: bool) -> Callable[[], None]:
    """The audio encoder alone on pre-decoded clips (its only preprocessing is a per-clip
    normalisation): all in one ``encode`` call (it makes padded batches itself) or one
    clip per call. The faster of the two is the ceiling: on a CPU, padding can cost more
    than batching saves."""
    from featstore.encoders.base import Clip

    clips = [Clip(str(i), None, m.audio) for i, m in enumerate(decoded)]

    def run() -> None:
        if batched:
            encoder.encode(clips, ["last"])
        else:
            for clip in clips:
                encoder.encode([clip], ["last"])

    return run


def decode_only(spec: Any, paths: list[tuple[str, Path]]) -> Callable[[], None]:
    """Decoding alone, one video after another (the other half of the naive loop)."""
    from featstore.media import decode

    def run() -> None:
        for _, path in paths:
            decode(path, video=spec.needs_video, audio=spec.needs_audio)

    return run


def naive(encoder: Any, paths: list[tuple[str, Path]], out: Path) -> Callable[[], None]:
    """One video at a time: decode, encode, one .npy per video."""
    from featstore.encoders.base import Clip
    from featstore.media import decode

    spec = encoder.spec

    def run() -> None:
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        for i, (video_id, path) in enumerate(paths):
            m = decode(path, video=spec.needs_video, audio=spec.needs_audio)
            rows = encoder.encode([Clip(video_id, m.frames, m.audio)], ["last"])[0]["last"]
            np.save(out / f"{i:05d}.npy", rows.astype(np.float16))

    return run


def featstore_run(
    encoder: Any,
    sample_root: Path,
    work: Path,
    *,
    batch_frames: int,
    num_workers: int,
    runs: int,
) -> Callable[[], None]:
    """``featstore.extract.extract`` into a fresh store per call. The stores (with their
    manifests) are made before any timing: creating a store is not extraction."""
    from featstore.datasets import read_dataset
    from featstore.extract import extract
    from featstore.store import open_store

    manifest = read_dataset("av1m", sample_root, strict=True)
    stores = []
    for i in range(runs):
        url = work / f"features-{i}.zarr"
        shutil.rmtree(url, ignore_errors=True)
        store = open_store(url, mode="a")
        store.write_manifest("bench", manifest.manifest, attrs={"root": str(manifest.root)})
        stores.append(store)

    def run() -> None:
        store = stores.pop(0)
        summary = extract(
            store,
            dataset="bench",
            encoder=encoder,
            layers="last",
            dtype="float16",
            batch_frames=batch_frames,
            num_workers=num_workers,
        )
        if summary.videos_failed:
            raise RuntimeError(
                f"{summary.videos_failed} videos failed: {store.failures('bench', encoder.name)}"
            )

    return run


def measure(
    name: str, checkpoint: Path, sample_root: Path, work: Path, args: argparse.Namespace
) -> Row:
    from featstore.datasets import read_dataset
    from featstore.encoders import load_encoder
    from featstore.media import decode

    encoder = load_encoder(name, str(checkpoint))
    manifest = read_dataset("av1m", sample_root, strict=True).manifest
    paths = [
        (v, sample_root / p) for v, p in zip(manifest["video_id"], manifest["path"], strict=True)
    ]
    spec = encoder.spec
    decoded = [decode(p, video=spec.needs_video, audio=spec.needs_audio) for _, p in paths]
    frames = sum(
        m.frames.shape[0] if spec.needs_video else m.audio.shape[0] // 640 for m in decoded
    )
    if name == "clip":
        ceilings = {"ceiling": ceiling_clip(encoder, decoded, encoder.frames_per_batch)}
    else:
        ceilings = {
            "ceiling": ceiling_wav2vec2(encoder, decoded, batched=True),
            "ceiling-per-clip": ceiling_wav2vec2(encoder, decoded, batched=False),
        }
    del decoded
    runs = {
        **ceilings,
        "decode": decode_only(spec, paths),
        "naive": naive(encoder, paths, work / f"naive-{name}"),
        "featstore": featstore_run(
            encoder,
            sample_root,
            work / f"store-{name}",
            batch_frames=args.batch_frames,
            num_workers=args.num_workers,
            runs=args.repeat,
        ),
    }
    runs["ceiling"]()  # warm-up: allocator, thread pools
    # interleaved repeats, best of each: the machine is shared, its load drifts
    seconds = dict.fromkeys(runs, float("inf"))
    for _ in range(args.repeat):
        for label, fn in runs.items():
            seconds[label] = min(seconds[label], best_of(1, fn))
    for label, s in seconds.items():
        log.info("%s %s: %.2f s (%.1f frames/s)", name, label, s, frames / s)
    ceiling = min(seconds["ceiling"], seconds.get("ceiling-per-clip", float("inf")))
    return Row(name, frames, ceiling, seconds["naive"], seconds["featstore"], seconds["decode"])


def report(rows: list[Row], args: argparse.Namespace, n_clips: int, duration_s: float) -> str:
    import torch

    lines = [
        f"{n_clips} generated clips (224x224 H.264 + AAC, {duration_s:.0f} s in all), CPU only "
        f"({torch.get_num_threads()} torch threads, shared machine), best of {args.repeat}; "
        f"models: random init, 4 layers x 256 wide, built from transformers configs and loaded "
        f"through `load_encoder`; featstore stores layer `last` as float16 with "
        f"`batch_frames={args.batch_frames}`, `num_workers={args.num_workers}`.",
        "",
        "| encoder | frames | ceiling (forward only) frames/s | decode only frames/s | "
        "naive loop frames/s | featstore extract frames/s | featstore / ceiling | "
        "featstore / naive | best possible / naive |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.encoder}-like | {r.frames} | {r.fps(r.ceiling_s):.1f} "
            f"| {r.fps(r.decode_s):.1f} | {r.fps(r.naive_s):.1f} "
            f"| {r.fps(r.featstore_s):.1f} | {r.ceiling_s / r.featstore_s:.2f} "
            f"| {r.naive_s / r.featstore_s:.2f} | {r.overlap_bound:.2f} |"
        )
    lines += [
        "",
        "Ceiling: the model's forward pass alone on inputs decoded (and, for the image model, "
        "resized and normalised) beforehand, in batches: CLIP-like, 64-frame pixel batches; "
        "wav2vec2-like, the faster of `encode()` of all pre-decoded clips at once and one "
        "clip per call. Decode only: the same videos decoded one after another. Naive: per "
        "video decode, `encode([clip])`, `np.save`. featstore: `featstore.extract.extract` "
        "end to end (decode threads, batching, store writes, commits) with the same loaded "
        "encoder. Best possible / naive: naive / max(decode, ceiling), what a pipeline that "
        "hid all decoding behind the forward pass would gain on this machine.",
        "",
        "On this 2-core CPU the forward pass already uses both cores, so decode, "
        "preprocessing and write threads compete with it instead of overlapping it: "
        "featstore stays near the naive loop, and even a perfect pipeline could gain only "
        "the last column over it, far below the issue's 2x target (which needs an "
        "accelerator: the forward pass on the device, decoding and writing on the CPU). The "
        "gap to the ceiling is the work the ceiling leaves out (CLIP's resize and "
        "normalisation of every frame, the per-clip audio normalisation, float16 conversion "
        "and the store writes), done on the same two cores.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=12, help="generated sample clips")
    parser.add_argument("--min-s", type=float, default=3.0, help="shortest clip, seconds")
    parser.add_argument("--max-s", type=float, default=5.0, help="longest clip, seconds")
    parser.add_argument("--repeat", type=int, default=2, help="runs per figure (best kept)")
    parser.add_argument("--batch-frames", type=int, default=256)
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--encoders", default="clip,wav2vec2", help="clip, wav2vec2 or both")
    parser.add_argument("--no-results", action="store_true", help="do not write bench/RESULTS.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("featstore").setLevel(logging.WARNING)

    from featstore.sample import make_sample

    with tempfile.TemporaryDirectory(prefix="bench-extract-") as tmp:
        work = Path(tmp)
        info = make_sample(
            work / "sample", n_clips=args.clips, seed=0, duration_s=(args.min_s, args.max_s)
        )
        builders = {"clip": save_clip_like, "wav2vec2": save_wav2vec2_like}
        rows = []
        for name in args.encoders.split(","):
            checkpoint = builders[name](work / f"model-{name}")
            rows.append(measure(name, checkpoint, info.root, work, args))
    body = report(rows, args, info.n_clips, info.total_duration_s)
    print(body)
    if not args.no_results:
        command = "python -m bench.extract " + " ".join(sys.argv[1:] if argv is None else argv)
        write_section("extract", "Extraction throughput", command.strip(), body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
