"""Spatial explanations: frames/s of ``explain spatial`` against a plain forward of the same frames.

Run: ``python -m bench.spatial`` (updates the ``spatial`` section of bench/RESULTS.md)

Models: randomly initialised ViT-B/16-sized encoders built from configs (no weights
can be downloaded here; the arithmetic is the same for trained weights): CLIP
(12 blocks, 768 wide, patch 16, projection 512; Grad-CAM = forward + backward to
the last block's ``layer_norm1``) and FSFM ViT-B/16 (fine-tuned layout, mean
pooling; the exact decomposition = forward + one projection per patch). Clip: 10 s
of 1280x720 at 25 fps (libx264, crf 23, default GOP), ``--frames`` frames spread
over it, as ``--frames top`` would pick. Measured in one process, best of
``--repeats``, wall time:

- decode: the whole clip (``featstore.media.decode``, the baseline) vs only the
  explained frames (``featstore.seek.read_frames``), for x264's own GOP choice
  and for a keyframe every second;
- model: the encoder's plain forward (``Encoder.encode``) on those frames (the
  baseline) vs the explainer on the same frames;
- end to end: full decode + plain forward vs seek + explain.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.results import write_section


def best_s(fn: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def make_clip(path: Path, n_frames: int, *, keyint: int | None = None) -> Path:
    import av

    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, size=(90, 160, 3), dtype=np.uint8)
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=25)
        vs.width, vs.height, vs.pix_fmt = 1280, 720, "yuv420p"
        vs.options = {"crf": "23", "preset": "veryfast"}
        if keyint is not None:
            vs.options = {**vs.options, "g": str(keyint), "keyint_min": str(keyint)}
        for i in range(n_frames):
            img = np.roll(np.kron(base, np.ones((8, 8, 1), np.uint8)), 4 * i, axis=1)
            out.mux(vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        out.mux(vs.encode(None))
    return path


def keyframes(path: Path) -> int:
    import av

    with av.open(str(path)) as c:
        return sum(1 for p in c.demux(c.streams.video[0]) if p.is_keyframe)


def clip_encoder(root: Path):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    from featstore.encoders import load_encoder

    config = CLIPVisionConfig(
        hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        image_size=224, patch_size=16, projection_dim=512, hidden_act="quick_gelu",
    )  # fmt: skip
    CLIPVisionModelWithProjection(config).eval().save_pretrained(root)
    CLIPImageProcessorPil().save_pretrained(root)
    return load_encoder("clip", str(root), frames_per_batch=8)


def fsfm_encoder():
    import torch

    from featstore.encoders.fsfm import SPEC, FSFMEncoder, ViTConfig, build_vit

    cfg = ViTConfig()  # ViT-B/16, fc_norm
    torch.manual_seed(0)
    vit = build_vit(cfg).eval()
    with torch.no_grad():
        for p in vit.parameters():
            if p.dim() > 1:
                torch.nn.init.normal_(p, std=0.02)
    return FSFMEncoder(
        SPEC, vit, cfg, pooling="mean", frames_per_batch=8, checkpoint=None,
        checkpoint_sha256=None, random_init=True, device="cpu", compute_dtype="float32",
    )  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-results", action="store_true", help="do not update bench/RESULTS.md")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--frames", type=int, default=8, help="frames explained per clip")
    args = ap.parse_args()

    import torch

    from featstore.encoders import Clip
    from featstore.landmarks import MEAN_FACE_68, FaceTracks
    from featstore.layout import LAST
    from featstore.media import decode
    from featstore.seek import read_frames
    from featstore.spatial import FrameHead, VideoFrames

    n_video = 250
    rows: list[tuple[str, str, float, float]] = []  # (what, method, seconds, frames)
    with tempfile.TemporaryDirectory() as tmp:
        clip = make_clip(Path(tmp) / "clip720.mp4", n_video)
        n_key = keyframes(clip)
        picks = sorted(np.linspace(5, n_video - 5, args.frames).astype(int).tolist())
        t_full = best_s(lambda: decode(clip, audio=False), args.repeats)
        t_seek = best_s(lambda: read_frames(clip, picks), args.repeats)
        what = f"decode ({n_key} keyframe{'s' * (n_key > 1)})"
        rows.append((what, f"whole clip, {n_video} frames (baseline)", t_full, args.frames))
        rows.append((what, f"seek to {args.frames} frames", t_seek, args.frames))
        gop = make_clip(Path(tmp) / "clip720-gop25.mp4", n_video, keyint=25)
        n_gop = keyframes(gop)
        what = f"decode ({n_gop} keyframes, keyint 25)"
        rows.append(
            (
                what,
                "whole clip (baseline)",
                best_s(lambda: decode(gop, audio=False), args.repeats),
                args.frames,
            )
        )
        rows.append(
            (what, "seek", best_s(lambda: read_frames(gop, picks), args.repeats), args.frames)
        )
        frames = read_frames(clip, picks)  # [N, 720, 1280, 3]
        pts = (MEAN_FACE_68 - 128.0) * 1.6 + np.array([640.0, 360.0])
        tracks = FaceTracks.from_landmarks(np.repeat(pts[None], n_video, 0), np.ones(n_video, bool))
        video = VideoFrames(indices=np.array(picks), frames=frames, n_frames=n_video, tracks=tracks)
        models = {
            "CLIP ViT-B/16": clip_encoder(Path(tmp) / "clip"),
            "FSFM ViT-B/16": fsfm_encoder(),
        }
        for name, enc in models.items():
            rng = np.random.default_rng(1)
            head = FrameHead(weight=rng.standard_normal(enc.layer_dims[LAST]), bias=0.0)
            explainer = enc.spatial(LAST)
            if enc.spec.crop == "face":
                from featstore.crops import crop_face

                inputs = crop_face(frames, tracks, indices=picks)
            else:
                inputs = frames
            with torch.inference_mode():
                t_fwd = best_s(
                    lambda enc=enc, x=inputs: enc.encode([Clip("b", x)], [LAST]), args.repeats
                )
            t_exp = best_s(lambda ex=explainer, h=head: ex.explain(video, picks, h), args.repeats)
            rows.append((name, "plain forward (baseline)", t_fwd, args.frames))
            rows.append((name, f"explain ({explainer.method})", t_exp, args.frames))
            rows.append(
                (name, "end to end: full decode + forward (baseline)", t_full + t_fwd, args.frames)
            )
            rows.append((name, "end to end: seek + explain", t_seek + t_exp, args.frames))
            print(name, f"forward {t_fwd:.3f}s explain {t_exp:.3f}s", flush=True)

    lines = [
        f"On {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, CPU, float32; {args.frames} frames of a 10 s 1280x720 "
        f"clip (x264 veryfast crf 23: its own GOP choice, and keyint 25); wall time, best of {args.repeats}. ViT-B/16-sized encoders with random weights "
        "(the cost does not depend on the weights).",
        "",
        "| what | method | seconds | frames/s |",
        "|---|---|---:|---:|",
    ]
    for what, method, s, n in rows:
        lines.append(f"| {what} | {method} | {s:.3f} | {n / s:.1f} |")
    lines += [
        "",
        "- frames/s counts the explained frames. Decoding only them wins even with one keyframe",
        "  in the clip: frames between targets (closer than 2 s) are decoded but never converted",
        "  to RGB, which is most of a 720p decode's cost; farther targets are sought.",
        "- Grad-CAM costs about one forward: the backward runs only from the frame logit to the",
        "  last block's `layer_norm1`. The exact decomposition is a forward plus one projection",
        "  of every patch token on the probe's direction. Explanations run in float32.",
    ]
    body = "\n".join(lines)
    print(body)
    if not args.no_results:
        write_section(
            "spatial",
            "Spatial explanations: explain vs a plain forward of the same frames",
            " ".join(["python -m bench.spatial", *sys.argv[1:]]),
            body,
        )


if __name__ == "__main__":
    main()
