"""``grid``, ``layers``, ``syncscore`` and ``eval`` on a Dask cluster write what a local run writes.

The cluster is a LocalCluster of two workers reached over tcp:// (in this
process, so the torch settings, hence the arithmetic, are the local run's):
every file a local run writes is compared byte for byte with the cluster
run's, except the few that hold a time (``created``, epoch seconds) or an
output path.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from featstore.cli.main import app
from featstore.store import EncoderInfo, open_store
from featstore.trainers.cluster import PARTITIONS, TaskProgress, score_on_cluster
from featstore.trainers.kinds import load
from featstore.trainers.kinds.syncfree import sync_scores
from featstore.trainers.syncfree import sync_config

from trainer_fixtures import write_planted_dataset  # isort: skip

pytest.importorskip("distributed")

runner = CliRunner()
LAYERS = (1, 2, "last")
GRID = """
store = "{store}"
out = "{out}"

[[datasets]]
name = "alpha"
[[datasets]]
name = "beta"
[[datasets]]
name = "gamma"

[[features]]
encoder = "enc"
label = "Enc"

[probe]
lr = 0.05
max_epochs = 6
patience = 3
batch_videos = 4
"""


@pytest.fixture(scope="module")
def cluster():
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=False, protocol="tcp", dashboard_address=":0"
    ) as local:
        yield local.scheduler_address


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def url(tmp_path_factory) -> str:
    """alpha (240 videos: 72 to test, more than one probe partition), beta, gamma (test only),
    and ``syn``: audio/visual encoders with three layers (layer 2 synchronised)."""
    root = tmp_path_factory.mktemp("cluster")
    url = str(root / "features.zarr")
    store = open_store(url, mode="a", durable=False)
    write_planted_dataset(store, "alpha", n_videos=240, dim=16, encoder="enc", seed=1)
    write_planted_dataset(store, "beta", n_videos=40, dim=16, encoder="enc", seed=2)
    write_planted_dataset(store, "gamma", n_videos=20, dim=16, encoder="enc", seed=3,
                          splits=(("test", 1.0),), fake_segments=False)  # fmt: skip
    rng = np.random.default_rng(0)
    rows, audio, visual = [], {}, {}
    for i in range(30):
        t = int(rng.integers(40, 60))
        a = rng.standard_normal((t, 8))
        v = {x: np.tanh(a) + 0.5 * rng.standard_normal((t, 8)) for x in LAYERS}
        v[1] = rng.standard_normal((t, 8))
        segments = []
        if i % 2:
            lo = int(rng.integers(0, t - 20))
            for x in (2, "last"):
                v[x][lo : lo + 15] = np.tanh(rng.standard_normal((15, 8)))
            segments = [[lo / 25, (lo + 15) / 25]]
        vid = f"v{i:02d}"
        audio[vid], visual[vid] = a, v
        rows.append({"video_id": vid, "label": i % 2, "split": "test",
                     "modify_type": "both_modified" if i % 2 else "real",
                     "fake_segments": segments})  # fmt: skip
    store.write_manifest("syn", pd.DataFrame(rows))
    for enc in ("aud", "vis"):
        info = EncoderInfo(name=enc, frame_hz=25.0, layer_dims=dict.fromkeys(LAYERS, 8))
        with store.writer("syn", info) as writer:
            for vid in audio:
                feats = dict.fromkeys(LAYERS, audio[vid]) if enc == "aud" else visual[vid]
                writer.add(vid, {x: f.astype(np.float16) for x, f in feats.items()})
    return url


def invoke(*args) -> object:
    return runner.invoke(app, [str(a) for a in args])


def assert_same_files(a: Path, b: Path) -> None:
    """Every file under ``a`` is under ``b`` with the same content (times and paths aside)."""
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert files
    for rel in files:
        x, y = a / rel, b / rel
        if rel.name == "config.json":
            assert _without(json.loads(x.read_text()), "created") == _without(
                json.loads(y.read_text()), "created"
            ), rel
        elif rel.name == "history.csv":
            with x.open() as p, y.open() as q:
                assert [_without(r, "seconds") for r in csv.DictReader(p)] == [
                    _without(r, "seconds") for r in csv.DictReader(q)
                ], rel
        elif rel.suffix == ".npz":  # zip members carry their write time
            with np.load(x) as p, np.load(y) as q:
                assert p.files == q.files
                assert all(np.array_equal(p[k], q[k]) for k in p.files), rel
        elif rel.name == "results.csv":
            assert x.read_text().replace(str(a), "OUT") == y.read_text().replace(str(b), "OUT")
        else:
            assert x.read_bytes() == y.read_bytes(), rel


def _without(doc: dict, key: str) -> dict:
    return {k: v for k, v in doc.items() if k != key}


def test_grid_on_a_cluster_writes_the_local_files_and_resumes(url, cluster, tmp_path):
    for name in ("local", "cluster"):
        (tmp_path / f"{name}.toml").write_text(GRID.format(store=url, out=tmp_path / name))
    local = invoke("grid", tmp_path / "local.toml")
    assert local.exit_code == 0, local.output
    remote = invoke("grid", tmp_path / "cluster.toml", "--cluster", cluster)
    assert remote.exit_code == 0, remote.output
    assert remote.output.count("training ->") == remote.output.count("trained ->") == 2
    assert "epoch" not in remote.output  # epochs happen on the workers
    assert_same_files(tmp_path / "local", tmp_path / "cluster")
    # a crash left one probe incomplete and one evaluation missing: only those run again
    beta = tmp_path / "cluster" / "runs" / "enc-last" / "beta"
    (beta / "config.json").unlink()
    alpha = tmp_path / "cluster" / "runs" / "enc-last" / "alpha"
    metrics = json.loads((alpha / "metrics.json").read_text())
    del metrics["gamma:test"]
    (alpha / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    events = []
    from featstore.trainers.grid import load_config, run_grid

    run_grid(load_config(tmp_path / "cluster.toml"), on_event=events.append, cluster=cluster)
    kinds = [(e.kind, e.train, e.test) for e in events if e.kind != "result"]
    assert sorted(kinds, key=str) == sorted(
        [("reuse", "alpha", None), ("evaluate", "alpha", "gamma"), ("train", "beta", None),
         ("trained", "beta", None), ("evaluate", "beta", "alpha"), ("evaluate", "beta", "beta"),
         ("evaluate", "beta", "gamma")], key=str,
    )  # fmt: skip
    assert_same_files(tmp_path / "local", tmp_path / "cluster")
    # the other evaluation filter is not the paper's result reused: every test set again
    events.clear()
    outcome = run_grid(load_config(tmp_path / "cluster.toml"), on_event=events.append,
                       cluster=cluster, fakes="all")  # fmt: skip
    assert sum(e.kind == "evaluate" for e in events) == 6
    assert {r.fakes for r in outcome.results} == {"all"}
    metrics = json.loads((alpha / "metrics.json").read_text())
    assert {"alpha:test", "alpha:test|fakes=all", "gamma:test|fakes=all"} <= set(metrics)


def test_eval_on_a_cluster_scores_partitions_to_the_same_files(url, cluster, tmp_path, monkeypatch):
    grid = tmp_path / "g.toml"
    grid.write_text(GRID.format(store=url, out=tmp_path / "grid").replace('name = "beta"\n', "")
                    .replace('[[datasets]]\n[[datasets]]', "[[datasets]]"))  # fmt: skip
    assert invoke("grid", grid).exit_code == 0
    trained = tmp_path / "grid" / "runs" / "enc-last" / "alpha"
    local, remote = tmp_path / "local", tmp_path / "remote"
    for run in (local, remote):
        shutil.copytree(trained, run)
        shutil.rmtree(run / "predictions")
        (run / "metrics.json").unlink()
    monkeypatch.setattr(
        "featstore.trainers.cluster.PARTITION_VIDEOS", 20
    )  # partitions of 64 videos
    assert invoke("eval", local, "--on", "alpha:test").exit_code == 0
    result = invoke("eval", remote, "--on", "alpha:test", "--cluster", cluster)
    assert result.exit_code == 0, result.output
    assert "[1/2] videos" in result.output and "[2/2] videos" in result.output
    assert "] videos 0-64 (" in result.output and "] videos 64-72 (" in result.output
    assert not (remote / PARTITIONS).exists()
    assert_same_files(local, remote)
    # the other filter and windowed scoring go through the partitions alike, each kept
    for run in (local, remote):
        extra = ["--cluster", cluster] if run == remote else []
        result = invoke("eval", run, "--on", "alpha:test", "--fakes", "all", "--windows", *extra)
        assert result.exit_code == 0, result.output
    assert_same_files(local, remote)
    metrics = json.loads((remote / "metrics.json").read_text())
    assert set(metrics) == {"alpha:test", "alpha:test|fakes=all"}
    assert metrics["alpha:test|fakes=all"]["windows"]["n_windowed"] >= 0
    assert metrics["alpha:test"]["windows"] is None


def test_partitions_resume(url, cluster, tmp_path):
    store = open_store(url)
    detector = _syncfree(store, tmp_path)
    folder = tmp_path / "resume"
    seen: list[TaskProgress] = []
    kwargs = {"resume_dir": folder, "partition_videos": 7, "scorer": sync_scores}
    first, extras = score_on_cluster(detector, store, "syn:test", cluster=cluster,
                                     on_progress=seen.append, **kwargs)  # fmt: skip
    assert [p.done for p in seen] == [1, 2, 3, 4, 5] and seen[-1].total == 5
    (saved,) = folder.iterdir()
    assert len(list(saved.glob("*.npz"))) == 5
    (saved / "00002.npz").unlink()  # that partition was lost with the client
    seen.clear()
    again, extras_again = score_on_cluster(detector, store, "syn:test", cluster=cluster,
                                           on_progress=seen.append, **kwargs)  # fmt: skip
    assert [(p.done, p.total, p.reused) for p in seen] == [(5, 5, 4)]
    # every partition is there: nothing to run, no scheduler to reach
    nothing, _ = score_on_cluster(
        detector, store, "syn:test", cluster="tcp://127.0.0.1:9", **kwargs
    )
    local = detector.score_selection(store, "syn:test")
    for scored in (first, again, nothing):
        assert np.array_equal(scored.scores, local.scores)
        assert scored.video_ids == local.video_ids and scored.selection == local.selection
        assert all(
            np.array_equal(a, b)
            for a, b in zip(scored.frame_scores, local.frame_scores, strict=True)
        )
    assert np.array_equal(extras["best_shift"], extras_again["best_shift"])
    assert np.array_equal(extras["best_shift"], detector.sync_selection(store, "syn:test")[1])


def _syncfree(store, tmp_path):
    from featstore.trainers.kinds import syncfree

    run = syncfree.train(store, audio="aud:2", visual="vis:2", on="syn:test",
                         out=tmp_path / "sf", config=sync_config("speechforensics"))  # fmt: skip
    return load(run.path)


def test_syncscore_on_a_cluster(url, cluster, tmp_path, monkeypatch):
    monkeypatch.setattr("featstore.trainers.cluster.PARTITION_VIDEOS", 4)
    args = ["syncscore", "--store", url, "--audio", "aud:2", "--visual", "vis:2", "--on", "syn",
            "--preset", "speechforensics", "--json"]  # fmt: skip
    local = invoke(*args, "--out", tmp_path / "local")
    remote = invoke(*args, "--out", tmp_path / "remote", "--cluster", cluster)
    assert local.exit_code == 0 and remote.exit_code == 0, remote.output
    assert "[8/8] videos " in remote.output and "] videos 28-30 (" in remote.output
    assert _metrics(local) == _metrics(remote) and _metrics(local)["best_shift_counts"]
    assert_same_files(tmp_path / "local", tmp_path / "remote")


def _metrics(result) -> dict:
    """The JSON metrics printed after the progress lines, without the output path."""
    doc = json.loads(result.output[result.output.index("{") :])
    return {k: v for k, v in doc.items() if k != "out"}


def test_layers_on_a_cluster_and_an_interrupted_sweep(url, cluster, tmp_path):
    from featstore.trainers.layers import sweep_layers

    store = open_store(url)
    config = sync_config("speechforensics")
    local = invoke("layers", "--store", url, "--audio", "aud", "--visual", "vis", "--on", "syn",
                   "--out", tmp_path / "local")  # fmt: skip
    assert local.exit_code == 0, local.output

    class Stop(Exception):
        pass

    def stop_after_one(result):
        raise Stop

    out = tmp_path / "remote"
    with pytest.raises(Stop):  # the client dies after the first layer pair came back
        sweep_layers(store, "syn", "aud", "vis", config=config, out=out, on_layer=stop_after_one,
                     cluster=cluster)  # fmt: skip
    assert len(list((out / PARTITIONS).glob("layers-*/*.json"))) == 1
    result = invoke("layers", "--store", url, "--audio", "aud", "--visual", "vis", "--on", "syn",
                    "--out", out, "--cluster", cluster)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.output.count("AUC") == 1 + len(LAYERS)  # each pair once, and the best
    assert not (out / PARTITIONS).exists()
    for name in ("layers.csv", "layers.json"):
        assert (out / name).read_bytes() == (tmp_path / "local" / name).read_bytes()
    # pairs kept under one evaluation filter are not reused under the other
    kept = {}
    for fakes in ("paper", "all"):
        with pytest.raises(Stop):
            sweep_layers(store, "syn", "aud", "vis", config=config, out=tmp_path / "f",
                         on_layer=stop_after_one, fakes=fakes)  # fmt: skip
        (kept[fakes],) = (tmp_path / "f" / PARTITIONS).glob("layers-*")
    assert kept["paper"].name != kept["all"].name and not kept["paper"].exists()


def _flaky(marker: str) -> str:
    path = Path(marker)
    if not path.exists():
        path.write_text("failed once")
        raise OSError("a transient read error")
    return "done"


def test_a_failed_task_is_retried(cluster, tmp_path):
    from featstore.cluster import connect, run_tasks

    with connect(cluster) as client:
        got = dict(run_tasks(client, {"x": (_flaky, [str(tmp_path / "marker")])}))
    assert got == {"x": "done"}


def test_bad_cluster_addresses(url, tmp_path):
    result = invoke("eval", tmp_path, "--on", "syn", "--store", url, "--cluster", "udp://x")
    assert result.exit_code == 1 and "cluster must be 'local' or a tcp:// address" in result.output
    result = invoke("layers", "--store", url, "--audio", "aud", "--visual", "vis", "--on", "syn",
                    "--out", tmp_path / "l", "--cluster", "local:4")  # fmt: skip
    assert result.exit_code == 1 and "cluster must be 'local' or a tcp:// address" in result.output
