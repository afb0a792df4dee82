"""Ad-hoc analysis of a store with plain xarray, as a notebook would do it.

python scripts/demo_analysis.py demo-out/features.zarr sample
"""

from __future__ import annotations

import sys

import numpy as np

import featstore


def main(url: str, dataset: str) -> None:
    store = featstore.open_store(url)
    for encoder in store.encoders(dataset):
        layer = store.layers(dataset, encoder)[-1]
        da = store.features(dataset, encoder, layer)  # lazy: nothing read yet
        print(
            f"{dataset}/{encoder} layer {layer}: {da.sizes['frame']} frames x {da.sizes['dim']} dims, "
            f"{da.data.npartitions} Dask chunks (one per part)"
        )
        # Mean embedding per video (one pass over the parts), then its norm.
        per_video = da.astype("float32").groupby("video").mean().compute()
        norms = np.linalg.norm(per_video.values, axis=1)
        print(f"  per-video mean embeddings: {per_video.shape}, mean norm {norms.mean():.3f}")
        first = per_video.video.values[0]
        one = store.video(dataset, encoder, first, layer)
        print(
            f"  store.video({first!r}) -> {one.shape} {one.dtype}, "
            f"{one.shape[0] / store.encoder_info(dataset, encoder).frame_hz:.2f} s"
        )
    try:
        manifest = store.manifest(dataset)
    except featstore.errors.ManifestError:
        return
    print(f"manifest: {len(manifest)} videos; labels: {manifest['label'].value_counts().to_dict()}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
