"""Views (one import, many protocols) through ``Selection.parse`` / ``select`` and the commands.

Every command that takes a selection goes through ``Selection.parse`` and
``select``; these tests pick views by name there and through the CLI of
train, eval, syncscore and grid, and check what run configs record.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from featstore.cli.main import app
from featstore.datasets import add_view, set_default_view
from featstore.store import open_store
from featstore.trainers.data import (
    Selection,
    SelectionError,
    default_val,
    select,
    selection_summary,
    split_hash,
)

from trainer_fixtures import write_planted_dataset  # isort: skip

runner = CliRunner()
FAST = ["--epochs", "20", "--lr", "0.05", "--patience", "5", "--batch-videos", "4"]
SWAP = {"train": "test", "test": "train", "val": "val"}


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Dataset ``toy`` (official train/val/test) with audio and visual features and two views:

    ``swap`` (official train and test exchanged, every 7th video left out) and
    ``everyfake`` (official splits, evaluation policy ``all``).
    """
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("views")
    url = str(root / "features.zarr")
    store = open_store(url, mode="a", durable=False)
    for encoder in ("aud", "vis"):
        data = write_planted_dataset(
            store, "toy", n_videos=40, dim=8, encoder=encoder, seed=4, single_modality_fakes=0.5
        )
    manifest = store.manifest("toy")
    swapped = manifest["split"].map(SWAP)
    swapped[manifest.index % 7 == 6] = ""
    manifest = add_view(manifest, "swap", swapped, {"protocol": "files", "seed": None})
    manifest = add_view(
        manifest, "everyfake", manifest["split"], {"protocol": "x", "evaluation": "all"}
    )
    store.write_manifest("toy", manifest, attrs=manifest.attrs)
    return root, url, open_store(url), data.manifest, swapped


def ids_where(manifest: pd.DataFrame, mask) -> list[str]:
    return manifest.loc[mask, "video_id"].tolist()


def test_select_in_a_view(env) -> None:
    _, _, store, manifest, swapped = env
    rows = select(store, "toy@swap:train", "aud")
    assert rows["video_id"].tolist() == ids_where(manifest, (swapped == "train").to_numpy())
    assert set(manifest.set_index("video_id").loc[rows["video_id"], "split"]) == {"test"}
    assert rows.attrs["view"] == "swap" and rows.attrs["selection"] == "toy@swap:train"
    every = select(store, "toy@swap:*", "aud")
    assert every["video_id"].tolist() == ids_where(manifest, (swapped != "").to_numpy())
    official = select(store, "toy:train", "aud")  # no default view: the split column
    assert official["video_id"].tolist() == ids_where(manifest, manifest["split"] == "train")
    assert official.attrs["view"] == "official"
    with pytest.raises(
        SelectionError, match=r"no view 'nope' \(views: official, everyfake, swap\)"
    ):
        select(store, "toy@nope:train", "aud")
    with pytest.raises(SelectionError, match=r"\(view swap\) has no split 'dev' \(splits: test"):
        select(store, "toy@swap:dev", "aud")


def test_default_view_and_official(tmp_path) -> None:
    store = open_store(tmp_path / "s.zarr", mode="a")
    manifest = write_planted_dataset(store, "toy", n_videos=20, dim=4, encoder="aud").manifest
    swapped = manifest["split"].map(SWAP)
    viewed = add_view(store.manifest("toy"), "swap", swapped, {"protocol": "files"}, default=True)
    store.write_manifest("toy", viewed, attrs=viewed.attrs)
    assert select(store, "toy:train", "aud")["video_id"].tolist() == ids_where(
        manifest, (swapped == "train").to_numpy()
    )
    assert select(store, "toy@official:train", "aud")["video_id"].tolist() == ids_where(
        manifest, manifest["split"] == "train"
    )
    official = set_default_view(store.manifest("toy"), "official")
    store.write_manifest("toy", official, attrs=official.attrs)
    assert select(store, "toy:train", "aud").attrs["view"] == "official"


