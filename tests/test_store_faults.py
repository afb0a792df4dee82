"""Fault injection for the store: crashed writers, torn metadata, gc racing writers.

Crashes are injected at every object write of a scenario (``backend.inject_crash``:
in-process, half of the object written, then nothing more) and, in separate
processes, by SIGKILL (``FEATSTORE_CRASH_AT_WRITE``). After each, every reader
call must work, every committed video's rows must equal a clean run's
(recomputed with ``synthetic_video``), a new writer must resume, and
``verify`` must pass after ``gc``. Regression tests are named after the bugs
of issue 13 (items 3 and 4) they pin.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import featstore.writer as writer_mod
from featstore import layout
from featstore.backend import CRASH_ENV, SimulatedCrash, inject_crash, writes_so_far
from featstore.cli.main import app
from featstore.errors import ManifestError, StoreError
from featstore.maintenance import gc, summarize, verify
from featstore.store import EncoderInfo, open_store
from featstore.synthetic import synthetic_video

sys.path.insert(0, str(Path(__file__).parent))
from store_fault_worker import DIMS, video_ids, video_length
from store_fault_worker import main as worker_main

WORKER = str(Path(__file__).parent / "store_fault_worker.py")
INFO = EncoderInfo(name="tiny", frame_hz=25.0, layer_dims={0: 32, "last": 16})
INFO3 = EncoderInfo(name="tiny", frame_hz=25.0, layer_dims={3: 8})
IDS = [f"v{i}" for i in range(4)]
LENGTHS = {vid: 60 + 97 * i for i, vid in enumerate(IDS)}  # 60..351 rows: two 512-row parts
MANIFEST = pd.DataFrame(
    {"video_id": IDS, "fake_segments": [[], [[0.5, 1.0]], [[0.0, 0.2], [1.0, 1.5]], []]}
)
runner = CliRunner()


@pytest.fixture(autouse=True)
def _disarmed():
    inject_crash(None)
    yield
    inject_crash(None)


def _rows(vid: str, layers=(0, "last")) -> dict:
    dims = {0: 32, "last": 16, 3: 8}
    return {x: synthetic_video(vid, LENGTHS[vid], dims[x], layer=x) for x in layers}


def _scenario(url: str, *, skip: frozenset[str] = frozenset()) -> None:
    """A writer of 2 layers over two parts with a failure, a second writer adding a
    layer (older code rewrote the encoder's attributes for it), then the manifest.
    ``skip``: videos already committed (a resumed run)."""
    store = open_store(url, mode="a", durable=False)
    with store.writer("ds", INFO, target_part_bytes=512 * 64) as w:
        for vid in IDS:
            if vid not in skip:
                w.add(vid, _rows(vid))
        w.fail("bad.mp4", ValueError("moov atom not found"))
    with store.writer("ds", INFO3) as w:
        for vid in IDS[:3]:
            w.add(vid, _rows(vid, layers=(3,)))
    store.write_manifest("ds", MANIFEST)


def _same_table(got: pd.DataFrame, expected: pd.DataFrame) -> bool:
    """Same columns and cells (NaN equal to NaN, lists compared as lists)."""

    def cells(frame: pd.DataFrame, col: str) -> str:
        return json.dumps([v.item() if hasattr(v, "item") else v for v in frame[col]])

    return list(got.columns) == list(expected.columns) and all(
        cells(got, c) == cells(expected, c) for c in expected.columns
    )


def _check_readers(url: str) -> set[str]:
    """Every reader call works on the store as the crash left it, and every committed
    row equals the clean run's. Returns the videos committed for layers 0 and last."""
    if not os.path.exists(os.path.join(url, "zarr.json")):
        with pytest.raises(StoreError, match="no feature store"):
            open_store(url)  # killed before the root was created: not a store yet
        return set()
    store = open_store(url)
    if not store.datasets():
        return set()
    summary = summarize(store)
    assert [d.name for d in summary.datasets] == ["ds"]
    report = verify(store)
    assert report.ok, report.problems
    try:
        manifest = store.manifest("ds")
    except ManifestError:
        manifest = None
    if manifest is not None:  # all of it, never a part
        assert _same_table(manifest, MANIFEST), manifest
    if "tiny" not in store.encoders("ds"):
        return set()
    store.failures("ds", "tiny")
    committed = store.committed_videos("ds", "tiny", [0, "last"])
    for x in store.layers("ds", "tiny"):
        for vid in store.video_ids("ds", "tiny", x):
            assert store.has("ds", "tiny", vid, [x])
            assert np.array_equal(store.video("ds", "tiny", vid, x), _rows(vid, (x,))[x]), vid
        assert store.features("ds", "tiny", x).shape[0] == sum(
            LENGTHS[v] for v in store.video_ids("ds", "tiny", x)
        )
    for vid in set(IDS) - committed:
        assert not store.has("ds", "tiny", vid, [0, "last"])
    return committed


def _check_resumed(url: str) -> None:
    """The scenario, run again, skips what is committed and completes the store."""
    skip = frozenset(_check_readers(url))
    _scenario(url, skip=skip)
    store = open_store(url)
    assert sorted(store.video_ids("ds", "tiny", 0)) == IDS
    for vid in IDS:
        assert np.array_equal(store.video("ds", "tiny", vid, "last"), _rows(vid)["last"])
    assert _same_table(store.manifest("ds"), MANIFEST)
    assert store.encoder_info("ds", "tiny").layer_dims == {0: 32, "last": 16, 3: 8}


def test_a_crash_at_any_object_write_leaves_a_readable_resumable_store(tmp_path, monkeypatch):
    clean = str(tmp_path / "clean.zarr")
    inject_crash(None)
    _scenario(clean)
    n_writes = writes_so_far()
    assert n_writes > 20
    monkeypatch.setenv(layout.GC_FLOOR_ENV, "0")
    for at in range(1, n_writes + 1):
        url = str(tmp_path / f"crash{at}.zarr")
        inject_crash(at)
        with pytest.raises(SimulatedCrash):
            _scenario(url)
        inject_crash(None)
        _check_resumed(url)  # checks the readers first
        gc(open_store(url, mode="a"), older_than_s=0)
        assert verify(open_store(url)).ok, at
        leftovers = [n for _, _, files in os.walk(url) for n in files if ".tmp-" in n]
        assert not leftovers, (at, leftovers)  # gc swept what the crash left


# ------------------------------------------------------------ torn metadata (issue 13.3)


def _small_store(url: str, ids=("a", "b", "c")) -> None:
    store = open_store(url, mode="a")
    for vid in ids:
        LENGTHS.setdefault(vid, 40 + len(vid))
    with store.writer("ds", INFO) as w:
        for vid in ids:
            w.add(vid, _rows(vid))
        w.fail("bad.mp4", ValueError("moov atom not found"))
    store.write_manifest("ds", pd.DataFrame({"video_id": list(ids)}))


def _tear(path: str) -> None:
    """Cut a file in half, as the older code's in-place writes did when killed."""
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 2])


