"""Concurrent writers, killed writers, compaction under readers."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from featstore import layout
from featstore.maintenance import compact, gc, verify
from featstore.store import EncoderInfo, open_store
from featstore.synthetic import synthetic_video, write_synthetic

INFO = EncoderInfo(name="tiny", frame_hz=25.0, layer_dims={0: 32, "last": 16})


def _writer_process(url: str, worker: int, n_videos: int) -> None:
    store = open_store(url, mode="a")
    ids = [f"w{worker}/v{i:03d}" for i in range(n_videos)]
    lengths = [17 + (i * 37 + worker * 11) % 300 for i in range(n_videos)]
    # Small parts, so the four writers interleave many commits.
    write_synthetic(store, "ds", INFO, ids, lengths, target_part_bytes=512 * 64)


def test_four_processes_writing_at_once_lose_no_row(tmp_path):
    url = str(tmp_path / "features.zarr")
    open_store(url, mode="a")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer_process, args=(url, w, 60)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    store = open_store(url)
    expected = {}
    for w in range(4):
        for i in range(60):
            expected[f"w{w}/v{i:03d}"] = 17 + (i * 37 + w * 11) % 300
    assert set(store.video_ids("ds", "tiny", 0)) == set(expected)
    for vid, n in expected.items():
        assert np.array_equal(
            store.video("ds", "tiny", vid, "last"), synthetic_video(vid, n, 16, layer="last")
        )
    assert store.features("ds", "tiny", 0).shape[0] == sum(expected.values())
    assert len(store.commits("ds", "tiny")) > 8
    assert verify(store).ok


_KILLED_WRITER = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    import featstore.backend as backend_mod
    import featstore.writer as writer_mod
    from featstore.store import EncoderInfo, open_store
    from featstore.synthetic import synthetic_video

    url, hook, ready = sys.argv[1], sys.argv[2], sys.argv[3]
    info = EncoderInfo(name="tiny", frame_hz=25.0, layer_dims={0: 32, "last": 16})
    store = open_store(url, mode="a")
    parts = []

    def stall():
        open(ready, "w").write("stalled")
        time.sleep(600)

    if hook == "before-commit":
        real_commit = writer_mod._write_commit
        def commit(*args, **kwargs):
            if parts:
                stall()
            parts.append(1)
            real_commit(*args, **kwargs)
        writer_mod._write_commit = commit
    else:  # between two layer arrays of the second part
        real_layer = backend_mod.Backend.write_layer
        calls = []
        def write_layer(self, path, *args, **kwargs):
            calls.append(path)
            if len(calls) == 4:  # part 2's first layer is on disk, its second is not
                stall()
            return real_layer(self, path, *args, **kwargs)
        backend_mod.Backend.write_layer = write_layer

    with store.writer("ds", info, target_part_bytes=512 * 64) as w:
        for i in range(6):
            vid = f"v{i}"
            w.add(vid, {0: synthetic_video(vid, 200, 32), "last": synthetic_video(vid, 200, 16, layer="last")})
    """
)


@pytest.mark.parametrize("hook", ["before-commit", "mid-layers"])
def test_writer_killed_mid_part_leaves_a_consistent_store(tmp_path, hook, no_gc_floor):
    url = str(tmp_path / "features.zarr")
    ready = tmp_path / "ready"
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, url, hook, str(ready)])
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert proc.poll() is None, "writer exited before reaching the hook"
            assert time.monotonic() < deadline, "writer never reached the hook"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    store = open_store(url, mode="a")
    # Parts hold 512 rows: v0 and v1 (2 x 200) are committed; v2's part was cut.
    visible = store.video_ids("ds", "tiny", 0)
    assert visible == ["v0", "v1"]
    for vid in visible:
        assert np.array_equal(store.video("ds", "tiny", vid, 0), synthetic_video(vid, 200, 32))
    assert not store.has("ds", "tiny", "v2")
    assert verify(store).ok
    parts_dir = layout.parts_path("ds", "tiny")
    assert len([p for p in store.objects.list_dir(parts_dir) if layout.is_part_id(p)]) == 2
    report = gc(store, older_than_s=0)
    assert len(report.removed_uncommitted) == 1
    assert [p for p in store.objects.list_dir(parts_dir) if layout.is_part_id(p)] == [
        store.commits("ds", "tiny")[0].part_id
    ]
    assert verify(store).ok and store.video_ids("ds", "tiny", 0) == ["v0", "v1"]


