"""Conveniences shared by the commands: ``FEATSTORE_STORE``, shell completion, ``featstore env``."""

from __future__ import annotations

import importlib.metadata
import json
import platform
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from featstore.cli.main import app
from featstore.store import open_store

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def url(tmp_path, monkeypatch):
    monkeypatch.delenv("FEATSTORE_STORE", raising=False)
    url = str(tmp_path / "features.zarr")
    store = open_store(url, mode="a", durable=False)
    store.write_manifest(
        "ds", pd.DataFrame({"video_id": ["a", "b"], "label": [0, 1], "split": ["train"] * 2})
    )
    return url


# ------------------------------------------------------------------ FEATSTORE_STORE


def test_store_option_defaults_to_the_environment(url, tmp_path, monkeypatch):
    monkeypatch.setenv("FEATSTORE_STORE", url)
    listed = runner.invoke(app, ["datasets", "list"])
    assert listed.exit_code == 0, listed.output
    assert "ds" in listed.output
    # the explicit option wins over the environment
    other = str(tmp_path / "other.zarr")
    open_store(other, mode="a").write_manifest("elsewhere", pd.DataFrame({"video_id": ["x"]}))
    explicit = runner.invoke(app, ["datasets", "list", "--store", other])
    assert "elsewhere" in explicit.output and "ds" not in explicit.output.split()


@pytest.mark.parametrize(
    "args",
    [
        ["datasets", "list"],
        ["train", "probe", "--encoder", "x", "--train", "ds", "--out", "run"],
        ["syncscore", "--audio", "a", "--visual", "v", "--on", "ds"],
        ["extract", "--encoder", "logfbank", "--on", "ds"],
    ],
)
def test_no_store_is_one_line_naming_the_variable(url, args):
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    assert result.output.strip() == (
        "error: no store given: pass --store URL or set the environment variable FEATSTORE_STORE"
    )


def test_help_names_the_variable():
    result = runner.invoke(app, ["train", "probe", "--help"], env={"COLUMNS": "200"})
    assert "FEATSTORE_STORE" in result.output


def test_run_store_comes_before_the_environment(url, monkeypatch):
    from featstore.cli.options import fallback_store

    monkeypatch.setenv("FEATSTORE_STORE", "/from/env.zarr")
    assert fallback_store("/recorded.zarr", what="run x") == "/recorded.zarr"
    assert fallback_store(None, what="run x") == "/from/env.zarr"


# ------------------------------------------------------------------ completion


def _complete(words: str, cword: int) -> list[str]:
    """What bash completion offers after ``words`` (click's protocol, run in-process)."""
    env = {"_FEATSTORE_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(cword)}
    result = runner.invoke(app, [], env=env, prog_name="featstore")
    assert result.exit_code == 0, result.output
    return result.output.split()


def test_completion_of_encoders_kinds_and_formats():
    from featstore.encoders import specs
    from featstore.trainers.kinds import kinds

    assert _complete("featstore extract --encoder wav", 3) == ["wav2vec2"]
    avhubert = sorted(n for n in specs() if n.startswith("avhubert"))
    assert _complete("featstore train probe --encoder logfbank+avh", 4) == [
        f"logfbank+{n}" for n in avhubert
    ]
    assert sorted(_complete("featstore syncscore --audio avhubert", 3)) == avhubert
    # `train` completes its run kinds: every trainable registered kind
    trainable = set(_complete("featstore train ", 2))
    assert trainable == {"probe", "ntp", "sync"} and trainable <= set(kinds())
    assert _complete("featstore layers --format p", 3) == ["png", "pdf"]


def test_show_completion_prints_a_script():
    result = runner.invoke(app, ["--show-completion", "bash"], prog_name="featstore")
    assert result.exit_code == 0, result.output
    assert "_FEATSTORE_COMPLETE=complete_bash" in result.output
    assert "--install-completion" in runner.invoke(app, ["--help"]).output


# ------------------------------------------------------------------ featstore env


def test_env_json_reports_versions_settings_and_the_store(url, tmp_path, monkeypatch):
    import numpy
    import torch

    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    (ckpts / "self_large_vox_433h.pt").write_bytes(b"0" * 1000)
    monkeypatch.setenv("FEATSTORE_CHECKPOINTS", str(ckpts))
    monkeypatch.setenv("FEATSTORE_STORE", url)
    monkeypatch.setenv("FEATSTORE_API_KEY", "hunter2")
    result = runner.invoke(app, ["env", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["python"]["version"] == platform.python_version()
    assert report["packages"]["numpy"] == numpy.__version__
    assert report["packages"]["torch"] == torch.__version__
    assert report["packages"]["zarr"] == importlib.metadata.version("zarr")
    assert report["featstore"]["path"] == str(ROOT / "featstore")
    assert report["devices"]["cuda"]["available"] == torch.cuda.is_available()
    assert report["checkpoints"]["path"] == str(ckpts)
    assert [e["name"] for e in report["checkpoints"]["entries"]] == ["self_large_vox_433h.pt"]
    assert report["encoders"]["avhubert-a"]["weights"] == "local file"
    assert report["encoders"]["logfbank"]["weights"] == "built-in"
    assert report["env"]["FEATSTORE_STORE"]["value"] == url
    assert report["env"]["FEATSTORE_API_KEY"]["value"] == "***"  # never the secret
    assert "hunter2" not in result.output
    assert report["env"]["FEATSTORE_GC_FLOOR_S"]["value"] is None  # known, unset
    store = report["store"]
    assert (
        store["reachable"] and store["datasets"] == ["ds"] and store["source"] == "FEATSTORE_STORE"
    )


def test_env_text_and_an_unreachable_store(tmp_path, monkeypatch):
    monkeypatch.delenv("FEATSTORE_STORE", raising=False)
    missing = str(tmp_path / "nowhere.zarr")
    result = runner.invoke(app, ["env", "--no-devices", "--store", missing])
    assert result.exit_code == 0, result.output
    assert f"store {missing} (from --store): NOT reachable: StoreError: no feature store" in (
        result.output
    )
    assert "devices:\n  not checked (--no-devices)" in result.output
    assert "FEATSTORE_CHECKPOINTS=" in result.output
    none = runner.invoke(app, ["env", "--no-devices"])
    assert "store: none given (--store or FEATSTORE_STORE)" in none.output
