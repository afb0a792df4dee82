"""``featstore train | eval | fuse | correlate | grid | explain`` end to end on planted stores."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from featstore.cli.main import app
from featstore.store import open_store
from featstore.trainers.runs import load_run

from trainer_fixtures import write_planted_dataset  # isort: skip

runner = CliRunner()
PNG = b"\x89PNG\r\n\x1a\n"
# A few hundred steps at the paper's lr 1e-3 do not move a probe; tiny data needs more.
FAST = ["--epochs", "30", "--lr", "0.05", "--patience", "5", "--batch-videos", "4"]


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Three datasets (alpha, beta: train/val/test; gamma: test-only, no segments), two encoders."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("cli")
    url = str(root / "features.zarr")
    store = open_store(url, mode="a", durable=False)
    for encoder, dim in (("enc", 16), ("wide", 24)):
        write_planted_dataset(store, "alpha", n_videos=48, dim=dim, encoder=encoder, seed=1)
        write_planted_dataset(
            store, "beta", n_videos=40, dim=dim, encoder=encoder, seed=2, single_modality_fakes=0.4
        )
        write_planted_dataset(
            store,
            "gamma",
            n_videos=20,
            dim=dim,
            encoder=encoder,
            seed=3,
            splits=(("test", 1.0),),
            fake_segments=False,
        )
    runs = {}
    for encoder in ("enc", "wide"):
        out = root / f"run-{encoder}"
        result = invoke(
            "train", "probe", "--store", url, "--encoder", encoder, "--train", "alpha",
            "--out", out, *FAST,
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        runs[encoder] = (out, result.output)
    return root, url, runs


def test_train_prints_epochs_and_best(env):
    _, _, runs = env
    out, output = runs["enc"]
    lines = output.splitlines()
    assert lines[0].startswith("epoch   1  loss ") and " val loss " in lines[0]
    assert " val AUC " in lines[0] and lines[0].endswith("s")
    assert any(line.startswith("best epoch ") for line in lines)
    assert "validated on alpha:val" in output and f"run written to {out}" in output
    assert load_run(out).config["train"]["selection"] == "alpha:train"


def test_train_errors_are_one_line(env, tmp_path):
    _, url, runs = env
    again = invoke(
        "train", "probe", "--store", url, "--encoder", "enc", "--train", "alpha",
        "--out", runs["enc"][0],
    )  # fmt: skip
    assert again.exit_code == 1 and "error:" in again.output and "complete run" in again.output
    missing = invoke(
        "train", "probe", "--store", url, "--encoder", "nope", "--train", "alpha",
        "--out", tmp_path / "r",
    )  # fmt: skip
    assert missing.exit_code == 1 and "no encoder 'nope'" in missing.output
    assert len(missing.output.strip().splitlines()) == 1
    bad_lr = invoke(
        "train", "probe", "--store", url, "--encoder", "enc", "--train", "alpha",
        "--out", tmp_path / "r", "--lr", "-1",
    )  # fmt: skip
    assert bad_lr.exit_code == 1 and "lr must be a positive number" in bad_lr.output


def test_train_probe_defaults_and_options_are_recorded(env, tmp_path):
    """Default: the authors' loop; --batch-videos / --center-bias / --no-scale-lr are recorded."""
    _, url, _ = env
    common = ["train", "probe", "--store", url, "--encoder", "enc", "--train", "alpha"]
    default = invoke(*common, "--epochs", "2", "--out", tmp_path / "default")
    assert default.exit_code == 0, default.output
    cfg = load_run(tmp_path / "default").config
    hyper, fit = cfg["config"]["hyperparameters"], cfg["fit"]
    assert (hyper["batch_videos"], hyper["lr"], hyper["center_bias"], hyper["rng"]) == (
        1, 1e-3, False, "authors",
    )  # fmt: skip
    assert (hyper["patience"], hyper["seed"]) == (10, 43)
    assert (fit["batch_videos"], fit["lr"], fit["engine"]) == (1, 1e-3, "numba")
    options = ["--epochs", "2", "--batch-videos", "3", "--center-bias", "--no-scale-lr"]
    batched = invoke(*common, *options, "--out", tmp_path / "batched")
    assert batched.exit_code == 0, batched.output
    cfg = load_run(tmp_path / "batched").config
    hyper, fit = cfg["config"]["hyperparameters"], cfg["fit"]
    assert (hyper["batch_videos"], hyper["center_bias"], hyper["scale_lr"]) == (3, True, False)
    assert (fit["batch_videos"], fit["lr"]) == (3, 1e-3)
    auto = invoke(*common, "--epochs", "1", "--batch-videos", "auto", "--out", tmp_path / "auto")
    assert auto.exit_code == 0, auto.output
    cfg = load_run(tmp_path / "auto").config
    assert cfg["config"]["hyperparameters"]["batch_videos"] is None
    assert cfg["fit"]["batch_videos"] == 1  # auto_batch_videos: fewer than 1,024 videos
    bad = invoke(*common, "--batch-videos", "many", "--out", tmp_path / "bad")
    assert bad.exit_code != 0 and "--batch-videos" in bad.output


