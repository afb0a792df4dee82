"""Names, part ids, commit records and the reader's index (pure code, no I/O)."""

from __future__ import annotations

import numpy as np
import pytest

from featstore import layout
from featstore.commits import CommitRecord, LayerIndex, LayerRecord, sort_commits
from featstore.errors import CorruptStoreError, StoreError


@pytest.mark.parametrize(
    ("given", "canonical", "array"),
    [
        (0, 0, "layer_00"),
        ("12", 12, "layer_12"),
        ("layer_07", 7, "layer_07"),
        (123, 123, "layer_123"),
        ("last", "last", "layer_last"),
        ("landmarks", "landmarks", "layer_landmarks"),
    ],
)
def test_layer_names(given, canonical, array):
    assert layout.normalize_layer(given) == canonical
    assert layout.layer_array_name(given) == array


@pytest.mark.parametrize("bad", [-1, True, "Last", "", "a/b", 1.5, "x" * 40])
def test_invalid_layers(bad):
    with pytest.raises(StoreError, match="invalid layer"):
        layout.normalize_layer(bad)


def test_layer_order_is_numeric_then_last_then_names():
    layers = ["last", 10, "landmarks", 2, 0]
    assert sorted(layers, key=layout.layer_sort_key) == [0, 2, 10, "last", "landmarks"]


@pytest.mark.parametrize(
    "bad", ["", "_commits", "manifest", "parts", "../x", "a/b", ".hidden", "a b"]
)
def test_invalid_names(bad):
    with pytest.raises(StoreError, match="invalid dataset name"):
        layout.check_name("dataset", bad)


def test_part_ids_sort_by_creation_time():
    ids = [layout.new_part_id() for _ in range(50)]
    assert all(layout.is_part_id(p) for p in ids)
    assert sorted(ids, key=layout.part_created_ns) == sorted(ids)
    assert len(set(ids)) == 50
    assert not layout.is_part_id("zarr.json")


def _record(
    part_id: str, committed_ns: int, videos: dict[str, tuple[int, int]], layers=("0",)
) -> CommitRecord:
    ids = list(videos)
    n = np.array([videos[v][0] for v in ids], dtype=np.int32)
    return CommitRecord(
        part_id=part_id,
        committed_ns=committed_ns,
        dtype="float16",
        layers={k: LayerRecord(dim=8, checksum="crc32c:00000000") for k in layers},
        video_ids=tuple(ids),
        row_start=np.concatenate([[0], np.cumsum(n)[:-1]]).astype(np.int64),
        n_frames=n,
        versions=np.array([videos[v][1] for v in ids], dtype=np.int64),
    )


def test_commit_record_json_round_trip_and_truncation():
    record = _record(
        "0000000000000000001-aaaaaaaaaaaa", 5, {"a": (3, 5), "b": (4, 5)}, layers=("0", "last")
    )
    back = CommitRecord.from_json(record.to_json())
    assert back.video_ids == ("a", "b") and back.rows == 7
    assert back.layer_list() == [0, "last"]
    assert np.array_equal(back.row_start, [0, 3])
    raw = record.to_json()
    for cut in (1, len(raw) // 2, len(raw) - 1):
        with pytest.raises(CorruptStoreError):
            CommitRecord.from_json(raw[:cut])


def test_index_newest_version_wins_and_ties_go_to_the_newer_commit():
    old = _record("p1", 10, {"a": (3, 10), "b": (4, 10)})
    new = _record("p2", 20, {"a": (5, 20)})
    # A compacted copy of b (same version 10), committed later: same data, either may win.
    compacted = _record("p3", 30, {"b": (4, 10)})
    # A compacted copy of an *older* a (version 10) committed after the newer a: must lose.
    stale = _record("p4", 40, {"a": (3, 10)})
    index = LayerIndex(sort_commits([stale, compacted, new, old]), 0)
    assert index.locate("a").part_id == "p2" and index.locate("a").n_frames == 5
    assert index.locate("b").part_id == "p3"
    assert index.locate("c") is None
    assert len(index) == 2 and index.rows() == 9
    assert index.winning_parts() == {"p2", "p3"}
    groups = index.by_part()
    assert [g[0] for g in groups] == ["p2", "p3"]


def test_index_only_sees_commits_holding_the_layer():
    a = _record("p1", 1, {"x": (2, 1)}, layers=("0",))
    b = _record("p2", 2, {"y": (2, 2)}, layers=("last",))
    assert LayerIndex([a, b], "last").video_ids() == ["y"]
    assert LayerIndex([a, b], 0).video_ids() == ["x"]
