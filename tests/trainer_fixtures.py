"""Synthetic stored datasets with a planted fake direction, for trainer tests.

Every video is Gaussian noise ``[T, dim]``; in a fake video the rows inside
its fake segments also carry ``amplitude * u``, a unit direction shared by
every dataset of the same ``direction_seed`` (so a probe trained on one
dataset transfers to another, as the grid tests need). A linear probe can
therefore learn the direction (video AUC near 1) and its per-frame logits
localize the segments (temporal AUC near 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from featstore.layout import Layer
from featstore.store import EncoderInfo, FeatureStore

DEFAULT_SPLITS = (("train", 0.5), ("val", 0.2), ("test", 0.3))


@dataclass(frozen=True)
class PlantedDataset:
    """What was written: the manifest and the planted unit direction."""

    manifest: pd.DataFrame
    direction: np.ndarray  # [dim]


def planted_direction(dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(10_000 + seed)
    u = rng.standard_normal(dim)
    return u / np.linalg.norm(u)  # [dim]


def write_planted_dataset(
    store: FeatureStore,
    name: str,
    *,
    n_videos: int,
    dim: int,
    encoder: str,
    layer: Layer = "last",
    seed: int = 0,
    splits: Sequence[tuple[str, float]] = DEFAULT_SPLITS,
    fake_segments: bool = True,
    frame_hz: float = 25.0,
    n_frames: tuple[int, int] = (40, 70),
    amplitude: float = 3.0,
    direction_seed: int = 0,
    single_modality_fakes: float = 0.0,
    missing: Sequence[str] = (),
) -> PlantedDataset:
    """Write a manifest and ``encoder``/``layer`` features for ``n_videos`` videos.

    The manifest depends only on ``seed`` (not on ``dim`` or ``encoder``), so
    several encoders can be written for one dataset. Half the videos are fake
    (alternating labels). Each fake has one or two
    segments of 0.4-1.0 s (recorded in ``fake_segments`` when
    ``fake_segments``; otherwise the whole video is planted and no segments
    are recorded, as in datasets without annotations). A fraction
    ``single_modality_fakes`` of the fakes is ``audio_modified`` (the rest
    ``both_modified``), to exercise the evaluation filter. Videos named in
    ``missing`` get a manifest row but no features.
    """
    rng = np.random.default_rng(seed)  # lengths, labels, segments: the same for every encoder
    noise = np.random.default_rng([seed, dim, len(encoder)])
    u = planted_direction(dim, direction_seed)
    fractions = np.array([f for _, f in splits], dtype=np.float64)
    bounds = np.round(np.cumsum(fractions) / fractions.sum() * n_videos).astype(int)
    rows, features = [], {}
    for i in range(n_videos):
        split = splits[int(np.searchsorted(bounds, i, side="right"))][0]
        label = i % 2
        t = int(rng.integers(n_frames[0], n_frames[1] + 1))
        duration_s = t / frame_hz
        x = noise.standard_normal((t, dim)).astype(np.float32)  # [T, D]
        segments: list[list[float]] = []
        if label:
            if fake_segments:
                for _ in range(int(rng.integers(1, 3))):
                    length = float(rng.uniform(0.4, 1.0))
                    start = float(rng.uniform(0.0, max(duration_s - length, 0.0)))
                    segments.append([round(start, 2), round(min(start + length, duration_s), 2)])
                segments.sort()
                for start, end in segments:
                    lo, hi = int(np.floor(start * frame_hz)), int(np.ceil(end * frame_hz))
                    x[lo:hi] += amplitude * u
            else:
                x += amplitude * u
        modify_type = "real"
        if label:
            single = rng.random() < single_modality_fakes
            modify_type = "audio_modified" if single else "both_modified"
        video_id = f"{name}/{split}/v{i:04d}"
        rows.append(
            {
                "video_id": video_id,
                "path": f"/data/{video_id}.mp4",
                "label": label,
                "split": split,
                "modify_type": modify_type,
                "fake_segments": segments if fake_segments else [],
                "duration_s": duration_s,
            }
        )
        if video_id not in missing:
            features[video_id] = x
    manifest = pd.DataFrame(rows)
    store.write_manifest(name, manifest, attrs={"format": "synthetic", "protocol": None})
    info = EncoderInfo(name=encoder, frame_hz=frame_hz, layer_dims={layer: dim})
    with store.writer(name, info) as writer:
        for video_id, x in features.items():
            writer.add(video_id, {layer: x.astype(np.float16)})
    return PlantedDataset(manifest=manifest, direction=u)
