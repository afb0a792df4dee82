"""Views: named splits over one imported dataset, so one import serves many protocols.

A dataset is imported once (one manifest row per video, features extracted
once per video); each protocol or set of published split files is a *view*
that gives some of those videos a split. Storage, inside the manifest:

- the ``split`` column keeps the dataset's own (official) split, untouched;
- view ``V`` is the column ``split.V``: ``train`` / ``val`` / ``test`` for the
  videos in the view, ``""`` for the others (plain strings store and load
  fast: no JSON for a million rows);
- the manifest attr ``views`` maps each view to how it was made (protocol,
  seed or split files, time, split counts and hashes, evaluation policy), and
  ``default_view`` names the view a selection without ``@VIEW`` uses.

A column (rather than a table of ids per view) is row-aligned with the
manifest, so a view costs one short string per video, loads with the manifest
and cannot name a video the manifest does not have. The reserved view name
``official`` is the ``split`` column itself. Stores written before views (no
``views`` attr) read as before: their ``split`` column is what an import with
``--protocol`` assigned, and they have no other view.

>>> splits = protocol_splits("av1m", manifest)  # doctest: +SKIP
>>> manifest = add_view(manifest, "av1m", splits, {"protocol": "av1m", "seed": 43})  # doctest: +SKIP
>>> resolve_view(manifest, "av1m").splits.value_counts()  # doctest: +SKIP
"""

from __future__ import annotations

import datetime
import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from featstore.errors import ManifestError

OFFICIAL = "official"  # the reserved view: the manifest's own ``split`` column
VIEW_PREFIX = "split."
VIEWS_ATTR = "views"
DEFAULT_VIEW_ATTR = "default_view"
OUTSIDE = ""
VIEW_SPLITS = ("train", "val", "test")
_VIEW_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class ViewError(ManifestError):
    """A view name is invalid or unknown, or a view's splits are malformed."""


def check_view_name(name: str) -> str:
    """A view name: letters, digits, ``_ . -`` (at most 64), not ``official``."""
    if not isinstance(name, str) or not _VIEW_RE.match(name):
        raise ViewError(
            f"invalid view name {name!r}: use letters, digits, '_', '.', '-' (at most 64)"
        )
    if name == OFFICIAL:
        raise ViewError(f"{OFFICIAL!r} is the dataset's own split column, not a view to write")
    return name


def view_column(name: str) -> str:
    """The manifest column holding view ``name``."""
    return VIEW_PREFIX + check_view_name(name)


