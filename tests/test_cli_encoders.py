"""``featstore encoders list|show`` through Typer's CliRunner, offline."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

import featstore.encoders as registry
from featstore.cli.encoders import BUILT_IN, CACHED, LOCAL, NOT_CACHED
from featstore.cli.main import app
from featstore.encoders import EncoderSpec

runner = CliRunner()


def _spec(name: str, checkpoint: str | None) -> EncoderSpec:
    return EncoderSpec(
        name=name,
        family="test",
        modality="visual",
        crop="face",
        frame_hz=12.5,
        dim=32,
        n_layers=2,
        default_checkpoint=checkpoint,
    )


@pytest.fixture
def fake_encoders(tmp_path, monkeypatch):
    """Three test encoders: a HF id in a fake local cache, one absent from it, a local file."""
    import huggingface_hub.constants

    cache = tmp_path / "hub"
    commit = "0" * 40
    repo = cache / "models--org--tiny-cached"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "config.json").write_text("{}")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    local = tmp_path / "weights.pt"
    local.write_bytes(b"\0")

    registry.specs()  # load the real families first, then add the fakes
    for spec in (
        _spec("t-cached", "org/tiny-cached"),
        _spec("t-missing", "org/tiny-missing"),
        _spec("t-local", str(local)),
    ):
        monkeypatch.setitem(registry._REGISTRY, spec.name, (spec, None))


def test_list_table(fake_encoders):
    result = runner.invoke(app, ["encoders", "list"])
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line for line in result.output.splitlines() if line.strip()}
    assert "logfbank" in lines and "mouth-pixels" in lines
    assert "audio" in lines["logfbank"] and "104" in lines["logfbank"]
    assert BUILT_IN in lines["logfbank"] and BUILT_IN in lines["mouth-pixels"]
    assert "mouth" in lines["mouth-pixels"] and "484" in lines["mouth-pixels"]
    assert lines["t-cached"].rstrip().endswith(CACHED)
    assert NOT_CACHED in lines["t-missing"]
    assert LOCAL in lines["t-local"]
    assert "0-2, last" in lines["t-cached"] and "12.5" in lines["t-cached"]


def test_list_json(fake_encoders):
    result = runner.invoke(app, ["encoders", "list", "--json"])
    assert result.exit_code == 0, result.output
    by_name = {row["name"]: row for row in json.loads(result.output)}
    assert list(by_name) == sorted(by_name)
    fb = by_name["logfbank"]
    assert (fb["modality"], fb["crop"], fb["frame_hz"], fb["dim"]) == ("audio", "none", 25.0, 104)
    assert fb["layers"] == ["last"] and fb["default_checkpoint"] is None
    assert fb["weights"] == BUILT_IN
    assert by_name["mouth-pixels"]["dim"] == 484
    assert by_name["t-cached"]["weights"] == CACHED
    assert by_name["t-cached"]["layers"] == [0, 1, 2, "last"]
    assert by_name["t-missing"]["weights"] == NOT_CACHED
    assert by_name["t-local"]["weights"] == LOCAL


def test_show(fake_encoders):
    result = runner.invoke(app, ["encoders", "show", "mouth-pixels"])
    assert result.exit_code == 0, result.output
    assert "visual" in result.output and "484" in result.output and BUILT_IN in result.output
    assert "88x88" in result.output  # the description
    result = runner.invoke(app, ["encoders", "show", "t-missing"])
    assert "org/tiny-missing" in result.output and NOT_CACHED in result.output
    shown = json.loads(runner.invoke(app, ["encoders", "show", "t-cached", "--json"]).output)
    assert shown["weights"] == CACHED and shown["family"] == "test"


def test_weights_found_in_the_checkpoint_directory(tmp_path, monkeypatch):
    from featstore.cli.encoders import weights_status
    from featstore.encoders.checkpoints import CHECKPOINT_DIR_ENV

    folder = tmp_path / "checkpoints"
    folder.mkdir()
    monkeypatch.setenv(CHECKPOINT_DIR_ENV, str(folder))
    monkeypatch.chdir(tmp_path)  # a bare name is also looked up in the current directory
    spec = _spec("t-dir", "tiny-weights.pt")
    fsfm = registry.get_spec("fsfm")  # its default is a relative path: folder/file name
    assert weights_status(spec) == NOT_CACHED
    assert weights_status(fsfm) == NOT_CACHED
    (folder / "tiny-weights.pt").write_bytes(b"\0")
    (folder / fsfm.default_checkpoint).parent.mkdir(parents=True)
    (folder / fsfm.default_checkpoint).write_bytes(b"\0")
    assert weights_status(spec) == LOCAL
    assert weights_status(fsfm) == LOCAL
    monkeypatch.setitem(registry._REGISTRY, spec.name, (spec, None))
    shown = json.loads(runner.invoke(app, ["encoders", "show", "t-dir", "--json"]).output)
    assert shown["weights"] == LOCAL
    monkeypatch.setenv(CHECKPOINT_DIR_ENV, str(tmp_path / "elsewhere"))
    assert weights_status(spec) == NOT_CACHED


def test_show_documents_the_random_init_schemes():
    import featstore.encoders.fsfm_init as fsfm_init  # the implementation of the scheme shown

    for name in ("wav2vec2", "clip", "videomae", "avhubert-a", "autoavsr-vsr", "fsfm"):
        spec = registry.get_spec(name)
        result = runner.invoke(app, ["encoders", "show", name])
        assert result.exit_code == 0, result.output
        assert f"--random-init: {spec.init_scheme.name} (the default)" in result.output
        assert "random_init_scheme=bert" in result.output
        for what, how in spec.init_scheme.rules:
            assert f"  - {what}: {how}" in result.output
        shown = json.loads(runner.invoke(app, ["encoders", "show", name, "--json"]).output)
        random_init = shown["random_init"]
        assert random_init["option"] == "random_init_scheme" and random_init["default"] == "native"
        assert random_init["schemes"]["native"]["name"] == spec.init_scheme.name
        assert random_init["schemes"]["bert"]["name"] == "bert"
        assert "init_scheme" not in shown
    assert "sin-cos" in registry.get_spec("fsfm").init_scheme.rules[0][1]
    assert fsfm_init.sincos_pos_embed(8, 2).shape == (5, 8)
    weight_free = json.loads(runner.invoke(app, ["encoders", "show", "logfbank", "--json"]).output)
    assert weight_free["random_init"] is None
    assert "--random-init" not in runner.invoke(app, ["encoders", "show", "logfbank"]).output


def test_show_unknown_name_is_a_one_line_usage_error():
    result = runner.invoke(app, ["encoders", "show", "no-such-encoder"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unknown encoder 'no-such-encoder'")
    assert "logfbank" in result.output  # lists the known names


def test_cli_import_is_torch_free():
    code = (
        "import sys; import featstore.cli.encoders, featstore.cli.main;"
        "from typer.testing import CliRunner;"
        "r = CliRunner().invoke(featstore.cli.main.app, ['encoders', 'list']);"
        "assert r.exit_code == 0, r.output;"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
