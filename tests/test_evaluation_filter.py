"""One evaluation filter on every command (issue 20 item 4, issue 15 item 9).

The same run on the same videos gives the same AUC and n whichever command
computes it (``eval``, ``syncscore``, ``fuse``, ``correlate``, ``layers``,
``grid``), checked against scikit-learn on videos re-selected here from the
manifest; ``metrics.json`` keeps a result per filter; older files still read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from featstore.cli.main import app
from featstore.store import open_store
from featstore.trainers.evaluation_filter import FilterError, check_fakes, describe
from featstore.trainers.metrics_file import find_metrics, metric_entries, metrics_key
from featstore.trainers.runs import load_run, read_predictions

from trainer_fixtures import write_planted_dataset  # isort: skip

runner = CliRunner()
FILTERS = ("paper", "all")
FAST = ["--epochs", "8", "--lr", "0.05", "--patience", "3", "--batch-videos", "4"]
GRID = """
store = "{store}"
out = "grid-out"

[[datasets]]
name = "mix"
val = false

[[features]]
encoder = "enc"

[probe]
lr = 0.05
max_epochs = 8
patience = 3
batch_videos = 4
"""


def invoke(*args: Any) -> Any:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


def invoke_json(*args: Any) -> dict[str, Any]:
    return json.loads(invoke(*args, "--json").output)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Dataset ``mix`` (a third of its fakes audio-only) with a probe feature ``enc`` and
    an audio/visual pair at layer 1; a probe run and a training-free (syncfree) run."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("filter")
    url = str(root / "features.zarr")
    store = open_store(url, mode="a", durable=False)
    kw = {"n_videos": 48, "seed": 5, "single_modality_fakes": 0.35, "n_frames": (30, 45)}
    data = write_planted_dataset(store, "mix", dim=8, encoder="enc", amplitude=0.5, **kw)
    write_planted_dataset(store, "mix", dim=6, encoder="aud", layer=1, **kw)
    write_planted_dataset(
        store, "mix", dim=6, encoder="visual", layer=1, amplitude=1.0, direction_seed=1, **kw
    )  # fakes: the streams disagree in the fake segments
    probe = root / "probe"
    invoke("train", "probe", "--store", url, "--encoder", "enc", "--train", "mix", "--no-val",
           "--out", probe, *FAST)  # fmt: skip
    sync = root / "sync"
    invoke("syncscore", "--store", url, "--audio", "aud:1", "--visual", "visual:1", "--on",
           "mix:test", "--preset", "speechforensics", "--out", sync)  # fmt: skip
    return {"root": root, "url": url, "manifest": data.manifest, "probe": probe, "sync": sync,
            "store": store, "kw": kw}  # fmt: skip


def _reference(world: dict[str, Any], run: Path, fakes: str) -> dict[str, Any]:
    """AUC and counts by scikit-learn on the test videos ``fakes`` keeps, chosen here from
    the manifest's columns (not by the filter function), with the run's stored scores."""
    m = world["manifest"]
    test = m[m["split"] == "test"]
    if fakes == "paper":
        test = test[(test["label"] == 0) | (test["modify_type"] == "both_modified")]
    scores = read_predictions(run, "mix_test").set_index("video_id")["score"]
    y = test["label"].to_numpy()
    return {
        "auc": roc_auc_score(y, scores.loc[test["video_id"]].to_numpy()),
        "n": len(test),
        "n_real": int((y == 0).sum()),
        "n_fake": int((y == 1).sum()),
        "ids": set(test["video_id"]),
    }


def test_the_filter_left_something_out(world: dict[str, Any]) -> None:
    m = world["manifest"]
    test = m[(m["split"] == "test") & (m["label"] == 1)]
    assert (test["modify_type"] == "audio_modified").sum() >= 2
    assert (test["modify_type"] == "both_modified").sum() >= 2


@pytest.mark.parametrize("fakes", FILTERS)
def test_every_command_gives_the_same_numbers(world: dict[str, Any], fakes: str) -> None:
    url, probe, sync = world["url"], world["probe"], world["sync"]
    flag = ["--fakes", fakes]
    evaluated = invoke_json("eval", probe, "--on", "mix:test", *flag)
    ref = _reference(world, probe, fakes)  # the scores eval stored; the videos chosen here
    counts = (ref["n"], ref["n_real"], ref["n_fake"])
    b = evaluated["binary"]
    assert b["auc"] == pytest.approx(ref["auc"], abs=1e-12)
    assert (b["n"], b["n_real"], b["n_fake"]) == counts
    f = evaluated["filter"]
    assert (evaluated["fakes"], f["fakes"], f["n_real"], f["n_fake"]) == (fakes, fakes, *counts[1:])
    if evaluated["temporal"]:
        assert evaluated["temporal"]["fakes"] == fakes
        assert evaluated["temporal"]["n_videos"] <= ref["n_fake"]

    fused = invoke_json("fuse", probe, sync, "--on", "mix:test", *flag)
    member = fused["members"][probe.name]
    assert member["auc"] == pytest.approx(ref["auc"], abs=1e-12)
    assert (member["n"], member["n_real"], member["n_fake"]) == counts
    assert fused["fakes"] == fakes and fused["n_evaluated"] == ref["n"]

    correlated = invoke_json(
        "correlate", probe, sync, "--on", "mix:test", "--out", world["root"] / f"corr-{fakes}",
        *flag,
    )  # fmt: skip
    assert (correlated["n"], correlated["n_real"], correlated["n_fake"]) == counts
    assert correlated["fakes"] == fakes
    # the fusion gain is computed from each model's AUC on those very videos
    gain = correlated["relative_improvement"][0][1]
    assert gain == pytest.approx(100 * (fused["fused"]["auc"] - ref["auc"]) / ref["auc"])

    # the training-free pair: syncscore, eval of its run and the layer sweep agree
    sync_ref = _reference(world, sync, fakes)
    scored = invoke_json("syncscore", "--store", url, "--audio", "aud:1", "--visual", "visual:1",
                         "--on", "mix:test", "--preset", "speechforensics", *flag)  # fmt: skip
    again = invoke_json("eval", sync, "--on", "mix:test", *flag)
    out = world["root"] / f"layers-{fakes}"
    printed = invoke("layers", "--store", url, "--audio", "aud", "--visual", "visual",
                     "--on", "mix:test", "--out", out, *flag).output  # fmt: skip
    (layer,) = json.loads((out / "layers.json").read_text())["results"]
    for b in (scored["binary"], again["binary"], layer):
        assert b["auc"] == pytest.approx(sync_ref["auc"], abs=1e-12)
        assert (b["n"], b["n_real"], b["n_fake"]) == (
            sync_ref["n"], sync_ref["n_real"], sync_ref["n_fake"],
        )  # fmt: skip
    assert f"evaluation filter {fakes}" in printed
    assert json.loads((out / "layers.json").read_text())["fakes"] == fakes


def test_grid_numbers_equal_eval_and_keep_both_filters(world: dict[str, Any]) -> None:
    root = world["root"]
    config = root / "grid.toml"
    config.write_text(GRID.format(store=world["url"]))
    run = root / "grid-out" / "runs" / "enc-last" / "mix"
    for fakes in FILTERS:
        printed = invoke("grid", config, "--fakes", fakes, "--epoch-every", "1000").output
        ref = _reference(world, run, fakes)
        (row,) = pd.read_csv(root / "grid-out" / "results.csv").to_dict("records")
        assert row["auc"] == pytest.approx(ref["auc"], abs=1e-12)
        assert (row["n"], row["n_real"], row["n_fake"], row["fakes"]) == (
            ref["n"], ref["n_real"], ref["n_fake"], fakes,
        )  # fmt: skip
        assert f"fake, filter {fakes})" in printed and f"evaluation filter {fakes}" in printed
        evaluated = invoke_json("eval", run, "--on", "mix:test", "--fakes", fakes)
        assert evaluated["binary"]["auc"] == row["auc"] and evaluated["binary"]["n"] == row["n"]
        tables = json.loads((root / "grid-out" / "grid_paper_auc.json").read_text())
        assert f"evaluation filter {fakes}" in tables["caption"]
    stored = load_run(run).metrics()
    assert {"mix:test", "mix:test|fakes=all"} <= set(stored)
    assert stored["mix:test"]["fakes"] == "paper" and stored["mix:test|fakes=all"]["fakes"] == "all"
    again = invoke("grid", config, "--fakes", "all", "--epoch-every", "1000").output
    assert "reusing" in again and "training ->" not in again


def test_both_filters_keep_both_entries(world: dict[str, Any]) -> None:
    probe = world["probe"]
    paper = invoke_json("eval", probe, "--on", "mix:test")  # the default is the paper's
    every = invoke_json("eval", probe, "--on", "mix:test", "--fakes", "all")
    stored = load_run(probe).metrics()
    assert stored["mix:test"]["binary"] == paper["binary"]
    assert stored["mix:test|fakes=all"]["binary"] == every["binary"]
    assert paper["binary"]["n"] < every["binary"]["n"]
    entries = {(e.selection, e.fakes): e for e in metric_entries(probe)}
    assert entries["mix:test", "paper"].n == paper["binary"]["n"]
    assert entries["mix:test", "all"].auc == every["binary"]["auc"]
    # the predictions the two entries share mark the paper filter's videos
    preds = read_predictions(probe, "mix_test")
    assert (
        set(preds.loc[preds["evaluated"] == 1, "video_id"])
        == _reference(world, probe, "paper")["ids"]
    )


def test_printed_output_names_the_filter(world: dict[str, Any]) -> None:
    probe, sync = world["probe"], world["sync"]
    for fakes in FILTERS:
        for args in (
            ("eval", probe, "--on", "mix:test"),
            ("fuse", probe, sync, "--on", "mix:test"),
            ("correlate", probe, sync, "--on", "mix:test", "--out", world["root"] / "c"),
        ):
            output = runner.invoke(
                app, [str(a) for a in (*args, "--fakes", fakes)], env={"COLUMNS": "200"}
            ).output
            assert f"evaluation filter {fakes}" in output, output


def test_a_bad_filter_is_one_error_line(world: dict[str, Any]) -> None:
    for args in (
        ("eval", world["probe"], "--on", "mix:test"),
        ("layers", "--store", world["url"], "--audio", "aud", "--visual", "visual", "--on", "mix",
         "--out", world["root"] / "x"),
    ):  # fmt: skip
        result = runner.invoke(app, [str(a) for a in (*args, "--fakes", "some")])
        assert result.exit_code == 1
        assert result.output.strip() == "error: --fakes must be one of paper, all, got 'some'"
    with pytest.raises(FilterError):
        check_fakes("both")
    assert check_fakes("filter") == check_fakes("evaluation filter") == "paper"  # older names
    assert describe("all").endswith("every fake counted")


# ---------------------------------------------------------------- older files


def _old_entry(auc: float, n: int, fakes: str | None) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "selection": "mix:test",
        "kind": "probe",
        "n_scored": 24,
        "n_evaluated": n,
        "binary": {"auc": auc, "ap": 0.8, "eer": 0.2, "n": n, "n_real": 12, "n_fake": n - 12},
        "temporal": {"mean": 0.7, "n_videos": n - 12, "n_skipped": 0, "fakes": fakes},
        "localization": None,
    }
    if fakes is not None:
        entry["fakes"] = fakes
    return entry


@pytest.mark.parametrize(
    ("recorded", "read_as"),
    [("all", "all"), ("evaluation filter", "paper"), (None, "paper")],
)
def test_older_metrics_files_read(tmp_path: Path, recorded: str | None, read_as: str) -> None:
    """Before the key carried the filter, ``eval --all-fakes`` wrote under the plain key and
    records said ``evaluation filter``; the oldest said nothing (the paper's rule)."""
    doc = {"mix:test": _old_entry(0.75, 24 if read_as == "all" else 18, recorded)}
    (tmp_path / "metrics.json").write_text(json.dumps(doc))
    (entry,) = metric_entries(tmp_path)
    assert (entry.key, entry.selection, entry.fakes, entry.auc) == (
        "mix:test", "mix:test", read_as, 0.75,
    )  # fmt: skip
    assert entry.headline()["n"] == doc["mix:test"]["binary"]["n"]
    assert find_metrics(tmp_path, "mix:test", read_as)["binary"]["auc"] == 0.75
    other = "paper" if read_as == "all" else "all"
    assert find_metrics(tmp_path, "mix:test", other) is None


def test_an_older_all_fakes_entry_is_kept_when_the_paper_result_lands(
    world: dict[str, Any], tmp_path: Path
) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(world["probe"], run)
    old = _old_entry(0.75, 24, "all")
    (run / "metrics.json").write_text(json.dumps({"mix:test": old}))
    paper = invoke_json("eval", run, "--on", "mix:test")
    stored = load_run(run).metrics()
    assert stored["mix:test"]["binary"] == paper["binary"]
    assert stored[metrics_key("mix:test", "all")] == old  # moved to its own key, not lost
    # Fig. 2 reads either filter's stored result
    from featstore.trainers.figures import localization_bars

    (bar,) = localization_bars([run], "mix:test", fakes="all")
    assert (bar.auc, bar.fakes) == (0.75, "all")


def test_models_endpoint_reads_both_keys(world: dict[str, Any], tmp_path: Path) -> None:
    """``/v1/models`` shows each stored result's headline under its key."""
    from fastapi.testclient import TestClient

    from featstore.api.app import create_app
    from featstore.api.settings import RunSpec, Settings

    # the service computes features of uploads: a probe on an encoder it can run
    write_planted_dataset(world["store"], "mix", dim=104, encoder="logfbank", **world["kw"])
    probe = tmp_path / "served"
    invoke("train", "probe", "--store", world["url"], "--encoder", "logfbank", "--train", "mix",
           "--no-val", "--out", probe, *FAST)  # fmt: skip
    invoke("eval", probe, "--on", "mix:test")
    invoke("eval", probe, "--on", "mix:test", "--fakes", "all")
    stored = load_run(probe).metrics()
    settings = Settings(store_url=world["url"], runs=(RunSpec("probe", probe),))
    with TestClient(create_app(settings)) as client:
        for _ in range(300):
            if client.get("/readyz").status_code == 200:
                break
            import time

            time.sleep(0.05)
        (model,) = client.get("/v1/models").json()["models"]
    metrics = model["metrics"]
    for key in ("mix:test", "mix:test|fakes=all"):
        binary = stored[key]["binary"]
        assert metrics[key]["auc"] == pytest.approx(binary["auc"])
        assert (metrics[key]["n_real"], metrics[key]["n_fake"]) == (
            binary["n_real"], binary["n_fake"],
        )  # fmt: skip
    assert np.isfinite(metrics["mix:test"]["ap"])


def test_grid_tables_say_which_filter_each_test_set_used() -> None:
    from featstore.trainers.report import GridResult, ReportError, grid_table, paper_grid

    results = [
        GridResult("f", "a", "a", 0.9, 0.8, 10, fakes="paper"),
        GridResult("f", "a", "b", 0.7, 0.6, 12, fakes="all"),
    ]
    table = grid_table(results)
    assert dict(table.filters) == {"a": "paper", "b": "all"}
    caption = paper_grid(table).caption
    assert "evaluation filter paper: " in caption and "(test set a)" in caption
    assert "evaluation filter all: every fake counted (test set b)" in caption
    assert json.loads(table.to_json())["filters"] == {"a": "paper", "b": "all"}
    with pytest.raises(ReportError, match="two evaluation filters"):
        grid_table([*results, GridResult("g", "a", "b", 0.7, 0.6, 10, fakes="paper")])
