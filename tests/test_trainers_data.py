"""Selections, feature keys, the evaluation filter and the store-backed VideoSource."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from featstore.errors import UnknownEncoderError, UnknownLayerError
from featstore.trainers.data import (
    FeatureKey,
    Selection,
    SelectionError,
    evaluation_mask,
    select,
    split_hash,
)
from featstore.trainers.evaluation_filter import FilterError
from featstore.trainers.inputs import FEATURES, FeatureInput, InputSource

from trainer_fixtures import write_planted_dataset  # isort: skip


@pytest.fixture
def planted(store):
    data = write_planted_dataset(
        store,
        "toy",
        n_videos=20,
        dim=8,
        encoder="enc",
        seed=1,
        single_modality_fakes=0.5,
        missing=("toy/test/v0019",),
    )
    return store, data


# ------------------------------------------------------------------ parsing


@pytest.mark.parametrize(
    ("text", "default", "expected"),
    [
        ("av1m:test", None, Selection("av1m", "test")),
        ("av1m", "train", Selection("av1m", "train")),
        ("av1m", None, Selection("av1m", None)),
        ("av1m:*", "train", Selection("av1m", None)),
        (" favc : val ", None, Selection("favc", "val")),
        ("av1m@av1m-real:train", None, Selection("av1m", "train", view="av1m-real")),
        ("av1m@av1m-real", "test", Selection("av1m", "test", view="av1m-real")),
        ("av1m@official:*", "test", Selection("av1m", None, view="official")),
    ],
)
def test_selection_parse(text, default, expected):
    assert Selection.parse(text, default_split=default) == expected


@pytest.mark.parametrize(
    "text", ["", ":test", "av1m:", "a:b:c", "av1m@:test", "@v:test", "a@b@c:test", "a:b@c"]
)
def test_selection_parse_rejects(text):
    with pytest.raises(SelectionError, match="NAME:SPLIT or NAME@VIEW:SPLIT"):
        Selection.parse(text)


def test_selection_text_and_slug():
    assert str(Selection("av1m", "test")) == "av1m:test"
    assert Selection("av1m", None).slug == "av1m_all"
    assert Selection.parse(str(Selection("av1m", None))) == Selection("av1m", None)
    viewed = Selection("av1m", "train", view="av1m-real")
    assert str(viewed) == "av1m@av1m-real:train" and viewed.slug == "av1m@av1m-real_train"
    assert Selection.parse(str(viewed)) == viewed


def test_feature_key_parse():
    assert FeatureKey.parse("wav2vec2") == FeatureKey("wav2vec2", "last")
    assert FeatureKey.parse("avhubert-a:12") == FeatureKey("avhubert-a", 12)
    assert FeatureKey.parse("clip:3", layer="last").layer == "last"
    assert str(FeatureKey("clip", 7)) == "clip:7" and FeatureKey("clip", 7).slug == "clip-7"
    with pytest.raises(SelectionError, match="ENCODER:LAYER"):
        FeatureKey.parse("clip:")
    with pytest.raises(SelectionError, match="invalid layer"):
        FeatureKey.parse("clip:-1")


def test_split_hash_is_order_independent():
    assert split_hash(["b", "a", "c"]) == split_hash(["c", "b", "a"])
    assert split_hash(["a", "b"]) != split_hash(["a", "c"])
    assert len(split_hash(["a"])) == 16


# ------------------------------------------------------------------ select


def test_select_split_and_features(planted):
    store, data = planted
    rows = select(store, "toy:train", "enc")
    expected = data.manifest[data.manifest["split"] == "train"]["video_id"].tolist()
    assert rows["video_id"].tolist() == expected
    assert rows.attrs["selection"] == "toy:train"
    assert list(rows.index) == list(range(len(rows)))


def test_select_missing_features_error_and_allow(planted, caplog):
    store, _ = planted
    with pytest.raises(SelectionError, match=r"1 of 6 videos of toy:test have no enc:last.*v0019"):
        select(store, "toy:test", "enc")
    rows = select(store, "toy:test", "enc", allow_missing=True)
    assert "toy/test/v0019" not in set(rows["video_id"]) and len(rows) == 5
    assert "skipping" in caplog.text


def test_select_evaluation_filter_and_real_only(planted):
    store, data = planted
    m = data.manifest[data.manifest["split"] == "train"]
    rows = select(store, "toy:train", "enc", fakes="paper")
    kept = m[(m["label"] == 0) | (m["modify_type"] == "both_modified")]["video_id"].tolist()
    assert rows["video_id"].tolist() == kept
    assert (m["modify_type"] == "audio_modified").any()  # the filter had something to drop
    real = select(store, "toy:train", "enc", real_only=True)
    assert (real["label"] == 0).all() and len(real) == int((m["label"] == 0).sum())


def test_select_errors_are_clear(planted):
    store, _ = planted
    with pytest.raises(SelectionError, match=r"no split 'dev' \(splits: test, train, val\)"):
        select(store, "toy:dev", "enc")
    with pytest.raises(UnknownEncoderError, match="no encoder 'nope'"):
        select(store, "toy:train", "nope")
    with pytest.raises(UnknownLayerError, match="layer 3"):
        select(store, "toy:train", "enc:3")


def test_evaluation_mask_policies():
    frame = pd.DataFrame(
        {
            "label": [0, 1, 1, 1],
            "modify_type": ["real", "both_modified", "audio_modified", "unknown"],
        }
    )
    assert evaluation_mask(frame, {}).tolist() == [True, True, False, True]
    assert evaluation_mask(frame, {"evaluation": "all"}).all()
    assert evaluation_mask(frame.drop(columns="modify_type"), {}).all()
    with pytest.raises(FilterError, match="evaluation"):
        evaluation_mask(frame, {"evaluation": "sometimes"})


def test_store_source(planted):
    store, _ = planted
    rows = select(store, "toy:train", "enc")
    src = InputSource(
        store, "toy", FeatureInput.of_store(store, "toy", FEATURES, [FeatureKey("enc")]), rows
    )
    assert len(src) == len(rows) and src.dim == 8 and src.dtype == np.float16
    assert src.labels.dtype == np.int8 and src.labels.tolist() == rows["label"].tolist()
    assert src.nbytes == int(src.lengths.sum()) * 8 * 2
    got = src.read([3, 0, 3])
    for i, x in zip([3, 0, 3], got, strict=True):
        expected = store.video("toy", "enc", src.video_ids[i], "last")
        assert x.shape == (src.lengths[i], 8)
        np.testing.assert_array_equal(x, expected)
    with pytest.raises(IndexError):
        src.read([len(src)])


def test_select_a_few_videos_whatever_their_split(planted):
    store, _ = planted
    ids = select(store, "toy:*", "enc", allow_missing=True)["video_id"].tolist()
    chosen = [ids[0], ids[-1]]
    rows = select(store, Selection.of_videos("toy", chosen), "enc")
    assert sorted(rows["video_id"]) == sorted(chosen)
    with pytest.raises(SelectionError, match="no video 'ghost' in toy"):
        select(store, Selection.of_videos("toy", [ids[0], "ghost"]), "enc")
    with pytest.raises(SelectionError, match="2 of the requested videos"):
        select(store, Selection.of_videos("toy", ["ghost", "phantom"]), "enc")
    with pytest.raises(SelectionError, match="have no enc:last features"):  # no features
        select(store, Selection.of_videos("toy", ["toy/test/v0019"]), "enc")
