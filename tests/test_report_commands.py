"""``featstore report table6 | fig2 | fig3`` (issue 15, item 12) against independent references."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score
from typer.testing import CliRunner

from featstore.cli.main import app
from featstore.store import EncoderInfo, open_store
from featstore.trainers.figures import (
    FigureError,
    localization_bars,
    localization_figure,
    run_modality,
)
from featstore.trainers.kinds.syncfree import run_syncscore
from featstore.trainers.runs import load_run
from featstore.trainers.sync_table import POOL_NAMES, TABLE6_POOLS, sync_table
from featstore.trainers.syncfree import SyncConfig, shifted_cosines
from featstore.trainers.video_figure import score_figure, video_figure_data

runner = CliRunner()
AUDIO, VISUAL = "avhubert-a", "avhubert-v"  # registered names: Fig. 2 finds their modality
MAGIC = {".png": b"\x89PNG", ".pdf": b"%PDF", ".svg": b"<?xml"}


def _cos(x, y):
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))


def brute_force_eq3(audio, visual, shift, pool):
    """Eq. 3 with loops: default padding (zeros for mean, left out otherwise)."""
    t = audio.shape[0]
    best = math.inf
    for delta in range(-shift, shift + 1):
        values = [-_cos(audio[i], visual[i + delta]) for i in range(t) if 0 <= i + delta < t]
        if pool == "mean":
            values += [0.0] * (t - len(values))
        if not values:
            continue
        x, n = np.array(values), len(values)
        pooled = {
            "mean": x.mean(),
            "max": x.max(),
            "min": x.min(),
            "logsumexp": x.max() + np.log(np.exp(n * (x - x.max())).sum()) / n,
            "p97": np.percentile(x, 97),
            "p3": np.percentile(x, 3),
        }[pool]
        best = min(best, float(pooled))
    return best


def write_sync_dataset(store, name, *, n=16, seed=0, lag=0, single=2):
    """Reals in sync (the visual lagging by ``lag``), fakes out of sync in a segment; the last
    ``single`` fakes are audio_modified (outside the evaluation filter)."""
    rng = np.random.default_rng(seed)
    rows, feats = [], {}
    fakes_seen = 0
    for i in range(n):
        t = int(rng.integers(40, 60))
        base = rng.standard_normal((t + 20, 8))
        audio = base[10 : 10 + t]
        visual = np.tanh(base[10 - lag : 10 - lag + t]) + 0.5 * rng.standard_normal((t, 8))
        segments, kind = [], "real"
        if i % 2:
            fakes_seen += 1
            lo = int(rng.integers(0, t - 20))
            visual[lo : lo + 15] = rng.standard_normal((15, 8))
            segments = [[lo / 25, (lo + 15) / 25]]
            kind = "audio_modified" if fakes_seen > n // 2 - single else "both_modified"
        vid = f"{name}-{i:02d}"
        feats[vid] = (audio.astype(np.float32), visual.astype(np.float32))
        rows.append(
            {
                "video_id": vid,
                "path": f"{vid}.mp4",
                "label": i % 2,
                "split": "test",
                "modify_type": kind,
                "fake_segments": json.dumps(segments),
            }
        )
    store.write_manifest(name, pd.DataFrame(rows))
    for enc, side in ((AUDIO, 0), (VISUAL, 1)):
        info = EncoderInfo(name=enc, frame_hz=25.0, layer_dims={"last": 8}, dtype="float32")
        with store.writer(name, info) as writer:
            for vid, pair in feats.items():
                writer.add(vid, {"last": pair[side]})
    return pd.DataFrame(rows), feats


@pytest.fixture(scope="module")
def two_sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    store = open_store(root / "features.zarr", mode="a", durable=False)
    lab = write_sync_dataset(store, "lab", seed=1)
    wild = write_sync_dataset(store, "wild", seed=2, lag=6)
    return store, {"lab": lab, "wild": wild}


# ------------------------------------------------------------------ Tab. 6


def test_table6_cells_equal_a_brute_force_eq3(two_sets):
    store, data = two_sets
    result = sync_table(store, ["lab", "wild:test"], AUDIO, VISUAL)
    assert result.selections == ("lab:test", "wild:test") and result.pools == TABLE6_POOLS
    for name, (rows, feats) in data.items():
        kept = rows[(rows["label"] == 0) | (rows["modify_type"] == "both_modified")]
        labels = kept["label"].to_numpy()
        for shift in (0, 15):
            for pool in TABLE6_POOLS:
                scores = [brute_force_eq3(*feats[v], shift, pool) for v in kept["video_id"]]
                cell = result.cell(f"{name}:test", shift, pool)
                assert cell.n == len(kept) and cell.n_fake == int(labels.sum())
                assert cell.auc == pytest.approx(roc_auc_score(labels, scores), abs=1e-9)
                assert cell.ap == pytest.approx(average_precision_score(labels, scores), abs=1e-9)
                expected = "zero" if pool == "mean" else "exclude"
                assert cell.padding == result.settings["paddings"][pool] == expected


def test_table6_equals_syncscore(two_sets):
    store, _ = two_sets
    result = sync_table(store, ["wild"], AUDIO, VISUAL, shifts=[15], pools=["p97", "mean"])
    for pool in ("p97", "mean"):
        direct = run_syncscore(store, "wild", AUDIO, VISUAL, config=SyncConfig(15, pool))
        cell = result.cell("wild:test", 15, pool)
        assert (cell.auc, cell.ap) == (direct["binary"]["auc"], direct["binary"]["ap"])
        assert cell.n == direct["n_evaluated"]


def test_table6_layout_and_settings(two_sets):
    store, _ = two_sets
    result = sync_table(store, ["lab", "wild"], AUDIO, VISUAL)
    table = result.table("auc")
    assert table.rows == tuple(POOL_NAMES[p] for p in TABLE6_POOLS)
    assert table.rows[0] == "average" and table.rows[3] == "percentile-97"
    assert table.columns == ("lab Δ=0", "lab Δ=15", "wild Δ=0", "wild Δ=15")
    assert table.values[0][3] == result.cell("wild:test", 15, "mean").auc
    assert "n = 14 (8 real / 6 fake)" in table.caption and "evaluation filter" in table.caption
    assert "average: unpaired positions count as cosine 0" in table.caption
    every = sync_table(store, ["lab"], AUDIO, VISUAL, pools=["max"], fakes="all")
    assert every.cell("lab:test", 0, "max").n == 16 and every.settings["fakes"] == "all"
    assert every.settings["evaluated_hashes"] != result.settings["evaluated_hashes"]


def test_table6_command_writes_and_prints(two_sets, tmp_path):
    store, _ = two_sets
    args = ["report", "table6", "--store", store.url, "--audio", AUDIO, "--visual", VISUAL,
            "--on", "lab", "--on", "wild", "--out", str(tmp_path)]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "| pool (AUC) | lab Δ=0 | lab Δ=15 | wild Δ=0 | wild Δ=15 |" in result.output
    assert "| pool (AP) |" in result.output and "**" in result.output  # best values bolded
    for metric in ("auc", "ap"):
        doc = json.loads((tmp_path / f"table6_{metric}.json").read_text())
        assert doc["metric"] == metric and len(doc["cells"]) == 2 * 2 * 6
        assert doc["settings"]["paddings"]["mean"] == "zero"
        assert (
            (tmp_path / f"table6_{metric}.csv").read_text().startswith(f"pool ({metric.upper()})")
        )
    bad = runner.invoke(app, [*args[:-2], "--shifts", "0,x"])
    assert bad.exit_code == 1 and "--shifts must be integers" in bad.output
    bad = runner.invoke(app, [*args[:-2], "--pools", "median"])
    assert bad.exit_code == 1 and "unknown pool" in bad.output


# ------------------------------------------------------------------ Fig. 2


@pytest.fixture(scope="module")
def sync_runs(two_sets, tmp_path_factory):
    store, _ = two_sets
    root = tmp_path_factory.mktemp("runs")
    for name, config in (("sf", SyncConfig(15, "mean")), ("factor", SyncConfig(0, "p97"))):
        run_syncscore(store, "lab", AUDIO, VISUAL, config=config, out=root / name)
    return store, root


def test_fig2_bars_come_from_the_runs_metrics(sync_runs, tmp_path):
    _, root = sync_runs
    bars = localization_bars([root / "sf", root / "factor"], "lab", labels=["SF", "FACTOR"])
    for bar, name in zip(bars, ("sf", "factor"), strict=True):
        stored = load_run(root / name).metrics()["lab:test"]
        assert bar.temporal_auc == stored["temporal"]["mean"] and bar.auc == stored["binary"]["auc"]
        assert bar.n == 14 and bar.n_temporal == 6 and bar.fakes == "paper"
        assert bar.modality == "audio-visual"
    for suffix, magic in MAGIC.items():
        path = localization_figure(bars, tmp_path / f"fig2{suffix}", selection="lab:test")
        assert path.read_bytes().startswith(magic)
    svg = (tmp_path / "fig2.svg").read_text()
    assert "n = 6 fake videos" in svg and "evaluation filter" in svg  # the caption, as text
    with pytest.raises(FigureError, match="labels for 2 runs"):
        localization_bars([root / "sf", root / "factor"], "lab", labels=["one"])
    with pytest.raises(FigureError, match="no metrics for wild:test"):
        localization_bars([root / "sf"], "wild")
    with pytest.raises(FigureError, match=r"\.png, \.pdf or \.svg"):
        localization_figure(bars, tmp_path / "fig2.jpg", selection="lab:test")


def test_fig2_default_labels_tell_grid_runs_apart(sync_runs, tmp_path):
    import shutil

    _, root = sync_runs
    for feature in ("clip-last", "wav2vec2-last"):  # a grid's runs/<feature>/<dataset>
        shutil.copytree(root / "sf", tmp_path / feature / "lab")
    bars = localization_bars(
        [tmp_path / "clip-last" / "lab", tmp_path / "wav2vec2-last" / "lab"], "lab"
    )
    assert [b.label for b in bars] == ["clip-last/lab", "wav2vec2-last/lab"]


def test_run_modality_reads_any_config_layout():
    assert run_modality({"kind": "probe", "encoder": "wav2vec2", "layer": "last"}) == "audio"
    assert run_modality({"features": {"keys": ["clip:last"]}}) == "visual"
    assert run_modality({"audio": "avhubert-a:3", "visual": "clip"}) == "audio-visual"
    assert run_modality({"encoder": "avhubert-av"}) == "audio-visual"
    assert run_modality({"store": "wav2vec2", "kind": "fusion"}) == "unknown"


def test_fig2_command(sync_runs, tmp_path):
    _, root = sync_runs
    out = tmp_path / "fig2.pdf"
    result = runner.invoke(
        app, ["report", "fig2", str(root / "sf"), str(root / "factor"), "--on", "lab",
              "--label", "SpeechForensics", "--label", "FACTOR", "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "SpeechForensics" in result.output and "n = 14 videos" in result.output
    assert out.read_bytes().startswith(b"%PDF")
    data = json.loads(out.with_suffix(".json").read_text())
    assert [b["label"] for b in data["bars"]] == ["SpeechForensics", "FACTOR"]
    missing = runner.invoke(app, ["report", "fig2", str(root / "sf"), "--on", "wild",
                                  "--out", str(out)])  # fmt: skip
    assert missing.exit_code == 1 and "featstore eval" in missing.output
    as_json = runner.invoke(
        app, ["report", "fig2", str(root / "sf"), str(root / "factor"), "--on", "lab",
              "--out", str(tmp_path / "j.svg"), "--json"],
    )  # fmt: skip
    assert as_json.exit_code == 0, as_json.output
    doc = json.loads(as_json.stdout)
    sidecar = json.loads((tmp_path / "j.json").read_text())
    assert doc["bars"] == sidecar["bars"] and doc["caption"] == sidecar["caption"]
    assert doc["figure"] == str(tmp_path / "j.svg") and doc["data"] == str(tmp_path / "j.json")


# ------------------------------------------------------------------ Fig. 3


@pytest.fixture(scope="module")
def media_run(tmp_path_factory):
    """One generated clip with stored features and a syncfree run over them."""
    from featstore.datasets import read_dataset
    from featstore.media import decode
    from featstore.sample import make_sample

    root = tmp_path_factory.mktemp("fig3")
    make_sample(root / "sample", n_clips=2, size=64, duration_s=(2.0, 2.0), seed=3, val_fraction=0)
    imported = read_dataset("av1m", root / "sample")
    manifest = imported.manifest
    store = open_store(root / "features.zarr", mode="a", durable=False)
    store.write_manifest("sample", manifest, attrs={"root": str(imported.root)})
    rng = np.random.default_rng(0)
    clips = {}
    for enc in (AUDIO, VISUAL):
        info = EncoderInfo(name=enc, frame_hz=25.0, layer_dims={"last": 8}, dtype="float32")
        with store.writer("sample", info) as writer:
            for row in manifest.itertuples():
                decoded = decode(imported.root / row.path)
                clips[row.video_id] = decoded
                t = decoded.n_frames
                writer.add(row.video_id, {"last": rng.standard_normal((t, 8)).astype(np.float32)})
    # A segment dataset's row: a span of the same clip (featstore.datasets.segments' columns).
    first = manifest.iloc[0]
    segment = pd.DataFrame(
        [{"video_id": "span", "path": first["path"], "label": 0, "split": "test",
          "start_s": 0.48, "end_s": 1.48, "fake_segments": "[]"}]
    )  # fmt: skip
    store.write_manifest("seg", segment, attrs={"root": str(imported.root)})
    for enc in (AUDIO, VISUAL):
        info = EncoderInfo(name=enc, frame_hz=25.0, layer_dims={"last": 8}, dtype="float32")
        with store.writer("seg", info) as writer:
            writer.add("span", {"last": rng.standard_normal((25, 8)).astype(np.float32)})
    clips["span"] = clips[str(first["video_id"])]
    split = str(manifest["split"].iloc[0])
    run_syncscore(store, f"sample:{split}", AUDIO, VISUAL, config=SyncConfig(3, "max"),
                  out=root / "run", fakes="all")  # the one fake is audio-only  # fmt: skip
    fake = manifest[manifest["label"] == 1]
    video = str((fake if len(fake) else manifest)["video_id"].iloc[0])
    return store, root / "run", video, clips[video], clips["span"]


def test_fig3_data_is_the_decoded_media_and_the_runs_scores(media_run, tmp_path):
    store, run, video, decoded, _ = media_run
    data = video_figure_data(run, store, "sample", video, at_s=[0.1, 1.0])
    assert data.kind == "syncfree" and data.frame_scores.shape == (decoded.n_frames,)
    assert data.spectrogram.shape[0] == 64
    assert abs(data.spectrogram.shape[1] - decoded.n_samples / 160) <= 2  # 10 ms steps
    assert data.thumbnail_times_s == (0.1, 1.0)
    for t, thumb in zip(data.thumbnail_times_s, data.thumbnails, strict=True):
        np.testing.assert_array_equal(thumb, decoded.frames[int(t * 25)])  # 64 px: not scaled
    default = video_figure_data(run, store, "sample", video)
    rows = [int(t * 25) for t in default.thumbnail_times_s]
    assert (
        int(np.argmax(default.frame_scores)) in rows
        and int(np.argmin(default.frame_scores)) in rows
    )
    for suffix in (".png", ".svg"):
        path = score_figure(data, tmp_path / f"fig3{suffix}")
        assert path.read_bytes().startswith(MAGIC[suffix])
    with pytest.raises(FigureError, match="outside the video"):
        video_figure_data(run, store, "sample", video, at_s=[99.0])


def test_fig3_decodes_a_segment_rows_span(media_run):
    store, run, _, _, source = media_run
    data = video_figure_data(run, store, "seg", "span", at_s=[0.0, 0.5])
    assert data.frame_scores.shape == (25,) and data.duration_s == pytest.approx(1.0)
    for t, thumb in zip(data.thumbnail_times_s, data.thumbnails, strict=True):
        np.testing.assert_array_equal(thumb, source.frames[12 + int(t * 25)])  # 0.48 s = frame 12
    assert abs(data.spectrogram.shape[1] - 100) <= 2  # one second of audio, not the clip's two


def test_fig3_command(media_run, tmp_path):
    store, run, video, _, _ = media_run
    out = tmp_path / "fig3.pdf"
    result = runner.invoke(app, ["report", "fig3", str(run), "--store", store.url, "--on",
                                 "sample", "--video", video, "--at", "0.5,1.5", "--out", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert out.read_bytes().startswith(b"%PDF") and f"sample/{video}" in result.output
    doc = json.loads(out.with_suffix(".json").read_text())
    assert doc["thumbnail_times_s"] == [0.5, 1.5] and len(doc["frame_scores"]) > 0
    bad = runner.invoke(app, ["report", "fig3", str(run), "--on", "sample", "--video",
                              "nope", "--out", str(out)])  # fmt: skip
    assert bad.exit_code == 1 and "nope" in bad.output
    old = runner.invoke(app, ["report", "fig3", str(run), "--store", store.url, "-d", "sample",
                              "--video", video, "--out", str(out), "--json"])  # fmt: skip
    assert old.exit_code == 0, old.output
    assert old.stderr.startswith("warning: -d is deprecated here and will be removed: use --on")
    assert json.loads(old.stdout) == {
        "caption": doc["caption"],
        "figure": str(out),
        "data": str(out.with_suffix(".json")),
    }


def test_shifted_cosines_reference_helper():
    """The brute-force helper above agrees with the library on one video (sanity of the test)."""
    rng = np.random.default_rng(9)
    a, v = rng.standard_normal((12, 4)), rng.standard_normal((12, 4))
    c = shifted_cosines(a.astype(np.float32), v.astype(np.float32), 0)[:, 0]
    assert brute_force_eq3(a, v, 0, "mean") == pytest.approx(float(-c.mean()), abs=1e-6)
