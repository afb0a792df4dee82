"""Dataset readers and validation: tiny metadata fixtures in every format, written in tmp_path."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from featstore.datasets import (
    CORE_COLUMNS,
    FORMATS,
    DatasetFormatError,
    ProblemKind,
    UnknownFormatError,
    read_dataset,
)
from featstore.errors import FeatstoreError, ManifestError

from dataset_fixtures import (  # isort: skip
    FAVC_ROWS,
    WRITERS,
    av1m_entry,
    exddv_row,
    touch,
    write_av1m,
    write_avlips,
    write_csv,
    write_dfe,
    write_exddv,
    write_favc,
    write_folder,
    write_real,
)


# --- contract over every format -----------------------------------------------------------


def test_every_registered_format_has_a_fixture() -> None:
    assert set(FORMATS) == set(WRITERS)


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_every_format_yields_the_core_schema(fmt: str, tmp_path: Path) -> None:
    root = WRITERS[fmt](tmp_path / fmt)
    result = read_dataset(fmt, root, strict=True)
    df = result.manifest
    assert result.ok and result.format == fmt and result.root.is_absolute()
    assert tuple(df.columns[: len(CORE_COLUMNS)]) == CORE_COLUMNS
    assert len(df) > 0 and df["video_id"].is_unique
    assert df["label"].dtype == "int64" and set(df["label"]) <= {0, 1}
    assert str(df["audio_fake"].dtype) == "boolean" and str(df["visual_fake"].dtype) == "boolean"
    assert df["duration_s"].dtype == "float64"
    for vid, path in zip(df["video_id"], df["path"], strict=True):
        assert not Path(path).is_absolute() and (result.root / path).is_file()
        assert vid == str(Path(path).with_suffix("")).replace("\\", "/")
    assert all(isinstance(s, list) for s in df["fake_segments"])


def test_unknown_format_and_missing_root(tmp_path: Path) -> None:
    with pytest.raises(UnknownFormatError, match="choose from"):
        read_dataset("nope", tmp_path)
    with pytest.raises(DatasetFormatError, match="does not exist"):
        read_dataset("real", tmp_path / "absent")


def test_error_classes_are_featstore_errors() -> None:
    assert issubclass(DatasetFormatError, ManifestError)
    assert issubclass(DatasetFormatError, FeatstoreError)


# --- AV-Deepfake1M -------------------------------------------------------------------------


def test_av1m_labels_segments_and_ids(tmp_path: Path) -> None:
    df = read_dataset("av1m", write_av1m(tmp_path), strict=True).manifest.set_index("video_id")
    assert list(df.index) == [
        "train/id0/vid/real",
        "train/id0/vid/fake_v",
        "train/id0/vid/fake_a",
        "train/id0/vid/fake_av",
        "val/id1/v/real",
        "val/id1/v/fake",
    ]
    assert df.loc["train/id0/vid/real", "path"] == "train/id0/vid/real.mp4"
    assert df["label"].tolist() == [0, 1, 1, 1, 0, 1]
    assert df["split"].tolist() == ["train"] * 4 + ["val"] * 2
    fake_a = df.loc["train/id0/vid/fake_a"]
    assert fake_a["fake_segments"] == [[0.2, 0.6], [2.0, 2.4]]
    assert fake_a["audio_fake_segments"] == [[0.2, 0.6], [2.0, 2.4]]
    assert fake_a["visual_fake_segments"] == []
    assert bool(fake_a["audio_fake"]) and not bool(fake_a["visual_fake"])
    assert fake_a["audio_model"] == "your_tts" and fake_a["original"] == "id0/vid/real.mp4"
    assert df.loc["train/id0/vid/fake_v", "modify_type"] == "visual_modified"
    assert df["duration_s"].tolist() == [4.0] * 6  # 100 frames at 25 fps
    assert df["audio_frames"].tolist() == [64000] * 6  # kept as published, never trusted
    assert pd.isna(df.loc["train/id0/vid/real", "original"])


def test_av1m_label_follows_fake_segments(tmp_path: Path) -> None:
    """Fake iff fake_segments is non-empty; a contradicting modify_type is a label mismatch."""
    train = [
        av1m_entry("ok.mp4", "real", []),
        av1m_entry("says_real.mp4", "real", [[1.0, 2.0]]),
        av1m_entry("no_segments.mp4", "both_modified", []),
    ]
    root = write_av1m(tmp_path, train=train, val=[])
    result = read_dataset("av1m", root)
    assert result.manifest["video_id"].tolist() == ["train/ok"]
    assert [(p.kind, p.row, p.video_id) for p in result.problems] == [
        (ProblemKind.LABEL_MISMATCH, 1, "train/says_real"),
        (ProblemKind.LABEL_MISMATCH, 2, "train/no_segments"),
    ]
    with pytest.raises(DatasetFormatError) as info:
        read_dataset("av1m", root, strict=True)
    assert len(info.value.problems) == 2 and "2 problem(s)" in str(info.value)


def test_av1m_malformed_rows(tmp_path: Path) -> None:
    train = [
        av1m_entry("good.mp4", "real", []),
        {"file": "no_segments.mp4", "modify_type": "real"},
        av1m_entry("text_bounds.mp4", "visual_modified", [["a", "b"]]),
        av1m_entry("reversed.mp4", "visual_modified", [[2.0, 1.0]]),
        av1m_entry("odd_type.mp4", "lipsync", [[0.0, 1.0]]),
        av1m_entry("frames.mp4", "real", [], video_frames="many"),
        "not an object",
        av1m_entry("wrong_split.mp4", "real", [], split="val"),
    ]
    result = read_dataset("av1m", write_av1m(tmp_path, train=train, val=[]))
    assert result.manifest["video_id"].tolist() == ["train/good"]
    assert [p.row for p in result.problems] == [1, 2, 3, 4, 5, 6, 7]
    assert {p.kind for p in result.problems} == {ProblemKind.MALFORMED}
    assert all(p.source == "train_metadata.json" for p in result.problems)
    assert result.problems[1].path == "train/text_bounds.mp4"


def test_av1m_bad_json_fails_in_both_modes(tmp_path: Path) -> None:
    write_av1m(tmp_path)
    (tmp_path / "val_metadata.json").write_text('[{"file": "x.mp4",')
    for strict in (False, True):
        with pytest.raises(DatasetFormatError, match=r"val_metadata\.json") as info:
            read_dataset("av1m", tmp_path, strict=strict)
        assert info.value.problems[0].kind is ProblemKind.UNREADABLE
    (tmp_path / "val_metadata.json").write_text('{"file": "x.mp4"}')
    with pytest.raises(DatasetFormatError, match="JSON list"):
        read_dataset("av1m", tmp_path)
    with pytest.raises(DatasetFormatError, match=r"no \*_metadata\.json"):
        read_dataset("av1m", tmp_path / "train")


def test_missing_files_and_duplicates(tmp_path: Path) -> None:
    train = [
        av1m_entry("a.mp4", "real", []),
        av1m_entry("gone.mp4", "real", []),
        av1m_entry("a.mp4", "both_modified", [[0.0, 1.0]]),
    ]
    root = write_av1m(tmp_path, train=train, val=[])
    (root / "train/gone.mp4").unlink()
    result = read_dataset("av1m", root)
    assert result.manifest["video_id"].tolist() == ["train/a"]
    assert result.manifest.loc[0, "label"] == 0  # the first of the duplicates is kept
    missing, duplicate = result.problems
    assert (missing.kind, missing.row, missing.path) == (
        ProblemKind.MISSING_FILE,
        1,
        "train/gone.mp4",
    )
    assert (duplicate.kind, duplicate.row) == (ProblemKind.DUPLICATE_ID, 2)
    assert "row 0" in duplicate.reason
    unchecked = read_dataset("av1m", root, check_files=False)
    assert len(unchecked.manifest) == 2 and len(unchecked.problems) == 1
    with pytest.raises(DatasetFormatError) as info:
        read_dataset("av1m", root, strict=True)
    assert [p.kind for p in info.value.problems] == [
        ProblemKind.MISSING_FILE,
        ProblemKind.DUPLICATE_ID,
    ]


def test_same_stem_different_extension_is_a_duplicate_id(tmp_path: Path) -> None:
    write_folder(tmp_path)
    touch(tmp_path, "real/a.avi")
    result = read_dataset("folder", tmp_path)
    assert [p.kind for p in result.problems] == [ProblemKind.DUPLICATE_ID]
    assert result.manifest["video_id"].is_unique


# --- FakeAVCeleb ----------------------------------------------------------------------------


def test_favc_ten_value_rows(tmp_path: Path) -> None:
    df = read_dataset("favc", write_favc(tmp_path), strict=True).manifest
    assert df["path"].tolist()[0] == "RealVideo-RealAudio/African/men/id00076/00109.mp4"
    assert df["video_id"].tolist()[0] == "RealVideo-RealAudio/African/men/id00076/00109"
    assert df["label"].tolist() == [0, 1, 1, 1]
    assert df["category"].tolist() == ["A", "B", "C", "D"]
    assert df["modify_type"].tolist() == [
        "real",
        "audio_modified",
        "visual_modified",
        "both_modified",
    ]
    assert df["audio_fake"].tolist() == [False, True, False, True]
    assert df["visual_fake"].tolist() == [False, False, True, True]
    assert df["method"].tolist()[3] == "faceswap-wav2lip"
    assert df.loc[2, "target1"] == "id00166"
    assert set(df["race"]) == {"African"} and set(df["gender"]) == {"men"}
    assert set(df["source"]) == {"id00076"} and set(df["split"]) == {"unassigned"}
    assert math.isnan(df.loc[0, "duration_s"])


def test_favc_nine_value_rows_use_documented_layout(tmp_path: Path) -> None:
    row = "id00001,-,-,real,A,RealVideo-RealAudio,Asian (East),women,00001.mp4"
    write_favc(tmp_path, rows=[row])
    touch(tmp_path, "RealVideo-RealAudio/Asian (East)/women/id00001/00001.mp4")
    df = read_dataset("favc", tmp_path / "meta_data.csv", strict=True).manifest
    assert df["path"].tolist() == ["RealVideo-RealAudio/Asian (East)/women/id00001/00001.mp4"]


def test_favc_bad_rows_and_columns(tmp_path: Path) -> None:
    rows = [
        *FAVC_ROWS[:2],
        "id00076,-,-,real,A,FakeVideo-FakeAudio,African,men,x.mp4,FakeAVCeleb/x",  # category vs type
        "id00076,-,-,real,Z,RealVideo-RealAudio,African,men,y.mp4,FakeAVCeleb/y",  # category
        "id00076,-,-,real,A",  # too few values
    ]
    result = read_dataset("favc", write_favc(tmp_path, rows=rows))
    assert len(result.manifest) == 2
    assert [(p.row, p.kind) for p in result.problems] == [
        (2, ProblemKind.LABEL_MISMATCH),
        (3, ProblemKind.MALFORMED),
        (4, ProblemKind.MALFORMED),
    ]
    write_favc(tmp_path / "bad", header="source,method,path")
    with pytest.raises(DatasetFormatError, match="lacks column"):
        read_dataset("favc", tmp_path / "bad")
    with pytest.raises(DatasetFormatError, match="not found"):
        read_dataset("favc", tmp_path / "bad" / "RealVideo-RealAudio")


# --- AVLips ---------------------------------------------------------------------------------


@pytest.mark.parametrize("inner", [False, True])
def test_avlips_label_from_folder(tmp_path: Path, inner: bool) -> None:
    root = write_avlips(tmp_path)
    df = read_dataset("avlips", root / "AVLips" if inner else root, strict=True).manifest
    prefix = "" if inner else "AVLips/"
    assert df["video_id"].tolist() == [
        f"{prefix}0_real/0",
        f"{prefix}0_real/1",
        f"{prefix}1_fake/0",
    ]
    assert df["label"].tolist() == [0, 0, 1]
    assert df["visual_fake"].tolist() == [False, False, True]
    assert df["audio_fake"].isna().tolist() == [False, False, True]
    assert df["modify_type"].tolist() == ["real", "real", "unknown"]


def test_avlips_needs_both_folders(tmp_path: Path) -> None:
    touch(tmp_path, "AVLips/0_real/0.mp4")
    with pytest.raises(DatasetFormatError, match="1_fake"):
        read_dataset("avlips", tmp_path)


# --- Deepfake-Eval-2024 ---------------------------------------------------------------------


def test_dfe2024_labels_and_audio_truth(tmp_path: Path) -> None:
    df = read_dataset("dfe2024", write_dfe(tmp_path), strict=True).manifest
    assert df["path"].tolist() == [f"video-data/{c}.mp4" for c in "abcd"]
    assert df["video_id"].tolist() == [f"video-data/{c}" for c in "abcd"]
    assert df["label"].tolist() == [0, 1, 1, 1]
    assert df["split"].tolist() == ["train", "test", "test", "train"]
    assert df["audio_fake"].tolist()[:2] == [False, True]
    assert df["audio_fake"].isna().tolist() == [False, False, True, False]
    assert df["visual_fake"].isna().tolist() == [False, True, True, True]
    assert df["modify_type"].tolist() == ["real", "unknown", "unknown", "unknown"]


def test_dfe2024_problems(tmp_path: Path) -> None:
    rows = [
        ["a.mp4", "Real", "Real", "train"],
        ["b.mp4", "Real", "Fake", "test"],  # real video with fake audio
        ["c.mp4", "Maybe", "Real", "test"],
        ["d.mp4", "Fake", "Real", "holdout"],
    ]
    result = read_dataset("dfe2024", write_dfe(tmp_path, rows=rows))
    assert result.manifest["video_id"].tolist() == ["video-data/a"]
    assert [(p.row, p.kind) for p in result.problems] == [
        (1, ProblemKind.LABEL_MISMATCH),
        (2, ProblemKind.MALFORMED),
        (3, ProblemKind.MALFORMED),
    ]
    write_dfe(tmp_path / "cols", columns=["Filename", "Video Ground Truth", "Audio", "Set"])
    with pytest.raises(DatasetFormatError, match="Audio Ground Truth"):
        read_dataset("dfe2024", tmp_path / "cols", strict=False)


# --- ExDDV ----------------------------------------------------------------------------------


def test_exddv_clicks_and_merged_annotations(tmp_path: Path) -> None:
    df = read_dataset("exddv", write_exddv(tmp_path), strict=True).manifest.set_index("video_id")
    assert list(df.index) == ["000_003", "001"]
    fake = df.loc["000_003"]
    assert fake["label"] == 1 and bool(fake["visual_fake"]) and fake["modify_type"] == "unknown"
    # frames sorted numerically; x slightly above 1 kept unclipped
    assert fake["clicks"] == [{"frame": 3, "x": 1.02, "y": 0.9}, {"frame": 12, "x": 0.5, "y": 0.25}]
    assert fake["text"] == "blurry mouth, teeth" and fake["username"] == "ann1"
    assert [a["username"] for a in fake["annotations"]] == ["ann1", "ann2"]
    assert fake["annotations"][1]["clicks"] == [{"frame": 40, "x": 0.1, "y": 0.2}]
    assert fake["source_dataset"] == "Faceforensics++" and fake["manipulation"] == "Deepfakes"
    real = df.loc["001"]
    assert real["label"] == 0 and real["clicks"] == [] and real["split"] == "val"


def test_exddv_bad_clicks(tmp_path: Path) -> None:
    rows = [
        exddv_row("ok.mp4"),
        exddv_row("json.mp4", clicks='{"12": {"x": 0.5,'),
        exddv_row("pixels.mp4", clicks={"1": {"x": 320, "y": 200}}),
        exddv_row("frame.mp4", clicks={"first": {"x": 0.5, "y": 0.5}}),
        exddv_row("text.mp4", clicks={"1": {"x": "left", "y": 0.5}}),
        exddv_row("list.mp4", clicks="[1, 2]"),
    ]
    result = read_dataset("exddv", write_exddv(tmp_path, rows=rows))
    assert result.manifest["video_id"].tolist() == ["ok"]
    assert [p.row for p in result.problems] == [1, 2, 3, 4, 5]
    assert "not valid JSON" in result.problems[0].reason
    assert "relative coordinate" in result.problems[1].reason
    with pytest.raises(DatasetFormatError):
        read_dataset("exddv", tmp_path, strict=True)


def test_exddv_conflicting_repeat_is_a_duplicate(tmp_path: Path) -> None:
    rows = [exddv_row("v.mp4"), exddv_row("v.mp4", user="ann2", split="test")]
    result = read_dataset("exddv", write_exddv(tmp_path, rows=rows))
    assert len(result.manifest) == 1
    assert [p.kind for p in result.problems] == [ProblemKind.DUPLICATE_ID]


# --- real, folder, csv ----------------------------------------------------------------------


def test_real_folder_nested(tmp_path: Path) -> None:
    df = read_dataset("real", write_real(tmp_path), strict=True).manifest
    assert df["video_id"].tolist() == ["id001/abc/00001", "id001/abc/00002", "id002/xyz/00001"]
    assert set(df["label"]) == {0} and set(df["split"]) == {"train"}
    assert set(df["modify_type"]) == {"real"}
    touch(tmp_path / "empty", "notes.txt")
    with pytest.raises(DatasetFormatError, match="no video files"):
        read_dataset("real", tmp_path / "empty")
    with pytest.raises(DatasetFormatError, match="not a directory"):
        read_dataset("real", tmp_path / "empty" / "notes.txt")


def test_folder_real_fake_and_splits(tmp_path: Path) -> None:
    df = read_dataset("folder", write_folder(tmp_path / "flat"), strict=True).manifest
    assert df["video_id"].tolist() == ["real/a", "real/sub/b", "fake/c"]
    assert df["label"].tolist() == [0, 0, 1] and set(df["split"]) == {"unassigned"}
    for rel in ("train/real/a.mp4", "train/fake/b.mp4", "test/real/c.mp4"):
        touch(tmp_path / "split", rel)
    df = read_dataset("folder", tmp_path / "split", strict=True).manifest
    assert df["split"].tolist() == ["train", "train", "test"]
    assert df["video_id"].tolist() == ["train/real/a", "train/fake/b", "test/real/c"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetFormatError, match="no videos"):
        read_dataset("folder", tmp_path / "empty")


def test_csv_generic(tmp_path: Path) -> None:
    df = read_dataset("csv", write_csv(tmp_path), strict=True).manifest
    assert df["video_id"].tolist() == ["v/a", "v/b", "v/c"]
    assert df["label"].tolist() == [0, 1, 1]
    assert df["split"].tolist() == ["train", "test", "val"]
    assert df["fake_segments"].tolist() == [[], [[0.5, 1.25]], []]
    assert df["speaker"].tolist() == ["s1", "s2", "s3"]
    assert df["audio_fake"].tolist()[0] is False and df["audio_fake"].isna().tolist()[1:] == [
        True,
        True,
    ]
    # a folder holding one CSV works too
    assert len(read_dataset("csv", tmp_path).manifest) == 3


def test_csv_problems(tmp_path: Path) -> None:
    text = (
        "path,label,audio_fake\n"
        "v/a.mp4,0,\n"
        "v/b.mp4,maybe,\n"  # bad label
        "../outside.mp4,1,\n"  # escapes the root
        "v/c.mp4,0,true\n"  # real video with fake audio
        "/abs/d.mp4,1,\n"
        "v/e.mp4,1,sometimes\n"
    )
    result = read_dataset(
        "csv", write_csv(tmp_path, text=text, files=("v/a.mp4", "v/c.mp4", "v/e.mp4"))
    )
    assert result.manifest["video_id"].tolist() == ["v/a"]
    assert [(p.row, p.kind) for p in result.problems] == [
        (1, ProblemKind.MALFORMED),
        (2, ProblemKind.MALFORMED),
        (3, ProblemKind.LABEL_MISMATCH),
        (4, ProblemKind.MALFORMED),
        (5, ProblemKind.MALFORMED),
    ]
    with pytest.raises(DatasetFormatError, match="lacks column"):
        read_dataset("csv", write_csv(tmp_path / "nolabel", text="path\nv/a.mp4\n"))


def test_csv_label_contradicting_segments(tmp_path: Path) -> None:
    text = 'path,label,fake_segments,modify_type\nv/a.mp4,0,"[[1, 2]]",\nv/b.mp4,1,,real\nv/c.mp4,0,"[[1]]",\n'
    result = read_dataset("csv", write_csv(tmp_path, text=text))
    assert result.manifest.empty
    assert [p.kind for p in result.problems] == [
        ProblemKind.LABEL_MISMATCH,
        ProblemKind.LABEL_MISMATCH,
        ProblemKind.MALFORMED,
    ]
    assert list(result.manifest.columns[: len(CORE_COLUMNS)]) == list(CORE_COLUMNS)


def test_strict_error_lists_all_problems_in_message(tmp_path: Path) -> None:
    rows = [exddv_row(f"v{i}.mp4", clicks="{bad") for i in range(7)]
    with pytest.raises(DatasetFormatError) as info:
        read_dataset("exddv", write_exddv(tmp_path, rows=rows), strict=True)
    assert len(info.value.problems) == 7
    assert "and 2 more" in str(info.value)
    assert isinstance(info.value, FeatstoreError) and info.value.exit_code == 1


def test_manifest_is_plain_pandas(tmp_path: Path) -> None:
    df = read_dataset("av1m", write_av1m(tmp_path)).manifest
    assert isinstance(df, pd.DataFrame) and list(df.index) == list(range(len(df)))


# --- values that used to be stored silently or crash the import (issue 13.7) ---------------


@pytest.mark.parametrize(
    ("frames", "reason"),
    [
        (math.nan, "video_frames must be a whole number from 0 to 2147483647, got nan"),
        (math.inf, "video_frames must be a whole number from 0 to 2147483647, got inf"),
        (1e20, "got 1e+20"),
        (-5, "got -5"),
        (2.5, "got 2.5"),
        (0, "duration_s must be positive and finite, got 0.0"),
    ],
)
def test_av1m_impossible_frame_counts_are_one_line_problems(
    tmp_path: Path, frames: float, reason: str
) -> None:
    train = [
        av1m_entry("ok.mp4", "real", []),
        av1m_entry("bad.mp4", "real", [], video_frames=frames),
    ]
    root = write_av1m(tmp_path, train=train, val=[])  # json writes NaN / Infinity literals
    result = read_dataset("av1m", root)
    assert result.manifest["video_id"].tolist() == ["train/ok"]
    (problem,) = result.problems
    assert problem.kind is ProblemKind.MALFORMED and problem.row == 1
    assert reason in problem.reason and "\n" not in str(problem)
    with pytest.raises(DatasetFormatError, match=r"1 problem\(s\)"):
        read_dataset("av1m", root, strict=True)


def test_av1m_audio_frames_bound(tmp_path: Path) -> None:
    train = [
        av1m_entry("long.mp4", "real", [], audio_frames=48_000 * 3600 * 20),  # 20 h at 48 kHz
        av1m_entry("absurd.mp4", "real", [], audio_frames=1e20),
    ]
    result = read_dataset("av1m", write_av1m(tmp_path, train=train, val=[]))
    assert result.manifest["audio_frames"].tolist() == [48_000 * 3600 * 20]
    assert "audio_frames must be a whole number" in result.problems[0].reason


def test_segments_checked_against_each_other_and_the_video(tmp_path: Path) -> None:
    train = [  # 100 frames = 4 s
        av1m_entry("unsorted.mp4", "both_modified", [[2.0, 2.5], [0.5, 1.0]]),
        av1m_entry("overlap.mp4", "both_modified", [[0.5, 1.5], [1.0, 2.0]]),
        av1m_entry("touching.mp4", "both_modified", [[0.5, 1.0], [1.0, 2.0]]),
        av1m_entry("past_end.mp4", "visual_modified", [[3.5, 4.5]]),
        av1m_entry("last_frame.mp4", "visual_modified", [[3.5, 4.03]]),
        av1m_entry("after_end.mp4", "audio_modified", [[6.0, 7.0]]),
        av1m_entry("negative.mp4", "audio_modified", [[-1.0, 0.5]]),
    ]
    root = write_av1m(tmp_path, train=train, val=[])
    result = read_dataset("av1m", root)
    df = result.manifest.set_index("video_id")
    assert list(df.index) == ["train/unsorted", "train/touching", "train/last_frame"]
    # the safe correction: segments put in time order (all three segment columns), reported
    assert df.loc["train/unsorted", "fake_segments"] == [[0.5, 1.0], [2.0, 2.5]]
    assert df.loc["train/unsorted", "audio_fake_segments"] == [[0.5, 1.0], [2.0, 2.5]]
    (fixed,) = result.corrections
    assert fixed.kind is ProblemKind.CORRECTED and fixed.video_id == "train/unsorted"
    assert "not in time order: sorted" in fixed.reason
    reasons = {p.video_id: p.reason for p in result.problems}
    assert set(reasons) == {"train/overlap", "train/past_end", "train/after_end", "train/negative"}
    assert "fake_segments overlap: [0.5, 1.5] and [1.0, 2.0]" in reasons["train/overlap"]
    assert "ends after the video's end at 4 s" in reasons["train/past_end"]
    assert "ends after the video's end" in reasons["train/after_end"]
    assert "0 <= start <= end" in reasons["train/negative"]
    with pytest.raises(DatasetFormatError) as info:
        read_dataset("av1m", root, strict=True)
    assert len(info.value.problems) == 4  # a correction alone does not fail a strict import


def test_csv_durations_and_segments(tmp_path: Path) -> None:
    text = (
        "path,label,duration_s,fake_segments\n"
        "v/a.mp4,0,3.0,\n"
        "v/b.mp4,0,-1,\n"
        "v/c.mp4,1,inf,\n"
        'v/d.mp4,1,2.0,"[[1.5, 2.5]]"\n'
        'v/e.mp4,1,,"[[4.0, 5.0], [1.0, 2.0]]"\n'  # no duration: only the order is checked
        "v/f.mp4,0,nan,\n"  # NaN: unknown
    )
    files = tuple(f"v/{c}.mp4" for c in "abcdef")
    result = read_dataset("csv", write_csv(tmp_path, text=text, files=files))
    df = result.manifest.set_index("video_id")
    assert list(df.index) == ["v/a", "v/e", "v/f"]
    assert df.loc["v/e", "fake_segments"] == [[1.0, 2.0], [4.0, 5.0]]
    assert math.isnan(df.loc["v/f", "duration_s"])
    assert [p.row for p in result.problems] == [1, 2, 3]
    assert "duration_s must be positive and finite, got -1.0" in result.problems[0].reason
    assert "got inf" in result.problems[1].reason
    assert "ends after the video's end at 2 s" in result.problems[2].reason
    assert [c.video_id for c in result.corrections] == ["v/e"]
