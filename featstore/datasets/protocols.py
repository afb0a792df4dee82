"""The paper's evaluation protocols as named, seeded, deterministic splits.

Every protocol takes a manifest and returns a new one with ``split``
reassigned (rows outside the protocol are dropped). Random choices rank
videos by a seeded hash of their ``video_id``, so a split depends only on the
seed and the set of videos: never on row order, and adding videos to a pool
does not reshuffle those already ranked ahead of them.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from featstore.datasets.manifest import UnknownFormatError
from featstore.errors import ManifestError

log = logging.getLogger(__name__)

DEFAULT_SEED = 43  # the seed of the paper's own code
FAVC_KEPT_CATEGORIES = ("A", "D")  # RealVideo-RealAudio vs FakeVideo-FakeAudio
FAVC_FRACTIONS = (0.63, 0.07, 0.30)  # train, val, test


class ProtocolError(ManifestError):
    """A protocol cannot be applied to this manifest (e.g. no official train rows)."""


def seeded_order(video_ids: pd.Series, seed: int) -> pd.Index:
    """Index labels of ``video_ids`` sorted by ``blake2b(seed, video_id)`` (ties by id)."""
    keys = [
        int.from_bytes(hashlib.blake2b(f"{seed}\0{v}".encode(), digest_size=8).digest(), "big")
        for v in video_ids
    ]
    frame = pd.DataFrame({"key": keys, "vid": video_ids.to_numpy()}, index=video_ids.index)
    return frame.sort_values(["key", "vid"], kind="stable").index


def _assign(df: pd.DataFrame, chosen: dict[str, pd.Index]) -> pd.DataFrame:
    """Keep the rows in ``chosen`` (split -> index labels), in input order, with their split."""
    split = pd.Series(index=df.index, dtype="object")
    for name, index in chosen.items():
        split.loc[index] = name
    out = df.loc[split.notna()].copy()
    out["split"] = split.loc[out.index].astype(str)
    return out.reset_index(drop=True)


def split_av1m(
    df: pd.DataFrame,
    *,
    seed: int = DEFAULT_SEED,
    n_train: int = 45_000,
    n_val: int = 5_000,
    n_test: int = 10_000,
    real_only_train: bool = False,
) -> pd.DataFrame:
    """AV1M (paper Supp. A): train/val sampled from the official train set, test from official val.

    ``real_only_train`` samples train/val from the real videos only (the anomaly
    detectors' 45k/5k). With the same seed its train set holds every real video
    of the supervised protocol's train set, as in the paper. When the official
    train set has fewer than ``n_train + n_val`` videos, all of it is used in the
    same train:val proportion; a smaller official val set is used whole. Both
    cases are logged as warnings.
    """
    df = df.reset_index(drop=True)
    in_train = df["split"] == "train"
    if real_only_train:
        in_train &= df["label"] == 0
    train_pool = df.index[in_train]
    test_pool = df.index[df["split"] == "val"]
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
    k_test = min(n_test, len(test_pool))
    if len(test_pool) < n_test:
        log.warning(
            "av1m protocol: official val set has %d videos (< %d); all used as test",
            len(test_pool),
            n_test,
        )
    ranked = seeded_order(df.loc[train_pool, "video_id"], seed)
    tested = seeded_order(df.loc[test_pool, "video_id"], seed)
    return _assign(
        df,
        {
            "train": ranked[:k_train],
            "val": ranked[k_train : k_train + k_val],
            "test": tested[:k_test],
        },
    )


def split_favc(
    df: pd.DataFrame,
    *,
    seed: int = DEFAULT_SEED,
    fractions: tuple[float, float, float] = FAVC_FRACTIONS,
    categories: tuple[str, ...] = FAVC_KEPT_CATEGORIES,
) -> pd.DataFrame:
    """FakeAVCeleb: keep categories A (real) and D (fake); 63/7/30 train/val/test per label."""
    if "category" not in df.columns:
        raise ProtocolError("favc protocol needs the FakeAVCeleb 'category' column")
    if abs(sum(fractions) - 1.0) > 1e-9 or min(fractions) < 0:
        raise ProtocolError(f"fractions must be non-negative and sum to 1, got {fractions}")
    df = df.reset_index(drop=True)
    kept = df[df["category"].isin(categories)]
    chosen: dict[str, list] = {"train": [], "val": [], "test": []}
    for _, group in kept.groupby("label", sort=True):
        ranked = seeded_order(group["video_id"], seed)
        k_train = round(len(ranked) * fractions[0])
        k_val = round(len(ranked) * fractions[1])
        chosen["train"] += list(ranked[:k_train])
        chosen["val"] += list(ranked[k_train : k_train + k_val])
        chosen["test"] += list(ranked[k_train + k_val :])
    return _assign(df, {k: pd.Index(v) for k, v in chosen.items()})


def split_all_test(df: pd.DataFrame, *, seed: int = DEFAULT_SEED) -> pd.DataFrame:
    """Every video is test (AVLips, DFE-2024 as the paper uses them); ``seed`` is unused."""
    out = df.copy()
    out["split"] = "test"
    return out.reset_index(drop=True)


def keep_official(df: pd.DataFrame, *, seed: int = DEFAULT_SEED) -> pd.DataFrame:
    """The splits as the dataset publishes them; ``seed`` is unused."""
    return df.copy().reset_index(drop=True)


def keep_both_modified_fakes(df: pd.DataFrame) -> pd.DataFrame:
    """Evaluation subset: reals, plus fakes with both modalities manipulated where known.

    Fakes whose ``modify_type`` is ``unknown`` stay (the dataset does not say),
    ``audio_modified`` / ``visual_modified`` fakes are dropped.
    """
    keep = (df["label"] == 0) | df["modify_type"].isin(["both_modified", "unknown"])
    return df.loc[keep].reset_index(drop=True)


@dataclass(frozen=True)
class Protocol:
    name: str
    apply: Callable[..., pd.DataFrame]
    description: str


PROTOCOLS: dict[str, Protocol] = {
    p.name: p
    for p in (
        Protocol(
            "av1m", split_av1m, "45k/5k train/val from official train, 10k test from official val"
        ),
        Protocol(
            "av1m-real",
            functools.partial(split_av1m, real_only_train=True),
            "as av1m, train/val from the real videos only (anomaly detectors)",
        ),
        Protocol("favc", split_favc, "categories A vs D, 63/7/30 train/val/test per label"),
        Protocol("avlips", split_all_test, "whole dataset as test"),
        Protocol("dfe2024", split_all_test, "whole dataset as test"),
        Protocol("all-test", split_all_test, "whole dataset as test"),
        Protocol("official", keep_official, "splits as published by the dataset"),
    )
}


def apply_protocol(name: str, df: pd.DataFrame, *, seed: int = DEFAULT_SEED) -> pd.DataFrame:
    """Apply the protocol registered as ``name`` with its default sizes."""
    if name not in PROTOCOLS:
        raise UnknownFormatError(f"unknown protocol {name!r}; choose from {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name].apply(df, seed=seed)
