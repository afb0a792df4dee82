"""The storage backend: atomic writes, exclusive creation, temporaries, zarr nodes."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest

from featstore import backend as backend_mod
from featstore.backend import SimulatedCrash, inject_crash, layer_metadata, open_backend
from featstore.errors import CorruptStoreError, ReadOnlyStoreError, StoreError
from featstore.shards import ShardBuffer, parse_layout


@pytest.fixture(autouse=True)
def _disarmed():
    inject_crash(None)
    yield
    inject_crash(None)


@pytest.fixture(params=["local", "memory"])
def backend(request, tmp_path):
    if request.param == "local":
        return open_backend(str(tmp_path / "root"), read_only=False)
    return open_backend(f"memory://backend-test-{time.time_ns()}/root", read_only=False)


def test_objects_round_trip_and_listing(backend):
    backend.put("a/b/c.json", b'{"x": 1}')
    backend.put("a/d", b"0123456789")
    assert backend.get("a/b/c.json") == b'{"x": 1}'
    assert backend.get_json("a/b/c.json") == {"x": 1} and backend.get_json("nope") is None
    assert backend.get_range("a/d", 2, 5) == b"234" and backend.size("a/d") == 10
    buffer = bytearray(4)
    backend.readinto("a/d", 6, memoryview(buffer))
    assert bytes(buffer) == b"6789"
    assert backend.list_dir("a") == ["b", "d"] and backend.list_dir("missing") == []
    assert backend.walk_size("a") == (2, 18)
    backend.put("a/d", b"new")  # replaced whole
    assert backend.get("a/d") == b"new"
    backend.delete("a/d")
    backend.delete("a/d")  # a missing object is not an error
    backend.delete_tree("a")
    assert not backend.exists("a/b/c.json")
    with pytest.raises(FileNotFoundError):
        backend.get("a/b/c.json")


def test_create_writes_only_once(backend):
    assert backend.create("g/zarr.json", b"first")
    assert not backend.create("g/zarr.json", b"second")
    assert backend.get("g/zarr.json") == b"first"
    assert backend.write_group("h", {"k": 1}, exclusive=True)
    assert not backend.write_group("h", {"k": 2}, exclusive=True)
    assert backend.get_json("h/zarr.json")["attributes"] == {"k": 1}


def test_torn_json_is_a_typed_error(backend):
    backend.put("x.json", b'{"cut": ')
    with pytest.raises(CorruptStoreError, match="not valid JSON"):
        backend.get_json("x.json")


def test_a_crash_mid_write_leaves_the_old_object_and_a_hidden_temporary(tmp_path):
    backend = open_backend(str(tmp_path / "root"), read_only=False)
    backend.put("enc/zarr.json", b'{"old": true}')
    inject_crash(1)
    with pytest.raises(SimulatedCrash):
        backend.put("enc/zarr.json", b'{"new": true, "padding": "' + b"x" * 100 + b'"}')
    with pytest.raises(SimulatedCrash):  # the process is "gone": nothing more is written
        backend.put("other", b"x")
    inject_crash(None)
    assert backend.get_json("enc/zarr.json") == {"old": True}
    names = os.listdir(tmp_path / "root" / "enc")
    assert len(names) == 2 and any(n.startswith(".zarr.json.tmp-") for n in names)
    assert backend.list_dir("enc") == ["zarr.json"]  # temporaries are hidden
    assert backend.stale_temporaries("enc", older_than_ns=10**12) == []
    (stale,) = backend.stale_temporaries("enc", older_than_ns=0)
    backend.delete(stale)
    assert os.listdir(tmp_path / "root" / "enc") == ["zarr.json"]


def test_crash_counter_and_environment_variable(tmp_path, monkeypatch):
    backend = open_backend(str(tmp_path / "root"), read_only=False)
    backend.put("a", b"1")
    backend.delete("a")
    assert backend_mod.writes_so_far() == 2
    monkeypatch.setenv(backend_mod.CRASH_ENV, "3")
    faults = backend_mod._Faults()
    assert faults.at == 3 and faults.kill


def test_read_only_backend_refuses_writes(tmp_path):
    with pytest.raises(StoreError, match="does not exist"):
        open_backend(str(tmp_path / "nope"), read_only=True)
    (tmp_path / "ro").mkdir()
    backend = open_backend(str(tmp_path / "ro"), read_only=True)
    for write in (
        lambda: backend.put("x", b"1"),
        lambda: backend.create("x", b"1"),
        lambda: backend.delete("x"),
        lambda: backend.delete_tree("x"),
    ):
        with pytest.raises(ReadOnlyStoreError):
            write()


@pytest.mark.parametrize(
    ("n_rows", "dim", "dtype"), [(700, 32, "float16"), (512, 8, "float32"), (1, 3840, "float16")]
)
def test_layer_metadata_is_what_zarr_writes(n_rows, dim, dtype):
    import zarr

    objects: dict = {}
    zarr.create_array(
        zarr.storage.MemoryStore(objects),
        name="a",
        shape=(n_rows, dim),
        dtype=dtype,
        chunks=(512, dim),
        shards=(-(-n_rows // 512) * 512, dim),
        compressors=None,
        filters=None,
        fill_value=0,
    )
    reference = json.loads(objects["a/zarr.json"].to_bytes())
    assert layer_metadata(n_rows, dim, np.dtype(dtype), 512) == reference
    assert parse_layout(reference) is not None


def test_layer_and_columns_read_back_through_zarr(backend):
    rows = np.random.default_rng(0).standard_normal((700, 8)).astype(np.float16)
    buffer = ShardBuffer(capacity_rows=1024, dim=8, dtype=np.float16, chunk_rows=512)
    buffer.rows(0, 700)[...] = rows
    backend.write_layer("p/layer_00", buffer, 700)
    arr = backend.open_array("p/layer_00")
    assert np.array_equal(arr[...], rows)
    assert backend.array_shape("p/layer_00") == ((700, 8), np.dtype("float16"))
    assert backend.array_shape("p/none") is None
    backend.write_column("m/ids", np.array(["a", "bb", ""], dtype=object))
    backend.write_column("m/n", np.array([1, 2, 3], dtype=np.int64))
    ids = backend.read_column("m/ids")
    assert ids.dtype == object and ids.tolist() == ["a", "bb", ""]
    assert backend.read_column("m/n").tolist() == [1, 2, 3]
    with pytest.raises(FileNotFoundError):
        backend.read_column("m/missing")
