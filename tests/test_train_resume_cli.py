"""``featstore train``: the no-validation warning, ``--val-fraction``, interrupts, ``--resume``."""

from __future__ import annotations

import csv
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.numpy import load_file
from typer.testing import CliRunner

import featstore.cli.train
from featstore.cli.main import app
from featstore.datasets.protocols import grouped_holdout, video_groups
from featstore.store import open_store
from featstore.trainers.data import Selection
from featstore.trainers.kinds.fitting import Holdout, hold_out
from featstore.trainers.runs import load_run

from trainer_fixtures import write_planted_dataset  # isort: skip

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]
FAST = ["--lr", "0.05", "--batch-videos", "4", "--patience", "3"]


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def store_url(tmp_path_factory):
    """``solo``: train/test only (no val split); ``alpha``: train/val/test."""
    torch.set_num_threads(1)
    url = str(tmp_path_factory.mktemp("resume") / "features.zarr")
    store = open_store(url, mode="a", durable=False)
    write_planted_dataset(
        store, "solo", n_videos=32, dim=8, encoder="enc", seed=4,
        splits=(("train", 0.75), ("test", 0.25)), n_frames=(20, 30),
    )  # fmt: skip
    write_planted_dataset(store, "alpha", n_videos=24, dim=8, encoder="enc", seed=5)
    return url


def probe(url: str, *args: object, train: str = "solo"):
    return invoke(
        "train", "probe", "--store", url, "--encoder", "enc", "--train", train, *FAST, *args
    )


def history(run: Path) -> list[dict[str, str]]:
    with (run / "history.csv").open() as fh:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(fh)]


# ----------------------------------------------------------------------------- validation


def test_a_dataset_without_val_warns_and_no_val_does_not(store_url, tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    result = probe(store_url, "--epochs", "3", "--out", tmp_path / "a")
    assert result.exit_code == 0, result.output
    assert "validated on none" in result.output
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        "solo has no 'val' split: training runs all 3 epochs without validation or early "
        "stopping and keeps the last epoch's weights"
        in m
        and "--val-fraction" in m
        for m in warned
    ), warned
    caplog.clear()
    quiet = probe(store_url, "--epochs", "2", "--no-val", "--out", tmp_path / "b")
    assert quiet.exit_code == 0, quiet.output
    assert not [r for r in caplog.records if "has no 'val' split" in r.getMessage()]
    caplog.clear()
    with_val = probe(store_url, "--epochs", "2", "--out", tmp_path / "c", train="alpha")
    assert with_val.exit_code == 0 and "validated on alpha:val" in with_val.output
    assert not [r for r in caplog.records if "has no 'val' split" in r.getMessage()]


def test_val_fraction_holds_out_training_videos_and_records_it(store_url, tmp_path):
    out = tmp_path / "held"
    result = probe(
        store_url, "--epochs", "4", "--val-fraction", "0.25", "--val-seed", "7", "--out", out
    )
    assert result.exit_code == 0, result.output
    cfg = load_run(out).config
    manifest = open_store(store_url).manifest("solo")
    train_split = manifest[manifest["split"] == "train"]
    assert cfg["train"]["n"] + cfg["val"]["n"] == len(train_split)
    for label in (0, 1):  # per label, a quarter of the videos (one video per group here)
        n_label = int((train_split["label"] == label).sum())
        held = cfg["val"]["n_fake" if label else "n_real"]
        assert abs(held - 0.25 * n_label) <= 0.5
    holdout = cfg["val"]["holdout"]
    assert holdout == {
        "from": "solo:train", "fraction": 0.25, "seed": 7, "group_by": "video",
        "n_groups": len(train_split), "n_val_groups": cfg["val"]["n"], "side": "val",
    }  # fmt: skip
    assert cfg["train"]["holdout"]["side"] == "train"
    assert {"val_fraction", "val_seed"} <= set(cfg["invocation"]["from_command_line"])
    assert (
        f"validated on {cfg['val']['n']} videos held out of solo:train (25%, seed 7, by video)"
        in (result.output)
    )
    assert all(row["val_loss"] for row in history(out))  # validation ran every epoch
    again = probe(store_url, "--epochs", "1", "--val-fraction", "0.25", "--val-seed", "7",
                  "--out", tmp_path / "again")  # fmt: skip
    other = probe(store_url, "--epochs", "1", "--val-fraction", "0.25", "--val-seed", "8",
                  "--out", tmp_path / "other")  # fmt: skip
    assert again.exit_code == 0 and other.exit_code == 0
    hashes = [load_run(p).config["val"]["split_hash"] for p in (out, tmp_path / "again",
                                                                 tmp_path / "other")]  # fmt: skip
    assert hashes[0] == hashes[1] != hashes[2]