def test_evaluation_policy_of_a_view(env) -> None:
    _, _, store, manifest, _ = env
    test = manifest[manifest["split"] == "test"]
    filtered = select(store, "toy:test", "aud", fakes="paper")
    assert filtered["video_id"].tolist() == ids_where(
        test, (test["label"] == 0) | (test["modify_type"] == "both_modified")
    )
    everything = select(store, "toy@everyfake:test", "aud", fakes="paper")
    assert everything["video_id"].tolist() == test["video_id"].tolist()
    assert (test["modify_type"] == "audio_modified").any() and everything.attrs[
        "evaluation"
    ] == "all"


def test_summary_tells_views_apart_and_val_follows_the_view(env) -> None:
    _, _, store, _, _ = env
    a = Selection.parse("toy@everyfake:test")
    b = Selection.parse("toy:test")
    sa, sb = (selection_summary(s, select(store, s, "aud")) for s in (a, b))
    assert sa["split_hash"] == sb["split_hash"]  # the same videos ...
    assert (sa["view"], sa["protocol"]) == ("everyfake", "x")  # ... told apart by the view
    assert (sb["view"], sb["protocol"]) == ("official", "official")
    swap = selection_summary(
        Selection.parse("toy@swap:test"), select(store, "toy@swap:test", "aud")
    )
    assert swap["split_hash"] != sb["split_hash"] and swap["view"] == "swap"
    assert default_val(store, Selection.parse("toy@swap:train")) == Selection(
        "toy", "val", view="swap"
    )
    assert default_val(store, Selection.parse("toy:train")) == Selection("toy", "val")


def test_commands_take_view_selections(env) -> None:
    root, url, _, manifest, swapped = env
    out = root / "probe-swap"
    trained = invoke(
        "train", "probe", "--store", url, "--encoder", "aud", "--train", "toy@swap:train",
        "--out", out, *FAST,
    )  # fmt: skip
    assert trained.exit_code == 0, trained.output
    config = json.loads((out / "config.json").read_text())
    train_ids = ids_where(manifest, (swapped == "train").to_numpy())
    assert config["train"]["selection"] == "toy@swap:train" and config["train"]["view"] == "swap"
    assert config["train"]["split_hash"] == split_hash(train_ids)
    assert config["val"]["selection"] == "toy@swap:val"  # the view's val split by default

    evaluated = invoke("eval", out, "--store", url, "--on", "toy@swap:test", "--json")
    assert evaluated.exit_code == 0, evaluated.output
    metrics = json.loads(evaluated.output)
    assert metrics["selection"] == "toy@swap:test" and metrics["view"] == "swap"
    test_ids = ids_where(manifest, (swapped == "test").to_numpy())
    assert metrics["n_scored"] == len(test_ids)

    synced = invoke(
        "syncscore", "--store", url, "--audio", "aud", "--visual", "vis", "--on", "toy@swap:test",
        "--preset", "speechforensics", "--json",
    )  # fmt: skip
    assert synced.exit_code == 0, synced.output
    assert json.loads(synced.output)["n_scored"] == len(test_ids)

    grid = root / "grid.toml"
    grid.write_text(
        f'store = "{url}"\nout = "grid-out"\n'
        '[[datasets]]\nname = "toy@swap"\n[[features]]\nencoder = "aud"\n'
        "[probe]\nmax_epochs = 5\nlr = 0.05\nbatch_videos = 4\n"
    )
    ran = invoke("grid", grid)
    assert ran.exit_code == 0, ran.output
    results = (root / "grid-out" / "results.csv").read_text()
    assert "toy@swap" in results
    grid_config = json.loads(
        (root / "grid-out" / "runs" / "aud-last" / "toy@swap" / "config.json").read_text()
    )
    assert grid_config["train"]["split_hash"] == split_hash(train_ids)
    grid.write_text(grid.read_text().replace('"toy@swap"', '"toy@swap:train"'))
    bad = invoke("grid", grid)
    assert bad.exit_code == 1 and "without a split" in bad.output
