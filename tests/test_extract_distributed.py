"""Extraction on a Dask cluster gives the same rows as a local run."""

from __future__ import annotations

import dataclasses

import pytest

pytest.importorskip("distributed")

from test_extract import (  # isort: skip
    ALL_LAYERS,
    TOY_VISUAL,
    ToyEncoder,
    assert_same_rows,
    broken_dataset,
    fresh_store,
    sample_root,  # noqa: F401  (a fixture)
    stored_rows,
)

from featstore.encoders import register
from featstore.store import open_store


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0"
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


LOADS: list[str] = []
COUNTED = dataclasses.replace(TOY_VISUAL, name="toy-counted")


def _counting_loader(spec, checkpoint, **options) -> ToyEncoder:
    LOADS.append(spec.name)
    return ToyEncoder(spec)


register(COUNTED, _counting_loader)


def test_two_workers_give_the_same_rows_as_local(tmp_path, sample_root, client) -> None:  # noqa: F811
    from featstore.extract import extract

    local = fresh_store(tmp_path / "local.zarr", sample_root)
    extract(local, dataset="sample", encoder="toy-counted", layers="all", batch_frames=100)
    LOADS.clear()
    dist = fresh_store(tmp_path / "dist.zarr", sample_root)
    seen = []
    summary = extract(
        dist,
        dataset="sample",
        encoder="toy-counted",
        layers="all",
        cluster=client,
        on_progress=seen.append,
    )
    assert (summary.videos_done, summary.videos_failed, summary.videos_skipped) == (6, 0, 0)
    assert summary.parts_written > 1  # several tasks, each with its own parts
    assert LOADS == ["toy-counted"]  # loaded once in the (shared) worker process
    assert seen[-1].videos_done == 6
    assert_same_rows(
        stored_rows(local, "sample", "toy-counted", ALL_LAYERS),
        stored_rows(dist, "sample", "toy-counted", ALL_LAYERS),
    )
    again = extract(dist, dataset="sample", encoder="toy-counted", layers="all", cluster=client)
    assert (again.videos_done, again.videos_skipped) == (0, 6)


def test_failures_are_aggregated(tmp_path, sample_root, client) -> None:  # noqa: F811
    from featstore.extract import extract

    store = open_store(tmp_path / "s.zarr", mode="a", durable=False)
    broken_dataset(store, sample_root, tmp_path / "broken")
    summary = extract(store, dataset="broken", encoder="toy-audio", cluster=client)
    assert (summary.videos_done, summary.videos_failed) == (2, 5)
    assert len(store.failures("broken", "toy-audio")) == 5


def test_a_retried_task_skips_what_it_committed(tmp_path, sample_root) -> None:  # noqa: F811
    from featstore.extract import ExtractTask, VideoRef, run_task
    from featstore.extract.distributed import split_task

    store = fresh_store(tmp_path / "s.zarr", sample_root)
    manifest = store.manifest("sample")
    videos = tuple(
        VideoRef(v, str(sample_root / p))
        for v, p in zip(manifest["video_id"], manifest["path"], strict=True)
    )
    task = ExtractTask(
        store=store,
        dataset="sample",
        encoder="toy-visual",
        checkpoint=None,
        random_init=False,
        layers=("last",),
        dtype="float16",
        device="cpu",
        batch_frames=100,
        num_workers=1,
        videos=videos,
    )
    chunks = split_task(task, 4)
    assert [len(c.videos) for c in chunks] == [2, 2, 2]
    assert sum((c.videos for c in chunks), ()) == videos
    first = run_task(chunks[0])
    retry = run_task(chunks[0])
    assert (first.videos_done, retry.videos_done, retry.videos_skipped) == (2, 0, 2)


@pytest.mark.slow
def test_cli_local_cluster_of_processes(tmp_path, sample_root) -> None:  # noqa: F811
    from typer.testing import CliRunner

    from featstore.cli.main import app

    url = str(tmp_path / "s.zarr")
    fresh_store(tmp_path / "s.zarr", sample_root)
    args = ["extract", "--encoder", "logfbank", "--on", "sample", "--store", url]
    result = CliRunner().invoke(app, [*args, "--cluster", "local", "--n-workers", "2"])
    assert result.exit_code == 0, result.output
    assert "6 videos extracted" in result.output
    local = fresh_store(tmp_path / "local.zarr", sample_root)
    from featstore.extract import extract

    extract(local, dataset="sample", encoder="logfbank")
    assert_same_rows(
        stored_rows(open_store(url), "sample", "logfbank", ["last"]),
        stored_rows(local, "sample", "logfbank", ["last"]),
    )