def test_eval_prints_and_writes_metrics(env):
    _, _, runs = env
    out = runs["enc"][0]
    result = invoke("eval", out, "--on", "alpha:test", "--ci")  # store taken from the run
    assert result.exit_code == 0, result.output
    for text in ("AUC %", "AP %", "EER %", "temporal AUC %", "AP@0.5 %", "AR@50 %"):
        assert text in result.output
    metrics = load_run(out).metrics()["alpha:test"]
    assert metrics["binary"]["auc"] > 0.95 and metrics["binary"]["auc_ci"] is not None
    assert metrics["temporal"]["mean"] > 0.9
    assert (out / "predictions" / "alpha_test.csv").is_file()


def test_eval_ood_without_segments_and_json(env):
    _, url, runs = env
    result = invoke("eval", runs["enc"][0], "--store", url, "--on", "gamma", "--json")
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.output)
    assert metrics["selection"] == "gamma:test" and metrics["binary"]["auc"] > 0.9
    assert metrics["temporal"] is None and metrics["localization"] is None


def test_eval_filter_and_all_fakes(env):
    # beta has single-modality fakes: the paper's filter drops them unless --fakes all
    _, _, runs = env
    filtered = json.loads(invoke("eval", runs["enc"][0], "--on", "beta:test", "--json").output)
    everything = json.loads(
        invoke("eval", runs["enc"][0], "--on", "beta:test", "--fakes", "all", "--json").output
    )
    assert filtered["n_evaluated"] < filtered["n_scored"] == everything["n_evaluated"]
    assert everything["binary"]["n_fake"] > filtered["binary"]["n_fake"]
    assert (filtered["fakes"], everything["fakes"]) == ("paper", "all")


def test_eval_errors(env, tmp_path):
    _, url, runs = env
    bad_split = invoke("eval", runs["enc"][0], "--store", url, "--on", "alpha:dev")
    assert bad_split.exit_code == 1
    assert "error: dataset alpha has no split 'dev' (splits: test, train, val)" in bad_split.output
    (tmp_path / "half").mkdir()
    incomplete = invoke("eval", tmp_path / "half", "--store", url, "--on", "alpha")
    assert incomplete.exit_code == 1 and "incomplete run (no config.json)" in incomplete.output
    bad_sel = invoke("eval", runs["enc"][0], "--store", url, "--on", "alpha:")
    assert bad_sel.exit_code == 1 and "NAME:SPLIT" in bad_sel.output


