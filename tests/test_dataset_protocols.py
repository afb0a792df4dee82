"""The paper's split protocols on synthetic manifests (AV1M at full scale) and the evaluation filter.

References are independent re-computations of each protocol's rule from its
definition (a plain sort by the seeded hash, counts from the manifest), not
calls back into the function under test.
"""

from __future__ import annotations

import hashlib
import logging

import numpy as np
import pandas as pd
import pytest

from featstore.datasets import (
    PROTOCOLS,
    UnknownFormatError,
    all_test_splits,
    apply_protocol,
    av1m_splits,
    both_modified_fakes,
    dfe2024_splits,
    favc_splits,
    keep_both_modified_fakes,
    protocol_splits,
)
from featstore.datasets.protocols import ProtocolError

KINDS = np.array(["real", "visual_modified", "audio_modified", "both_modified"], dtype=object)
N_TRAIN, N_VAL = 800_000, 200_000  # official train / val rows of the 1M-row manifest


def av1m_manifest(n_train: int, n_val: int, *, seed: int = 0, leaks: float = 0.02) -> pd.DataFrame:
    """AV1M-like metadata (no media), built without Python loops over rows.

    Modify types are uniform; a fraction ``leaks`` of the single-modality fakes
    carries segments in both modalities, as the authors' split files suggest
    some of AV1M's metadata does.
    """
    n = n_train + n_val
    rng = np.random.default_rng(seed)
    kind = rng.integers(0, 4, n)
    leak = (kind == 1) | (kind == 2)
    leak &= rng.random(n) < leaks
    choices = np.empty(2, dtype=object)
    choices[0], choices[1] = [], [[0.5, 1.0]]
    audio = choices[(np.isin(kind, [2, 3]) | leak).astype(np.intp)]
    visual = choices[(np.isin(kind, [1, 3]) | leak).astype(np.intp)]
    split = np.where(np.arange(n) < n_train, "train", "val").astype(object)
    video_id = [
        f"{'train' if i < n_train else 'val'}/id{i // 300:04d}/v{i:07d}/clip" for i in range(n)
    ]
    return pd.DataFrame(
        {
            "video_id": video_id,
            "label": (kind > 0).astype(np.int64),
            "split": split,
            "modify_type": KINDS[kind],
            "audio_fake_segments": audio,
            "visual_fake_segments": visual,
        }
    )


def reference_ranks(ids: pd.Series, seed: int) -> list[str]:
    """The ids sorted by blake2b(seed, id) read as a big-endian integer: the documented order."""
    values = ids.tolist()
    keys = [hashlib.blake2b(f"{seed}\0{v}".encode(), digest_size=8).hexdigest() for v in values]
    return [values[i] for i in np.argsort(np.array(keys), kind="stable")]


def by_id(df: pd.DataFrame, splits: pd.Series) -> dict[str, str]:
    inside = splits != ""
    return dict(zip(df.loc[inside, "video_id"], splits[inside], strict=True))


@pytest.fixture(scope="module")
def av1m_1m() -> pd.DataFrame:
    return av1m_manifest(N_TRAIN, N_VAL)


@pytest.fixture(scope="module")
def av1m_1m_splits(av1m_1m: pd.DataFrame) -> pd.Series:
    return av1m_splits(av1m_1m)


