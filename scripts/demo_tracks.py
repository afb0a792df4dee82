"""Track faces in every video of a dataset and cache the landmarks in the store.

Decode (25 fps) -> 68-point landmark tracking -> the store's `tracks-dlib68`
pseudo-encoder (layers `landmarks` [T, 136] and `boxes` [T, 5]), which every
mouth- and face-crop encoder reuses. Videos already cached are skipped
(resume); videos without a usable face are recorded as failures.

    python scripts/demo_tracks.py demo-out/features.zarr sample [--limit N]
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

from featstore.crops import TRACKS_ENCODER, save_tracks_many
from featstore.errors import FeatstoreError
from featstore.landmarks import FaceTracks, track_faces
from featstore.media import iter_frames
from featstore.store import open_store


def main(url: str, dataset: str, limit: int | None = None) -> None:
    store = open_store(url, mode="a")
    manifest = store.manifest(dataset)
    root = Path(store.manifest_attrs(dataset)["root"])
    done = store.committed_videos(dataset, TRACKS_ENCODER, ["landmarks", "boxes"])
    todo = manifest[~manifest["video_id"].isin(done)]
    if limit is not None:
        todo = todo.head(limit)
    frames_seen = [0]
    start = time.perf_counter()

    def items() -> Iterator[tuple[str, FaceTracks | BaseException]]:
        for i, row in enumerate(todo.itertuples(index=False), 1):
            try:
                frames = (f for chunk in iter_frames(root / row.path) for f in chunk)
                tracks = track_faces(frames)
                frames_seen[0] += len(tracks.landmarks)
                yield row.video_id, tracks
            except FeatstoreError as exc:  # recorded in the store's _failures, never fatal
                yield row.video_id, exc
            if i % 10 == 0 or i == len(todo):
                rate = frames_seen[0] / (time.perf_counter() - start)
                print(f"  tracked {i}/{len(todo)} videos ({rate:.0f} frames/s)", flush=True)

    written = save_tracks_many(store, dataset, items())
    print(f"cached face tracks of {written} videos ({len(done)} were cached already)")


if __name__ == "__main__":
    args = sys.argv[1:]
    limit = int(args[args.index("--limit") + 1]) if "--limit" in args else None
    main(args[0], args[1], limit)
