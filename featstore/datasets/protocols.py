"""The paper's evaluation protocols as named, seeded, deterministic splits of a manifest.

A protocol maps a manifest to a split per row (``train`` / ``val`` / ``test``,
or ``""`` for a video outside the protocol); ``featstore.datasets.views``
stores that as a named view beside the dataset's own ``split`` column, so one
import serves every protocol. Random choices rank videos (or identities) by a
seeded hash of their id, so a split depends only on the seed and the set of
videos: never on row order, and adding videos to a pool does not reshuffle
those already ranked ahead of them.

Defaults are what the paper's authors ran (their code's seed is 43):

- ``av1m``: 45k train + 5k val sampled from the official train set, 10k test
  from the official val set, each then reduced to real videos and fakes whose
  metadata marks both modalities manipulated (``both_modified_fakes``).
- ``av1m-real``: the anomaly detectors' 45k/5k train/val sampled from the
  official train set's real videos (a superset of ``av1m``'s training reals);
  test as ``av1m``.
- ``favc``: categories A (real) vs D (both fake), split by identity 63/7/30.
- ``dfe2024``: the published train/test split with a seeded validation split
  carved from train; on a segment dataset (``featstore datasets segment``, as the
  paper evaluates Deepfake-Eval-2024) the segments of one source video
  (``source_id``) stay in one split.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from featstore.datasets.manifest import UnknownFormatError
from featstore.errors import ManifestError

log = logging.getLogger(__name__)

DEFAULT_SEED = 43  # the seed of the paper's own code
AV1M_SIZES = (45_000, 5_000, 10_000)  # train, val (from official train), test (from official val)
FAVC_KEPT_CATEGORIES = ("A", "D")  # RealVideo-RealAudio vs FakeVideo-FakeAudio
FAVC_FRACTIONS = (0.63, 0.07, 0.30)  # train, val, test (of videos)
DFE_VAL_FRACTION = 0.1  # of the published train split, as AV1M's 5k of 50k
OUTSIDE = ""  # the split of a video outside a protocol
_IDENTITY_RE = re.compile(r"^id\d+$")


class ProtocolError(ManifestError):
    """A protocol cannot be applied to this manifest (e.g. no official train rows)."""


# ------------------------------------------------------------------ seeded ranking


def seeded_keys(values: Iterable[str], seed: int) -> np.ndarray:
    """``blake2b(f"{seed}\\0{value}")`` (8-byte digest, big-endian) as uint64 per value.

    Stable across runs, Python versions and machines, unlike ``hash()``.
    """
    digests = b"".join(
        hashlib.blake2b(f"{seed}\0{v}".encode(), digest_size=8).digest() for v in values
    )
    return np.frombuffer(digests, dtype=">u8").astype(np.uint64)


def _rank(values: np.ndarray, seed: int) -> np.ndarray:
    """Positions of ``values`` sorted by seeded key, ties (astronomically rare) by value."""
    keys = seeded_keys(values, seed)
    order = np.argsort(keys, kind="stable")
    if len(order) > 1 and not np.all(np.diff(keys[order]) > 0):
        order = np.lexsort((values.astype(str), keys))
    return order


def seeded_order(video_ids: pd.Series, seed: int) -> pd.Index:
    """Index labels of ``video_ids`` sorted by ``blake2b(seed, video_id)`` (ties by id)."""
    values = video_ids.astype(str).to_numpy()
    return video_ids.index[_rank(values, seed)]


def _closest_cut(cumulative: np.ndarray, target: float) -> int:
    """The cut ``c`` (``cumulative[c]`` items before it) closest to ``target`` items."""
    return int(np.argmin(np.abs(cumulative - target)))


def _empty(df: pd.DataFrame) -> pd.Series:
    return pd.Series(OUTSIDE, index=df.index, dtype=object)


# ------------------------------------------------------------------ AV-Deepfake1M


def both_modified_fakes(df: pd.DataFrame) -> np.ndarray:
    """Fakes whose metadata marks both modalities manipulated (the authors' AV1M rule).

    Where the manifest has AV1M's per-modality segments, a fake counts as
    both-modified when ``audio_fake_segments`` and ``visual_fake_segments`` are
    both non-empty; elsewhere (other formats, missing cells) when
    ``modify_type`` is ``both_modified``. The authors' released AV1M splits
    hold ~1.5 % fakes whose file name says one modality (176 + 173 of 22,972 in
    train, 31 of 2,527 in val, 91 of 5,133 in test, at the same rate in every
    split): a filter on the file name or ``modify_type`` cannot let those in, a
    filter on the per-modality segments can, so the segments decide.
    """
    fake = df["label"].to_numpy() == 1
    by_type = df["modify_type"].astype(str).to_numpy() == "both_modified"
    if not {"audio_fake_segments", "visual_fake_segments"} <= set(df.columns):
        return fake & by_type
    both = by_type.copy()
    rows = np.flatnonzero(fake)
    audio = df["audio_fake_segments"].to_numpy()[rows]
    visual = df["visual_fake_segments"].to_numpy()[rows]
    for i, a, v in zip(rows, audio, visual, strict=True):
        if isinstance(a, list) and isinstance(v, list):
            both[i] = bool(a) and bool(v)
    return fake & both


def av1m_splits(
    df: pd.DataFrame,
    *,
    seed: int = DEFAULT_SEED,
    n_train: int = AV1M_SIZES[0],
    n_val: int = AV1M_SIZES[1],
    n_test: int = AV1M_SIZES[2],
    real_only_train: bool = False,
) -> pd.Series:
    """AV1M (paper Supp. A): the authors' composition of train/val/test.

    ``n_train + n_val`` videos sampled from the official train set (the first
    ``n_train`` train, the next ``n_val`` val) and ``n_test`` from the official
    val set, each then reduced to reals and both-modified fakes
    (``both_modified_fakes``), so the splits hold about half their sampled
    size. ``real_only_train`` samples train/val from the real videos only (the
    anomaly detectors' 45k/5k); with the same seed it holds every real video of
    the supervised protocol's train set, as in the paper. A smaller official
    train set is used whole in the same train:val proportion, a smaller
    official val set whole; both are logged as warnings.
    """
    out = _empty(df)
    pool = (df["split"] == "train").to_numpy()
    if real_only_train:
        pool = pool & (df["label"].to_numpy() == 0)
    train_pool = df.index[pool]
    test_pool = df.index[(df["split"] == "val").to_numpy()]
    if len(train_pool) == 0 and len(test_pool) == 0:
        raise ProtocolError("av1m protocol needs rows of the official train or val split")
    want = n_train + n_val
    if len(train_pool) < want:
        k_train = round(len(train_pool) * n_train / want) if want else 0
        k_val = len(train_pool) - k_train
        log.warning(
            "av1m protocol: official train set has %d videos (< %d); using proportions: "
            "%d train / %d val",
            len(train_pool),
            want,
            k_train,
            k_val,
        )
    else:
        k_train, k_val = n_train, n_val
    if len(test_pool) < n_test:
        log.warning(
            "av1m protocol: official val set has %d videos (< %d); all used as test",
            len(test_pool),
            n_test,
        )
    ranked = seeded_order(df.loc[train_pool, "video_id"], seed)
    tested = seeded_order(df.loc[test_pool, "video_id"], seed)
    out.loc[ranked[:k_train]] = "train"
    out.loc[ranked[k_train : k_train + k_val]] = "val"
    out.loc[tested[:n_test]] = "test"
    sampled = (out != OUTSIDE).to_numpy()
    keep = (df["label"].to_numpy() == 0) | both_modified_fakes(df)
    out[sampled & ~keep] = OUTSIDE
    return out


# ------------------------------------------------------------------ FakeAVCeleb


def favc_identity(df: pd.DataFrame) -> pd.Series:
    """The identity of each row: the ``idNNNNN`` folder of its path (the source real video's).

    FakeAVCeleb files live under ``{type}/{race}/{gender}/{id}/``; a fake sits
    in the folder of the real video it was made from. Rows whose path has no
    such folder fall back to the ``source`` column; none at all is an error.
    """
    folders = df["path"].astype(str).str.rsplit("/", n=1).str[0]
    ident = folders.map(
        lambda f: next((p for p in reversed(f.split("/")) if _IDENTITY_RE.match(p)), None)
    )
    if "source" in df.columns:
        source = df["source"].astype(str).str.strip()
        fallback = source.where(source.str.match(_IDENTITY_RE.pattern), None)
        ident = ident.fillna(fallback)
    missing = ident.isna()
    if missing.any():
        examples = ", ".join(repr(p) for p in df.loc[missing, "path"].head(3))
        raise ProtocolError(
            f"favc protocol: {int(missing.sum())} video(s) have no idNNNNN folder or source "
            f"identity, e.g. {examples}"
        )
    return ident.astype(str)


def favc_splits(
    df: pd.DataFrame,
    *,
    seed: int = DEFAULT_SEED,
    fractions: tuple[float, float, float] = FAVC_FRACTIONS,
    categories: tuple[str, ...] = FAVC_KEPT_CATEGORIES,
) -> pd.Series:
    """FakeAVCeleb: categories A vs D split by identity, 63/7/30 of the videos.

    Identities (``favc_identity``) are ranked by a seeded hash and cut where
    the running video count comes closest to 63 % and 70 % of the videos, so no
    identity is in two splits and each ratio is off by at most half the videos
    of one identity.
    """
    if "category" not in df.columns:
        raise ProtocolError("favc protocol needs the FakeAVCeleb 'category' column")
    if abs(sum(fractions) - 1.0) > 1e-9 or min(fractions) < 0:
        raise ProtocolError(f"fractions must be non-negative and sum to 1, got {fractions}")
    out = _empty(df)
    kept = df.index[df["category"].astype(str).isin(categories).to_numpy()]
    if len(kept) == 0:
        return out
    identity = favc_identity(df.loc[kept])
    counts = identity.value_counts()
    names = counts.index.to_numpy(dtype=object)
    order = _rank(names, seed)
    cumulative = np.concatenate([[0], np.cumsum(counts.to_numpy()[order])])  # [K + 1]
    total = cumulative[-1]
    cut_train = _closest_cut(cumulative, fractions[0] * total)
    cut_val = max(cut_train, _closest_cut(cumulative, (fractions[0] + fractions[1]) * total))
    split_of = pd.Series("test", index=names[order], dtype=object)
    split_of.iloc[:cut_train] = "train"
    split_of.iloc[cut_train:cut_val] = "val"
    out.loc[kept] = identity.map(split_of).to_numpy()
    return out


# ------------------------------------------------------------------ Deepfake-Eval-2024


SOURCE_COLUMN = "source_id"  # a segment row's source video (featstore.datasets.segments)


def _groups(df: pd.DataFrame) -> pd.Series:
    """What must stay in one split: the source video of a segment row, else the video."""
    if SOURCE_COLUMN in df.columns:
        source = df[SOURCE_COLUMN]
        return source.where(source.notna(), df["video_id"]).astype(str)
    return df["video_id"].astype(str)


def grouped_holdout(
    groups: pd.Series, labels: pd.Series, *, fraction: float, seed: int = DEFAULT_SEED
) -> np.ndarray:
    """Rows held out: about ``fraction`` of the rows of each label, whole groups at a time.

    A group (e.g. the segments of one source video, or an identity's real
    videos and the fakes made from them) is never split; it counts under the
    largest label of its rows (fake if any row is fake). Per label, groups are
    ranked by a seeded hash of their name and cut where the running row count
    comes closest to ``fraction``. Returns a boolean mask ``[N]`` in row order.
    """
    if not 0.0 <= fraction < 1.0:
        raise ProtocolError(f"the held-out fraction must be in [0, 1), got {fraction}")
    names_of = groups.astype(str).to_numpy()
    group_label = pd.Series(labels.to_numpy()).groupby(names_of).max()
    sizes_of = pd.Series(names_of).value_counts()
    held = np.zeros(len(names_of), dtype=bool)
    for label in sorted(group_label.unique()):
        names = group_label.index[group_label.to_numpy() == label].to_numpy(dtype=object)
        sizes = sizes_of.reindex(names).to_numpy()
        order = _rank(names, seed)
        cumulative = np.concatenate([[0], np.cumsum(sizes[order])])
        cut = _closest_cut(cumulative, fraction * cumulative[-1])
        held |= np.isin(names_of, names[order][:cut])
    return held


def video_groups(df: pd.DataFrame) -> tuple[pd.Series, str]:
    """What must stay on one side of a split, and its name: ``identity``, ``source_id`` or ``video``.

    The identity (an ``idNNNNN`` folder in the path, as AV-Deepfake1M and
    FakeAVCeleb lay out their files: the person and the real video a fake was
    made from) when every row has one; else the source video of segment rows
    (``source_id``); else each video on its own.
    """
    if "path" in df.columns and len(df):
        folders = df["path"].astype(str).str.rsplit("/", n=1).str[0]
        ident = folders.map(
            lambda f: next((p for p in reversed(f.split("/")) if _IDENTITY_RE.match(p)), None)
        )
        if ident.notna().all():
            return ident.astype(str), "identity"
    if SOURCE_COLUMN in df.columns and df[SOURCE_COLUMN].notna().any():
        return _groups(df), SOURCE_COLUMN
    return df["video_id"].astype(str), "video"


def dfe2024_splits(
    df: pd.DataFrame, *, seed: int = DEFAULT_SEED, val_fraction: float = DFE_VAL_FRACTION
) -> pd.Series:
    """Deepfake-Eval-2024: the published train/test split, ``val_fraction`` of train as val.

    Validation videos are drawn per label (so both classes are in it) by a
    seeded hash of their group: rows sharing a ``source_id`` (segments of one
    video) stay together, and ``val_fraction`` counts rows (segments)
    (``grouped_holdout``).
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ProtocolError(f"val_fraction must be in [0, 1), got {val_fraction}")
    split = df["split"].astype(str)
    if not split.isin(["train", "test"]).any():
        raise ProtocolError("dfe2024 protocol needs rows of the published train or test split")
    out = _empty(df)
    out[(split == "test").to_numpy()] = "test"
    train = df.loc[(split == "train").to_numpy()]
    if train.empty:
        return out
    out.loc[train.index] = "train"
    held = grouped_holdout(_groups(train), train["label"], fraction=val_fraction, seed=seed)
    out.loc[train.index[held]] = "val"
    return out


# ------------------------------------------------------------------ whole-dataset protocols


def all_test_splits(df: pd.DataFrame, *, seed: int = DEFAULT_SEED) -> pd.Series:
    """Every video is test (AVLips as the paper uses it); ``seed`` is unused."""
    return pd.Series("test", index=df.index, dtype=object)


def official_splits(df: pd.DataFrame, *, seed: int = DEFAULT_SEED) -> pd.Series:
    """The splits as the dataset publishes them (``unassigned`` -> outside); ``seed`` is unused."""
    split = df["split"].astype(str)
    return split.where(split.isin(["train", "val", "test"]), OUTSIDE).astype(object)


def keep_both_modified_fakes(df: pd.DataFrame) -> pd.DataFrame:
    """Evaluation subset: reals, plus fakes with both modalities manipulated where known.

    Fakes whose ``modify_type`` is ``unknown`` stay (the dataset does not say),
    ``audio_modified`` / ``visual_modified`` fakes are dropped.
    """
    keep = (df["label"] == 0) | df["modify_type"].isin(["both_modified", "unknown"])
    return df.loc[keep].reset_index(drop=True)


# ------------------------------------------------------------------ registry


@dataclass(frozen=True)
class Protocol:
    """A named protocol: ``splits(df, seed=...)`` gives each row's split (``""`` = outside).

    ``evaluation`` is the evaluation policy of a view built by it: ``"all"``
    when the protocol's composition already is the evaluation set (every row of
    the view counts), None for the dataset's own policy (``featstore.trainers.data``).
    """

    name: str
    splits: Callable[..., pd.Series]
    description: str
    evaluation: str | None = None


PROTOCOLS: dict[str, Protocol] = {
    p.name: p
    for p in (
        Protocol(
            "av1m",
            av1m_splits,
            "45k/5k train/val from official train, 10k test from official val, "
            "each reduced to reals + both-modified fakes",
            evaluation="all",
        ),
        Protocol(
            "av1m-real",
            functools.partial(av1m_splits, real_only_train=True),
            "as av1m, train/val sampled from the real videos only (anomaly detectors)",
            evaluation="all",
        ),
        Protocol("favc", favc_splits, "categories A vs D, 63/7/30 split by identity"),
        Protocol("avlips", all_test_splits, "whole dataset as test"),
        Protocol("dfe2024", dfe2024_splits, "published train/test, seeded 10% of train as val"),
        Protocol("all-test", all_test_splits, "whole dataset as test"),
        Protocol("official", official_splits, "splits as published by the dataset"),
    )
}


def get_protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise UnknownFormatError(f"unknown protocol {name!r}; choose from {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]


def protocol_splits(name: str, df: pd.DataFrame, *, seed: int = DEFAULT_SEED) -> pd.Series:
    """Each row's split under protocol ``name`` (``""`` = outside), aligned with ``df.index``."""
    splits = get_protocol(name).splits(df, seed=seed)
    return splits.reindex(df.index).fillna(OUTSIDE).astype(object)


def apply_protocol(name: str, df: pd.DataFrame, *, seed: int = DEFAULT_SEED) -> pd.DataFrame:
    """The rows inside protocol ``name`` with ``split`` set to the protocol's split.

    A copy of the protocol's videos only; ``featstore.datasets.views.add_view``
    keeps every row and stores the protocol beside the dataset's own split.
    """
    splits = protocol_splits(name, df, seed=seed)
    inside = (splits != OUTSIDE).to_numpy()
    out = df.loc[inside].copy()
    out["split"] = splits[inside].to_numpy()
    return out.reset_index(drop=True)
