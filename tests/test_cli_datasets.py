"""``featstore datasets import|list|show`` through Typer's CliRunner, on a real (local) store."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from featstore.cli.datasets import FORMAT_NAMES, PROTOCOL_NAMES, app
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
    assert df.attrs["views"] == {} and df.attrs["default_view"] is None
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
        "import", "favc", root, "--name", "favc", "-s", store, "--protocol", "favc", "--seed", "3"
    )
    assert result.exit_code == 0, result.output
    from featstore import open_store

    df = open_store(str(store)).manifest("favc")
    assert len(df) == 35  # one import keeps every video; the protocol is a view
    assert df.attrs["protocol"] == "favc" and df.attrs["seed"] == 3
    assert df.attrs["default_view"] == "favc" and df.attrs["views"]["favc"]["seed"] == 3
    inside = df["split.favc"] != ""
    assert set(df.loc[inside, "category"]) == {"A", "D"} and inside.sum() == 30
    assert set(df.loc[inside, "split.favc"]) == {"train", "val", "test"}
    assert set(df["split"]) == {"unassigned"}  # the official split is untouched
    assert "view 'favc' (default" in result.output and "both_modified" in result.output

    exddv = write_exddv(tmp_path / "exddv")  # unknown audio_fake (NA) survives the store
    assert invoke("import", "exddv", exddv, "--name", "exddv", "-s", store).exit_code == 0
    stored = coerce_schema(open_store(str(store)).manifest("exddv"))
    assert stored["audio_fake"].isna().tolist() == [True, False]
    assert stored.loc[0, "clicks"][0] == {"frame": 3, "x": 1.02, "y": 0.9}


def test_import_lenient_reports_and_strict_fails(tmp_path: Path) -> None:
    store = tmp_path / "s.zarr"
    train = [av1m_entry("a.mp4", "real", []), av1m_entry("b.mp4", "real", [[1.0, 2.0]])]
    root = write_av1m(tmp_path / "av1m", train=train, val=[])
    lenient = invoke("import", "av1m", root, "--name", "d", "-s", store)
    assert lenient.exit_code == 0
    assert "1 row(s) dropped" in lenient.output and "label_mismatch" in lenient.output
    strict = invoke("import", "av1m", root, "--name", "d2", "-s", store, "--strict")
    assert strict.exit_code == 1
    assert "error: 1 problem(s)" in strict.output and "train/b" in strict.output
    from featstore import open_store

    assert open_store(str(store)).datasets() == ["d"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["import", "nope", ".", "--name", "x"], "unknown dataset format"),
        (["import", "av1m", "{root}", "--name", "x", "--protocol", "nope"], "unknown protocol"),
        (["show", "missing"], "no dataset 'missing'"),
    ],
)
def test_user_errors_are_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    store = tmp_path / "s.zarr"
    root = write_av1m(tmp_path / "av1m")
    invoke("import", "av1m", root, "--name", "a", "-s", store)
    result = invoke(*[a.format(root=root) for a in args], "--store", store)
    assert result.exit_code == 1 and message in result.output


def test_import_with_no_valid_rows_fails(tmp_path: Path) -> None:
    root = write_av1m(tmp_path / "av1m", train=[av1m_entry("a.mp4", "both_modified", [])], val=[])
    result = invoke("import", "av1m", root, "--name", "x", "-s", tmp_path / "s.zarr")
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
    args = ["datasets", "import", "av1m", str(root), "--name", "a", "-s", store, "--no-check-files"]
    result = runner.invoke(root_app, args, catch_exceptions=False)
    assert result.exit_code == 0 and "imported 6 videos" in result.output
    result = runner.invoke(root_app, ["datasets", "list", "-s", store], catch_exceptions=False)
    assert result.exit_code == 0 and result.output.startswith("a\t6 videos")


# --- views: one import, many protocols, published split files ------------------------------


def av1m_root(tmp_path: Path) -> Path:
    """Official train: 8 videos of 4 kinds; official val: 4."""
    kinds = [("real", []), ("visual_modified", [[0.5, 1.0]])]
    kinds += [("audio_modified", [[1.0, 1.5]]), ("both_modified", [[2.0, 2.5]])]
    train = [av1m_entry(f"id{i}/v/{k}.mp4", k, seg) for i in range(2) for k, seg in kinds]
    val = [av1m_entry(f"id9/v/{k}.mp4", k, seg, split="val") for k, seg in kinds]
    return write_av1m(tmp_path / "av1m", train=train, val=val)


def test_protocols_are_views_of_one_import(tmp_path: Path) -> None:
    from featstore import open_store

    store = tmp_path / "s.zarr"
    assert invoke("import", "av1m", av1m_root(tmp_path), "--name", "a", "-s", store).exit_code == 0
    before = open_store(str(store)).manifest("a")
    added = invoke("protocol", "a", "--protocol", "av1m", "-s", store)
    assert added.exit_code == 0, added.output
    assert "added view 'av1m'" in added.output and "both_modified" in added.output
    real = invoke("protocol", "a", "-p", "av1m-real", "--as", "real", "--seed", "5", "-s", store)
    assert real.exit_code == 0, real.output
    df = open_store(str(store)).manifest("a")
    assert len(df) == len(before) == 12  # no second import: the same videos
    assert df[before.columns].equals(before)  # nothing of the manifest changed
    views = df.attrs["views"]
    assert set(views) == {"av1m", "real"} and views["real"]["seed"] == 5
    assert views["av1m"]["protocol"] == "av1m" and views["av1m"]["evaluation"] == "all"
    kept = df.loc[df["split.av1m"] != "", "modify_type"]
    assert set(kept) == {"real", "both_modified"} and len(kept) == 6  # reals + both only
    assert views["av1m"]["splits"]["test"]["videos"] == 2
    assert set(df.loc[df["split.real"].isin(["train", "val"]), "label"]) == {0}
    assert df.attrs["default_view"] is None  # adding a view changes no existing selection

    listed = invoke("list", "-s", store).output
    assert "a\t12 videos (3 real, 9 fake)" in listed and "views=av1m,real" in listed
    again = invoke("protocol", "a", "-p", "av1m", "-s", store)
    assert again.exit_code == 1 and "already has a view 'av1m' (pass --replace)" in again.output
    assert invoke("protocol", "a", "-p", "av1m", "-s", store, "--replace").exit_code == 0
    assert invoke("default-view", "a", "real", "-s", store).exit_code == 0
    shown = invoke("show", "a", "-s", store, "--view", "real").output
    assert "real (default): protocol av1m-real, seed 5" in shown
    assert "view 'real':" in shown
    assert "views=av1m,real*" in invoke("list", "-s", store).output
    assert invoke("drop-view", "a", "real", "-s", store).exit_code == 0
    df = open_store(str(store)).manifest("a")
    assert "split.real" not in df.columns and df.attrs["default_view"] is None
    for args, message in [
        (["protocol", "a", "-p", "nope"], "unknown protocol 'nope'"),
        (["protocol", "a", "-p", "av1m", "--as", "official"], "is the dataset's own split"),
        (["protocol", "a", "-p", "av1m", "--as", "a b"], "invalid view name"),
        (["drop-view", "a", "ghost"], "no view 'ghost'"),
        (["default-view", "a", "ghost"], "no view 'ghost'"),
    ]:
        result = invoke(*args, "-s", store)
        assert result.exit_code == 1 and message in result.output, result.output


def test_views_feed_extraction_without_a_second_import(tmp_path: Path) -> None:
    from featstore import open_store
    from featstore.extract.plan import ExtractError, select_videos

    store = tmp_path / "s.zarr"
    root = av1m_root(tmp_path)
    assert invoke("import", "av1m", root, "--name", "a", "-s", store, "-p", "av1m").exit_code == 0
    fs = open_store(str(store))
    df = fs.manifest("a")

    def ids(split: str | None) -> list[str]:
        return [v.video_id for v in select_videos(fs, "a", split=split)[0]]

    in_view = df.loc[df["split.av1m"] != "", "video_id"].tolist()
    assert ids(None) == in_view  # the default view's videos, as an import with --protocol gave
    assert ids("test") == df.loc[df["split.av1m"] == "test", "video_id"].tolist()
    assert ids("@av1m:train") == df.loc[df["split.av1m"] == "train", "video_id"].tolist()
    assert ids("@official") == df["video_id"].tolist()  # every video
    assert ids("@official:val") == df.loc[df["split"] == "val", "video_id"].tolist()
    with pytest.raises(ExtractError, match="dataset a has no view 'nope'"):
        ids("@nope:train")
    with pytest.raises(ExtractError, match="no videos in split 'dev' of view 'av1m'"):
        ids("dev")


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def test_published_split_files_keep_the_metadata(tmp_path: Path) -> None:
    from featstore import open_store

    store = tmp_path / "s.zarr"
    assert invoke("import", "av1m", av1m_root(tmp_path), "--name", "a", "-s", store).exit_code == 0
    before = open_store(str(store)).manifest("a")
    # the authors' format: paths relative to the official split's folder, float labels
    train = write_lines(
        tmp_path / "train_labels.csv",
        [
            "path,label",
            "id0/v/real.mp4,0.0",
            "id0/v/both_modified.mp4,1.0",
            "id1/v/real,0",  # without extension
            "id0/v/real.mp4,0",  # repeated
            "id7/v/real.mp4,0",  # not in the manifest
        ],
    )
    val = write_lines(tmp_path / "val.txt", ["train/id1/v/both_modified"])  # a video_id, no header
    test = write_lines(
        tmp_path / "test.csv", ["val/id9/v/real.mp4,0", "id9/v/both_modified.mp4,1", "v/real.mp4,0"]
    )
    result = invoke(
        "split", "a", "--train", train, "--val", val, "--test", test, "-s", store, "--default"
    )
    assert result.exit_code == 0, result.output
    assert "matched train 3, val 1, test 2" in result.output
    assert "1 line(s) repeat a video of the same split" in result.output
    assert "2 line(s) name no video of the manifest:" in result.output
    assert "train_labels.csv:6: id7/v/real.mp4: no such video" in result.output
    assert "test.csv:3: v/real.mp4: ambiguous" in result.output
    df = open_store(str(store)).manifest("a")
    assert df[before.columns].equals(before)  # modify_type, segments, every column kept
    view = dict(zip(df["video_id"], df["split.published"], strict=True))
    assert {v: s for v, s in view.items() if s} == {
        "train/id0/v/real": "train",
        "train/id0/v/both_modified": "train",
        "train/id1/v/real": "train",
        "train/id1/v/both_modified": "val",
        "val/id9/v/real": "test",
        "val/id9/v/both_modified": "test",
    }
    info = df.attrs["views"]["published"]
    assert info["protocol"] == "files" and info["unmatched"] == 2
    assert info["files"]["val"] == str(val.resolve()) and df.attrs["default_view"] == "published"


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (["path,label", "id0/v/real.mp4,1"], "has label 1, the manifest says 0"),
        (["id0/v/real.mp4,maybe"], "label must be 0 or 1"),
        (["path,label", "id5/v/real.mp4,0"], "no line of the split files names a video"),
    ],
)
def test_split_files_that_contradict_the_manifest(
    tmp_path: Path, lines: list[str], message: str
) -> None:
    from featstore import open_store

    store = tmp_path / "s.zarr"
    assert invoke("import", "av1m", av1m_root(tmp_path), "--name", "a", "-s", store).exit_code == 0
    before = open_store(str(store)).manifest("a")
    train = write_lines(tmp_path / "train.csv", lines)
    result = invoke("split", "a", "--train", train, "-s", store)
    assert result.exit_code == 1 and message in result.output
    after = open_store(str(store)).manifest("a")
    assert after.equals(before) and after.attrs["views"] == {}  # nothing written


def test_split_files_video_in_two_splits(tmp_path: Path) -> None:
    store = tmp_path / "s.zarr"
    assert invoke("import", "av1m", av1m_root(tmp_path), "--name", "a", "-s", store).exit_code == 0
    train = write_lines(tmp_path / "train.csv", ["id0/v/real.mp4,0"])
    test = write_lines(tmp_path / "test.csv", ["train/id0/v/real"])
    result = invoke("split", "a", "--train", train, "--test", test, "-s", store)
    assert result.exit_code == 1
    assert "train/id0/v/real is in train (train.csv:1) and test (test.csv:1)" in result.output
    assert "give at least one split file" in invoke("split", "a", "-s", store).output


def test_import_reports_corrections(tmp_path: Path) -> None:
    train = [av1m_entry("a.mp4", "both_modified", [[2.0, 2.5], [0.5, 1.0]])]
    root = write_av1m(tmp_path / "av1m", train=train, val=[])
    result = invoke("import", "av1m", root, "--name", "a", "-s", tmp_path / "s.zarr")
    assert result.exit_code == 0
    assert "1 row(s) corrected:" in result.output and "not in time order: sorted" in result.output


def test_import_and_split_json(tmp_path: Path) -> None:
    import json

    store = tmp_path / "s.zarr"
    train = [av1m_entry("a.mp4", "real", []), av1m_entry("b.mp4", "real", [[1.0, 2.0]])]
    root = write_av1m(tmp_path / "av1m", train=train, val=[])
    result = runner.invoke(
        app, ["import", "av1m", str(root), "--name", "d", "-s", str(store), "--json"]
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["dataset"] == "d" and doc["videos"] == 1 and doc["format"] == "av1m"
    assert len(doc["dropped"]) == 1 and "label_mismatch" in doc["dropped"][0]
    assert sum(c["videos"] for c in doc["counts"]) == 1
    listing = tmp_path / "test.txt"
    listing.write_text("train/a.mp4\nnope.mp4\n")
    split = runner.invoke(
        app, ["split", "d", "--test", str(listing), "--as", "mine", "-s", str(store), "--json"]
    )
    assert split.exit_code == 0, split.output
    doc = json.loads(split.stdout)
    assert doc["view"] == "mine" and doc["matched"] == {"test": 1}
    assert len(doc["unmatched"]) == 1
