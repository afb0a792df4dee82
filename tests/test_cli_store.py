"""``featstore store ...`` through Typer's CliRunner, and the cost of ``--help``."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

import featstore.writer as writer_mod
from featstore.cli.main import app
from featstore.store import EncoderInfo, open_store
from featstore.synthetic import write_synthetic

runner = CliRunner()


@pytest.fixture
def demo_store(tmp_path):
    url = str(tmp_path / "features.zarr")
    store = open_store(url, mode="a")
    info = EncoderInfo(
        name="tiny", frame_hz=25.0, layer_dims={0: 32, "last": 16}, checkpoint="tiny-ckpt"
    )
    write_synthetic(
        store,
        "ds",
        info,
        [f"v{i}" for i in range(30)],
        [40 + i for i in range(30)],
        target_part_bytes=512 * 64,
    )
    with store.writer("ds", info) as w:
        w.fail("broken.mp4", ValueError("moov atom not found"))
    import pandas as pd

    store.write_manifest("ds", pd.DataFrame({"video_id": [f"v{i}" for i in range(31)]}))
    return url


def test_info_prints_contents(demo_store):
    result = runner.invoke(app, ["store", "info", demo_store])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "ds" in out and "31 videos in manifest" in out
    assert "tiny" in out and "float16" in out and "1/1" in out  # one unresolved failure
    assert "1635" in out  # rows: sum(40..69)
    as_json = json.loads(runner.invoke(app, ["store", "info", demo_store, "--json"]).output)
    (enc,) = as_json["datasets"][0]["encoders"]
    assert enc["videos"] == 30 and enc["parts"] >= 3
    assert {x["layer"]: x["dim"] for x in enc["layers"]} == {"0": 32, "last": 16}


def test_ls_levels(demo_store):
    assert "ds\t1 encoders: tiny" in runner.invoke(app, ["store", "ls", demo_store]).output
    assert "layers: 0, last" in runner.invoke(app, ["store", "ls", demo_store, "ds"]).output
    out = runner.invoke(app, ["store", "ls", demo_store, "ds", "tiny", "-n", "2", "-l", "0"]).output
    assert out.splitlines()[0].startswith("v0\t40 frames\tpart ")
    assert "28 more" in out


def test_verify_gc_compact(demo_store, monkeypatch, no_gc_floor):
    result = runner.invoke(app, ["store", "verify", demo_store])
    assert result.exit_code == 0 and "ok" in result.output
    store = open_store(demo_store, mode="a")
    with monkeypatch.context() as patch:
        patch.setattr(writer_mod, "_write_commit", lambda *a, **k: None)
        with store.writer("ds", store.encoder_info("ds", "tiny")) as w:
            w.add("ghost", {0: np.ones((3, 32), np.float16), "last": np.ones((3, 16), np.float16)})
    dry = runner.invoke(app, ["store", "gc", demo_store, "--older-than", "0", "--dry-run"])
    assert "would remove uncommitted part ds/tiny/" in dry.output
    result = runner.invoke(app, ["store", "gc", demo_store, "--older-than", "0"])
    assert result.exit_code == 0 and "removed 1 uncommitted" in result.output
    result = runner.invoke(app, ["store", "compact", demo_store, "ds", "tiny"])
    assert result.exit_code == 0 and "-> 1 parts" in result.output, result.output
    assert (
        "nothing to compact"
        in runner.invoke(app, ["store", "compact", demo_store, "ds", "tiny"]).output
    )
    assert runner.invoke(app, ["store", "verify", demo_store]).exit_code == 0


def test_verify_exits_nonzero_on_corruption(demo_store):
    store = open_store(demo_store)
    commit = store.commits("ds", "tiny")[0]
    key = f"ds/tiny/parts/{commit.part_id}/layer_last/c/0/0"
    data = bytearray(store.objects.get(key))
    data[10] ^= 0xFF
    open_store(demo_store, mode="a").objects.put(key, bytes(data))
    result = runner.invoke(app, ["store", "verify", demo_store])
    assert result.exit_code == 1
    assert "checksum" in result.output


def test_user_errors_are_one_line(tmp_path, demo_store):
    result = runner.invoke(app, ["store", "info", str(tmp_path / "nope.zarr")])
    assert result.exit_code == 1
    assert result.output.strip().startswith("error: no feature store at")
    assert "Traceback" not in result.output
    result = runner.invoke(app, ["store", "ls", demo_store, "nope"])
    assert result.exit_code == 1 and "no dataset 'nope'" in result.output
    result = runner.invoke(app, ["store", "ls", demo_store, "ds", "tiny", "--layer", "9"])
    assert result.exit_code == 1 and "layer 9" in result.output


def test_help_imports_nothing_heavy():
    code = (
        "import sys;"
        "from typer.testing import CliRunner; from featstore.cli.main import app;"
        "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0, r.output;"
        "r = CliRunner().invoke(app, ['store', '--help']); assert r.exit_code == 0;"
        "heavy = sorted(m for m in ('torch', 'transformers', 'zarr', 'xarray', 'dask') if m in sys.modules);"
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"  # what makes --help fast (bench/ times it, tests do not)


def test_importing_featstore_is_light():
    code = "import sys, featstore; print(sorted(m for m in ('torch','transformers','zarr') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