def test_fuse_and_fusion_run(env):
    root, url, runs = env
    out = root / "fused"
    result = invoke(
        "fuse", runs["enc"][0], runs["wide"][0], "--store", url, "--on", "alpha:test",
        "--out", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "run-enc" in result.output and "run-wide" in result.output and "fused" in result.output
    fused = load_run(out)
    members = fused.config["config"]["members"]
    assert fused.kind == "fusion" and len(members) == 2
    for member in members:
        assert load_run(out / member["path"]).kind == "probe"  # self-contained copies
    metrics = fused.metrics()["alpha:test"]
    assert metrics["binary"]["auc"] > 0.95
    # A fusion run scores like any other run, here on another dataset.
    again = invoke("eval", out, "--store", url, "--on", "beta:test", "--json")
    assert again.exit_code == 0, again.output
    assert json.loads(again.output)["kind"] == "fusion"
    one = invoke("fuse", runs["enc"][0], "--store", url, "--on", "alpha:test")
    assert one.exit_code == 1 and "at least two runs" in one.output


def test_correlate_writes_matrices(env):
    root, url, runs = env
    out = root / "corr"
    result = invoke(
        "correlate", runs["enc"][0], runs["wide"][0], "--store", url, "--on", "alpha:test",
        "--out", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "Pearson correlation" in result.output
    doc = json.loads((out / "correlation.json").read_text())
    assert doc["names"] == ["run-enc", "run-wide"] and doc["matrix"][0][0] == pytest.approx(1.0)
    assert -1 <= doc["matrix"][0][1] <= 1
    improvement = json.loads((out / "improvement.json").read_text())["matrix"]
    assert improvement[0][0] == 0.0 and improvement[1][1] == 0.0
    for stem in ("correlation", "improvement"):
        assert (out / f"{stem}.png").read_bytes()[:8] == PNG
        assert (out / f"{stem}.csv").read_text().startswith("model,run-enc,run-wide")
    assert doc["n"] == doc["n_real"] + doc["n_fake"] and doc["fakes"] == "paper"
    # the table shows no number for a model fused with itself
    table = result.output[result.output.index("relative AUC improvement") :]
    row = next(line for line in table.splitlines() if line.lstrip("│ ").startswith("run-enc"))
    assert row.replace("│", " ").split()[1] == "–"
    pdf = invoke(
        "correlate", runs["enc"][0], runs["wide"][0], "--store", url, "--on", "alpha:test",
        "--out", root / "corr-pdf", "--format", "pdf",
    )  # fmt: skip
    assert pdf.exit_code == 0, pdf.output
    for stem in ("correlation", "improvement"):
        assert (root / "corr-pdf" / f"{stem}.pdf").read_bytes()[:4] == b"%PDF"
        assert not (root / "corr-pdf" / f"{stem}.png").exists()


def test_explain_temporal(env):
    root, url, runs = env
    store = open_store(url)
    manifest = store.manifest("alpha")
    fake = manifest[(manifest["label"] == 1) & (manifest["split"] == "test")].iloc[0]
    png = root / "explain.png"
    result = invoke(
        "explain", "temporal", runs["enc"][0], "--store", url, "--on", "alpha",
        "--video", fake["video_id"], "--out", png, "--threshold", "-2",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "label fake" in result.output and "annotated fake segments: none" not in result.output
    assert png.read_bytes()[:8] == PNG
    svg = invoke(
        "explain", "temporal", runs["enc"][0], "--store", url, "--on", "alpha",
        "--video", fake["video_id"], "--out", root / "explain", "--format", "svg",
    )  # fmt: skip
    assert svg.exit_code == 0, svg.output
    assert (root / "explain.svg").read_text().startswith("<?xml")
    clash = invoke(
        "explain", "temporal", runs["enc"][0], "--store", url, "--on", "alpha",
        "--video", fake["video_id"], "--out", png, "--format", "pdf",
    )  # fmt: skip
    assert clash.exit_code == 1 and "--format pdf disagrees with the suffix" in clash.output
    missing = invoke("explain", "temporal", runs["enc"][0], "--on", "alpha", "--video", "nope")
    assert missing.exit_code == 1 and "no video 'nope' in alpha" in missing.output


GRID = """
store = "{store}"
out = "grid-out"

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
max_epochs = 30
patience = 5
batch_videos = 4
"""


def test_grid_trains_tables_and_resumes(env, tmp_path):
    _, url, _ = env
    config = tmp_path / "grid.toml"
    config.write_text(GRID.format(store=url))
    first = invoke("grid", config)
    assert first.exit_code == 0, first.output
    assert first.output.count("training ->") == 2  # gamma has no train split: test-only
    out = tmp_path / "grid-out"
    table = json.loads((out / "grid.json").read_text())
    assert table["trains"] == ["alpha", "beta"] and table["tests"] == ["alpha", "beta", "gamma"]
    rows = {r["train"]: r for r in table["rows"]}
    assert set(rows) == {"alpha", "beta"}
    assert rows["alpha"]["out_of_domain"] == ["beta", "gamma"]
    assert rows["alpha"]["in_domain"] == rows["alpha"]["tests"]["alpha"]
    for row in rows.values():
        assert row["in_domain"]["auc"] > 0.95 and row["mean_ood"]["auc"] > 0.9
    md = (out / "grid.md").read_text().splitlines()
    assert md[0].startswith("| feature | train |") and len(md) == 4
    results = (out / "results.csv").read_text().splitlines()
    assert results[0].startswith("feature,encoder,layer,train,test") and len(results) == 7
    runs = sorted(p.relative_to(out).as_posix() for p in out.glob("runs/*/*"))
    assert runs == ["runs/enc-last/alpha", "runs/enc-last/beta"]

    second = invoke("grid", config)
    assert second.exit_code == 0, second.output
    assert "training ->" not in second.output and second.output.count("reusing") == 2
    assert json.loads((out / "grid.json").read_text()) == table

    config.write_text(GRID.format(store=url).replace("lr = 0.05", "lr = 0.04"))
    changed = invoke("grid", config)
    assert (
        changed.exit_code == 1
        and "differs from the grid config (hyperparameters)" in changed.output
    )


def test_grid_fakes_all_counts_single_modality_fakes(env, tmp_path):
    _, url, _ = env
    config = tmp_path / "grid.toml"
    config.write_text(
        GRID.format(store=url).replace('name = "beta"', 'name = "beta"\nfakes = "all"')
    )
    assert invoke("grid", config, "--epoch-every", "1000").exit_code == 0
    n = {(r["train"], r["test"]): int(r["n"]) for r in _csv_rows(tmp_path / "grid-out/results.csv")}
    # beta's single-modality fakes count with fakes = "all", not in the filtered alpha column
    filtered = json.loads(
        invoke(
            "eval", tmp_path / "grid-out/runs/enc-last/alpha", "--on", "beta:test", "--json"
        ).output
    )
    assert n["alpha", "beta"] == filtered["n_scored"] > filtered["n_evaluated"]

    bad = GRID.format(store=url).replace('name = "beta"', 'name = "beta"\nfakes = "some"')
    config.write_text(bad)
    result = invoke("grid", config)
    assert result.exit_code == 1 and "datasets[1].fakes must be one of paper, all" in result.output


def _csv_rows(path):
    import csv

    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_grid_config_errors_name_the_key(env, tmp_path):
    _, url, _ = env
    config = tmp_path / "grid.toml"
    config.write_text(GRID.format(store=url).replace('name = "beta"', 'nmae = "beta"'))
    result = invoke("grid", config)
    assert result.exit_code == 1 and "unknown key datasets[1].'nmae'" in result.output
    config.write_text(GRID.format(store=url).replace("lr = 0.05", "lr = -0.05"))
    result = invoke("grid", config)
    assert result.exit_code == 1 and "[probe]" in result.output and "lr" in result.output
    config.write_text(GRID.format(store=url).replace('encoder = "enc"', 'layer = "last"'))
    result = invoke("grid", config)
    assert result.exit_code == 1 and "missing key features[0].encoder" in result.output
    config.write_text(GRID.format(store=url).replace("patience = 5", "patiense = 5"))
    result = invoke("grid", config)
    assert result.exit_code == 1 and "unknown key probe.'patiense'" in result.output
    result = invoke("grid", tmp_path / "nope.toml")
    assert result.exit_code == 1 and "no grid config" in result.output


def test_help_does_not_import_torch():
    code = (
        "import sys; from typer.testing import CliRunner; from featstore.cli.main import app; "
        "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0, r.output; "
        "assert 'eval' in r.output and 'grid' in r.output and 'train' in r.output; "
        "print(sorted(m for m in ('torch', 'zarr', 'sklearn', 'matplotlib') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_grid_writes_the_paper_layout_and_honours_cross(env, tmp_path):
    _, url, _ = env
    config = tmp_path / "grid.toml"
    grid = GRID.format(store=url).replace("max_epochs = 30", "max_epochs = 2")  # layout only
    config.write_text(grid.replace('name = "beta"', 'name = "beta"\ncross = false'))
    result = invoke("grid", config, "--epoch-every", "1000")
    assert result.exit_code == 0, result.output
    assert "E mean OOD" in result.output  # the paper's layout (J in Tab. 2: 9 columns)
    out = tmp_path / "grid-out"
    pairs = {(r["train"], r["test"]) for r in _csv_rows(out / "results.csv")}
    assert ("beta", "beta") in pairs and ("beta", "alpha") not in pairs  # in-domain only
    paper = json.loads((out / "grid_paper_auc.json").read_text())
    assert [(p["train"], p["test"]) for p in paper["pairs"]] == [
        ("alpha", "alpha"), ("beta", "beta"), ("alpha", "beta"), ("alpha", "gamma"),
    ]  # fmt: skip
    [row] = paper["rows"]
    ood = [row["values"][c] for c in paper["columns"][:-1] if "alpha→alpha" not in c
           and "beta→beta" not in c]  # fmt: skip
    assert row["values"][paper["columns"][-1]] == pytest.approx(sum(ood) / len(ood))
    assert (out / "grid_paper_ap.md").is_file()
    config.write_text(GRID.format(store=url).replace('name = "beta"', 'name = "beta"\ncross = 1'))
    bad = invoke("grid", config)
    assert bad.exit_code == 1 and "datasets[1].cross must be true or false" in bad.output


# ------------------------------------------------------------------ output: --json, --quiet


def test_train_quiet_epoch_every_and_json(env, tmp_path):
    _, url, _ = env
    base = ["train", "probe", "--store", url, "--encoder", "enc", "--train", "alpha", *FAST]
    every = invoke(*base, "--out", tmp_path / "a", "--epoch-every", "3", "--patience", "30")
    assert every.exit_code == 0, every.output
    epochs = [
        int(line.split()[1]) for line in every.output.splitlines() if line.startswith("epoch")
    ]
    assert epochs and all(e % 3 == 0 for e in epochs) and len(epochs) == 30 // 3
    quiet = invoke(*base, "--out", tmp_path / "b", "-q")
    assert quiet.exit_code == 0, quiet.output
    assert quiet.output.splitlines()[0].startswith("best epoch ")
    assert not any(line.startswith("epoch") for line in quiet.output.splitlines())
    result = runner.invoke(app, [str(a) for a in (*base, "--out", tmp_path / "c", "--json")])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)  # the epoch lines went to stderr
    assert doc["run"] == str(tmp_path / "c") and doc["kind"] == "probe"
    assert doc["config"] == json.loads((tmp_path / "c" / "config.json").read_text())
    assert result.stderr.startswith("epoch   1  loss ")


def test_fuse_and_correlate_json(env):
    root, url, runs = env
    members = [runs["enc"][0], runs["wide"][0]]
    fused = runner.invoke(
        app, ["fuse", *map(str, members), "--store", url, "--on", "alpha:test", "--json"]
    )
    assert fused.exit_code == 0, fused.output
    doc = json.loads(fused.stdout)
    assert set(doc["members"]) == {"run-enc", "run-wide"} and doc["fused"]["auc"] > 0.95
    assert doc["selection"] == "alpha:test" and doc["n_evaluated"] > 0
    out = root / "corr-json"
    args = ["--store", url, "--on", "alpha:test", "--json", "--out", str(out)]
    corr = runner.invoke(app, ["correlate", *map(str, members), *args])
    assert corr.exit_code == 0, corr.output
    doc = json.loads(corr.stdout)
    assert doc["names"] == ["run-enc", "run-wide"] and doc["pearson"][0][0] == pytest.approx(1)
    assert doc["pearson"] == json.loads((out / "correlation.json").read_text())["matrix"]
    assert doc["out"] == str(out)


def test_grid_json_and_quiet(env, tmp_path):
    _, url, _ = env
    config = tmp_path / "grid.toml"
    config.write_text(GRID.format(store=url))
    result = runner.invoke(app, ["grid", str(config), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    written = json.loads((tmp_path / "grid-out" / "grid.json").read_text())
    assert {k: v for k, v in doc.items() if k != "files"} == written
    assert "training ->" in result.stderr
    quiet = invoke("grid", config, "-q")  # reuses the runs: only the tables
    assert quiet.exit_code == 0, quiet.output
    assert quiet.output.startswith("| feature | train |"), quiet.output
