"""``featstore syncscore`` and ``featstore layers`` through typer's CliRunner."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from featstore.cli.main import app
from featstore.store import EncoderInfo
from featstore.trainers.runs import load_run

runner = CliRunner()
LAYERS = (1, 2, "last")


@pytest.fixture
def synced(store):
    """Audio and visual encoders with 3 layers; layer 2 is synchronised, layer 1 is noise."""
    rng = np.random.default_rng(0)
    rows, audio, visual = [], {}, {}
    for i in range(16):
        t = int(rng.integers(40, 60))
        a = rng.standard_normal((t, 8))
        v = {x: np.tanh(a) + 0.5 * rng.standard_normal((t, 8)) for x in LAYERS}
        v[1] = rng.standard_normal((t, 8))  # no relation to the audio: chance level
        segments = []
        if i % 2:
            lo = int(rng.integers(0, t - 20))
            for x in (2, "last"):
                v[x][lo : lo + 15] = np.tanh(rng.standard_normal((15, 8)))
            segments = [[lo / 25, (lo + 15) / 25]]
        vid = f"v{i:02d}"
        audio[vid], visual[vid] = a, v
        rows.append(
            {
                "video_id": vid,
                "label": i % 2,
                "split": "test",
                "modify_type": "both_modified" if i % 2 else "real",
                "fake_segments": segments,
            }
        )
    store.write_manifest("syn", pd.DataFrame(rows))
    for enc in ("aud", "vis"):
        info = EncoderInfo(name=enc, frame_hz=25.0, layer_dims=dict.fromkeys(LAYERS, 8))
        with store.writer("syn", info) as writer:
            for vid in audio:
                feats = dict.fromkeys(LAYERS, audio[vid]) if enc == "aud" else visual[vid]
                writer.add(vid, {x: f.astype(np.float16) for x, f in feats.items()})
    return store


def _args(store, *extra):
    return ["--store", str(store.url), "--audio", "aud", "--visual", "vis", "--on", "syn", *extra]


def test_syncscore_prints_metrics_and_writes_a_run(synced, tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(
        app, ["syncscore", *_args(synced, "--preset", "speechforensics", "--out", str(out))]
    )
    assert result.exit_code == 0, result.output
    assert "AUC %" in result.output and "temporal AUC %" in result.output
    assert "100.00" in result.output
    run = load_run(out)
    assert run.config["config"]["sync"] == {"shift": 15, "pool": "mean", "padding": "zero"}
    assert run.metrics()["syn:test"]["binary"]["auc"] == 1.0
    assert (out / "predictions" / "syn_test.csv").is_file()
    assert (out / "predictions" / "syn_test.frames.npz").is_file()

    # the written run is a run like any other: `featstore eval` scores it again
    again = runner.invoke(app, ["eval", str(out), "--on", "syn:test", "--json"])
    assert again.exit_code == 0, again.output
    metrics = json.loads(again.output)
    assert metrics["kind"] == "syncfree" and metrics["binary"]["auc"] == 1.0

    # explanations work on any run with per-frame scores, here the training-free one
    png = tmp_path / "v01.png"
    explained = runner.invoke(
        app,
        ["explain", "temporal", str(out), "--on", "syn", "--video", "v01", "--out", str(png)],
    )
    assert explained.exit_code == 0, explained.output
    assert "label fake" in explained.output and png.read_bytes()[:4] == b"\x89PNG"

    every = runner.invoke(
        app, ["syncscore", *_args(synced, "--preset", "factor", "--fakes", "all", "--json")]
    )
    assert every.exit_code == 0, every.output
    assert json.loads(every.output)["fakes"] == "all"


def test_syncscore_json_with_explicit_shift_and_pool(synced):
    result = runner.invoke(
        app, ["syncscore", *_args(synced, "--shift", "2", "--pool", "p97", "--json")]
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.output)
    assert metrics["sync"] == {"shift": 2, "pool": "p97", "padding": "exclude"}
    assert metrics["binary"]["n"] == 16 and "out" not in metrics


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--preset", "factor", "--shift", "3"], "not both"),
        (["--pool", "mean"], "both a shift and a pool"),
        (["--shift", "1", "--pool", "median"], "unknown pool"),
        (["--preset", "nope"], "unknown preset"),
    ],
)
def test_syncscore_rejects_bad_settings(synced, extra, message):
    result = runner.invoke(app, ["syncscore", *_args(synced, *extra)])
    assert result.exit_code != 0
    assert message in result.output


def test_layers_sweeps_equal_layers_and_writes_files(synced, tmp_path):
    out = tmp_path / "layers"
    result = runner.invoke(app, ["layers", *_args(synced, "--out", str(out))])
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "layers.json").read_text())
    assert doc["swept"] == "both" and doc["shift"] == 15 and doc["pool"] == "mean"
    by_layer = {r["audio_layer"]: r for r in doc["results"]}
    assert list(by_layer) == ["1", "2", "last"]
    assert all(r["visual_layer"] == r["audio_layer"] for r in doc["results"])
    assert by_layer["2"]["auc"] == 1.0 and by_layer["last"]["auc"] == 1.0
    assert not math.isclose(by_layer["1"]["auc"], 1.0)
    assert (out / "layers.png").stat().st_size > 0
    assert (out / "layers.csv").read_text().splitlines()[0].startswith("audio_layer,visual_layer")
    assert "best:" in result.output


def test_layers_with_one_side_fixed(synced, tmp_path):
    result = runner.invoke(
        app,
        [
            "layers",
            *_args(synced, "--out", str(tmp_path / "l")),
            "--audio",
            "aud:last",
            "--preset",
            "factor",
        ],
    )
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "l" / "layers.json").read_text())
    assert doc["swept"] == "visual"
    assert [r["audio_layer"] for r in doc["results"]] == ["last"] * 3
    both = runner.invoke(
        app,
        [
            "layers",
            *_args(synced, "--out", str(tmp_path / "m")),
            "--audio",
            "aud:1",
            "--visual",
            "vis:2",
        ],
    )
    assert both.exit_code != 0 and "both layers are fixed" in both.output


def test_help_does_not_import_heavy_modules():
    import subprocess
    import sys

    code = (
        "import sys; from featstore.cli.main import app; "
        "from typer.testing import CliRunner; CliRunner().invoke(app, ['syncscore', '--help']); "
        "print(any(m in sys.modules for m in ('torch', 'featstore.trainers.syncfree', 'zarr')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_syncscore_padding_and_segment_metrics_options(synced, tmp_path):
    out = tmp_path / "run"
    extra = ["--shift", "3", "--pool", "max", "--padding", "zero", "--segment-metrics", "corrected"]
    result = runner.invoke(app, ["syncscore", *_args(synced, *extra, "--out", str(out))])
    assert result.exit_code == 0, result.output
    assert "padding zero" in result.output and "AP@0.5 % (corrected)" in result.output
    assert load_run(out).config["config"]["sync"]["padding"] == "zero"
    stored = load_run(out).metrics()["syn:test"]
    assert stored["sync"]["padding"] == "zero"
    assert stored["localization"]["semantics"] == "corrected"
    again = runner.invoke(app, ["eval", str(out), "--on", "syn:test"])
    assert again.exit_code == 0, again.output
    assert "AP@0.5 % (official)" in again.output and "evaluation filter" in again.output
    bad = runner.invoke(app, ["syncscore", *_args(synced, "--shift", "1", "--pool", "max",
                                                   "--padding", "edge")])  # fmt: skip
    assert bad.exit_code == 1 and "unknown padding" in bad.output


@pytest.mark.parametrize("all_fakes", [False, True])
def test_layers_numbers_equal_syncscore_under_the_same_filter(synced, tmp_path, all_fakes):
    """Regression (issue 20.7): the demo's layers.png disagreed with the syncscore table
    printed before it because `layers` always applied the evaluation filter while the
    table counted every fake. With the same filter the numbers agree, and the plot
    states n and the filter."""
    manifest = synced.manifest("syn")
    partial = manifest["video_id"].isin(["v01", "v03"])  # fakes with one modality faked
    manifest.loc[partial, "modify_type"] = "audio_modified"
    synced.write_manifest("syn", manifest)
    flag = ["--fakes", "all"] if all_fakes else []
    out = tmp_path / "layers"
    swept = runner.invoke(
        app, ["layers", *_args(synced, "--out", str(out), "--format", "svg", *flag)]
    )
    assert swept.exit_code == 0, swept.output
    doc = json.loads((out / "layers.json").read_text())
    assert doc["fakes"] == ("all" if all_fakes else "paper")
    last = next(r for r in doc["results"] if r["audio_layer"] == "last")
    scored = runner.invoke(
        app,
        ["syncscore", *_args(synced, "--preset", "speechforensics", "--json", *flag)],
        env={"COLUMNS": "200"},
    )
    assert scored.exit_code == 0, scored.output
    binary = json.loads(scored.output)["binary"]
    assert (last["n"], last["auc"], last["ap"]) == (binary["n"], binary["auc"], binary["ap"])
    assert last["n"] == (16 if all_fakes else 14)
    svg = (out / "layers.svg").read_text()
    assert svg.startswith("<?xml") and not (out / "layers.png").exists()
    assert f"n = {last['n']} videos" in svg
    assert f"evaluation filter {'all' if all_fakes else 'paper'}" in svg
    assert f"AUC {100 * last['auc']:.2f}" in swept.output  # the printed table, in % like the plot


def test_plot_format_option_is_checked(synced, tmp_path):
    bad = runner.invoke(app, ["layers", *_args(synced, "--out", str(tmp_path), "--format", "jpg")])
    assert bad.exit_code == 1 and bad.output.startswith("error: --format must be one of png, pdf")


def test_layers_json_is_the_written_document(synced, tmp_path):
    out = tmp_path / "layers"
    result = runner.invoke(app, ["layers", *_args(synced, "--out", str(out)), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    files = doc.pop("files")
    assert doc == json.loads((out / "layers.json").read_text())
    assert files == {
        "csv": str(out / "layers.csv"),
        "json": str(out / "layers.json"),
        "png": str(out / "layers.png"),
    }
    assert "audio " in result.stderr and "AUC" in result.stderr  # one line per layer pair
