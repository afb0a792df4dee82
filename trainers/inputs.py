"""What a detector reads: stored features, feature sets, and the inputs built from them.

- A :class:`StoredFeature` is one encoder layer as a store holds it: name,
  layer, rate, width, dtype and the checkpoint that produced it. Run configs
  record every feature a detector reads this way, so the API knows which
  encoder to load for an upload and how the store rounded its rows.
- A *feature set* is one or more stored features read together, written
  ``ENCODER[:LAYER]+ENCODER[:LAYER]`` (:func:`parse_feature_set`; the paper's
  NTP and sync rows on combinations, Tab. 3/5).
- A :class:`FeatureInput` is one input of a detector: a role (``features``
  for single-stream detectors, ``audio`` / ``visual`` for the synchronisation
  detectors) and a feature set concatenated per frame at the input's
  ``frame_hz`` (:func:`featstore.timebase.concat_aligned`: each feature
  resampled where its rate differs, all trimmed to the shortest).

:func:`select_videos` picks the manifest rows that have every feature of a
detector, :func:`read_video` reads one video's rows, and :class:`InputSource`
serves an input of many videos to the numeric cores as a ``VideoSource``,
video by video (the trainers read through ``featstore.trainers.streams.StoreSource``,
a Dask graph per batch; ``InputSource`` is the baseline of ``bench/source.py``).

>>> parse_feature_set("avhubert-a+avhubert-v:12")
(FeatureKey(encoder='avhubert-a', layer='last'), FeatureKey(encoder='avhubert-v', layer=12))
"""

from __future__ import annotations

import concurrent.futures
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from featstore import timebase
from featstore.layout import Layer, layer_key, normalize_layer
from featstore.trainers.data import FeatureKey, Selection, SelectionError, select

if TYPE_CHECKING:
    import pandas as pd

    from featstore.store import FeatureStore

FEATURES, AUDIO, VISUAL = "features", "audio", "visual"
ROLES = (FEATURES, AUDIO, VISUAL)
SET_SEPARATOR = "+"

__all__ = [
    "AUDIO",
    "FEATURES",
    "ROLES",
    "VISUAL",
    "FeatureInput",
    "InputError",
    "InputSource",
    "StoredFeature",
    "parse_feature_set",
    "read_video",
    "select_videos",
    "unique_features",
]


class InputError(SelectionError):
    """Features cannot be read as a detector needs them (widths, rates, feature sets)."""


class LayerConflictError(SelectionError):
    """A feature names its layer and ``--layer`` names another (a usage error: exit 2)."""

    exit_code = 2


def parse_feature_set(
    texts: str | FeatureKey | Sequence[str | FeatureKey], *, layer: Layer | None = None
) -> tuple[FeatureKey, ...]:
    """``ENCODER[:LAYER]`` keys joined by ``+`` (one string, or several: a repeated option).

    ``layer`` (``--layer``) is the layer of every member that names none (default
    ``last``); a member naming another layer is a :class:`LayerConflictError`
    (the layer is given in one place, never silently overridden). An encoder
    whose own name holds ``+`` cannot be named in a set.

    >>> parse_feature_set(["clip", "wav2vec2"], layer=3)
    (FeatureKey(encoder='clip', layer=3), FeatureKey(encoder='wav2vec2', layer=3))
    """
    items = [texts] if isinstance(texts, str | FeatureKey) else list(texts)
    keys: list[FeatureKey] = []
    for item in items:
        if isinstance(item, FeatureKey):
            keys.append(item)
            continue
        for part in str(item).split(SET_SEPARATOR):
            if not part.strip():
                raise SelectionError(
                    f"invalid feature set {item!r}: expected ENCODER[:LAYER] joined by "
                    f"'{SET_SEPARATOR}' (e.g. avhubert-a+avhubert-v)"
                )
            named = ":" in part
            key = FeatureKey.parse(part, None if named or layer is None else layer)
            if named and layer is not None and key.layer != normalize_layer(layer):
                raise LayerConflictError(
                    f"--encoder {part.strip()} names its layer and --layer {layer_key(layer)} "
                    f"gives another: give the layer in one place ({key.encoder}:"
                    f"{layer_key(layer)}, or {key.encoder} with --layer)"
                )
            keys.append(key)
    if not keys:
        raise SelectionError("no features given")
    seen = set()
    for key in keys:
        if key in seen:
            raise SelectionError(f"feature {key} is named twice in one feature set")
        seen.add(key)
    return tuple(keys)