def test_val_fraction_errors(store_url, tmp_path):
    both = probe(store_url, "--val-fraction", "0.2", "--val", "alpha:val", "--out", tmp_path / "x")
    assert both.exit_code == 2 and "--val-fraction" in both.output
    seed_alone = probe(store_url, "--val-seed", "3", "--out", tmp_path / "x")
    assert seed_alone.exit_code == 2 and "--val-seed" in seed_alone.output
    bad = probe(store_url, "--val-fraction", "1.5", "--out", tmp_path / "x")
    assert bad.exit_code == 1 and "validation fraction must be in (0, 1)" in bad.output
    tiny = probe(store_url, "--val-fraction", "0.01", "--out", tmp_path / "x")
    assert tiny.exit_code == 1 and "puts no videos in validation" in tiny.output


def identity_rows() -> pd.DataFrame:
    """AV1M-like paths: 9 identities, each a real video and 0-3 fakes made from it."""
    rows = []
    for i in range(9):
        for j in range(1 + i % 4):
            rows.append({
                "video_id": f"train/id{i:05d}/clip/{j}",
                "path": f"train/id{i:05d}/clip/{j}.mp4",
                "label": int(j > 0),
            })  # fmt: skip
    return pd.DataFrame(rows)


def test_holdout_keeps_identities_whole_and_follows_the_seed():
    rows = identity_rows()
    train, val, info = hold_out(Selection("x", "train"), rows, Holdout(0.3, seed=1))
    assert info["group_by"] == "identity" and info["n_groups"] == 9
    ident = lambda frame: {p.split("/")[1] for p in frame["path"]}  # noqa: E731
    assert not ident(train) & ident(val) and ident(train) | ident(val) == ident(rows)
    assert set(train["video_id"]) | set(val["video_id"]) == set(rows["video_id"])
    assert len(val) and val["label"].nunique() == 2  # fakes come with their identity
    masks = {s: grouped_holdout(*_group_and_label(rows), fraction=0.3, seed=s) for s in range(6)}
    assert np.array_equal(masks[1], rows["video_id"].isin(val["video_id"]).to_numpy())
    assert len({m.tobytes() for m in masks.values()}) > 1  # the seed decides


def _group_and_label(rows: pd.DataFrame):
    groups, _ = video_groups(rows)
    return groups, rows["label"]


def test_video_groups_prefers_identity_then_source():
    rows = identity_rows()
    assert video_groups(rows)[1] == "identity"
    segs = pd.DataFrame({
        "video_id": ["a@0-10", "a@10-20", "b@0-5"], "path": ["a.mp4", "a.mp4", "b.mp4"],
        "source_id": ["a", "a", "b"], "label": [0, 0, 1],
    })  # fmt: skip
    groups, by = video_groups(segs)
    assert by == "source_id" and groups.tolist() == ["a", "a", "b"]
    assert video_groups(segs.drop(columns="source_id"))[1] == "video"


# ----------------------------------------------------------------------------- interrupts, resume


def interrupt_after(monkeypatch, k: int) -> None:
    """A test hook: the epoch line's formatter raises KeyboardInterrupt (Ctrl-C) after epoch ``k``."""
    line = featstore.cli.train.format_epoch

    def hook(stats):
        text = line(stats)
        if stats.epoch == k:
            raise KeyboardInterrupt
        return text

    monkeypatch.setattr(featstore.cli.train, "format_epoch", hook)


