"""Write synthetic per-frame features for every video of a dataset's manifest.

A stand-in for `featstore extract` until the encoders land: the rows are
seeded random numbers (clearly not embeddings), one row per 40 ms of each
video's duration, written through the store's real writer.

    python scripts/demo_features.py demo-out/features.zarr sample
"""

from __future__ import annotations

import sys

import numpy as np

from featstore.store import EncoderInfo, open_store
from featstore.synthetic import write_synthetic


def main(url: str, dataset: str) -> None:
    store = open_store(url, mode="a")
    try:
        manifest = store.manifest(dataset)
        ids = manifest["video_id"].tolist()
        seconds = manifest["duration_s"].fillna(4.0).to_numpy()
    except Exception:  # no manifest yet: invent a small dataset
        store.writer  # noqa: B018 - the store must be writable
        ids = [f"speaker{i // 5:02d}/clip{i % 5}" for i in range(40)]
        seconds = np.random.default_rng(0).uniform(3, 5, len(ids))
    lengths = np.maximum(1, np.round(seconds * 25)).astype(int)
    info = EncoderInfo(
        name="synthetic",
        frame_hz=25.0,
        layer_dims={0: 64, 1: 64, "last": 32},
        checkpoint="none (seeded random rows)",
        random_init=True,
    )
    written = write_synthetic(store, dataset, info, ids, lengths, target_part_bytes=256 * 1024)
    print(
        f"wrote synthetic features for {len(written)} videos ({int(lengths.sum())} frames) "
        f"to {url}/{dataset}/synthetic"
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