def test_av1m_composition_at_full_scale(av1m_1m: pd.DataFrame, av1m_1m_splits) -> None:
    df, splits = av1m_1m, av1m_1m_splits
    assert len(df) == 1_000_000
    # reference: the first 45k / next 5k of the official train set and the first 10k of the
    # official val set in seeded-hash order (seed 43), each kept when real or when its
    # metadata has segments in both modalities
    train_ids = reference_ranks(df.loc[df["split"] == "train", "video_id"], 43)
    val_ids = reference_ranks(df.loc[df["split"] == "val", "video_id"], 43)
    sampled = {v: "train" for v in train_ids[:45_000]}
    sampled |= {v: "val" for v in train_ids[45_000:50_000]}
    sampled |= {v: "test" for v in val_ids[:10_000]}
    rows = df.set_index("video_id").loc[list(sampled)]
    both = rows["audio_fake_segments"].map(bool) & rows["visual_fake_segments"].map(bool)
    kept = rows.index[(rows["label"] == 0) | both]
    assert by_id(df, splits) == {v: sampled[v] for v in kept}

    composition = (
        rows.loc[kept]
        .assign(split=[sampled[v] for v in kept])
        .groupby(["split", "modify_type"])
        .size()
        .to_dict()
    )
    # half of each sample survives: reals and both-modified fakes, plus the leaked few
    for split, sample in (("train", 45_000), ("val", 5_000), ("test", 10_000)):
        real = composition[split, "real"]
        both_fakes = composition[split, "both_modified"]
        single = composition.get((split, "audio_modified"), 0) + composition.get(
            (split, "visual_modified"), 0
        )
        assert abs(real - sample / 4) < 5 * np.sqrt(sample / 4)
        assert abs(both_fakes - sample / 4) < 5 * np.sqrt(sample / 4)
        assert 0 < single < 0.05 * sample / 2
    assert set(splits[splits != ""].unique()) == {"train", "val", "test"}
    inside = (splits != "").to_numpy()
    assert (df.loc[inside & (splits == "test").to_numpy(), "split"] == "val").all()
    assert (df.loc[inside & (splits != "test").to_numpy(), "split"] == "train").all()


def test_av1m_deterministic_seeded_and_order_free(av1m_1m, av1m_1m_splits) -> None:
    first = by_id(av1m_1m, av1m_1m_splits)
    shuffled = av1m_1m.sample(frac=1.0, random_state=1)
    assert by_id(shuffled, av1m_splits(shuffled)) == first
    small = av1m_manifest(3_000, 1_000)
    sizes = {"n_train": 900, "n_val": 100, "n_test": 400}
    assert by_id(small, av1m_splits(small, seed=7, **sizes)) == by_id(
        small, av1m_splits(small, seed=7, **sizes)
    )
    assert by_id(small, av1m_splits(small, seed=7, **sizes)) != by_id(
        small, av1m_splits(small, seed=8, **sizes)
    )


def test_both_modified_rule() -> None:
    df = pd.DataFrame(
        {
            "label": [0, 1, 1, 1, 1, 1],
            "modify_type": [
                "real",
                "both_modified",
                "audio_modified",
                "audio_modified",
                "both_modified",
                "visual_modified",
            ],
            "audio_fake_segments": [[], [[0, 1]], [[0, 1]], [[0, 1]], None, []],
            "visual_fake_segments": [[], [[0, 1]], [], [[0, 1]], None, [[2, 3]]],
        }
    )
    # segments decide; a missing cell falls back to modify_type
    assert both_modified_fakes(df).tolist() == [False, True, False, True, True, False]
    plain = df.drop(columns=["audio_fake_segments", "visual_fake_segments"])
    assert both_modified_fakes(plain).tolist() == [False, True, False, False, True, False]


def test_av1m_small_dataset_uses_proportions(caplog: pytest.LogCaptureFixture) -> None:
    df = av1m_manifest(100, 20, leaks=0.0)
    with caplog.at_level(logging.WARNING, logger="featstore.datasets.protocols"):
        splits = av1m_splits(df, seed=3)
    assert "proportions" in caplog.text and "all used as test" in caplog.text
    keep = ((df["label"] == 0) | (df["modify_type"] == "both_modified")).to_numpy()
    assert ((splits != "").to_numpy() == keep).all()  # everything sampled, then reduced
    official_train = (df["split"] == "train").to_numpy()
    assert ((splits[keep & official_train]).isin(["train", "val"])).all()
    assert (splits[keep & ~official_train] == "test").all()


