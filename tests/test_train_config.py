"""``featstore train <kind> --config FILE`` (TOML/YAML, command line on top) and ``--tensorboard``."""

from __future__ import annotations

import csv
import hashlib
import json

import pytest
import torch
from typer.testing import CliRunner

from featstore.cli.main import app
from featstore.store import open_store
from featstore.trainers.runs import load_run

from trainer_fixtures import write_planted_dataset  # isort: skip

runner = CliRunner()


def invoke(*args, **kwargs):
    return runner.invoke(app, [str(a) for a in args], **kwargs)


@pytest.fixture(scope="module")
def store_url(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("train-config")
    url = str(root / "features.zarr")
    store = open_store(url, mode="a", durable=False)
    write_planted_dataset(store, "alpha", n_videos=24, dim=8, encoder="enc", seed=1)
    return url


def test_toml_config_with_command_line_overrides(store_url, tmp_path, monkeypatch):
    monkeypatch.delenv("FEATSTORE_STORE", raising=False)
    cfg = tmp_path / "conf" / "probe.toml"
    cfg.parent.mkdir()
    cfg.write_text(
        f"""
# keys are the options of `featstore train probe`
store = "{store_url}"
encoder = "enc"                 # one value for a repeatable option is fine
train = "alpha:train"
out = "runs/probe"              # relative: from this file's folder
epochs = 3
lr = 0.05
batch-videos = 4
center-bias = true              # the probe's options (flags: true/false)
no-scale-lr = true
no_val = true
"""
    )
    result = invoke("train", "probe", "--config", cfg, "--epochs", "2", "--seed", "7")
    assert result.exit_code == 0, result.output
    out = cfg.parent / "runs" / "probe"
    run = load_run(out)
    hyper = run.config["config"]["hyperparameters"]
    # the command line wins over the file, the file over the defaults
    assert hyper["max_epochs"] == 2 and hyper["seed"] == 7
    assert hyper["lr"] == 0.05 and hyper["batch_videos"] == 4
    assert hyper["center_bias"] is True and hyper["scale_lr"] is False
    assert run.config["fit"]["lr"] == 0.05  # --no-scale-lr: not 0.05 x 4
    assert run.config["val"] is None and run.config["fit"]["epochs"] == 2
    inv = run.config["invocation"]
    assert inv["config_file"]["path"] == str(cfg.resolve())
    assert inv["config_file"]["sha256"] == hashlib.sha256(cfg.read_bytes()).hexdigest()
    assert inv["config_file"]["values"]["epochs"] == 3
    assert inv["config_file"]["values"]["out"] == str(out)
    assert inv["overridden"] == ["epochs"]
    assert set(inv["from_command_line"]) == {"epochs", "seed"}
    assert {"store", "encoder", "train", "out", "lr", "batch_videos", "no_val"} <= set(
        inv["from_config_file"]
    )


def test_config_store_beats_the_environment_and_yaml_works(store_url, tmp_path, monkeypatch):
    pytest.importorskip("yaml")
    monkeypatch.setenv("FEATSTORE_STORE", str(tmp_path / "not-this.zarr"))
    cfg = tmp_path / "probe.yaml"
    cfg.write_text(
        f"store: {store_url}\nencoder: [enc]\ntrain: alpha\nout: {tmp_path / 'run'}\n"
        "epochs: 1\nlr: 0.05\nbatch-videos: auto\n"
    )
    result = invoke("train", "probe", "--config", cfg)
    assert result.exit_code == 0, result.output
    inv = load_run(tmp_path / "run").config["invocation"]
    assert "store" in inv["from_config_file"] and inv["from_environment"] == []
    assert load_run(tmp_path / "run").config["store"] == store_url
    assert load_run(tmp_path / "run").config["config"]["hyperparameters"]["batch_videos"] is None


@pytest.mark.parametrize(
    ("text", "suffix", "message"),
    [
        ("epochz = 3\n", ".toml", "unknown key 'epochz' (the options of this command: "),
        ("epochs = [1, 2]\n", ".toml", "epochs takes one value"),
        ("no-val = 1\n", ".toml", "no-val is a flag: give true or false"),
        ("epochs = \n", ".toml", "is not valid TOML"),
        ("epochs: 3\n", ".json", "config files are .toml, .yaml or .yml"),
    ],
)
def test_bad_config_files_are_one_line_errors(tmp_path, text, suffix, message):
    cfg = tmp_path / f"c{suffix}"
    cfg.write_text(text)
    result = invoke("train", "probe", "--config", cfg)
    assert result.exit_code == 1, result.output
    assert result.output.startswith("error: ") and message in result.output
    assert len(result.output.strip().splitlines()) == 1
    missing = invoke("train", "probe", "--config", tmp_path / "none.toml")
    assert missing.exit_code == 1 and "no config file at" in missing.output


def test_tensorboard_curves_match_the_history(store_url, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = tmp_path / "tb"
    out = tmp_path / "run"
    result = invoke(
        "train", "probe", "--store", store_url, "--encoder", "enc", "--train", "alpha",
        "--out", out, "--epochs", "4", "--lr", "0.05", "--tensorboard", tb,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert load_run(out).config["invocation"]["tensorboard"] == str(tb)
    events = EventAccumulator(str(tb))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss/train", "loss/val", "auc/val", "time/epoch_s"} <= tags
    with (out / "history.csv").open() as fh:
        history = list(csv.DictReader(fh))
    for tag, column in (("loss/train", "train_loss"), ("loss/val", "val_loss")):
        logged = [(e.step, e.value) for e in events.Scalars(tag)]
        assert [s for s, _ in logged] == [int(h["epoch"]) for h in history]
        assert [v for _, v in logged] == pytest.approx([float(h[column]) for h in history])


def test_tensorboard_missing_is_a_clear_error(store_url, tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name == "torch.utils.tensorboard" or name.startswith("tensorboard"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    out = tmp_path / "run"
    result = invoke(
        "train", "probe", "--store", store_url, "--encoder", "enc", "--train", "alpha",
        "--out", out, "--epochs", "1", "--tensorboard", tmp_path / "tb",
    )  # fmt: skip
    assert result.exit_code == 1
    assert result.output.startswith("error: --tensorboard needs the tensorboard package")
    assert not (out / "config.json").exists()  # nothing trained


def test_history_json_unchanged_without_extras(store_url, tmp_path):
    """Without --config the invocation still says where each option came from."""
    out = tmp_path / "run"
    result = invoke(
        "train", "probe", "--store", store_url, "--encoder", "enc", "--train", "alpha",
        "--out", out, "--epochs", "1",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    inv = json.loads((out / "config.json").read_text())["invocation"]
    assert inv["config_file"] is None and inv["overridden"] == []
    assert set(inv["from_command_line"]) == {"store", "encoder", "train", "out", "epochs"}
