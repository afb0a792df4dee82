"""The Zarr feature store: round trips, parts, commits, errors, laziness."""

from __future__ import annotations

import pickle

import dask
import numpy as np
import pandas as pd
import pytest

import featstore.writer as writer_mod
from featstore import layout
from featstore.backend import LocalBackend
from featstore.errors import (
    EncoderMismatchError,
    InvalidFeaturesError,
    ManifestError,
    ReadOnlyStoreError,
    StoreError,
    UnknownDatasetError,
    UnknownEncoderError,
    UnknownLayerError,
    UnknownVideoError,
)
from featstore.maintenance import gc, verify
from featstore.store import EncoderInfo, open_store
from featstore.synthetic import synthetic_video, write_synthetic


def _all_float16_values() -> np.ndarray:
    """Every finite float16 bit pattern (incl. -0.0, subnormals, +-65504)."""
    bits = np.arange(2**16, dtype=np.uint16).view(np.float16)
    return bits[np.isfinite(bits)]


def test_float16_round_trip_is_bit_exact(store, info):
    values = _all_float16_values()  # 63488 values
    rows = values[: (len(values) // 32) * 32].reshape(-1, 32)  # [1984, 32]
    last = values[: (len(values) // 16) * 16].reshape(-1, 16)[: len(rows)]
    with store.writer("ds", info) as w:
        w.add("all-bits", {0: rows, "last": last})
    reader = open_store(store.url)
    got = reader.video("ds", "tiny", "all-bits", 0)
    assert got.dtype == np.float16
    assert np.array_equal(got.view(np.uint16), rows.view(np.uint16))
    assert np.array_equal(
        reader.video("ds", "tiny", "all-bits", "last").view(np.uint16), last.view(np.uint16)
    )
    lazy = reader.features("ds", "tiny", 0).values
    assert np.array_equal(lazy.view(np.uint16), rows.view(np.uint16))


def test_float32_input_is_rounded_to_float16_like_numpy(store, info):
    x = np.random.default_rng(1).standard_normal((10, 32)).astype(np.float32)
    with store.writer("ds", info) as w:
        w.add("v", {0: x, "last": x[:, :16]})
    assert np.array_equal(store.video("ds", "tiny", "v", 0), x.astype(np.float16))


def test_float32_store_keeps_float32(store):
    info = EncoderInfo(name="wide", frame_hz=12.5, layer_dims={"last": 8}, dtype="float32")
    x = np.random.default_rng(2).standard_normal((7, 8)).astype(np.float32)
    with store.writer("ds", info) as w:
        w.add("v", {"last": x})
    got = store.video("ds", "wide", "v", "last")
    assert got.dtype == np.float32 and np.array_equal(got, x)


def test_many_parts_read_back_and_chunk_per_part(store, info):
    lengths = np.random.default_rng(3).integers(1, 700, size=120)
    ids = [f"spk{i % 7}/clip{i:03d}" for i in range(len(lengths))]
    write_synthetic(store, "ds", info, ids, lengths, target_part_bytes=64 * 1024)
    commits = store.commits("ds", "tiny")
    assert len(commits) > 10
    for vid, n in zip(ids, lengths, strict=True):
        for layer, dim in info.layer_dims.items():
            expect = synthetic_video(vid, int(n), dim, layer=layer)
            assert np.array_equal(store.video("ds", "tiny", vid, layer), expect)
    da = store.features("ds", "tiny", 0)
    assert da.shape == (int(lengths.sum()), 32)
    assert len(da.data.chunks[0]) == len(commits)
    assert len(da.data.__dask_graph__()) == len(commits)  # one task per part, none per inner chunk
    scanned = dict(store.iter_videos("ds", "tiny", 0))
    assert scanned.keys() == set(ids)
    assert all(len(scanned[v]) == n for v, n in zip(ids, lengths, strict=True))


def test_parts_are_sized_by_bytes_and_buffer_cap(store):
    wide = EncoderInfo(name="xl", frame_hz=25.0, layer_dims={i: 3840 for i in range(49)})
    writer = store.writer("ds", wide)
    # 128 MiB per layer would be 17476 rows; a 512 MiB buffer across 49 layers allows 1426 -> 1024.
    assert writer.part_rows == 1024
    narrow = EncoderInfo(name="d1024", frame_hz=25.0, layer_dims={"last": 1024})
    assert store.writer("ds", narrow).part_rows == 65536
    small = store.writer("ds", narrow, target_part_bytes=64 * 2**20)
    assert small.part_rows == 32768


def test_a_video_is_never_split_and_long_videos_get_their_own_part(store, info):
    with store.writer("ds", info, target_part_bytes=512 * 64) as w:  # 512 rows of layer 0
        w.add("a", {0: np.ones((300, 32), np.float16), "last": np.ones((300, 16), np.float16)})
        w.add("b", {0: np.ones((300, 32), np.float16), "last": np.ones((300, 16), np.float16)})
        w.add("huge", {0: np.ones((2000, 32), np.float16), "last": np.ones((2000, 16), np.float16)})
    parts = [c.video_ids for c in store.commits("ds", "tiny")]
    assert parts == [("a",), ("b",), ("huge",)]


def test_video_committed_twice_newest_wins(store, info):
    old = {0: np.zeros((5, 32), np.float16), "last": np.zeros((5, 16), np.float16)}
    new = {0: np.ones((8, 32), np.float16), "last": np.ones((8, 16), np.float16)}
    with store.writer("ds", info) as w:
        w.add("v", old)
        w.add("other", old)
    with store.writer("ds", info) as w:
        w.add("v", new)
    reader = open_store(store.url)
    assert np.array_equal(reader.video("ds", "tiny", "v", 0), new[0])
    assert reader.features("ds", "tiny", 0).shape == (13, 32)  # 8 new rows + 5 of "other"
    report = gc(open_store(store.url, mode="a"), older_than_s=0)
    assert report.removed_superseded == ()  # the first part still holds "other"


def test_fully_superseded_part_is_collected(store, info, no_gc_floor):
    for value in (0, 1):
        with store.writer("ds", info) as w:
            w.add(
                "v",
                {
                    0: np.full((5, 32), value, np.float16),
                    "last": np.full((5, 16), value, np.float16),
                },
            )
    report = gc(store, older_than_s=0)
    assert len(report.removed_superseded) == 1
    assert len(store.commits("ds", "tiny")) == 1
    assert store.video("ds", "tiny", "v", 0)[0, 0] == 1


def test_uncommitted_part_is_invisible_and_collected(store, info, monkeypatch, no_gc_floor):
    with store.writer("ds", info) as w:
        w.add("kept", {0: np.ones((4, 32), np.float16), "last": np.ones((4, 16), np.float16)})
    with monkeypatch.context() as patch:
        patch.setattr(writer_mod, "_write_commit", lambda *a, **k: None)
        with store.writer("ds", info) as w:
            w.add("lost", {0: np.ones((4, 32), np.float16), "last": np.ones((4, 16), np.float16)})
    reader = open_store(store.url)
    assert reader.video_ids("ds", "tiny", 0) == ["kept"]
    assert not reader.has("ds", "tiny", "lost")
    with pytest.raises(UnknownVideoError):
        reader.video("ds", "tiny", "lost", 0)
    parts_dir = layout.parts_path("ds", "tiny")
    assert len([p for p in store.objects.list_dir(parts_dir) if layout.is_part_id(p)]) == 2
    recent = gc(store)  # default grace period: a live writer's part is not touched
    assert recent.removed_uncommitted == () and recent.kept_recent == 1
    report = gc(store, older_than_s=0)
    assert len(report.removed_uncommitted) == 1
    assert len([p for p in store.objects.list_dir(parts_dir) if layout.is_part_id(p)]) == 1
    assert verify(store).ok


def test_truncated_commit_record_is_ignored_then_collected(store, info, no_gc_floor):
    with store.writer("ds", info) as w:
        w.add("v", {0: np.ones((4, 32), np.float16), "last": np.ones((4, 16), np.float16)})
    (commit,) = store.commits("ds", "tiny")
    key = layout.commit_key("ds", "tiny", commit.part_id)
    raw = store.objects.get(key)
    store.objects.put(key, raw[: len(raw) // 2])  # a crash while writing the record
    store.refresh()
    assert store.commits("ds", "tiny") == []
    report = gc(store, older_than_s=0)
    assert report.removed_broken_commits and report.removed_uncommitted


def test_has_and_committed_videos_for_resume(store, info):
    with store.writer("ds", info, layers=[0]) as w:
        w.add("a", {0: np.ones((3, 32), np.float16)})
    with store.writer("ds", info) as w:
        w.add("b", {0: np.ones((3, 32), np.float16), "last": np.ones((3, 16), np.float16)})
    assert store.committed_videos("ds", "tiny", [0]) == {"a", "b"}
    assert store.committed_videos("ds", "tiny", [0, "last"]) == {"b"}
    assert store.has("ds", "tiny", "a", [0]) and not store.has("ds", "tiny", "a", [0, "last"])
    assert not store.has("ds", "nope", "a")
    assert store.committed_videos("other", "tiny", [0]) == set()


def test_resume_asks_about_a_layer_nobody_committed_yet(store, info):
    # Regression: extracting a new layer of an existing encoder raised UnknownLayerError.
    with store.writer("ds", info, layers=[0]) as w:
        w.add("a", {0: np.ones((3, 32), np.float16)})
    assert store.committed_videos("ds", "tiny", [0, "last"]) == set()
    assert store.committed_videos("ds", "tiny", ["last"]) == set()
    assert not store.has("ds", "tiny", "a", ["last"])


def test_failures_are_recorded_and_resolved_by_a_later_success(store, info):
    with store.writer("ds", info) as w:
        w.fail("broken.mp4", ValueError("moov atom not found"))
        w.fail("later-ok", RuntimeError("OOM"))
    with store.writer("ds", info) as w:
        w.add("later-ok", {0: np.ones((3, 32), np.float16), "last": np.ones((3, 16), np.float16)})
    failures = store.failures("ds", "tiny").set_index("video_id")
    assert failures.loc["broken.mp4", "error_type"] == "ValueError"
    assert "moov" in failures.loc["broken.mp4", "message"]
    assert not failures.loc["broken.mp4", "resolved"] and failures.loc["later-ok", "resolved"]


def test_writer_commits_buffered_videos_when_the_block_raises(store, info):
    with pytest.raises(KeyboardInterrupt), store.writer("ds", info) as w:
        w.add("done", {0: np.ones((3, 32), np.float16), "last": np.ones((3, 16), np.float16)})
        raise KeyboardInterrupt
    assert store.video_ids("ds", "tiny", 0) == ["done"]


@pytest.mark.parametrize(
    ("features", "message"),
    [
        ({0: np.ones((3, 32), np.int16), "last": np.ones((3, 16), np.float16)}, "floating point"),
        ({0: np.ones((3, 31), np.float16), "last": np.ones((3, 16), np.float16)}, r"\[T, 32\]"),
        ({0: np.ones((32,), np.float16), "last": np.ones((3, 16), np.float16)}, r"\[T, 32\]"),
        ({0: np.ones((0, 32), np.float16), "last": np.ones((0, 16), np.float16)}, "zero frames"),
        (
            {0: np.ones((3, 32), np.float16), "last": np.ones((4, 16), np.float16)},
            "different frame counts",
        ),
        ({0: np.ones((3, 32), np.float16)}, "writer expects"),
        ({0: np.ones((3, 32)), "last": np.ones((3, 16)), 5: np.ones((3, 4))}, "writer expects"),
        ({0: np.full((3, 32), np.nan, np.float32), "last": np.ones((3, 16))}, "NaN or inf"),
        ({0: np.full((3, 32), np.inf, np.float16), "last": np.ones((3, 16))}, "NaN or inf"),
        ({0: np.full((3, 32), 1e6, np.float32), "last": np.ones((3, 16))}, "overflow float16"),
    ],
)
def test_invalid_features_raise_typed_errors(store, info, features, message):
    with store.writer("ds", info) as w, pytest.raises(InvalidFeaturesError, match=message):
        w.add("v", features)
    assert store.commits("ds", "tiny") == []


def test_duplicate_video_in_one_part_and_bad_ids(store, info):
    ok = {0: np.ones((3, 32), np.float16), "last": np.ones((3, 16), np.float16)}
    with store.writer("ds", info) as w:
        w.add("v", ok)
        with pytest.raises(InvalidFeaturesError, match="twice"):
            w.add("v", ok)
        with pytest.raises(InvalidFeaturesError, match="non-empty"):
            w.add("", ok)


def test_unknown_names_raise_typed_errors(store, info):
    with store.writer("ds", info) as w:
        w.add("v", {0: np.ones((3, 32), np.float16), "last": np.ones((3, 16), np.float16)})
    with pytest.raises(UnknownDatasetError, match="datasets: ds"):
        store.video("nope", "tiny", "v", 0)
    with pytest.raises(UnknownEncoderError, match="encoders: tiny"):
        store.video("ds", "nope", "v", 0)
    with pytest.raises(UnknownLayerError, match="layers: 0, last"):
        store.video("ds", "tiny", "v", 3)
    with pytest.raises(UnknownVideoError, match="'w'"):
        store.video("ds", "tiny", "w", 0)
    with pytest.raises(UnknownVideoError):
        list(store.iter_videos("ds", "tiny", 0, ["v", "w"]))
    with pytest.raises(UnknownLayerError):
        store.writer("ds", info, layers=[7])
    with pytest.raises(StoreError, match="invalid dataset name"):
        store.video("../etc", "tiny", "v", 0)
    with pytest.raises(StoreError, match="invalid layer"):
        store.video("ds", "tiny", "v", -1)


def test_encoder_mismatch_is_refused(store, info):
    with store.writer("ds", info) as w:
        w.add("v", {0: np.ones((3, 32), np.float16), "last": np.ones((3, 16), np.float16)})
    other = EncoderInfo(name="tiny", frame_hz=50.0, layer_dims={0: 64})
    with pytest.raises(EncoderMismatchError, match=r"frame_hz.*dim of layer 0"):
        store.writer("ds", other)
    more = EncoderInfo(name="tiny", frame_hz=25.0, layer_dims={5: 32})
    with store.writer("ds", more) as w:  # a new layer of the same encoder is fine
        w.add("v", {5: np.ones((3, 32), np.float16)})
    assert store.layers("ds", "tiny") == [0, 5, "last"]
    assert open_store(store.url).encoder_info("ds", "tiny").layer_dims == {0: 32, "last": 16, 5: 32}


def test_read_only_store_refuses_writes(store, info, tmp_path):
    reader = open_store(store.url, mode="r")
    with pytest.raises(ReadOnlyStoreError):
        reader.writer("ds", info)
    with pytest.raises(ReadOnlyStoreError):
        reader.write_manifest("ds", pd.DataFrame({"video_id": ["a"]}))
    with pytest.raises(StoreError, match="no feature store"):
        open_store(tmp_path / "missing.zarr")
    (tmp_path / "plain").mkdir()
    with pytest.raises(StoreError, match=r"zarr\.json missing"):
        open_store(tmp_path / "plain")


def test_features_stay_lazy_until_asked(store, info):
    lengths = [40, 70, 90, 30, 55]
    ids = [f"v{i}" for i in range(5)]
    write_synthetic(store, "ds", info, ids, lengths, target_part_bytes=100 * 64)
    calls = []

    def counting_scheduler(dsk, keys, **kwargs):
        calls.append(keys)
        return dask.get(dsk, keys, **kwargs)

    with dask.config.set(scheduler=counting_scheduler):
        da = open_store(store.url).features("ds", "tiny", 0)
        sliced = da.isel(frame=slice(10, 200))
        pooled = da.groupby("video").mean()
        normed = da / np.sqrt((da.astype("float32") ** 2).sum("dim"))
        assert calls == []
        assert pooled.sel(video="v2").compute().shape == (32,)
        assert len(calls) == 1
        assert sliced.values.shape == (190, 32) and normed.shape == da.shape
        assert len(calls) == 2
    expect = np.concatenate([synthetic_video(v, n, 32) for v, n in zip(ids, lengths, strict=True)])
    assert np.array_equal(da.values, expect)
    first = da.where(da.video == "v1", drop=True)
    assert first.sizes["frame"] == 70
    assert np.allclose(first.time_s.values, np.arange(70) / 25.0)
    assert da.frame_index.values[40] == 0 and da.video.values[40] == "v1"


def test_features_of_an_empty_index_and_pickling(store, info):
    with store.writer("ds", info) as w:
        w.add("v", {0: np.ones((3, 32), np.float16), "last": np.ones((3, 16), np.float16)})
    clone = pickle.loads(pickle.dumps(store))
    assert np.array_equal(clone.video("ds", "tiny", "v", 0), store.video("ds", "tiny", "v", 0))
    assert clone.mode == "a"


def test_manifest_round_trip_keeps_types(store):
    table = pd.DataFrame(
        {
            "video_id": ["a/1", "b/2", "c/3"],
            "path": ["a/1.mp4", "b/2.mp4", "c/3.mp4"],
            "label": [0, 1, 1],
            "split": ["train", "test", "test"],
            "duration_s": [3.5, float("nan"), 4.0],
            "audio_fake": [False, True, False],
            "visual_fake": pd.array([False, None, True], dtype="boolean"),
            "fake_segments": [[], [[0.5, 1.25]], [[0.0, 0.4], [2.0, 3.0]]],
            "clicks": [{"12": {"x": 0.5, "y": 1.01}}, {}, None],
        }
    )
    store.write_manifest("ds", table, attrs={"format": "av1m", "root": "/data"})
    got = open_store(store.url).manifest("ds")
    assert list(got.columns) == list(table.columns)
    assert got["label"].dtype == np.int64 and got["audio_fake"].dtype == bool
    assert got["video_id"].tolist() == ["a/1", "b/2", "c/3"]
    assert np.isnan(got["duration_s"][1])
    assert got["fake_segments"].tolist() == [[], [[0.5, 1.25]], [[0.0, 0.4], [2.0, 3.0]]]
    assert got["visual_fake"].tolist() == [False, None, True]
    assert got["clicks"][0] == {"12": {"x": 0.5, "y": 1.01}} and got["clicks"][2] is None
    assert got.attrs["format"] == "av1m"
    # Rewriting replaces the whole manifest, stale columns included.
    store.write_manifest("ds", table[["video_id", "label"]].iloc[:2])
    again = store.manifest("ds")
    assert list(again.columns) == ["video_id", "label"] and len(again) == 2
    # The columns live under the version the pointer names; the replaced one is gone.
    pointer = store.backend.get_json(f"{layout.manifest_path('ds')}/zarr.json")
    version = pointer["attributes"]["featstore"]["version"]
    assert store.backend.list_dir(layout.manifest_path("ds")) == sorted([version, "zarr.json"])
    assert store.backend.list_dir(layout.manifest_version_path("ds", version)) == [
        "label",
        "video_id",
        "zarr.json",
    ]


def test_manifest_errors(store):
    with pytest.raises(ManifestError, match="video_id"):
        store.write_manifest("ds", pd.DataFrame({"path": ["x"]}))
    with pytest.raises(ManifestError, match="duplicate"):
        store.write_manifest("ds", pd.DataFrame({"video_id": ["x", "x"]}))
    with pytest.raises(ManifestError, match="non-empty"):
        store.write_manifest("ds", pd.DataFrame({"video_id": ["x", None]}))
    with pytest.raises(ManifestError, match="column name"):
        store.write_manifest("ds", pd.DataFrame({"video_id": ["x"], "a/b": [1]}))
    store.write_manifest("only", pd.DataFrame({"video_id": ["x"]}))
    info = EncoderInfo(name="e", frame_hz=25.0, layer_dims={"last": 4})
    with store.writer("nomanifest", info) as w:
        w.add("x", {"last": np.ones((2, 4), np.float16)})
    with pytest.raises(ManifestError, match="has no manifest"):
        store.manifest("nomanifest")
    assert store.datasets() == ["nomanifest", "only"]


def test_fsspec_memory_store_round_trip(info):
    url = "memory://featstore-test/features.zarr"
    writer = open_store(url, mode="a")
    write_synthetic(writer, "ds", info, ["a", "b", "c"], [5, 600, 7], target_part_bytes=512 * 64)
    reader = open_store(url, mode="r")
    assert reader.datasets() == ["ds"] and reader.encoders("ds") == ["tiny"]
    for vid, n in (("a", 5), ("b", 600), ("c", 7)):
        assert np.array_equal(reader.video("ds", "tiny", vid, 0), synthetic_video(vid, n, 32))
    assert reader.features("ds", "tiny", "last").shape == (612, 16)
    assert verify(reader).ok
    writer.write_manifest("ds", pd.DataFrame({"video_id": ["a", "b", "c"], "label": [0, 1, 0]}))
    assert reader.manifest("ds")["label"].tolist() == [0, 1, 0]


def test_parts_are_plain_zarr_v3_readable_without_featstore(store, info):
    import zarr

    lengths = [700, 3, 1100]  # partial last inner chunk, several chunks
    write_synthetic(store, "ds", info, ["a", "b", "c"], lengths)
    (commit,) = store.commits("ds", "tiny")
    group = zarr.open_group(store.url, path=f"ds/tiny/parts/{commit.part_id}", mode="r")
    meta = group.attrs["featstore"]
    assert meta["video_id"] == ["a", "b", "c"] and meta["n_frames"] == lengths
    layer = zarr.open_array(store.url, path=f"ds/tiny/parts/{commit.part_id}/layer_00", mode="r")
    assert layer.shape == (sum(lengths), 32) and layer.dtype == np.float16
    expect = np.concatenate(
        [synthetic_video(v, n, 32) for v, n in zip("abc", lengths, strict=True)]
    )
    assert np.array_equal(layer[...], expect)
    assert np.array_equal(layer[690:710], expect[690:710])


def test_arrays_in_another_layout_are_read_through_zarr(store, info, monkeypatch):
    import zarr

    def compressed_layer(self, path, buffer, n_rows):
        rows = buffer.rows(0, n_rows)
        arr = zarr.create_array(
            zarr.storage.LocalStore(self.root),
            name=path,
            shape=rows.shape,
            dtype=rows.dtype,
            chunks=(256, rows.shape[1]),
            compressors=zarr.codecs.ZstdCodec(level=1),
        )
        arr[...] = rows
        return buffer.checksum(n_rows)

    monkeypatch.setattr(LocalBackend, "write_layer", compressed_layer)
    write_synthetic(store, "ds", info, ["a", "b"], [300, 400])
    monkeypatch.undo()
    reader = open_store(store.url)
    assert np.array_equal(reader.video("ds", "tiny", "b", 0), synthetic_video("b", 400, 32))
    assert verify(reader).ok


def test_features_can_be_asked_twice(store, info):
    """Regression: the first call used to consume the index's set of dims."""
    write_synthetic(store, "ds", info, ["a"], [5])
    assert store.features("ds", "tiny", 0).shape == (5, 32)
    assert store.features("ds", "tiny", 0).shape == (5, 32)