def test_interrupt_saves_the_best_run_and_resume_ends_as_uninterrupted(
    store_url, tmp_path, monkeypatch
):
    args = ["--epochs", "12", "--train", "alpha", "--checkpoint-every", "2"]
    ref, out = tmp_path / "ref", tmp_path / "cut"
    whole = invoke("train", "probe", "--store", store_url, "--encoder", "enc", *FAST, *args,
                   "--out", ref)  # fmt: skip
    assert whole.exit_code == 0, whole.output
    assert not (ref / "checkpoint").exists()  # a finished run drops its checkpoint
    n_epochs = load_run(ref).config["fit"]["epochs"]
    assert n_epochs > 4, "the reference run must outlast the interrupt"

    with monkeypatch.context() as patch:
        interrupt_after(patch, 3)
        cut = invoke("train", "probe", "--store", store_url, "--encoder", "enc", *FAST, *args,
                     "--out", out)  # fmt: skip
    assert cut.exit_code == 130, cut.output
    line = [x for x in cut.output.splitlines() if x.startswith("interrupted")]
    cfg = load_run(out).config
    assert line == [
        f"interrupted by SIGINT after epoch 3 of at most 12: saved the best-so-far run (best "
        f"epoch {cfg['fit']['best_epoch']}, marked interrupted) to {out}; continue from its "
        f"checkpoint of epoch 3 with --resume {out}"
    ]
    assert cfg["fit"]["interrupted"] == {
        "signal": "SIGINT", "epochs_completed": 3, "max_epochs": 12, "checkpoint_epoch": 3,
    }  # fmt: skip
    assert cfg["fit"]["epochs"] == 3 and len(history(out)) == 3
    assert (out / "model.safetensors").is_file()

    refused = invoke("train", "probe", "--store", store_url, "--encoder", "enc", *FAST, *args,
                     "--out", out)  # fmt: skip
    assert refused.exit_code == 1
    assert (
        f"holds the checkpoint of an unfinished training (epoch 3): resume it (--resume {out})"
        in (refused.output)
    )
    other = invoke("train", "probe", "--store", store_url, "--encoder", "enc", *FAST, *args,
                   "--resume", out, "--seed", "5")  # fmt: skip
    assert other.exit_code == 1 and "config.hyperparameters.seed: checkpoint 43, now 5" in (
        other.output
    )
    resumed = invoke("train", "probe", "--store", store_url, "--encoder", "enc", *FAST, *args,
                     "--resume", out)  # fmt: skip
    assert resumed.exit_code == 0, resumed.output
    assert resumed.output.startswith(f"resuming {out} from its checkpoint of epoch 3\nepoch   4 ")
    a, b = load_file(str(ref / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert history(out) == history(ref)
    done = load_run(out).config
    assert done["fit"]["resumed_from"] == 3 and "interrupted" not in done["fit"]
    assert {k: v for k, v in done["fit"].items() if k != "resumed_from"} == (
        load_run(ref).config["fit"]
    )
    assert not (out / "checkpoint").exists()
    nothing = invoke("train", "probe", "--store", store_url, "--encoder", "enc", *FAST, *args,
                     "--resume", out)  # fmt: skip
    assert nothing.exit_code == 1 and "has no checkpoint to resume" in nothing.output


def test_a_streamed_run_interrupted_and_resumed_equals_one_held_in_memory(
    store_url, tmp_path, monkeypatch
):
    """--cache-gb 0 reads every batch from the store; resume (also streamed) ends bit-exact."""
    args = ["--epochs", "8", "--train", "alpha", "--checkpoint-every", "2"]
    ref, out = tmp_path / "ref", tmp_path / "cut"
    whole = invoke("train", "probe", "--store", store_url, "--encoder", "enc", *FAST, *args,
                   "--out", ref)  # fmt: skip
    assert whole.exit_code == 0, whole.output
    assert load_run(ref).config["execution"]["train"] == "cached"
    assert load_run(ref).config["fit"]["epochs"] > 4, "the reference must outlast the interrupt"
    streamed = [*args, "--cache-gb", "0"]
    with monkeypatch.context() as patch:
        interrupt_after(patch, 3)
        cut = invoke("train", "probe", "--store", store_url, "--encoder", "enc", *FAST,
                     *streamed, "--out", out)  # fmt: skip
    assert cut.exit_code == 130, cut.output
    resumed = invoke("train", "probe", "--store", store_url, "--encoder", "enc", *FAST,
                     *streamed, "--resume", out)  # fmt: skip
    assert resumed.exit_code == 0, resumed.output
    done = load_run(out).config
    assert done["fit"]["resumed_from"] == 3
    assert (done["execution"]["train"], done["execution"]["val"]) == ("streamed", "streamed")
    a, b = load_file(str(ref / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert history(out) == history(ref)


def test_resume_option_errors(store_url, tmp_path):
    clash = probe(store_url, "--resume", tmp_path / "a", "--out", tmp_path / "b")
    assert clash.exit_code == 2 and "--resume continues" in clash.output
    neither = probe(store_url)
    assert neither.exit_code == 2 and "--out" in neither.output
    bad = probe(store_url, "--out", tmp_path / "c", "--checkpoint-every", "0")
    assert bad.exit_code == 1 and "checkpoint_every must be an integer >= 1" in bad.output


@pytest.mark.parametrize("kind", ["probe", "ntp", "sync"])
def test_every_train_command_has_the_options(kind):
    result = invoke("train", kind, "--help")
    for option in ("--val-fraction", "--val-seed", "--checkpoint-every", "--resume"):
        assert option in result.output


def test_sigint_in_a_subprocess_saves_the_run(store_url, tmp_path):
    out = tmp_path / "sig"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [
        sys.executable, "-m", "featstore.cli.main", "train", "probe", "--store", store_url,
        "--encoder", "enc", "--train", "solo", "--no-val", "--epochs", "1000000",
        "--checkpoint-every", "1", "--out", str(out), *FAST,
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # a shell that started pytest in the background may ignore SIGINT: the child must not
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 300
        for line in proc.stdout:
            if line.startswith("epoch   2 ") or time.monotonic() > deadline:
                break
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    cfg = json.loads((out / "config.json").read_text())
    done = cfg["fit"]["interrupted"]["epochs_completed"]
    assert cfg["fit"]["interrupted"]["signal"] == "SIGINT" and done >= 2
    assert err.strip().splitlines()[-1].startswith(f"interrupted by SIGINT after epoch {done} ")
    assert f"saved the best-so-far run (best epoch {done}" in err and str(out) in err
    assert cfg["fit"]["best_epoch"] == done == cfg["fit"]["epochs"]  # no validation: the last


def test_an_interrupt_before_any_epoch_saves_nothing_and_runs_say_if_interrupted(tmp_path):
    from featstore.trainers.kinds.fitting import nothing_to_save
    from featstore.trainers.runs import Run
    from featstore.trainers.training import Interruption, TrainingInterrupted

    with pytest.raises(TrainingInterrupted) as caught:
        nothing_to_save(Interruption("SIGTERM", 0, 500))
    assert caught.value.run is None and caught.value.interruption.exit_code == 143
    nothing_to_save(Interruption("SIGINT", 1, 500))  # one epoch done: that run is saved
    nothing_to_save(None)
    cut = {"signal": "SIGINT", "epochs_completed": 2, "max_epochs": 9, "checkpoint_epoch": None}
    assert Run(tmp_path, {"kind": "probe", "fit": {"interrupted": cut}}).interrupted == cut
    assert Run(tmp_path, {"kind": "probe", "fit": {"epochs": 9}}).interrupted is None
    assert Run(tmp_path, {"kind": "fusion"}).interrupted is None
