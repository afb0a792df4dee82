"""The whole pipeline on a real S3 server and a real Dask cluster, a worker killed mid-run.

moto's S3 server on 127.0.0.1 holds the store; a LocalCluster of two worker
processes (Nannies, so a killed worker comes back) runs the heavy steps. Every
step is the CLI: ``sample make`` -> ``datasets import`` -> ``extract --cluster``
(one worker SIGKILLed as soon as the first extraction task has finished, while
the other is busy) -> ``grid --cluster`` -> the scoring service, serving from
``s3://``, scores an upload. The store then holds every video once, with the
rows a local extraction writes, and the upload scores as its stored features do.
"""

from __future__ import annotations

import os
import re
import signal
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from featstore.cli.main import app

from s3_server import BUCKET, s3  # noqa: F401  (a fixture)  # isort: skip

pytest.importorskip("distributed")
pytest.importorskip("fastapi")

N_CLIPS = 12
GRID = """
store = "{store}"
out = "{out}"

[[datasets]]
name = "sample"
val = false
test = "val"

[[features]]
encoder = "logfbank"

[probe]
lr = 0.05
max_epochs = 15
"""


def kill_one_worker(scheduler: Any, prefix: str) -> Any:
    """A scheduler plugin: when the first task named ``prefix...`` finishes, SIGKILL a
    worker that is running another one (once)."""

    from distributed.diagnostics.plugin import SchedulerPlugin

    class KillOneWorker(SchedulerPlugin):
        name = "featstore-test-kill-one-worker"

        def __init__(self) -> None:
            self.killed: list[dict[str, Any]] = []
            self.scheduler = scheduler
            self._lock = threading.Lock()

        def transition(self, key: Any, start: str, finish: str, *args: Any, **kw: Any) -> None:
            if finish != "memory" or not str(key).startswith(prefix):
                return
            with self._lock:
                if self.killed:
                    return
                for ws in self.scheduler.workers.values():
                    busy = [str(t.key) for t in ws.processing if str(t.key).startswith(prefix)]
                    if busy and ws.pid:
                        self.killed.append({"pid": ws.pid, "address": ws.address, "tasks": busy})
                        os.kill(ws.pid, signal.SIGKILL)
                        return

    return KillOneWorker()


def invoke(*args: Any) -> Any:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


@pytest.mark.slow
def test_s3_and_a_dask_cluster_end_to_end(tmp_path: Path, s3: dict, monkeypatch: Any) -> None:  # noqa: F811
    import s3fs
    from distributed import LocalCluster
    from fastapi.testclient import TestClient

    from featstore.api.app import create_app
    from featstore.api.settings import RunSpec, Settings
    from featstore.extract import extract
    from featstore.store import open_store

    # what the workers (and the service) need to reach S3: the standard variables
    for name, value in (("AWS_ACCESS_KEY_ID", s3["key"]), ("AWS_SECRET_ACCESS_KEY", s3["secret"]),
                        ("AWS_ENDPOINT_URL", s3["endpoint_url"]),
                        ("AWS_DEFAULT_REGION", "us-east-1")):  # fmt: skip
        monkeypatch.setenv(name, value)
    s3fs.S3FileSystem.clear_instance_cache()
    url = f"s3://{BUCKET}/e2e.zarr"
    invoke("sample", "make", tmp_path / "sample", "--clips", N_CLIPS, "--size", 64)
    invoke("datasets", "import", "av1m", tmp_path / "sample", "--name", "sample", "--store", url)

    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    ) as cluster:
        killer = kill_one_worker(cluster.scheduler, "featstore-extract")
        cluster.scheduler.add_plugin(killer)
        address = cluster.scheduler_address
        done = invoke("extract", "--encoder", "logfbank", "--on", "sample", "--store", url,
                      "--cluster", address)  # fmt: skip
        assert killer.killed, "no worker was busy when the first task finished"
        (tmp_path / "grid.toml").write_text(GRID.format(store=url, out=tmp_path / "grid"))
        grid = invoke("grid", tmp_path / "grid.toml", "--cluster", address)
    counts = re.search(r"(\d+) videos extracted, (\d+) already in the store, 0 failed", done.output)
    assert counts and int(counts[1]) + int(counts[2]) == N_CLIPS, done.output  # retries skip
    assert "trained ->" in grid.output and "test sample: AUC" in grid.output

    # nothing lost, nothing twice: every video once, with a local extraction's rows
    store = open_store(url)
    commits = store.commits("sample", "logfbank")
    committed = [v for c in commits for v in c.video_ids]
    assert sorted(committed) == sorted(store.manifest("sample")["video_id"])
    local = open_store(tmp_path / "local.zarr", mode="a", durable=False)
    local.write_manifest("sample", store.manifest("sample"), attrs=store.manifest_attrs("sample"))
    extract(local, dataset="sample", encoder="logfbank")
    for video_id in committed:
        assert np.array_equal(
            store.video("sample", "logfbank", video_id, "last"),
            local.video("sample", "logfbank", video_id, "last"),
        )
    features = store.features("sample", "logfbank", "last")
    assert features.shape[0] == sum(
        len(x) for _, x in local.iter_videos("sample", "logfbank", "last")
    )

    # the service reads s3:// and scores an upload as its stored features score
    run_dir = tmp_path / "grid" / "runs" / "logfbank-last" / "sample"
    manifest = store.manifest("sample")
    row = manifest[manifest["split"] == "val"].iloc[0]
    clip = tmp_path / "sample" / row["path"]
    settings = Settings(store_url=url, runs=(RunSpec("probe", run_dir),), warmup=False)
    with TestClient(create_app(settings)) as client:
        for _ in range(600):
            if client.get("/readyz").status_code == 200:
                break
            threading.Event().wait(0.05)
        with clip.open("rb") as fh:
            reply = client.post("/v1/score", files={"file": (clip.name, fh, "video/mp4")})
        assert reply.status_code == 200, reply.text
        (upload,) = reply.json()["results"]
        stored = client.get(
            f"/v1/datasets/sample/videos/{row['video_id']}/scores", params={"run": "probe"}
        )
        assert stored.status_code == 200, stored.text
    assert upload["features"] == ["logfbank:last"]
    assert stored.json()["score"] == pytest.approx(upload["score"], abs=0.05)