def test_compact_merges_parts_and_readers_never_see_a_gap(tmp_path):
    url = str(tmp_path / "features.zarr")
    writer = open_store(url, mode="a")
    ids = [f"v{i:03d}" for i in range(80)]
    lengths = [20 + (i * 13) % 90 for i in range(80)]
    write_synthetic(writer, "ds", INFO, ids, lengths, target_part_bytes=128 * 64)
    before = len(writer.commits("ds", "tiny"))
    assert before >= 10  # parts hold at least 512 rows (one inner chunk)
    stop = threading.Event()
    errors: list[BaseException] = []
    reads = [0]

    def reader() -> None:
        store = open_store(url)
        try:
            while not stop.is_set():
                store.refresh()
                for vid, n in zip(ids[::7], lengths[::7], strict=True):
                    got = store.video("ds", "tiny", vid, 0)
                    assert np.array_equal(got, synthetic_video(vid, n, 32)), vid
                    reads[0] += 1
        except BaseException as exc:  # surfaced in the main thread
            errors.append(exc)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        report = compact(writer, "ds", "tiny")
    finally:
        time.sleep(0.2)
        stop.set()
        thread.join(timeout=60)
    assert not errors, errors[0]
    assert reads[0] > 0
    assert report.parts_before == before and report.parts_after == 1
    fresh = open_store(url)
    for vid, n in zip(ids, lengths, strict=True):
        assert np.array_equal(
            fresh.video("ds", "tiny", vid, "last"), synthetic_video(vid, n, 16, layer="last")
        )
    assert verify(fresh).ok
    assert (
        len(
            [
                p
                for p in writer.objects.list_dir(layout.parts_path("ds", "tiny"))
                if layout.is_part_id(p)
            ]
        )
        == 1
    )


def test_compacted_copies_never_beat_a_newer_extraction(tmp_path):
    url = str(tmp_path / "features.zarr")
    store = open_store(url, mode="a")
    write_synthetic(
        store, "ds", INFO, [f"v{i}" for i in range(6)], [10] * 6, target_part_bytes=512 * 64
    )
    write_synthetic(store, "ds", INFO, ["w0", "w1"], [10, 10], target_part_bytes=512 * 64)
    fresh = {0: np.full((4, 32), 7, np.float16), "last": np.full((4, 16), 7, np.float16)}

    def reextract_during_compaction(done: int, total: int) -> None:
        if done == 1:  # compaction has read v0's old rows and will commit them later
            with open_store(url, mode="a").writer("ds", INFO) as w:
                w.add("v0", fresh)

    compact(store, "ds", "tiny", progress=reextract_during_compaction)
    reader = open_store(url)
    assert np.array_equal(reader.video("ds", "tiny", "v0", 0), fresh[0])
    assert np.array_equal(reader.video("ds", "tiny", "v1", 0), synthetic_video("v1", 10, 32))


def test_verify_detects_corrupted_rows(tmp_path):
    store = open_store(tmp_path / "f.zarr", mode="a")
    write_synthetic(store, "ds", INFO, ["a", "b"], [50, 60])
    (commit,) = store.commits("ds", "tiny")
    shard = os.path.join(
        store.url, "ds", "tiny", "parts", commit.part_id, "layer_00", "c", "0", "0"
    )
    with open(shard, "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xFF]))
    report = verify(open_store(store.url))
    assert not report.ok and "checksum" in report.problems[0]


def test_bug_reader_listing_commits_during_compaction_saw_a_gap(tmp_path, monkeypatch):
    """A reader listed _commits/, compaction then committed the merged part and removed
    the originals, and the reader, finding the listed records gone, lost those videos."""
    from featstore.backend import LocalBackend

    url = str(tmp_path / "features.zarr")
    ids = [f"v{i}" for i in range(12)]
    lengths = [100 + 7 * i for i in range(12)]
    write_synthetic(open_store(url, mode="a"), "ds", INFO, ids, lengths, target_part_bytes=1)
    reader, compactor = open_store(url), open_store(url, mode="a")
    assert len(reader.commits("ds", "tiny")) > 2
    reader.refresh()
    real_list = LocalBackend.list_dir
    fired = []

    def list_dir(self, prefix):
        names = real_list(self, prefix)
        if self is reader.backend and prefix.endswith("_commits") and not fired:
            fired.append(compact(compactor, "ds", "tiny"))  # right after the listing
        return names

    monkeypatch.setattr(LocalBackend, "list_dir", list_dir)
    assert sorted(reader.video_ids("ds", "tiny", 0)) == sorted(ids)
    assert fired and fired[0].parts_after == 1
    for vid, n in zip(ids, lengths, strict=True):
        assert np.array_equal(reader.video("ds", "tiny", vid, 0), synthetic_video(vid, n, 32))
