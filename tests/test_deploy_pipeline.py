"""The pipeline deploy/ runs, run for real without Docker or Kubernetes.

The compose file's one-shot steps (bucket, sample, import, extract, train, evaluate) are
run with their exact argv and environment against an S3 server (moto on 127.0.0.1) and a
Dask cluster reached over tcp:// (a LocalCluster of two workers); only the container paths
(/data, /runs) and the service addresses are mapped to this machine. The trained run is
then published and fetched with the Kubernetes manifests' own scripts, and served by the
compose file's `featstore serve` command, whose health check and API key are exercised.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from deploy_helpers import containers, load_compose, load_k8s, pod_specs  # isort: skip

pytest.importorskip("distributed")
s3fs = pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")
httpx = pytest.importorskip("httpx")

SERVE_START_TIMEOUT_S = 180.0


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _mapper(replacements: dict[str, str]):
    """Rewrites container paths and addresses inside argv tokens (``NAME=/runs/x`` too)."""

    def rewrite(token: str) -> str:
        for old, new in replacements.items():
            if token == old or token.startswith(old + "/"):
                return new + token[len(old) :]
            if "=" + old + "/" in token or token.endswith("=" + old):
                return token.replace("=" + old, "=" + new, 1)
        return token

    return lambda argv: [rewrite(t) for t in argv]


def _python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )


def _k8s_container(file: str, kind: str, name: str) -> dict[str, Any]:
    (doc,) = [d for d in load_k8s(file) if d["kind"] == kind]
    for _, spec in pod_specs(doc):
        for container in containers(spec):
            if container["name"] == name:
                return container
    raise KeyError(name)


def _k8s_env(container: dict[str, Any], s3_endpoint: str) -> dict[str, str]:
    """The container's ConfigMap and literal env, with the S3 endpoint of this test."""
    (config,) = load_k8s("config.yaml")
    env = dict(config["data"])
    env.update({e["name"]: e["value"] for e in container["env"] if "value" in e})
    return {**env, "AWS_ENDPOINT_URL": s3_endpoint}


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.TransportError:
        return False


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_compose_pipeline_then_k8s_publication_then_serving(
    tmp_path: Path, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    from distributed import LocalCluster
    from typer.testing import CliRunner

    from featstore.cli.main import app

    compose = load_compose({"SAMPLE_CLIPS": "6"})
    services = compose["services"]
    s3_env = {**services["extract"]["environment"], "AWS_ENDPOINT_URL": s3_endpoint}
    for key, value in s3_env.items():  # the steps run in this process (the CLI in-process)
        monkeypatch.setenv(key, value)
    s3fs.S3FileSystem.clear_instance_cache()
    # the bucket step: its own code, its own environment
    done = _python(services["bucket"]["command"][2], {**os.environ, **s3_env})
    assert done.returncode == 0, done.stderr
    assert "bucket featstore ready" in done.stdout

    runner = CliRunner()
    paths = {"/data": str(tmp_path / "data"), "/runs": str(tmp_path / "runs")}
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=False, protocol="tcp", dashboard_address=":0"
    ) as cluster:
        remap = _mapper({**paths, "tcp://scheduler:8786": cluster.scheduler_address})
        outputs = {}
        for step in ("sample", "import", "extract", "train", "evaluate"):
            argv = remap(services[step]["command"])
            assert argv[0] == "featstore"
            result = runner.invoke(app, argv[1:])
            assert result.exit_code == 0, f"{step}: {result.output}"
            outputs[step] = result.output
    assert "6 videos extracted" in outputs["extract"]
    assert "AUC" in outputs["evaluate"]
    run_dir = tmp_path / "runs" / "probe"
    assert (run_dir / "config.json").is_file()

    # Kubernetes: the train Job publishes the run, the scoring pod's init container fetches it
    publish = _k8s_container("train-job.yaml", "Job", "publish")["args"]
    fetch = _k8s_container("scoring.yaml", "Deployment", "fetch-run")
    assert publish[:2] == fetch["args"][:2] == ["python", "-c"]
    k8s_env = _k8s_env(fetch, s3_endpoint)
    fetched = tmp_path / "fetched" / "probe"
    _exec(publish[2], {**k8s_env, "RUN_DIR": str(run_dir)}, monkeypatch)
    _exec(fetch["args"][2], {**k8s_env, "RUN_DIR": str(fetched)}, monkeypatch)
    assert _tree(fetched) == _tree(run_dir)
    (run_dir / "stale.txt").write_text("from an earlier run")
    _exec(publish[2], {**k8s_env, "RUN_DIR": str(run_dir)}, monkeypatch)
    (run_dir / "stale.txt").unlink()
    _exec(publish[2], {**k8s_env, "RUN_DIR": str(run_dir)}, monkeypatch)  # replaces, never mixes
    _exec(fetch["args"][2], {**k8s_env, "RUN_DIR": str(tmp_path / "again")}, monkeypatch)
    assert _tree(tmp_path / "again") == _tree(run_dir)
    _check_fetch_waits_for_an_unpublished_run(fetch["args"][2], k8s_env, monkeypatch, capsys)

    # the compose scoring service on the fetched copy: its command, its env, its health check
    port = _free_port()
    serve_env = {
        **os.environ,
        **services["scoring"]["environment"],
        "AWS_ENDPOINT_URL": s3_endpoint,
    }
    remap = _mapper({"/runs": str(tmp_path / "fetched"), "0.0.0.0": "127.0.0.1", "8000": str(port)})
    argv = remap(services["scoring"]["command"])
    server = subprocess.Popen(
        [sys.executable, "-c", "from featstore.cli.main import app; app()", *argv[1:]],
        env=serve_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + SERVE_START_TIMEOUT_S
        while not _answers(f"{base}/readyz"):
            assert server.poll() is None, server.communicate()[0]
            assert time.monotonic() < deadline, "the service did not become ready"
            time.sleep(0.2)
        health = [  # the compose health check, as Docker would run it
            a.replace("127.0.0.1:8000", f"127.0.0.1:{port}")
            for a in services["scoring"]["healthcheck"]["test"][1:]
        ]
        assert health[0] == "python"
        assert subprocess.run([sys.executable, *health[1:]], timeout=60).returncode == 0
        _score_over_http(base, tmp_path, serve_env["FEATSTORE_API_KEY"])
    finally:
        server.terminate()
        server.wait(30)


def _exec(code: str, env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Run a manifest's ``python -c`` script here, in the environment it would have."""
    with monkeypatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        s3fs.S3FileSystem.clear_instance_cache()
        exec(compile(code, "<manifest>", "exec"), {"__name__": "__main__"})


class _Slept(Exception):
    pass


def _check_fetch_waits_for_an_unpublished_run(
    code: str, env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    def sleep(seconds: float) -> None:
        raise _Slept(seconds)

    capsys.readouterr()
    with monkeypatch.context() as patch, pytest.raises(_Slept):
        patch.setattr(time, "sleep", sleep)
        _exec(code, {**env, "FEATSTORE_RUN_URL": "s3://featstore/runs/none"}, monkeypatch)
    assert "waiting for s3://featstore/runs/none/config.json" in capsys.readouterr().out


def _score_over_http(base: str, tmp_path: Path, key: str) -> None:
    import featstore

    manifest = featstore.open_store("s3://featstore/features.zarr").manifest("sample")
    row = manifest[manifest["split"] == "val"].iloc[0]
    clip = tmp_path / "data" / "sample" / row["path"]
    with clip.open("rb") as fh:
        denied = httpx.post(f"{base}/v1/score", files={"file": (clip.name, fh, "video/mp4")})
    assert denied.status_code == 401
    with clip.open("rb") as fh:
        reply = httpx.post(
            f"{base}/v1/score",
            files={"file": (clip.name, fh, "video/mp4")},
            headers={"X-API-Key": key},
            timeout=120,
        )
    assert reply.status_code == 200, reply.text
    (upload,) = reply.json()["results"]
    assert upload["run"] == "probe" and upload["features"] == ["logfbank:last"]
    # the upload's fresh features and the cluster's stored ones (float16, in S3) agree
    stored = httpx.get(
        f"{base}/v1/datasets/sample/videos/{row['video_id']}/scores",
        params={"run": "probe"},
        headers={"X-API-Key": key},
        timeout=60,
    )
    assert stored.status_code == 200, stored.text
    assert stored.json()["score"] == pytest.approx(upload["score"], abs=0.05)
    assert len(stored.json()["frame_scores"]) == len(upload["frame_scores"])
