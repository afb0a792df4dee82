"""Deterministic synthetic features, for demos, tests and benchmarks.

Each video's rows are a pure function of ``(seed, video_id, layer)``, so a
test can recompute what any writer (another process, a killed one) wrote.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping

import numpy as np

from featstore.layout import Layer, layer_key
from featstore.store import EncoderInfo, FeatureStore


def video_rng(seed: int, video_id: str, layer: Layer = 0) -> np.random.Generator:
    digest = hashlib.blake2b(f"{seed}/{video_id}/{layer_key(layer)}".encode(), digest_size=8)
    return np.random.default_rng(int.from_bytes(digest.digest(), "little"))


def synthetic_video(
    video_id: str,
    n_frames: int,
    dim: int,
    *,
    seed: int = 0,
    layer: Layer = 0,
    dtype: str = "float16",
) -> np.ndarray:
    """``[n_frames, dim]`` standard-normal rows, the same for the same arguments."""
    rng = video_rng(seed, video_id, layer)
    return rng.standard_normal((n_frames, dim), dtype=np.float32).astype(dtype)


def synthetic_lengths(
    n_videos: int, *, low: int = 75, high: int = 400, seed: int = 0
) -> np.ndarray:
    """Frame counts uniformly in ``[low, high]`` (3 to 16 s at 25 Hz by default)."""
    return np.random.default_rng(seed).integers(low, high + 1, size=n_videos)


def write_synthetic(
    store: FeatureStore,
    dataset: str,
    info: EncoderInfo,
    video_ids: Iterable[str],
    lengths: Iterable[int],
    *,
    seed: int = 0,
    target_part_bytes: int | None = None,
    on_video: Callable[[str], None] | None = None,
) -> dict[str, int]:
    """Write synthetic rows for every layer of ``info``; returns ``{video_id: n_frames}``."""
    kwargs = {} if target_part_bytes is None else {"target_part_bytes": target_part_bytes}
    written: dict[str, int] = {}
    with store.writer(dataset, info, **kwargs) as writer:
        for vid, n in zip(video_ids, lengths, strict=True):
            rows: Mapping[Layer, np.ndarray] = {
                layer: synthetic_video(vid, int(n), dim, seed=seed, layer=layer, dtype=info.dtype)
                for layer, dim in info.layer_dims.items()
            }
            writer.add(vid, rows)
            written[vid] = int(n)
            if on_video is not None:
                on_video(vid)
    return written
