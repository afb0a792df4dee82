"""``featstore store failures`` and ``featstore store rm``: readable failures, safe removal."""

from __future__ import annotations

import contextlib
import json
import threading
import time

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from featstore import layout
from featstore.cli.main import app
from featstore.errors import StoreError, UnknownEncoderError
from featstore.failures import collect_failures
from featstore.removal import plan_removal, remove_encoder
from featstore.store import EncoderInfo, open_store
from featstore.synthetic import write_synthetic

runner = CliRunner()
N_VIDEOS = 12


@pytest.fixture
def url(tmp_path):
    """A store with ``ds/tiny`` (12 videos in 4+ parts, 3 failures, one resolved later)
    and ``ds/other`` (one failure)."""
    url = str(tmp_path / "features.zarr")
    store = open_store(url, mode="a", durable=False)
    info = EncoderInfo(name="tiny", frame_hz=25.0, layer_dims={0: 8, "last": 4})
    with store.writer("ds", info) as w:
        w.fail("v3", RuntimeError("decoder hiccup"))  # extracted later: resolved
        w.fail("bad1.mp4", ValueError("moov atom not found"))
    with store.writer("ds", info) as w:
        w.fail("bad1.mp4", ValueError("moov atom not found (again)"))  # newest wins
        w.fail("bad2.mp4", ValueError("moov atom not found"))
        w.fail("mute.mp4", RuntimeError("no audio stream"))
    ids = [f"v{i}" for i in range(N_VIDEOS)]
    for k in range(0, N_VIDEOS, 3):  # one part per writer: 4 parts
        write_synthetic(store, "ds", info, ids[k : k + 3], [20 + i for i in range(k, k + 3)])
    other = EncoderInfo(name="other", frame_hz=25.0, layer_dims={"last": 4})
    write_synthetic(store, "ds", other, ids[:2], [5, 6])
    with store.writer("ds", other) as w:
        w.fail("v5", OSError("disk full"))
    store.write_manifest("ds", pd.DataFrame({"video_id": [*ids, "bad1.mp4", "bad2.mp4"]}))
    return url


# ------------------------------------------------------------------ failures


def test_collect_failures_newest_per_video_grouped(url):
    store = open_store(url)
    report = collect_failures(store, dataset="ds", encoder="tiny")
    by_video = {f.video_id: f for f in report.failures}
    assert set(by_video) == {"bad1.mp4", "bad2.mp4", "mute.mp4"}  # v3 was extracted since
    assert report.resolved == 1
    assert by_video["bad1.mp4"].message == "moov atom not found (again)"
    assert by_video["bad1.mp4"].attempts == 2
    assert [(g.error_type, g.videos) for g in report.groups] == [
        ("ValueError", 2),
        ("RuntimeError", 1),
    ]
    assert sorted(report.groups[0].examples) == ["bad1.mp4", "bad2.mp4"]
    # the raw records agree (pandas, independently of the grouping)
    raw = store.failures("ds", "tiny")
    assert raw["video_id"].nunique() == 4 and raw.loc[raw.resolved, "video_id"].tolist() == ["v3"]
    with_resolved = collect_failures(store, dataset="ds", include_resolved=True)
    assert {(f.encoder, f.video_id) for f in with_resolved.failures} >= {
        ("tiny", "v3"),
        ("other", "v5"),
    }
    # since_ns: only records written from then on
    cut = max(f.time_ns for f in report.failures)
    assert [f.video_id for f in collect_failures(store, since_ns=cut + 1).failures] == ["v5"]


