"""Choosing videos from the store for a trainer: selections, feature keys, sources.

A *selection* is ``NAME[@VIEW][:SPLIT]``: ``av1m:test`` is the test split of
dataset ``av1m`` in its default view, ``av1m@av1m-real:train`` the train split
of its view ``av1m-real`` (``featstore.datasets.views``: one import, many
protocols), ``NAME@official:SPLIT`` the dataset's own ``split`` column and
``NAME:*`` every video of the view. A *feature* is ``ENCODER[:LAYER]``
(``wav2vec2:last``, ``avhubert-a:12``). ``select`` turns both into the
manifest rows that have committed features; ``featstore.trainers.inputs`` builds
detectors' inputs (feature sets) on top and ``featstore.trainers.streams`` serves them
to the numeric cores (``StoreSource``, a ``featstore.trainers.sources.VideoSource``).

>>> Selection.parse("av1m:test"), Selection.parse("favc", default_split="train")
(Selection(dataset='av1m', split='test', videos=None, view=None), Selection(dataset='favc', split='train', videos=None, view=None))
>>> str(Selection.parse("av1m@av1m-real:train"))
'av1m@av1m-real:train'
>>> FeatureKey.parse("avhubert-a:12")
FeatureKey(encoder='avhubert-a', layer=12)
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from featstore.errors import FeatstoreError, StoreError
from featstore.layout import LAST, Layer, layer_key, normalize_layer
from featstore.trainers.evaluation_filter import EVALUATION_ATTR, evaluated, paper_mask

if TYPE_CHECKING:
    import pandas as pd

    from featstore.datasets.views import ViewSplits
    from featstore.store import FeatureStore

log = logging.getLogger(__name__)

ALL_SPLITS = "*"
VIEW_ATTR = "view"  # attr of a selected frame: the view it was selected in
_SHOWN_IDS = 3

__all__ = [
    "ALL_SPLITS",
    "AUTO",
    "Auto",
    "FeatureKey",
    "Selection",
    "SelectionError",
    "default_val",
    "evaluation_mask",
    "has_split",
    "select",
    "selection_summary",
    "split_hash",
]


class SelectionError(FeatstoreError, ValueError):
    """A dataset selection or feature key is malformed or selects nothing usable."""


@dataclass(frozen=True)
class Selection:
    """One split of one view of one dataset (``split=None``: every video of the view).

    ``view=None`` is the dataset's default view (its ``split`` column when it
    has none). ``videos`` narrows it to those video ids (e.g. one video to
    explain or serve); every scorer goes through :func:`select`, so all run
    kinds honour both.
    """

    dataset: str
    split: str | None = None
    videos: tuple[str, ...] | None = None
    view: str | None = None

    @classmethod
    def of_videos(cls, dataset: str, video_ids: Iterable[str]) -> Selection:
        """Just these videos of ``dataset``, whatever their split."""
        return cls(dataset, None, tuple(str(v) for v in video_ids), view="official")

    @classmethod
    def parse(cls, text: str | Selection, *, default_split: str | None = None) -> Selection:
        """``NAME[@VIEW][:SPLIT]``; no ``:SPLIT`` takes ``default_split``, ``:*`` every split."""
        if isinstance(text, Selection):
            return text
        head, sep, split = str(text).strip().partition(":")
        name, at, view = head.partition("@")
        name, view, split = name.strip(), view.strip(), split.strip()
        bad_split = (sep and not split) or ":" in split or "@" in split
        if not name or bad_split or (at and not view) or "@" in view:
            raise SelectionError(
                f"invalid dataset selection {text!r}: expected NAME, NAME:SPLIT or "
                "NAME@VIEW:SPLIT (e.g. av1m:test, av1m@av1m-real:train)"
            )
        if not sep:
            return cls(name, default_split, view=view or None)
        return cls(name, None if split == ALL_SPLITS else split, view=view or None)

    def with_split(self, split: str | None) -> Selection:
        """The same dataset and view, another split."""
        return Selection(self.dataset, split, self.videos, self.view)

    def __str__(self) -> str:
        view = f"@{self.view}" if self.view else ""
        return f"{self.dataset}{view}:{ALL_SPLITS if self.split is None else self.split}"

    @property
    def slug(self) -> str:
        """A file-name-safe form: ``av1m_test``, ``av1m@av1m-real_train`` (``_all``: every split)."""
        view = f"@{self.view}" if self.view else ""
        return f"{self.dataset}{view}_{'all' if self.split is None else self.split}"


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
    """The paper filter's rows (``featstore.trainers.evaluation_filter.paper_mask``; kept for callers
    of the older name). Commands choose a filter with ``evaluation_filter.evaluated``."""
    return paper_mask(manifest, attrs)


def _view(manifest: pd.DataFrame, selection: Selection) -> ViewSplits:
    from featstore.datasets.views import ViewError, resolve_view

    try:
        return resolve_view(manifest, selection.view)
    except ViewError as exc:
        raise SelectionError(f"dataset {selection.dataset}: {exc}") from None


def _split_rows(manifest: pd.DataFrame, selection: Selection) -> tuple[pd.DataFrame, ViewSplits]:
    """The manifest rows of the selection's view and split, and the resolved view."""
    view = _view(manifest, selection)
    if selection.split is None:
        return manifest[view.inside], view
    frame = manifest[(view.splits == selection.split).to_numpy()]
    if frame.empty:
        splits = sorted(str(s) for s in view.splits[view.inside].unique())
        where = f"dataset {selection.dataset}" + (
            f" (view {view.name})" if view.name != "official" or selection.view else ""
        )
        raise SelectionError(
            f"{where} has no split {selection.split!r} (splits: {', '.join(splits) or 'none'})"
        )
    return frame, view


