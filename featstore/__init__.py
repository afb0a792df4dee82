"""featstore: per-frame self-supervised embeddings for audio-visual deepfake detection.

Importing this package is cheap: it pulls in neither torch, transformers nor
zarr. Heavy modules are imported inside the functions that need them.

>>> import featstore
>>> store = featstore.open_store("features.zarr")  # doctest: +SKIP
>>> store.video("av1m", "wav2vec2", "id00001/clip.mp4", "last").shape  # doctest: +SKIP
(225, 3840)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from featstore.store import EncoderInfo, FeatureStore

__all__ = ["EncoderInfo", "FeatureStore", "__version__", "open_store"]


def open_store(url: str, mode: str = "r", **storage_options: Any) -> FeatureStore:
    """Open a feature store at a local path or fsspec URL (``mode`` "r" or "a")."""
    from featstore.store import open_store as _open_store

    return _open_store(url, mode=mode, **storage_options)


def __getattr__(name: str) -> Any:
    if name in {"EncoderInfo", "FeatureStore"}:
        from featstore import store

        return getattr(store, name)
    raise AttributeError(f"module 'featstore' has no attribute {name!r}")