def ids_hash(video_ids: Iterable[str]) -> str:
    """A short, order-independent fingerprint of a set of video ids (as run configs record)."""
    digest = hashlib.sha256()
    for vid in sorted({str(v) for v in video_ids}):
        digest.update(vid.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def has_views(attrs: Mapping[str, Any]) -> bool:
    """Whether the manifest was written with views (its ``split`` column is then official)."""
    return isinstance(attrs.get(VIEWS_ATTR), Mapping)


def views_of(attrs: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """View name -> how it was made, from a manifest's attrs (empty for older stores)."""
    views = attrs.get(VIEWS_ATTR)
    return {str(k): dict(v) for k, v in views.items()} if isinstance(views, Mapping) else {}


@dataclass(frozen=True)
class ViewSplits:
    """One view resolved on a manifest: each row's split (``""`` = outside the view)."""

    name: str  # the view, or ``official`` for the split column
    splits: pd.Series = field(repr=False)  # aligned with the manifest's index
    info: Mapping[str, Any] = field(default_factory=dict)

    @property
    def inside(self) -> np.ndarray:
        return (self.splits != OUTSIDE).to_numpy()

    @property
    def protocol(self) -> str | None:
        return self.info.get("protocol")


def _official_info(attrs: Mapping[str, Any]) -> dict[str, Any]:
    if has_views(attrs):
        return {"protocol": OFFICIAL}
    # A store written before views: its split column is what --protocol assigned at import.
    return {"protocol": attrs.get("protocol") or OFFICIAL, "seed": attrs.get("seed")}


def resolve_view(manifest: pd.DataFrame, view: str | None = None) -> ViewSplits:
    """The splits of ``view`` (None: the manifest's default view, else its ``split`` column)."""
    attrs = manifest.attrs
    name = view if view is not None else attrs.get(DEFAULT_VIEW_ATTR) or OFFICIAL
    if name == OFFICIAL:
        if "split" not in manifest.columns:
            raise ViewError("the manifest has no 'split' column")
        splits = manifest["split"].astype(object).where(manifest["split"].notna(), OUTSIDE)
        return ViewSplits(OFFICIAL, splits, _official_info(attrs))
    views = views_of(attrs)
    column = view_column(name)
    if name not in views or column not in manifest.columns:
        known = ", ".join([OFFICIAL, *sorted(views)])
        raise ViewError(f"no view {name!r} (views: {known})")
    splits = manifest[column].astype(object).where(manifest[column].notna(), OUTSIDE)
    return ViewSplits(name, splits, views[name])


def parse_view_split(text: str | None) -> tuple[str | None, str | None]:
    """``SPLIT``, ``@VIEW``, ``@VIEW:SPLIT`` or ``*`` -> (view, split); None = default / all.

    The part after the dataset name of a selection (``av1m@av1m-real:train``),
    for commands that already know the dataset (``featstore extract --split``).
    """
    if text is None:
        return None, None
    raw = text.strip()
    view, split = None, raw
    if raw.startswith("@"):
        view, _, split = raw[1:].partition(":")
        view, split = view.strip(), split.strip() or "*"
        if not view:
            raise ViewError(f"invalid split {text!r}: expected SPLIT, @VIEW or @VIEW:SPLIT")
    if not split or ":" in split or "@" in split:
        raise ViewError(f"invalid split {text!r}: expected SPLIT, @VIEW or @VIEW:SPLIT")
    return view, None if split == "*" else split


def select_split(manifest: pd.DataFrame, text: str | None) -> pd.DataFrame:
    """The rows of ``manifest`` that ``parse_view_split(text)`` names (the default view's
    when it names no view; every row when there is no default view and no split)."""
    view, split = parse_view_split(text)
    if view is None and split is None and not manifest.attrs.get(DEFAULT_VIEW_ATTR):
        return manifest
    resolved = resolve_view(manifest, view)
    rows = manifest[resolved.inside if split is None else (resolved.splits == split).to_numpy()]
    if rows.empty:
        known = sorted(str(s) for s in resolved.splits[resolved.inside].unique())
        where = "" if resolved.name == OFFICIAL else f" of view {resolved.name!r}"
        raise ViewError(f"no videos in split {split!r}{where} (splits: {', '.join(known)})")
    return rows


def view_counts(manifest: pd.DataFrame, splits: pd.Series) -> pd.DataFrame:
    """Videos of a view by split, label and modify_type (the composition report)."""
    inside = (splits != OUTSIDE).to_numpy()
    frame = pd.DataFrame(
        {
            "split": splits[inside].to_numpy(),
            "label": manifest["label"].to_numpy()[inside],
            "modify_type": (
                manifest["modify_type"].astype(str).to_numpy()[inside]
                if "modify_type" in manifest.columns
                else "unknown"
            ),
        }
    )
    if frame.empty:
        return frame.assign(videos=[])
    counts = frame.groupby(["split", "label", "modify_type"]).size().rename("videos")
    order = {s: i for i, s in enumerate(VIEW_SPLITS)}
    return (
        counts.reset_index()
        .sort_values(
            ["split", "label", "modify_type"],
            key=lambda c: c.map(order) if c.name == "split" else c,
        )
        .reset_index(drop=True)
    )


def view_summary(manifest: pd.DataFrame, splits: pd.Series) -> dict[str, Any]:
    """Counts per split (and per modify_type) and each split's id hash, for the view's attrs."""
    counts = view_counts(manifest, splits)
    ids = manifest["video_id"].astype(str)
    out: dict[str, Any] = {}
    for split in VIEW_SPLITS:
        rows = counts[counts["split"] == split]
        if rows.empty:
            continue
        out[split] = {
            "videos": int(rows["videos"].sum()),
            "real": int(rows.loc[rows["label"] == 0, "videos"].sum()),
            "fake": int(rows.loc[rows["label"] == 1, "videos"].sum()),
            "modify_type": {
                str(k): int(v) for k, v in rows.groupby("modify_type")["videos"].sum().items()
            },
            "split_hash": ids_hash(ids[(splits == split).to_numpy()]),
        }
    return out


def add_view(
    manifest: pd.DataFrame,
    name: str,
    splits: pd.Series,
    info: Mapping[str, Any],
    *,
    default: bool = False,
) -> pd.DataFrame:
    """A copy of ``manifest`` with view ``name`` added (or replaced) and its attrs updated.

    ``splits`` is aligned with the manifest's index: ``train``/``val``/``test``
    or ``""`` (outside). ``info`` says how the view was made; the counts, split
    hashes and creation time are added. ``default`` makes it the view that
    selections without ``@VIEW`` use. Every other column and attr is kept.
    """
    column = view_column(name)
    splits = splits.reindex(manifest.index)
    values = splits.fillna(OUTSIDE).astype(str)
    bad = sorted(set(values.unique()) - {*VIEW_SPLITS, OUTSIDE})
    if bad:
        raise ViewError(f"view {name!r}: splits must be train, val or test, got {bad[:3]}")
    if not (values != OUTSIDE).any():
        raise ViewError(f"view {name!r} selects no videos")
    out = manifest.copy()
    out[column] = values.to_numpy(dtype=object)
    attrs = dict(manifest.attrs)
    views = views_of(attrs)
    views[name] = {
        **dict(info),
        "created_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "splits": view_summary(manifest, values),
    }
    attrs[VIEWS_ATTR] = views
    if default:
        attrs[DEFAULT_VIEW_ATTR] = name
    out.attrs = attrs
    return out


def drop_view(manifest: pd.DataFrame, name: str) -> pd.DataFrame:
    """A copy of ``manifest`` without view ``name`` (no longer the default if it was)."""
    views = views_of(manifest.attrs)
    if name not in views:
        raise ViewError(f"no view {name!r} (views: {', '.join(sorted(views)) or 'none'})")
    out = manifest.drop(columns=[view_column(name)], errors="ignore")
    attrs = dict(manifest.attrs)
    del views[name]
    attrs[VIEWS_ATTR] = views
    if attrs.get(DEFAULT_VIEW_ATTR) == name:
        attrs[DEFAULT_VIEW_ATTR] = None
    out.attrs = attrs
    return out


def set_default_view(manifest: pd.DataFrame, name: str | None) -> pd.DataFrame:
    """A copy whose default view is ``name`` (None or ``official``: the split column)."""
    if name not in (None, OFFICIAL) and name not in views_of(manifest.attrs):
        raise ViewError(f"no view {name!r}")
    out = manifest.copy()
    out.attrs = {
        **manifest.attrs,
        VIEWS_ATTR: views_of(manifest.attrs),
        DEFAULT_VIEW_ATTR: None if name == OFFICIAL else name,
    }
    return out