def test_av1m_real_only_train_contains_the_probes_reals() -> None:
    df = av1m_manifest(20_000, 500)
    sizes = {"n_train": 3_000, "n_val": 300, "n_test": 200}
    probe = av1m_splits(df, seed=4, **sizes)
    real = av1m_splits(df, seed=4, real_only_train=True, **sizes)
    assert (df.loc[(real.isin(["train", "val"])).to_numpy(), "label"] == 0).all()
    assert (real == "train").sum() == 3_000 and (real == "val").sum() == 300
    probe_reals = set(df.loc[((probe == "train") & (df["label"] == 0)).to_numpy(), "video_id"])
    assert probe_reals <= set(df.loc[(real == "train").to_numpy(), "video_id"])
    assert (real == "test").equals(probe == "test")  # the same test set


def test_av1m_needs_official_splits() -> None:
    df = av1m_manifest(5, 0).assign(split="unassigned")
    with pytest.raises(ProtocolError, match="official train or val"):
        av1m_splits(df)


# ------------------------------------------------------------------ FakeAVCeleb


def favc_manifest(seed: int = 0) -> pd.DataFrame:
    """300 identities with one real each and a varying number of fakes of every category."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(300):
        ident = f"id{i:05d}"
        rows.append(("A", "RealVideo-RealAudio", ident, f"{i:05d}.mp4"))
        for cat, folder in (
            ("B", "RealVideo-FakeAudio"),
            ("C", "FakeVideo-RealAudio"),
            ("D", "FakeVideo-FakeAudio"),
        ):
            for j in range(int(rng.integers(0, 6 if cat != "D" else 40))):
                other = f"id{(i * 7 + j) % 300:05d}"
                rows.append((cat, folder, ident, f"{i:05d}_{other}_{j}.mp4"))
    return pd.DataFrame(
        {
            "video_id": [f"{f}/African/men/{d}/{n[:-4]}" for _, f, d, n in rows],
            "path": [f"{f}/African/men/{d}/{n}" for _, f, d, n in rows],
            "label": [int(c != "A") for c, *_ in rows],
            "split": "unassigned",
            "category": [c for c, *_ in rows],
            "source": [d for _, _, d, _ in rows],
        }
    )


def test_favc_identity_split_and_ratios() -> None:
    df = favc_manifest()
    splits = favc_splits(df, seed=43)
    inside = (splits != "").to_numpy()
    assert set(df.loc[inside, "category"]) == {"A", "D"}
    assert inside.sum() == df["category"].isin(["A", "D"]).sum()
    ident = df["path"].str.split("/").str[3]
    per_identity = pd.DataFrame({"id": ident[inside], "split": splits[inside]})
    assert (per_identity.groupby("id")["split"].nunique() == 1).all()  # no identity in two splits
    # ratios of videos as close as whole identities allow
    n = int(inside.sum())
    largest = int(per_identity["id"].value_counts().max())
    n_train, n_val = int((splits == "train").sum()), int((splits == "val").sum())
    assert abs(n_train - 0.63 * n) <= largest / 2
    assert abs(n_train + n_val - 0.70 * n) <= largest / 2
    assert n_val > 0 and (splits == "test").sum() > 0


def test_favc_identity_of_fakes_is_their_folder() -> None:
    df = favc_manifest().drop(columns=["source"])  # the path alone carries the identity
    splits = favc_splits(df, seed=1)
    inside = (splits != "").to_numpy()
    folder = df["path"].str.split("/").str[3]
    assert (
        pd.DataFrame({"f": folder[inside], "s": splits[inside]}).groupby("f")["s"].nunique() == 1
    ).all()
    nameless = df.assign(path="clip.mp4")
    with pytest.raises(ProtocolError, match="no idNNNNN folder"):
        favc_splits(nameless)


def test_favc_deterministic_seeded_and_order_free() -> None:
    df = favc_manifest()
    first = by_id(df, favc_splits(df, seed=5))
    reversed_df = df.iloc[::-1]
    assert by_id(reversed_df, favc_splits(reversed_df, seed=5)) == first
    assert by_id(df, favc_splits(df, seed=6)) != first


def test_favc_needs_category() -> None:
    with pytest.raises(ProtocolError, match="category"):
        favc_splits(av1m_manifest(3, 0))
    with pytest.raises(ProtocolError, match="sum to 1"):
        favc_splits(favc_manifest(), fractions=(0.5, 0.1, 0.1))


# ------------------------------------------------------------------ Deepfake-Eval-2024


def dfe_manifest() -> pd.DataFrame:
    rng = np.random.default_rng(3)
    n = 600
    label = (rng.random(n) < 0.8).astype(np.int64)
    split = np.where(rng.random(n) < 0.6, "train", "test")
    source = [f"video-data/s{i // 3:04d}" for i in range(n)]  # three segments per source video
    label = label[np.arange(n) // 3 * 3]  # segments share their source's label
    split = split[np.arange(n) // 3 * 3]
    return pd.DataFrame(
        {
            "video_id": [f"{s}#{i % 3}" for i, s in enumerate(source)],
            "label": label,
            "split": split,
            "source_id": source,
        }
    )


def test_dfe2024_keeps_published_split_and_carves_val() -> None:
    df = dfe_manifest()
    splits = dfe2024_splits(df, seed=43)
    published = df["split"].to_numpy()
    assert (splits[published == "test"] == "test").all()
    assert splits[published == "train"].isin(["train", "val"]).all()
    for label in (0, 1):
        train = (published == "train") & (df["label"].to_numpy() == label)
        n_val = int((splits[train] == "val").sum())
        assert abs(n_val - 0.1 * train.sum()) <= 3 / 2  # groups of 3 segments
        assert n_val > 0
    groups = pd.DataFrame({"g": df["source_id"], "s": splits})
    assert (groups.groupby("g")["s"].nunique() == 1).all()  # segments stay together
    shuffled = df.sample(frac=1.0, random_state=2)
    assert by_id(shuffled, dfe2024_splits(shuffled, seed=43)) == by_id(df, splits)
    assert by_id(df, dfe2024_splits(df, seed=44)) != by_id(df, splits)
    with pytest.raises(ProtocolError, match="published train or test"):
        dfe2024_splits(df.assign(split="unassigned"))


# ------------------------------------------------------------------ registry and filter


def test_registry_and_apply_protocol() -> None:
    df = favc_manifest()
    assert set(all_test_splits(df)) == {"test"}
    assert set(apply_protocol("avlips", df)["split"]) == {"test"}
    assert len(apply_protocol("avlips", df)) == len(df)
    reduced = apply_protocol("favc", df, seed=2)
    splits = protocol_splits("favc", df, seed=2)
    assert reduced["video_id"].tolist() == df.loc[(splits != "").to_numpy(), "video_id"].tolist()
    assert reduced["split"].tolist() == splits[splits != ""].tolist()
    official = protocol_splits(
        "official",
        av1m_manifest(4, 2).assign(split=["train", "val", "test", "unassigned", "train", "val"]),
    )
    assert official.tolist() == ["train", "val", "test", "", "train", "val"]
    assert {"av1m", "av1m-real", "favc", "avlips", "dfe2024", "official"} <= set(PROTOCOLS)
    assert PROTOCOLS["av1m"].evaluation == "all" and PROTOCOLS["favc"].evaluation is None
    with pytest.raises(UnknownFormatError, match="choose from"):
        apply_protocol("nope", df)


def test_evaluation_filter_keeps_reals_and_both_or_unknown() -> None:
    df = pd.DataFrame(
        {
            "video_id": list("abcdef"),
            "label": [0, 1, 1, 1, 1, 0],
            "modify_type": [
                "real",
                "both_modified",
                "audio_modified",
                "visual_modified",
                "unknown",
                "unknown",
            ],
        }
    )
    assert keep_both_modified_fakes(df)["video_id"].tolist() == ["a", "b", "e", "f"]