def test_failures_command_json_table_and_limit(url):
    result = runner.invoke(app, ["store", "failures", url, "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["videos"] == 4 and doc["resolved"] == 1
    rows = {(f["encoder"], f["video_id"]): f for f in doc["failures"]}
    assert rows[("other", "v5")]["error_type"] == "OSError"
    assert rows[("tiny", "mute.mp4")]["message"] == "no audio stream"
    assert rows[("tiny", "mute.mp4")]["when"].endswith("+00:00")
    assert {"part_id", "time_ns", "dataset"} <= set(rows[("tiny", "mute.mp4")])

    table = runner.invoke(app, ["store", "failures", url, "-e", "tiny", "--limit", "1"])
    assert table.exit_code == 0, table.output
    assert "ValueError" in table.output and "moov atom not found" in table.output
    assert "... 2 more" in table.output
    assert "(1 more failed once and were extracted since" in table.output

    clean = runner.invoke(app, ["store", "failures", url, "-d", "ds", "-e", "nope"])
    assert clean.exit_code == 1 and clean.output.startswith("error: no encoder 'nope'")


def test_info_counts_failures_and_points_to_the_listing(url):
    result = runner.invoke(app, ["store", "info", url])
    assert result.exit_code == 0, result.output
    assert "ds/tiny: 3 videos failed and not extracted since" in result.output
    assert "ds/other: 1 videos failed" in result.output
    assert f"reasons: featstore store failures {url}" in result.output


# ------------------------------------------------------------------ rm


def _rows(store, encoder="tiny"):
    return {
        v: store.video("ds", encoder, v, "last").copy()
        for v in store.video_ids("ds", encoder, "last")
    }


def test_rm_dry_run_then_remove(url):
    before = runner.invoke(app, ["store", "rm", url, "ds", "tiny", "--dry-run", "--json"])
    assert before.exit_code == 0, before.output
    plan = json.loads(before.output)
    assert plan["videos"] == N_VIDEOS and plan["removed"] is False
    assert plan["commits"] == 4 and plan["parts"] == 4
    assert plan["failure_records"] == 2
    assert "tiny" in open_store(url).encoders("ds")  # dry run removed nothing

    refused = runner.invoke(app, ["store", "rm", url, "ds", "tiny"])  # CliRunner: no TTY
    assert refused.exit_code == 1
    assert refused.output.startswith("error: refusing to remove ds/tiny without --yes")

    other_before = _rows(open_store(url), "other")
    done = runner.invoke(app, ["store", "rm", url, "ds", "tiny", "--yes"])
    assert done.exit_code == 0, done.output
    assert done.output.startswith(f"removed ds/tiny in {url}: {N_VIDEOS} videos")
    store = open_store(url)
    assert store.encoders("ds") == ["other"]
    assert not store.backend.list_dir(layout.encoder_path("ds", "tiny"))
    after = _rows(store, "other")  # the other encoder is untouched
    assert after.keys() == other_before.keys()
    assert all(np.array_equal(after[k], other_before[k]) for k in after)
    again = runner.invoke(app, ["store", "rm", url, "ds", "tiny", "--yes"])
    assert again.exit_code == 1 and "no encoder 'tiny'" in again.output
    # the name is free again: a new extraction starts from nothing
    info = EncoderInfo(name="tiny", frame_hz=12.5, layer_dims={"last": 3})
    write_synthetic(open_store(url, mode="a"), "ds", info, ["n0"], [4])
    fresh = open_store(url)
    assert fresh.video_ids("ds", "tiny", "last") == ["n0"]
    assert fresh.encoder_info("ds", "tiny").frame_hz == 12.5


def test_rm_readers_see_the_whole_encoder_or_nothing(url, monkeypatch):
    """Paused after its first commit record is gone, a removal hides the encoder from
    new readers; a reader that listed it before still reads whole videos."""
    early = open_store(url)
    expected = _rows(early)
    remover = open_store(url, mode="a")
    backend = remover.backend
    commits = layout.commits_path("ds", "tiny")
    paused, resume = threading.Event(), threading.Event()
    real_delete = type(backend).delete

    def delete(self, key):
        real_delete(self, key)
        if key.startswith(commits) and not paused.is_set():
            paused.set()
            assert resume.wait(30)

    monkeypatch.setattr(type(backend), "delete", delete)
    worker = threading.Thread(target=remove_encoder, args=(remover, "ds", "tiny"))
    worker.start()
    try:
        assert paused.wait(30)
        late = open_store(url)
        assert late.encoders("ds") == ["other"]
        with pytest.raises(UnknownEncoderError, match="being removed"):
            late.video_ids("ds", "tiny", "last")
        with pytest.raises(StoreError, match="being removed"):
            info = EncoderInfo(name="tiny", frame_hz=25.0, layer_dims={0: 8, "last": 4})
            open_store(url, mode="a").writer("ds", info)
        for vid, rows in expected.items():  # listed before: parts are all still there
            assert np.array_equal(early.video("ds", "tiny", vid, "last"), rows)
    finally:
        resume.set()
        worker.join(30)
    # Removed: the early reader's listing is stale. It either still reads the whole old
    # video (a local file it holds open outlives its removal) or gets a clear error.
    with contextlib.suppress(UnknownEncoderError):
        assert np.array_equal(early.video("ds", "tiny", "v0", "last"), expected["v0"])
    early.refresh()
    with pytest.raises(UnknownEncoderError):
        early.video("ds", "tiny", "v0", "last")


def test_rm_under_concurrent_listing_never_gives_a_partial_index(url, monkeypatch):
    """Readers listing the encoder in a loop while it is removed (each deletion slowed
    down so that listings interleave with it): every listing they accept holds every
    video."""
    remover = open_store(url, mode="a")
    real_delete = type(remover.backend).delete

    def slow_delete(self, key):
        time.sleep(0.005)
        real_delete(self, key)

    monkeypatch.setattr(type(remover.backend), "delete", slow_delete)
    seen: list[int] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            try:
                seen.append(len(open_store(url).video_ids("ds", "tiny", "last")))
            except UnknownEncoderError:
                pass
            except BaseException as exc:  # anything else is a bug
                errors.append(exc)
                return

    readers = [threading.Thread(target=read) for _ in range(2)]
    for t in readers:
        t.start()
    try:
        time.sleep(0.05)
        remove_encoder(remover, "ds", "tiny")
        time.sleep(0.05)
    finally:
        stop.set()
        for t in readers:
            t.join(30)
    assert not errors, errors
    assert seen and set(seen) == {N_VIDEOS}


def test_interrupted_rm_stays_hidden_and_finishes(url):
    store = open_store(url, mode="a")
    backend = store.backend
    backend.put_json(layout.removal_key("ds", "tiny"), {"dataset": "ds", "encoder": "tiny"})
    first = sorted(backend.list_dir(layout.commits_path("ds", "tiny")))[0]
    backend.delete(f"{layout.commits_path('ds', 'tiny')}/{first}")  # as if it stopped here
    reader = open_store(url)
    assert reader.encoders("ds") == ["other"]
    assert plan_removal(reader, "ds", "tiny").resumed
    result = runner.invoke(app, ["store", "rm", url, "ds", "tiny", "--yes"])
    assert result.exit_code == 0 and "finishing an interrupted removal" in result.output
    assert not backend.list_dir(layout.encoder_path("ds", "tiny"))


def test_store_env_default_for_store_commands(url, monkeypatch):
    monkeypatch.setenv("FEATSTORE_STORE", url)
    assert "ds\t2 encoders" in runner.invoke(app, ["store", "ls"]).output
    assert "layers: 0, last" in runner.invoke(app, ["store", "ls", "ds"]).output
    out = runner.invoke(app, ["store", "ls", "ds", "tiny", "-n", "1"]).output
    assert out.startswith("v0\t20 frames")
    assert runner.invoke(app, ["store", "info", "--json"]).exit_code == 0
    plan = runner.invoke(app, ["store", "rm", "ds", "tiny", "--dry-run"])
    assert plan.exit_code == 0 and plan.output.startswith(f"would remove ds/tiny in {url}")
    # an explicit URL wins over the environment
    monkeypatch.setenv("FEATSTORE_STORE", "/nonexistent/elsewhere.zarr")
    assert "ds\t2 encoders" in runner.invoke(app, ["store", "ls", url]).output
    explicit = runner.invoke(app, ["store", "ls", url, "ds", "tiny", "-n", "1"])
    assert explicit.output.startswith("v0\t20 frames")
    monkeypatch.delenv("FEATSTORE_STORE")
    missing = runner.invoke(app, ["store", "info"])
    assert missing.exit_code == 1
    assert missing.output.strip() == (
        "error: no store given: pass URL or set the environment variable FEATSTORE_STORE"
    )
    short = runner.invoke(app, ["store", "compact", url, "ds"])
    assert short.exit_code == 1 and "missing argument ENCODER" in short.output
