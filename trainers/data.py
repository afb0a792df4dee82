"""Choosing videos from the store for a trainer: selections, feature keys, sources.

A *selection* is ``NAME[:SPLIT]`` (``av1m:test``; ``NAME:*`` = every split); a
*feature* is ``ENCODER[:LAYER]`` (``wav2vec2:last``, ``avhubert-a:12``).
``select`` turns both into the manifest rows that have committed features,
and ``StoreSource`` serves those rows' features to the numeric cores through
the ``VideoSource`` protocol (``trainers.sources``).

>>> Selection.parse("av1m:test"), Selection.parse("favc", default_split="train")
(Selection(dataset='av1m', split='test'), Selection(dataset='favc', split='train'))
>>> FeatureKey.parse("avhubert-a:12")
FeatureKey(encoder='avhubert-a', layer=12)
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from featstore.errors import FeatstoreError, StoreError
from featstore.layout import LAST, Layer, layer_key, normalize_layer

if TYPE_CHECKING:
    import pandas as pd

    from featstore.store import FeatureStore

log = logging.getLogger(__name__)

ALL_SPLITS = "*"
EVALUATION_ATTR = "evaluation"  # manifest attr: "both_modified" (default) or "all"
_SHOWN_IDS = 3

__all__ = [
    "ALL_SPLITS",
    "AUTO",
    "Auto",
    "FeatureKey",
    "Selection",
    "SelectionError",
    "StoreSource",
    "default_val",
    "evaluation_mask",
    "select",
    "selection_summary",
    "split_hash",
]


class SelectionError(FeatstoreError, ValueError):
    """A dataset selection or feature key is malformed or selects nothing usable."""


@dataclass(frozen=True)
class Selection:
    """One split of one dataset (``split=None``: every row of the dataset).

    ``videos`` narrows it to those video ids (e.g. one video to explain or serve);
    every scorer goes through :func:`select`, so all run kinds honour it.
    """

    dataset: str
    split: str | None = None
    videos: tuple[str, ...] | None = None

    @classmethod
    def of_videos(cls, dataset: str, video_ids: Iterable[str]) -> Selection:
        """Just these videos of ``dataset``, whatever their split."""
        return cls(dataset, None, tuple(str(v) for v in video_ids))

    @classmethod
    def parse(cls, text: str | Selection, *, default_split: str | None = None) -> Selection:
        """``NAME[:SPLIT]``; a bare ``NAME`` takes ``default_split``, ``NAME:*`` every split."""
        if isinstance(text, Selection):
            return text
        name, sep, split = str(text).strip().partition(":")
        name, split = name.strip(), split.strip()
        if not name or (sep and not split) or ":" in split:
            raise SelectionError(
                f"invalid dataset selection {text!r}: expected NAME or NAME:SPLIT (e.g. av1m:test)"
            )
        if not sep:
            return cls(name, default_split)
        return cls(name, None if split == ALL_SPLITS else split)

    def __str__(self) -> str:
        return f"{self.dataset}:{ALL_SPLITS if self.split is None else self.split}"

    @property
    def slug(self) -> str:
        """A file-name-safe form: ``av1m_test`` (``av1m_all`` for every split)."""
        return f"{self.dataset}_{'all' if self.split is None else self.split}"


@dataclass(frozen=True)
class FeatureKey:
    """An encoder and one of its stored layers."""

    encoder: str
    layer: Layer = LAST

    def __post_init__(self) -> None:
        if not self.encoder:
            raise SelectionError("feature key needs an encoder name")
        try:
            object.__setattr__(self, "layer", normalize_layer(self.layer))
        except StoreError as exc:
            raise SelectionError(f"feature {self.encoder}: {exc}") from None

    @classmethod
    def parse(cls, text: str | FeatureKey, layer: Layer | None = None) -> FeatureKey:
        """``ENCODER[:LAYER]`` (layer defaults to ``last``; an explicit ``layer`` wins)."""
        if isinstance(text, FeatureKey):
            return text if layer is None else cls(text.encoder, layer)
        encoder, sep, layer_text = str(text).strip().partition(":")
        if not encoder.strip() or (sep and not layer_text.strip()):
            raise SelectionError(
                f"invalid feature {text!r}: expected ENCODER or ENCODER:LAYER (e.g. wav2vec2:last)"
            )
        if layer is None:
            layer = layer_text.strip() if sep else LAST
        return cls(encoder.strip(), layer)

    def __str__(self) -> str:
        return f"{self.encoder}:{layer_key(self.layer)}"

    @property
    def slug(self) -> str:
        return f"{self.encoder}-{layer_key(self.layer)}"


def _preview(ids: Sequence[str]) -> str:
    shown = ", ".join(repr(v) for v in list(ids)[:_SHOWN_IDS])
    return shown + (f" (+{len(ids) - _SHOWN_IDS} more)" if len(ids) > _SHOWN_IDS else "")


def evaluation_mask(manifest: pd.DataFrame, attrs: dict[str, Any] | None = None) -> np.ndarray:
    """Rows kept for evaluation: reals, and fakes with both modalities manipulated where known.

    The paper (Sec. 5.2) scores only fakes with both audio and visual
    manipulations "where this information is available": ``audio_modified`` /
    ``visual_modified`` fakes are dropped, ``unknown`` ones stay (the filter of
    ``featstore.datasets.keep_both_modified_fakes``). A manifest imported with
    the attr ``evaluation = "all"`` keeps every row.
    """
    attrs = manifest.attrs if attrs is None else attrs
    policy = attrs.get(EVALUATION_ATTR) or "both_modified"
    if policy not in ("both_modified", "all"):
        raise SelectionError(
            f"manifest attr {EVALUATION_ATTR!r} must be 'both_modified' or 'all', got {policy!r}"
        )
    n = len(manifest)
    if policy == "all" or "modify_type" not in manifest.columns:
        return np.ones(n, dtype=bool)
    labels = manifest["label"].to_numpy()
    kinds = manifest["modify_type"].astype(str).to_numpy()
    return (labels == 0) | np.isin(kinds, ["both_modified", "unknown"])


def select(
    store: FeatureStore,
    selection: Selection | str,
    feature: FeatureKey | str,
    *,
    evaluation: bool = False,
    real_only: bool = False,
    allow_missing: bool = False,
) -> pd.DataFrame:
    """Manifest rows of ``selection`` with committed features for ``feature``.

    ``evaluation`` applies the dataset's evaluation filter (``evaluation_mask``),
    ``real_only`` keeps label-0 rows (anomaly detectors). Rows without features
    are an error naming a few of them, or with ``allow_missing`` a warning.
    The result keeps manifest order, has a fresh index and carries the
    manifest attrs plus ``selection``.
    """
    selection = Selection.parse(selection)
    feature = FeatureKey.parse(feature)
    manifest = store.manifest(selection.dataset)
    attrs = dict(manifest.attrs)
    for column in ("video_id", "label"):
        if column not in manifest.columns:
            raise SelectionError(f"manifest of {selection.dataset} has no {column!r} column")
    frame = manifest
    if selection.split is not None:
        if "split" not in manifest.columns:
            raise SelectionError(
                f"manifest of {selection.dataset} has no 'split' column; select {selection.dataset}:*"
            )
        frame = manifest[manifest["split"] == selection.split]
        if frame.empty:
            splits = sorted(str(s) for s in manifest["split"].unique())
            raise SelectionError(
                f"dataset {selection.dataset} has no split {selection.split!r} "
                f"(splits: {', '.join(splits) or 'none'})"
            )
    if selection.videos is not None:
        wanted = set(selection.videos)
        frame = frame[frame["video_id"].isin(wanted)]
        unknown = wanted - set(frame["video_id"])
        if len(unknown) == 1:
            raise SelectionError(f"no video {unknown.pop()!r} in {selection}")
        if unknown:
            raise SelectionError(
                f"{len(unknown)} of the requested videos are not in {selection}: "
                f"{_preview(sorted(unknown))}"
            )
    if real_only:
        frame = frame[frame["label"] == 0]
    if evaluation:
        frame = frame[evaluation_mask(frame, attrs)]
    committed = set(store.video_ids(selection.dataset, feature.encoder, feature.layer))
    has = frame["video_id"].isin(committed).to_numpy()
    if not has.all():
        missing = frame["video_id"][~has].tolist()
        message = (
            f"{len(missing)} of {len(frame)} videos of {selection} have no {feature} features "
            f"in the store, e.g. {_preview(missing)}"
        )
        if not allow_missing:
            raise SelectionError(message + " (extract them, or allow missing videos)")
        log.warning("%s; skipping them", message)
        frame = frame[has]
    if frame.empty:
        what = " real" if real_only else ""
        raise SelectionError(f"{selection} selects no{what} videos with {feature} features")
    out = frame.reset_index(drop=True)
    out.attrs = {**attrs, "selection": str(selection)}
    return out


def split_hash(video_ids: Iterable[str]) -> str:
    """A short, order-independent fingerprint of a set of video ids (recorded in run configs)."""
    digest = hashlib.sha256()
    for vid in sorted(set(video_ids)):
        digest.update(vid.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


class StoreSource:
    """The ``VideoSource`` protocol over selected manifest rows of one stored layer.

    Nothing is read up front: lengths come from the commit index, so
    ``nbytes`` (rows x dim x itemsize) is known before any feature is read.
    ``read`` fetches videos with a small pool of reader threads, so one
    video's I/O overlaps the next one's decode.
    """

    def __init__(
        self,
        store: FeatureStore,
        dataset: str,
        feature: FeatureKey | str,
        rows: pd.DataFrame,
        *,
        threads: int = 2,
    ) -> None:
        feature = FeatureKey.parse(feature)
        self.store, self.dataset, self.feature = store, dataset, feature
        self.video_ids: list[str] = rows["video_id"].astype(str).tolist()
        self.labels = rows["label"].to_numpy().astype(np.int8)  # [N], 1 = fake
        info = store.encoder_info(dataset, feature.encoder)
        self.frame_hz = float(info.frame_hz)
        self.dim = int(info.dim(feature.layer))
        self.dtype = np.dtype(info.dtype)
        self.lengths = np.array(
            [
                store.locate(dataset, feature.encoder, v, feature.layer).n_frames
                for v in self.video_ids
            ],
            dtype=np.int64,
        )  # [N]
        self._threads = max(1, int(threads))

    def __len__(self) -> int:
        return len(self.video_ids)

    @property
    def nbytes(self) -> int:
        return int(self.lengths.sum()) * self.dim * self.dtype.itemsize

    def _read_one(self, index: int) -> np.ndarray:
        return self.store.video(
            self.dataset, self.feature.encoder, self.video_ids[index], self.feature.layer
        )  # [T, D]

    def read(self, indices: Sequence[int] | np.ndarray) -> list[np.ndarray]:
        """Features of the videos at ``indices``, in that order: ``[T_i, D]`` each."""
        idx = [int(i) for i in np.asarray(indices, dtype=np.int64).ravel()]
        for i in idx:
            if not 0 <= i < len(self.video_ids):
                raise IndexError(f"video index {i} out of range for {len(self.video_ids)} videos")
        if len(idx) <= 1 or self._threads == 1:
            return [self._read_one(i) for i in idx]
        with concurrent.futures.ThreadPoolExecutor(self._threads) as pool:
            return list(pool.map(self._read_one, idx))


# ------------------------------------------------------- what run shells share


class Auto:
    """The type of :data:`AUTO`."""

    def __repr__(self) -> str:
        return "AUTO"


AUTO: Final = Auto()
"""``val=AUTO``: the training dataset's ``val`` split when it has one, else no validation."""


def selection_summary(selection: Selection, frame: pd.DataFrame) -> dict[str, Any]:
    """What a run config records about one selection."""
    labels = frame["label"].to_numpy()
    return {
        "selection": str(selection),
        "dataset": selection.dataset,
        "split": selection.split,
        "split_hash": split_hash(frame["video_id"].astype(str)),
        "n": len(frame),
        "n_real": int((labels == 0).sum()),
        "n_fake": int((labels == 1).sum()),
    }


def default_val(store: FeatureStore, train: Selection) -> Selection | None:
    """``val=AUTO``: the training dataset's ``val`` split when it has one (and trains on another)."""
    manifest = store.manifest(train.dataset)
    if train.split != "val" and "split" in manifest.columns and (manifest["split"] == "val").any():
        return Selection(train.dataset, "val")
    return None
