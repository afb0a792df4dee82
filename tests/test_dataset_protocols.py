"""The paper's split protocols and the evaluation filter on synthetic manifests."""

from __future__ import annotations

import logging

import pandas as pd
import pytest

from featstore.datasets import (
    PROTOCOLS,
    UnknownFormatError,
    apply_protocol,
    keep_both_modified_fakes,
    split_all_test,
    split_av1m,
    split_favc,
)
from featstore.datasets.protocols import ProtocolError


def av1m_manifest(n_train: int, n_val: int) -> pd.DataFrame:
    rows = []
    for split, n in (("train", n_train), ("val", n_val)):
        for i in range(n):
            label = i % 3 != 0
            rows.append(
                {
                    "video_id": f"{split}/id{i:05d}/clip",
                    "label": int(label),
                    "split": split,
                    "modify_type": ("both_modified" if i % 2 else "audio_modified")
                    if label
                    else "real",
                }
            )
    return pd.DataFrame(rows)


def favc_manifest() -> pd.DataFrame:
    counts = {"A": 100, "B": 40, "C": 60, "D": 400}
    rows = [
        {
            "video_id": f"{cat}/v{i:04d}",
            "label": int(cat != "A"),
            "split": "unassigned",
            "category": cat,
        }
        for cat, n in counts.items()
        for i in range(n)
    ]
    return pd.DataFrame(rows)


def assignment(df: pd.DataFrame) -> dict[str, str]:
    return dict(zip(df["video_id"], df["split"], strict=True))


def test_av1m_sizes_and_sources() -> None:
    df = av1m_manifest(200, 80)
    out = split_av1m(df, seed=1, n_train=120, n_val=30, n_test=50)
    sizes = out["split"].value_counts().to_dict()
    assert sizes == {"train": 120, "val": 30, "test": 50}
    assert out.loc[out["split"] != "test", "video_id"].str.startswith("train/").all()
    assert out.loc[out["split"] == "test", "video_id"].str.startswith("val/").all()
    assert out["video_id"].is_unique
    assert len(df) == 280 and set(df["split"]) == {"train", "val"}  # input untouched


def test_av1m_defaults_are_the_papers() -> None:
    df = av1m_manifest(52_000, 11_000)
    sizes = split_av1m(df)["split"].value_counts().to_dict()
    assert sizes == {"train": 45_000, "val": 5_000, "test": 10_000}


def test_av1m_deterministic_seeded_and_order_free() -> None:
    df = av1m_manifest(200, 80)
    kwargs = {"n_train": 120, "n_val": 30, "n_test": 50}
    first = assignment(split_av1m(df, seed=7, **kwargs))
    assert first == assignment(split_av1m(df, seed=7, **kwargs))
    shuffled = df.sample(frac=1.0, random_state=0)
    assert first == assignment(split_av1m(shuffled, seed=7, **kwargs))
    assert first != assignment(split_av1m(df, seed=8, **kwargs))


def test_av1m_small_dataset_uses_proportions(caplog: pytest.LogCaptureFixture) -> None:
    df = av1m_manifest(100, 20)
    with caplog.at_level(logging.WARNING, logger="featstore.datasets.protocols"):
        out = split_av1m(df, seed=3)
    assert out["split"].value_counts().to_dict() == {"train": 90, "val": 10, "test": 20}
    assert "proportions" in caplog.text and "all used as test" in caplog.text


def test_av1m_real_only_train_contains_the_probes_reals() -> None:
    df = av1m_manifest(600, 50)
    sizes = {"n_train": 300, "n_val": 30, "n_test": 20}
    probe = split_av1m(df, seed=4, **sizes)
    anomaly = apply_protocol("av1m-real", df, seed=4)
    assert (anomaly.loc[anomaly["split"] != "test", "label"] == 0).all()
    real = split_av1m(df, seed=4, real_only_train=True, **{**sizes, "n_train": 150})
    probe_reals = set(probe.loc[(probe["split"] == "train") & (probe["label"] == 0), "video_id"])
    assert probe_reals <= set(real.loc[real["split"] == "train", "video_id"])
    assert assignment(real.query("split == 'test'")) == assignment(probe.query("split == 'test'"))


def test_av1m_needs_official_splits() -> None:
    df = av1m_manifest(5, 0).assign(split="unassigned")
    with pytest.raises(ProtocolError):
        split_av1m(df)


def test_favc_keeps_a_and_d_with_63_7_30() -> None:
    df = favc_manifest()
    out = split_favc(df, seed=43)
    assert set(out["category"]) == {"A", "D"} and len(out) == 500
    counts = out.groupby(["label", "split"]).size().to_dict()
    assert counts == {
        (0, "train"): 63,
        (0, "val"): 7,
        (0, "test"): 30,
        (1, "train"): 252,
        (1, "val"): 28,
        (1, "test"): 120,
    }


def test_favc_deterministic_seeded_and_order_free() -> None:
    df = favc_manifest()
    first = assignment(split_favc(df, seed=5))
    assert first == assignment(split_favc(df.iloc[::-1], seed=5))
    assert first != assignment(split_favc(df, seed=6))


def test_favc_needs_category() -> None:
    with pytest.raises(ProtocolError, match="category"):
        split_favc(av1m_manifest(3, 0))
    with pytest.raises(ProtocolError, match="sum to 1"):
        split_favc(favc_manifest(), fractions=(0.5, 0.1, 0.1))


def test_all_test_and_registry() -> None:
    df = favc_manifest()
    assert set(split_all_test(df)["split"]) == {"test"} and len(split_all_test(df)) == len(df)
    for name in ("avlips", "dfe2024"):
        assert set(apply_protocol(name, df)["split"]) == {"test"}
    assert apply_protocol("official", df)["split"].equals(df["split"])
    assert {"av1m", "favc", "avlips", "dfe2024", "official"} <= set(PROTOCOLS)
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