@dataclass(frozen=True)
class StoredFeature:
    """One stored encoder layer a detector reads, as the store described it at training time.

    ``encoder`` is the name in the store; ``source`` the registered encoder
    that produced the rows (they differ for features stored with
    ``--store-as``). ``dtype`` is how the store rounded them (an upload is
    rounded the same way before scoring); ``None`` in runs written before it
    was recorded (run format 1), where the store in hand says; so is ``dim``
    in format-1 ``syncfree`` runs, which recorded no widths. ``extra`` is the
    store's ``EncoderInfo.extra``: what else the encoder recorded (loader options
    such as FSFM's ``pooling``, the random initialisation's scheme and seed), so
    the API builds exactly the encoder that wrote the rows; ``None`` in runs
    written before it was recorded.
    """

    encoder: str
    layer: Layer
    frame_hz: float
    dim: int | None
    dtype: str | None = "float16"
    source: str | None = None
    checkpoint: str | None = None
    checkpoint_sha256: str | None = None
    random_init: bool = False
    preprocessing_version: str | None = None
    extra: Mapping[str, Any] | None = field(default=None, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "layer", normalize_layer(self.layer))
        if self.extra is not None:
            object.__setattr__(self, "extra", dict(self.extra))
        if not (isinstance(self.frame_hz, int | float) and self.frame_hz > 0):
            raise InputError(f"feature {self.encoder}: frame_hz must be > 0, got {self.frame_hz!r}")
        if self.dim is not None and (
            not isinstance(self.dim, int) or isinstance(self.dim, bool) or self.dim < 1
        ):
            raise InputError(
                f"feature {self.encoder}: dim must be an integer >= 1, got {self.dim!r}"
            )
        object.__setattr__(self, "frame_hz", float(self.frame_hz))

    @property
    def key(self) -> FeatureKey:
        return FeatureKey(self.encoder, self.layer)

    @property
    def encoder_name(self) -> str:
        """The registered encoder to load to compute these rows from media."""
        return self.source or self.encoder

    @classmethod
    def of_store(cls, store: FeatureStore, dataset: str, key: FeatureKey) -> StoredFeature:
        info = store.encoder_info(dataset, key.encoder)
        return cls(
            encoder=key.encoder,
            layer=key.layer,
            frame_hz=float(info.frame_hz),
            dim=int(info.dim(key.layer)),
            dtype=str(info.dtype),
            source=str(info.extra.get("encoder") or key.encoder),
            checkpoint=info.checkpoint,
            checkpoint_sha256=info.checkpoint_sha256,
            random_init=bool(info.random_init),
            preprocessing_version=info.preprocessing_version,
            extra=dict(info.extra),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "encoder": self.encoder,
            "layer": layer_key(self.layer),
            "frame_hz": self.frame_hz,
            "dim": self.dim,
            "dtype": self.dtype,
            "source": self.encoder_name,
            "checkpoint": self.checkpoint,
            "checkpoint_sha256": self.checkpoint_sha256,
            "random_init": self.random_init,
            "preprocessing_version": self.preprocessing_version,
            "extra": None if self.extra is None else dict(self.extra),
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> StoredFeature:
        known = {
            "encoder", "layer", "frame_hz", "dim", "dtype", "source", "checkpoint",
            "checkpoint_sha256", "random_init", "preprocessing_version", "extra",
        }  # fmt: skip
        unknown = set(doc) - known
        if unknown:
            raise InputError(f"unknown keys {sorted(unknown)} in a stored feature record")
        dim = doc.get("dim")
        return cls(
            **{**doc, "frame_hz": float(doc["frame_hz"]), "dim": None if dim is None else int(dim)}
        )

    def check_store(self, store: FeatureStore, dataset: str) -> None:
        """``dataset`` stores these features as they were when the detector was trained."""
        info = store.encoder_info(dataset, self.encoder)
        dim, hz = int(info.dim(self.layer)), float(info.frame_hz)
        if self.dim is not None and dim != self.dim:
            raise InputError(
                f"trained on {self.dim}-wide {self.key} features; {dataset} stores {dim}-wide ones"
            )
        if not math.isclose(hz, self.frame_hz, rel_tol=1e-9):
            raise InputError(
                f"trained on {self.key} at {self.frame_hz:g} Hz; {dataset} stores them at {hz:g} Hz"
            )


@dataclass(frozen=True)
class FeatureInput:
    """One input of a detector: stored features concatenated per frame at ``frame_hz``."""

    role: str
    features: tuple[StoredFeature, ...]
    frame_hz: float

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise InputError(f"input role must be one of {ROLES}, got {self.role!r}")
        features = tuple(self.features)
        if not features:
            raise InputError(f"the {self.role} input reads no features")
        keys = [f.key for f in features]
        if len(set(keys)) != len(keys):
            raise InputError(f"the {self.role} input names a feature twice: {self.label}")
        object.__setattr__(self, "features", features)
        object.__setattr__(self, "frame_hz", float(self.frame_hz))

    @property
    def keys(self) -> tuple[FeatureKey, ...]:
        return tuple(f.key for f in self.features)

    @property
    def dim(self) -> int:
        """The width of the input (the features' widths added up)."""
        dims = [f.dim for f in self.features]
        if any(d is None for d in dims):
            raise InputError(f"the widths of {self.label} were not recorded (a format-1 run)")
        return sum(d for d in dims if d is not None)

    @property
    def label(self) -> str:
        """``ENCODER:LAYER+...`` as a user writes the feature set."""
        return SET_SEPARATOR.join(str(f.key) for f in self.features)

    @property
    def resampled(self) -> bool:
        return any(not math.isclose(f.frame_hz, self.frame_hz, rel_tol=1e-9) for f in self.features)

    @classmethod
    def of_store(
        cls,
        store: FeatureStore,
        dataset: str,
        role: str,
        keys: Sequence[FeatureKey],
        *,
        frame_hz: float | None = None,
    ) -> FeatureInput:
        """The input ``keys`` make in ``dataset``; members at different rates need ``frame_hz``."""
        features = tuple(StoredFeature.of_store(store, dataset, k) for k in keys)
        try:
            rate = timebase.common_rate([f.frame_hz for f in features], frame_hz=frame_hz)
        except timebase.RateError as exc:
            raise InputError(f"{SET_SEPARATOR.join(map(str, keys))}: {exc}") from None
        return cls(role=role, features=features, frame_hz=rate)

    def n_rows(self, lengths: Sequence[int]) -> int:
        """Rows of the input for a video whose features have ``lengths`` rows (in order)."""
        return min(
            timebase.resampled_length(int(n), src_hz=f.frame_hz, dst_hz=self.frame_hz)
            for f, n in zip(self.features, lengths, strict=True)
        )

    def assemble(self, rows: Mapping[FeatureKey, np.ndarray]) -> np.ndarray:
        """One video's input ``[T, dim]`` from its stored rows ``{key: [T_k, D_k]}``."""
        arrays = []
        for f in self.features:
            x = rows.get(f.key)
            if x is None:
                raise InputError(f"the {self.role} input needs {f.key} rows, which were not given")
            x = np.asarray(x)
            if x.ndim != 2 or (f.dim is not None and x.shape[1] != f.dim):
                raise InputError(
                    f"{f.key} rows must be [T, {f.dim or 'D'}] (as trained), got shape {x.shape}"
                )
            arrays.append(x)
        return timebase.concat_aligned(
            arrays, [f.frame_hz for f in self.features], frame_hz=self.frame_hz
        )

    def check_store(self, store: FeatureStore, dataset: str) -> None:
        for f in self.features:
            f.check_store(store, dataset)

    def to_dict(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "frame_hz": self.frame_hz,
            "features": [f.to_dict() for f in self.features],
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> FeatureInput:
        unknown = set(doc) - {"role", "frame_hz", "features"}
        if unknown:
            raise InputError(f"unknown keys {sorted(unknown)} in an input record")
        return cls(
            role=str(doc["role"]),
            features=tuple(StoredFeature.from_dict(f) for f in doc["features"]),
            frame_hz=float(doc["frame_hz"]),
        )


def unique_features(inputs: Iterable[FeatureInput]) -> tuple[StoredFeature, ...]:
    """Every stored feature of ``inputs``, each once, in order of first use."""
    out: dict[FeatureKey, StoredFeature] = {}
    for inp in inputs:
        for f in inp.features:
            out.setdefault(f.key, f)
    return tuple(out.values())


# ------------------------------------------------------------------ the store


def select_videos(
    store: FeatureStore,
    selection: Selection | str,
    keys: Sequence[FeatureKey],
    *,
    fakes: str | None = None,
    real_only: bool = False,
    allow_missing: bool = False,
) -> pd.DataFrame:
    """Manifest rows of ``selection`` with committed features for every key.

    Missing features are an error (as :func:`featstore.trainers.data.select` reports
    them, naming the first feature a video lacks) unless ``allow_missing``,
    which keeps the videos that have them all. Manifest order and attrs are kept.
    """
    selection = Selection.parse(selection)
    if not keys:
        raise SelectionError("no features to select videos by")
    kwargs = {"fakes": fakes, "real_only": real_only, "allow_missing": allow_missing}
    rows = select(store, selection, keys[0], **kwargs)
    if len(keys) == 1:
        return rows
    keep = np.ones(len(rows), dtype=bool)
    for key in keys[1:]:
        ids = set(select(store, selection, key, **kwargs)["video_id"])
        keep &= rows["video_id"].isin(ids).to_numpy()
    if not keep.any():
        names = " and ".join(str(k) for k in keys)
        raise SelectionError(f"no video of {selection} has all of {names} features")
    attrs = dict(rows.attrs)
    out = rows[keep].reset_index(drop=True)
    out.attrs = attrs
    return out


def read_video(
    store: FeatureStore, dataset: str, video_id: str, keys: Iterable[FeatureKey]
) -> dict[FeatureKey, np.ndarray]:
    """One video's stored rows ``{key: [T_k, D_k]}`` (in the stored dtype)."""
    return {k: store.video(dataset, k.encoder, video_id, k.layer) for k in keys}


class InputSource:
    """The ``VideoSource`` protocol over one input of selected manifest rows.

    Lengths come from the commit index, so nothing is read up front; ``read``
    assembles each video's feature set with a small pool of reader threads.
    A single feature at its own rate is read exactly as the store holds it.
    """

    def __init__(
        self,
        store: FeatureStore,
        dataset: str,
        feature_input: FeatureInput,
        rows: pd.DataFrame,
        *,
        threads: int = 2,
    ) -> None:
        self.store, self.dataset, self.input = store, dataset, feature_input
        self.video_ids: list[str] = rows["video_id"].astype(str).tolist()
        self.labels = rows["label"].to_numpy().astype(np.int8)  # [N], 1 = fake
        self.frame_hz = feature_input.frame_hz
        self.dim = feature_input.dim
        dtypes = {
            np.dtype(store.encoder_info(dataset, k.encoder).dtype) for k in feature_input.keys
        }
        self.dtype = dtypes.pop() if len(dtypes) == 1 else np.dtype(np.float32)
        per_feature = [
            [store.locate(dataset, f.encoder, v, f.layer).n_frames for v in self.video_ids]
            for f in feature_input.features
        ]
        self.lengths = np.array(
            [feature_input.n_rows(ns) for ns in zip(*per_feature, strict=True)], dtype=np.int64
        )  # [N]
        self._threads = max(1, int(threads))

    def __len__(self) -> int:
        return len(self.video_ids)

    @property
    def nbytes(self) -> int:
        return int(self.lengths.sum()) * self.dim * self.dtype.itemsize

    def _read_one(self, index: int) -> np.ndarray:
        rows = read_video(self.store, self.dataset, self.video_ids[index], self.input.keys)
        return self.input.assemble(rows)  # [T, D]

    def read(self, indices: Sequence[int] | np.ndarray) -> list[np.ndarray]:
        """Inputs of the videos at ``indices``, in that order: ``[T_i, D]`` each."""
        idx = [int(i) for i in np.asarray(indices, dtype=np.int64).ravel()]
        for i in idx:
            if not 0 <= i < len(self.video_ids):
                raise IndexError(f"video index {i} out of range for {len(self.video_ids)} videos")
        if len(idx) <= 1 or self._threads == 1:
            return [self._read_one(i) for i in idx]
        with concurrent.futures.ThreadPoolExecutor(self._threads) as pool:
            return list(pool.map(self._read_one, idx))
