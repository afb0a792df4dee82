"""Ad-hoc analysis of a store with plain xarray and pandas, as a notebook would do it.

python scripts/demo_analysis.py demo-out/features.zarr sample
"""

from __future__ import annotations

import sys

import numpy as np

import featstore


def main(url: str, dataset: str) -> None:
    store = featstore.open_store(url)
    manifest = store.manifest(dataset).set_index("video_id")
    print(f"manifest: {len(manifest)} videos, labels {manifest['label'].value_counts().to_dict()}")
    for encoder in store.encoders(dataset):
        for layer in store.layers(dataset, encoder):
            da = store.features(dataset, encoder, layer)  # lazy: nothing read yet
            print(
                f"{dataset}/{encoder} layer {layer}: {da.sizes['frame']} frames x "
                f"{da.sizes['dim']} dims, {da.data.npartitions} Dask chunk(s), one per part"
            )

    # Mouth opening per frame from the cached 68-point landmarks: the vertical distance
    # between the inner lips (points 62 and 66), in units of face-box height.
    lm = store.features(dataset, "tracks-dlib68", "landmarks").astype("float32")
    boxes = store.features(dataset, "tracks-dlib68", "boxes").astype("float32")
    opening = (lm.isel(dim=2 * 66 + 1) - lm.isel(dim=2 * 62 + 1)) / (
        boxes.isel(dim=3) - boxes.isel(dim=1)
    )
    per_video = opening.groupby("video").std().compute().to_series()  # how much the mouth moves
    table = manifest.join(per_video.rename("mouth_motion"))
    summary = table.groupby("modify_type")["mouth_motion"].agg(["count", "mean"])
    print("\nmouth motion (std of lip opening / face height) by manipulation:")
    print(summary.round(4).to_string())

    first = per_video.index[0]
    rows = store.video(dataset, "tracks-dlib68", first, "landmarks")
    hz = store.encoder_info(dataset, "tracks-dlib68").frame_hz
    print(
        f"\nstore.video({first!r}, 'landmarks') -> {rows.shape} {rows.dtype}, "
        f"{rows.shape[0] / hz:.2f} s; detected in "
        f"{np.mean(store.video(dataset, 'tracks-dlib68', first, 'boxes')[:, 4]):.0%} of frames"
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