def select(
    store: FeatureStore,
    selection: Selection | str,
    feature: FeatureKey | str,
    *,
    fakes: str | None = None,
    real_only: bool = False,
    allow_missing: bool = False,
) -> pd.DataFrame:
    """Manifest rows of ``selection`` with committed features for ``feature``.

    The selection's view (``featstore.datasets.views``; the dataset's default
    view when it names none) says which videos are in which split.
    ``fakes`` (``paper`` or ``all``) keeps the rows that evaluation filter
    counts (``featstore.trainers.evaluation_filter.evaluated``, with the view's policy;
    ``None``: no filter), ``real_only`` keeps label-0 rows (anomaly detectors). Rows
    without features are an error naming a few of them, or with
    ``allow_missing`` a warning. The result keeps manifest order, has a fresh
    index and carries the manifest attrs plus ``selection``, ``view`` (the
    resolved view's name) and the ``evaluation`` policy in force.
    """
    selection = Selection.parse(selection)
    feature = FeatureKey.parse(feature)
    manifest = store.manifest(selection.dataset)
    attrs = dict(manifest.attrs)
    for column in ("video_id", "label"):
        if column not in manifest.columns:
            raise SelectionError(f"manifest of {selection.dataset} has no {column!r} column")
    if "split" in manifest.columns or selection.view or attrs.get("default_view"):
        frame, view = _split_rows(manifest, selection)
        view_name, view_info = view.name, dict(view.info)
    elif selection.split is None:  # a bare manifest written without splits
        frame, view_name, view_info = manifest, "official", {}
    else:
        raise SelectionError(
            f"manifest of {selection.dataset} has no 'split' column; select {selection.dataset}:*"
        )
    if view_info.get(EVALUATION_ATTR):
        attrs[EVALUATION_ATTR] = view_info[EVALUATION_ATTR]
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
    if fakes is not None:
        frame = frame[evaluated(frame, fakes, attrs)]
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
    out.attrs = {
        **attrs,
        "selection": str(selection),
        VIEW_ATTR: view_name,
        "view_protocol": view_info.get("protocol"),
        "view_seed": view_info.get("seed"),
    }
    return out


def has_split(store: FeatureStore, selection: Selection | str) -> bool:
    """Whether the selection's view of its dataset has any video in its split."""
    selection = Selection.parse(selection)
    if selection.split is None:
        return True
    manifest = store.manifest(selection.dataset)
    if "split" not in manifest.columns and not (
        selection.view or manifest.attrs.get("default_view")
    ):
        return False
    return bool((_view(manifest, selection).splits == selection.split).any())


def split_hash(video_ids: Iterable[str]) -> str:
    """A short, order-independent fingerprint of a set of video ids (recorded in run configs)."""
    from featstore.datasets.views import ids_hash

    return ids_hash(video_ids)


# ------------------------------------------------------- what run kinds' train() share


class Auto:
    """The type of :data:`AUTO`."""

    def __repr__(self) -> str:
        return "AUTO"


AUTO: Final = Auto()
"""``val=AUTO``: the training dataset's ``val`` split when it has one, else no validation."""


def selection_summary(selection: Selection, frame: pd.DataFrame) -> dict[str, Any]:
    """What a run config records about one selection: which videos, of which view, how made.

    ``view`` is the view the rows were selected in (``official``: the
    dataset's own split column), ``protocol``/``seed`` how that view was made
    and ``split_hash`` the fingerprint of the selected video ids, so two runs
    on different protocols or samples differ in their configs.
    """
    labels = frame["label"].to_numpy()
    attrs = frame.attrs
    return {
        "selection": str(selection),
        "dataset": selection.dataset,
        "split": selection.split,
        "view": attrs.get(VIEW_ATTR),
        "protocol": attrs.get("view_protocol"),
        "seed": attrs.get("view_seed"),
        "split_hash": split_hash(frame["video_id"].astype(str)),
        "n": len(frame),
        "n_real": int((labels == 0).sum()),
        "n_fake": int((labels == 1).sum()),
    }


def default_val(store: FeatureStore, train: Selection) -> Selection | None:
    """``val=AUTO``: the ``val`` split of the training view when it has one (and trains on another)."""
    val = Selection(train.dataset, "val", view=train.view)
    if train.split != "val" and has_split(store, val):
        return val
    return None