def _cli_ok(*args: str) -> str:
    result = runner.invoke(app, ["store", *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_bug_torn_encoder_group_made_the_encoder_unreadable(tmp_path, caplog):
    url = str(tmp_path / "f.zarr")
    _small_store(url)
    _tear(os.path.join(url, "ds", "tiny", "zarr.json"))
    reader = open_store(url)
    assert reader.video_ids("ds", "tiny", 0) == ["a", "b", "c"]  # described by its commits
    assert np.array_equal(reader.video("ds", "tiny", "b", "last"), _rows("b")["last"])
    assert reader.encoder_info("ds", "tiny").layer_dims == {0: 32, "last": 16}
    assert "tiny" in _cli_ok("info", url) and "a\t" in _cli_ok("ls", url, "ds", "tiny")
    report = verify(reader)
    assert not report.ok and "encoder attributes" in report.problems[0]
    # The next writer repairs it (from the commits) and resumes.
    store = open_store(url, mode="a")
    assert store.committed_videos("ds", "tiny", [0, "last"]) == {"a", "b", "c"}
    LENGTHS["d"] = 30
    with store.writer("ds", INFO) as w:
        w.add("d", _rows("d"))
    assert verify(open_store(url)).ok
    assert open_store(url).video_ids("ds", "tiny", 0) == ["a", "b", "c", "d"]


def test_bug_torn_failure_record_broke_store_info(tmp_path, caplog, monkeypatch):
    url = str(tmp_path / "f.zarr")
    _small_store(url)
    (name,) = os.listdir(os.path.join(url, "ds", "tiny", "_failures"))
    _tear(os.path.join(url, "ds", "tiny", "_failures", name))
    reader = open_store(url)
    with caplog.at_level("WARNING"):
        assert reader.failures("ds", "tiny").empty
    assert "unreadable failure record" in caplog.text
    assert "ds" in _cli_ok("info", url)
    result = runner.invoke(app, ["store", "verify", url])
    assert result.exit_code == 1 and "unreadable failure record" in result.output
    monkeypatch.setenv(layout.GC_FLOOR_ENV, "0")
    assert len(gc(open_store(url, mode="a"), older_than_s=0).removed_broken_failures) == 1
    _cli_ok("verify", url)


def test_bug_torn_root_group_made_the_store_unopenable(tmp_path, caplog):
    url = str(tmp_path / "f.zarr")
    _small_store(url)
    _tear(os.path.join(url, "zarr.json"))
    with caplog.at_level("WARNING"):
        assert open_store(url).video_ids("ds", "tiny", 0) == ["a", "b", "c"]
    assert "not valid JSON" in caplog.text
    assert not verify(open_store(url)).ok
    open_store(url, mode="a")  # a writer repairs it
    assert verify(open_store(url)).ok


def test_bug_killed_manifest_write_left_a_mix_of_columns(tmp_path, monkeypatch):
    """An old store's unversioned manifest, rewritten with a crash at every write:
    the old manifest or the new one is read, never a mix."""
    legacy = Path(__file__).parent / "data" / "legacy_store.zarr"
    old = open_store(str(legacy)).manifest("ds")
    new = pd.DataFrame({"video_id": ["a/1", "b/2"], "label": [1, 1], "note": ["x", "y"]})

    at = 1
    while True:
        url = str(tmp_path / f"m{at}.zarr")
        shutil.copytree(legacy, url)
        inject_crash(at)
        try:
            open_store(url, mode="a", durable=False).write_manifest("ds", new)
            finished = True
        except SimulatedCrash:
            finished = False
        inject_crash(None)
        got = open_store(url).manifest("ds")
        assert _same_table(got, old) or _same_table(got, new), at
        assert verify(open_store(url), checksums=False).ok
        open_store(url, mode="a", durable=False).write_manifest(
            "ds", new
        )  # a new import completes it
        assert _same_table(open_store(url).manifest("ds"), new)
        # A crashed write's version is left for gc (it could be another writer's, in
        # flight); past the floor, only the pointer and the version it names are left.
        with monkeypatch.context() as patch:
            patch.setenv(layout.GC_FLOOR_ENV, "0")
            gc(open_store(url, mode="a"), older_than_s=0)
        pointer = open_store(url).backend.get_json("ds/manifest/zarr.json")
        version = pointer["attributes"]["featstore"]["version"]
        names = open_store(url).backend.list_dir("ds/manifest")
        assert names == sorted(["zarr.json", version]), names
        if finished:
            break
        at += 1
    assert at > 5


# ---------------------------------------------------------------- gc racing writers (13.4)


def _pending_part(store, monkeypatch, vid: str) -> list:
    """Write a part whose commit record is held back (a writer at work): returns the
    arguments of the held ``_write_commit`` call."""
    held: list = []
    LENGTHS.setdefault(vid, 33)
    with monkeypatch.context() as patch:
        patch.setattr(writer_mod, "_write_commit", lambda *args: held.append(args))
        with store.writer("ds", INFO) as w:
            w.add(vid, _rows(vid))
    assert len(held) == 1
    return held


def test_bug_gc_read_commits_before_listing_parts_and_deleted_a_committed_part(
    tmp_path, monkeypatch
):
    monkeypatch.setenv(layout.GC_FLOOR_ENV, "0")
    url = str(tmp_path / "f.zarr")
    store = open_store(url, mode="a")
    held = _pending_part(store, monkeypatch, "late")
    backend_type = type(store.backend)
    real_list = backend_type.list_dir

    def list_dir(self, prefix):
        names = real_list(self, prefix)
        if prefix == layout.parts_path("ds", "tiny") and held:
            writer_mod._write_commit(*held.pop())  # the commit lands just after the listing
        return names

    with monkeypatch.context() as patch:
        patch.setattr(backend_type, "list_dir", list_dir)
        report = gc(store, older_than_s=0)
    assert report.removed_uncommitted == () and not held
    reader = open_store(url)
    assert np.array_equal(reader.video("ds", "tiny", "late", 0), _rows("late")[0])
    assert verify(reader).ok


def test_gc_floor_keeps_young_parts_even_with_older_than_0(tmp_path, monkeypatch):
    monkeypatch.delenv(layout.GC_FLOOR_ENV, raising=False)
    assert layout.gc_floor_s() == layout.GC_FLOOR_S == 600
    store = open_store(tmp_path / "f.zarr", mode="a")
    _pending_part(store, monkeypatch, "at-work")
    for _ in range(2):  # a superseded part, young too
        with store.writer("ds", INFO) as w:
            w.add("twice", {0: np.ones((3, 32), np.float16), "last": np.ones((3, 16), np.float16)})
    report = gc(store, older_than_s=0)
    assert report.removed_uncommitted == () and report.removed_superseded == ()
    assert report.kept_recent == 1
    parts = store.backend.list_dir(layout.parts_path("ds", "tiny"))
    assert len([p for p in parts if layout.is_part_id(p)]) == 3


def test_writer_writes_again_a_part_gc_removed_before_its_commit_landed(tmp_path, monkeypatch):
    """A writer stalled past the floor: gc took its part; the commit that lands after
    must not point at nothing."""
    monkeypatch.setenv(layout.GC_FLOOR_ENV, "0")
    url = str(tmp_path / "f.zarr")
    store = open_store(url, mode="a")
    real_commit = writer_mod._write_commit
    first: list[str] = []

    def commit(backend, dataset, encoder, record):
        if not first:
            first.append(record.part_id)
            assert gc(open_store(url, mode="a"), older_than_s=0).removed_uncommitted
        real_commit(backend, dataset, encoder, record)

    LENGTHS["slow"] = 70
    with monkeypatch.context() as patch:
        patch.setattr(writer_mod, "_write_commit", commit)
        with store.writer("ds", INFO) as w:
            w.add("slow", _rows("slow"))
    reader = open_store(url)
    (record,) = reader.commits("ds", "tiny")
    assert record.part_id != first[0]
    assert np.array_equal(reader.video("ds", "tiny", "slow", "last"), _rows("slow")["last"])
    assert verify(reader).ok


def test_gc_withdraws_a_commit_that_lands_while_it_removes_the_part(tmp_path, monkeypatch):
    monkeypatch.setenv(layout.GC_FLOOR_ENV, "0")
    url = str(tmp_path / "f.zarr")
    store = open_store(url, mode="a")
    held = _pending_part(store, monkeypatch, "gone")
    backend_type = type(store.backend)
    real_delete_tree = backend_type.delete_tree

    def delete_tree(self, prefix):
        real_delete_tree(self, prefix)
        if held:
            writer_mod._write_commit(*held.pop())  # landed while gc deleted the data

    with monkeypatch.context() as patch:
        patch.setattr(backend_type, "delete_tree", delete_tree)
        report = gc(store, older_than_s=0)
    (pid,) = [p.rsplit("/", 1)[1] for p in report.removed_uncommitted]
    assert report.withdrawn_commits == (f"ds/tiny/{pid}",)
    reader = open_store(url)
    assert not reader.has("ds", "tiny", "gone")  # so a resumed extraction writes it again
    assert verify(reader).ok


# ------------------------------------------------------------------- processes


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (CRASH_ENV, layout.GC_FLOOR_ENV)}
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def _spawn(url: str, worker: int, n_videos: int, layers: str = "0,last", **env: str):
    return subprocess.Popen(
        [sys.executable, WORKER, url, str(worker), str(n_videos), layers],
        env=_env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _assert_rows_of_a_clean_run(store, ids, layers=(0, "last")) -> None:
    for vid in ids:
        n = video_length(vid)
        for x in layers:
            expected = synthetic_video(vid, n, DIMS[x], layer=x)
            assert np.array_equal(store.video("ds", "tiny", vid, x), expected), (vid, x)


def test_bug_gc_older_than_0_during_writes_lost_committed_videos(tmp_path, monkeypatch):
    """Issue 13.4 as reported: concurrent writer processes and ``gc --older-than 0``
    in a loop lost committed videos (the old code failed this in every run)."""
    monkeypatch.delenv(layout.GC_FLOOR_ENV, raising=False)
    url = str(tmp_path / "features.zarr")
    n_workers, n_videos = 3, 30
    procs = [_spawn(url, w, n_videos) for w in range(n_workers)]
    rounds = 0
    deadline = time.monotonic() + 120
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
        if os.path.exists(os.path.join(url, "zarr.json")):
            gc(open_store(url, mode="a"), older_than_s=0)
            rounds += 1
        else:
            time.sleep(0.01)
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0 and "done" in out, err
    assert rounds > 0
    reader = open_store(url)
    expected = [v for w in range(n_workers) for v in video_ids(w, n_videos)]
    assert sorted(reader.committed_videos("ds", "tiny", [0, "last"])) == sorted(expected)
    _assert_rows_of_a_clean_run(reader, expected)
    gc(open_store(url, mode="a"), older_than_s=0)
    assert verify(open_store(url)).ok


def test_bug_concurrent_writers_crashed_reading_an_encoder_group_being_written(tmp_path):
    """Three processes create one store, dataset and encoder at once, each with layers
    of its own: no crash, and no layer lost (each used to rewrite the encoder's
    attributes in place; with 4 writers, 3 of 120 processes crashed)."""
    url = str(tmp_path / "features.zarr")
    layers = ["0,last", "3", "5"]
    procs = [_spawn(url, w, 4, layers[w]) for w in range(3)]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0 and "done" in out, err
    store = open_store(url)
    assert store.layers("ds", "tiny") == [0, 3, 5, "last"]
    assert store.encoder_info("ds", "tiny").layer_dims == {0: 32, "last": 16, 3: 8, 5: 24}
    _assert_rows_of_a_clean_run(store, video_ids(0, 4))
    _assert_rows_of_a_clean_run(store, video_ids(1, 4), layers=(3,))
    _assert_rows_of_a_clean_run(store, video_ids(2, 4), layers=(5,))
    assert verify(store).ok


def test_sigkilled_writers_at_many_write_offsets_leave_a_working_store(tmp_path, monkeypatch):
    n_videos = 8
    clean = str(tmp_path / "clean.zarr")
    inject_crash(None)
    worker_main([clean, "0", str(n_videos)])
    n_writes = writes_so_far()
    # The encoder group's creation (the reported crash), the first commit, and the
    # failure record written last (the in-process test covers every write).
    offsets = sorted({4, 10, n_writes})
    urls = {at: str(tmp_path / f"kill{at}.zarr") for at in offsets}
    procs = {at: _spawn(urls[at], 0, n_videos, **{CRASH_ENV: str(at)}) for at in offsets}
    monkeypatch.setenv(layout.GC_FLOOR_ENV, "0")
    ids = video_ids(0, n_videos)
    info = EncoderInfo(name="tiny", frame_hz=25.0, layer_dims={0: 32, "last": 16})
    for at, proc in procs.items():
        proc.communicate(timeout=120)
        assert proc.returncode == -9, (at, proc.returncode)
        url = urls[at]
        assert "ds" in _cli_ok("info", url) and "ds" in _cli_ok("ls", url)
        _cli_ok("verify", url)
        if at > 4:  # killed once the encoder's group exists
            assert "tiny" in _cli_ok("ls", url, "ds")
        store = open_store(url, mode="a")
        done = store.committed_videos("ds", "tiny", [0, "last"])
        _assert_rows_of_a_clean_run(store, sorted(done))
        assert all(store.has("ds", "tiny", v) == (v in done) for v in ids)
        with store.writer("ds", info) as w:  # a new writer resumes
            for vid in ids:
                if vid not in done:
                    n = video_length(vid)
                    w.add(vid, {x: synthetic_video(vid, n, DIMS[x], layer=x) for x in (0, "last")})
        gc(open_store(url, mode="a"), older_than_s=0)
        reader = open_store(url)
        assert sorted(reader.video_ids("ds", "tiny", 0)) == ids
        _assert_rows_of_a_clean_run(reader, ids)
        assert verify(reader).ok, (at, verify(reader).problems)
