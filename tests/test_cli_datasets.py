"""``featstore datasets import|list|show`` through Typer's CliRunner, on a real (local) store."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.datasets import FORMAT_NAMES, PROTOCOL_NAMES, app
from featstore.datasets import FORMATS, PROTOCOLS, coerce_schema

from dataset_fixtures import av1m_entry, write_av1m, write_exddv, write_favc  # isort: skip

runner = CliRunner()


def invoke(*args: str) -> object:
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_help_lists_match_registries() -> None:
    assert set(FORMAT_NAMES) == set(FORMATS)
    assert set(PROTOCOL_NAMES) == set(PROTOCOLS)


def test_import_list_show_round_trip(tmp_path: Path) -> None:
    store = tmp_path / "features.zarr"
    root = write_av1m(tmp_path / "av1m")
    result = invoke("import", "av1m", root, "--name", "av1m", "--store", store)
    assert result.exit_code == 0, result.output
    assert "imported 6 videos" in result.output and "both_modified" in result.output

    from featstore import open_store

    df = open_store(str(store)).manifest("av1m")
    assert df["video_id"].tolist()[0] == "train/id0/vid/real"
    assert df["fake_segments"].tolist()[2] == [[0.2, 0.6], [2.0, 2.4]]
    assert df.attrs["format"] == "av1m" and df.attrs["n_problems"] == 0
    assert df.attrs["root"] == str(root.resolve()) and df.attrs["protocol"] is None
    assert "imported_at" in df.attrs
    typed = coerce_schema(df)
    assert str(typed["audio_fake"].dtype) == "boolean" and typed["label"].dtype == "int64"

    listed = invoke("list", "--store", store)
    assert listed.exit_code == 0 and "av1m\t6 videos (2 real, 4 fake)" in listed.output
    shown = invoke("show", "av1m", "--store", store, "--limit", "2")
    assert shown.exit_code == 0
    assert "format: av1m" in shown.output and "train/id0/vid/fake_v" in shown.output
    assert "val/id1/v/fake" not in shown.output.split("fake_segments")[-1]  # only 2 rows


def test_import_with_protocol_and_unknown_flags(tmp_path: Path) -> None:
    store = tmp_path / "s.zarr"
    rows = [
        f"id{i:05d},-,-,{m},{c},{t},Asian,women,{i}.mp4,FakeAVCeleb/{t}/Asian/women/id{i:05d}"
        for i, (m, c, t) in enumerate(
            [("real", "A", "RealVideo-RealAudio")] * 10
            + [("fsgan-wav2lip", "D", "FakeVideo-FakeAudio")] * 20
            + [("rtvc", "B", "RealVideo-FakeAudio")] * 5
        )
    ]
    root = write_favc(tmp_path / "favc", rows=rows)
    result = invoke(
        "import", "favc", root, "-n", "favc", "-s", store, "--protocol", "favc", "--seed", "3"
    )
    assert result.exit_code == 0, result.output
    from featstore import open_store

    df = open_store(str(store)).manifest("favc")
    assert len(df) == 30 and set(df["category"]) == {"A", "D"}
    assert df.attrs["protocol"] == "favc" and df.attrs["seed"] == 3
    assert set(df["split"]) == {"train", "val", "test"}

    exddv = write_exddv(tmp_path / "exddv")  # unknown audio_fake (NA) survives the store
    assert invoke("import", "exddv", exddv, "-n", "exddv", "-s", store).exit_code == 0
    stored = coerce_schema(open_store(str(store)).manifest("exddv"))
    assert stored["audio_fake"].isna().tolist() == [True, False]
    assert stored.loc[0, "clicks"][0] == {"frame": 3, "x": 1.02, "y": 0.9}


def test_import_lenient_reports_and_strict_fails(tmp_path: Path) -> None:
    store = tmp_path / "s.zarr"
    train = [av1m_entry("a.mp4", "real", []), av1m_entry("b.mp4", "real", [[1.0, 2.0]])]
    root = write_av1m(tmp_path / "av1m", train=train, val=[])
    lenient = invoke("import", "av1m", root, "-n", "d", "-s", store)
    assert lenient.exit_code == 0
    assert "1 row(s) dropped" in lenient.output and "label_mismatch" in lenient.output
    strict = invoke("import", "av1m", root, "-n", "d2", "-s", store, "--strict")
    assert strict.exit_code == 1
    assert "error: 1 problem(s)" in strict.output and "train/b" in strict.output
    from featstore import open_store

    assert open_store(str(store)).datasets() == ["d"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["import", "nope", ".", "-n", "x"], "unknown dataset format"),
        (["import", "av1m", "{root}", "-n", "x", "--protocol", "nope"], "unknown protocol"),
        (["show", "missing"], "no dataset 'missing'"),
    ],
)
def test_user_errors_are_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    store = tmp_path / "s.zarr"
    root = write_av1m(tmp_path / "av1m")
    invoke("import", "av1m", root, "-n", "a", "-s", store)
    result = invoke(*[a.format(root=root) for a in args], "--store", store)
    assert result.exit_code == 1 and message in result.output


def test_import_with_no_valid_rows_fails(tmp_path: Path) -> None:
    root = write_av1m(tmp_path / "av1m", train=[av1m_entry("a.mp4", "both_modified", [])], val=[])
    result = invoke("import", "av1m", root, "-n", "x", "-s", tmp_path / "s.zarr")
    assert result.exit_code == 1 and "nothing to import" in result.output


def test_list_empty_store(tmp_path: Path) -> None:
    from featstore import open_store

    open_store(str(tmp_path / "s.zarr"), mode="a")
    result = invoke("list", "--store", tmp_path / "s.zarr")
    assert result.exit_code == 0 and "(no datasets)" in result.output


def test_sub_app_mounts_as_featstore_datasets(tmp_path: Path) -> None:
    """The lead registers ``app`` as ``featstore datasets``; check it works nested."""
    import typer

    root_app = typer.Typer()
    root_app.add_typer(app, name="datasets")

    @root_app.callback()
    def main() -> None:
        pass

    root = write_av1m(tmp_path / "av1m")
    (root / "train/id0/vid/real.mp4").unlink()
    store = str(tmp_path / "s.zarr")
    args = ["datasets", "import", "av1m", str(root), "-n", "a", "-s", store, "--no-check-files"]
    result = runner.invoke(root_app, args, catch_exceptions=False)
    assert result.exit_code == 0 and "imported 6 videos" in result.output
    result = runner.invoke(root_app, ["datasets", "list", "-s", store], catch_exceptions=False)
    assert result.exit_code == 0 and result.output.startswith("a\t6 videos")
