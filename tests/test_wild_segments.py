"""``featstore datasets segment`` on long synthetic in-the-wild videos (see wild_fixtures)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

pytest.importorskip("dlib")
pytest.importorskip("cv2")
pytest.importorskip("silero_vad")

from featstore import open_store
from featstore.cli.main import app
from featstore.crops import load_tracks
from featstore.datasets.segments import SOURCES_ATTR

from wild_fixtures import WildVideo, make_wild_video  # isort: skip

runner = CliRunner()


@pytest.fixture(scope="session")
def wild(tmp_path_factory: pytest.TempPathFactory) -> WildVideo:
    return make_wild_video(tmp_path_factory.mktemp("wild"))


def _manifest(wild: WildVideo) -> pd.DataFrame:
    root = wild.path.parent
    rows = [
        dict(
            video_id="wild",
            path=wild.path.name,
            label=1,
            split="test",
            modify_type="unknown",
            audio_fake=pd.NA,
            visual_fake=pd.NA,
            fake_segments=[[3.0, 4.0], [12.0, 13.0]],
            duration_s=float("nan"),
            note="in the wild",
        ),
        dict(
            video_id="silent",
            path=wild.silent_path.name,
            label=0,
            split="test",
            modify_type="real",
            audio_fake=False,
            visual_fake=False,
            fake_segments=[],
            duration_s=float("nan"),
            note="no audio",
        ),
    ]
    df = pd.DataFrame(rows)
    df.attrs = {"root": str(root), "format": "csv"}
    return df


@pytest.fixture(scope="session")
def segmented(wild: WildVideo, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    store = str(tmp_path_factory.mktemp("store") / "f.zarr")
    fs = open_store(store, mode="a")
    df = _manifest(wild)
    fs.write_manifest("wild", df, attrs=df.attrs)
    result = runner.invoke(app, ["datasets", "segment", "wild", "--store", store, "--asd", "sync"])
    assert result.exit_code == 0, result.output
    return store, result.output


def test_segments_match_the_speaking_spans(wild: WildVideo, segmented: tuple[str, str]) -> None:
    store, output = segmented
    seg = open_store(store).manifest("wild-segments")
    assert list(seg["source_id"]) == ["wild", "wild"]
    found = list(zip(seg["start_s"], seg["end_s"], strict=True))
    assert len(found) == len(wild.speaking) == 2
    for (s, e), (ks, ke) in zip(found, wild.speaking, strict=True):
        assert abs(s - ks) <= 0.2 and abs(e - ke) <= 0.2, (found, wild.speaking)
    assert "2 videos in" in output and "2 segments" in output
    # label, split and extra columns are inherited; fake segments move into segment time
    assert list(seg["label"]) == [1, 1] and list(seg["note"]) == ["in the wild"] * 2
    s0, s1 = found
    assert seg["fake_segments"][0] == [[round(3.0 - s0[0], 6), round(4.0 - s0[0], 6)]]
    assert seg["fake_segments"][1] == [[round(12.0 - s1[0], 6), round(13.0 - s1[0], 6)]]
    np.testing.assert_allclose(seg["duration_s"], seg["end_s"] - seg["start_s"])
    assert (seg["face_px"] > 100).all() and (seg["asd"] == "sync").all()


def test_the_face_track_is_stored_per_segment(segmented: tuple[str, str]) -> None:
    store, _ = segmented
    fs = open_store(store)
    seg = fs.manifest("wild-segments")
    for _, row in seg.iterrows():
        tracks = load_tracks(fs, "wild-segments", row["video_id"])
        assert tracks is not None
        assert tracks.n_frames == row["end_frame"] - row["start_frame"]
        side = tracks.boxes[:, 2] - tracks.boxes[:, 0]
        assert 100 < np.median(side) < 160  # the ~125 px face of the sample generator
        assert tracks.detected.mean() > 0.9


def test_dropped_spans_have_the_right_reasons(wild: WildVideo, segmented: tuple[str, str]) -> None:
    store, output = segmented
    log = open_store(store).manifest("wild-segments").attrs[SOURCES_ATTR]
    assert log["silent"]["dropped_s"] == {"no_audio": 4.0} and log["silent"]["segments"] == 0
    dropped = log["wild"]["dropped_s"]
    cut = wild.spans["cutaway"]
    assert dropped["no_face"] == pytest.approx(cut[1] - cut[0], abs=0.05)
    silence, voiceover = wild.spans["silence"], wild.spans["voiceover"]
    assert (
        dropped["nobody_speaking"]
        >= (silence[1] - silence[0]) + (voiceover[1] - voiceover[0]) - 0.2
    )
    small = wild.spans["small"]
    assert 0.6 * (small[1] - small[0]) < dropped["face_too_small"] <= small[1] - small[0]
    assert "several_faces" not in dropped and "too_short" not in dropped
    assert "no_audio 4.0 s (1 spans)" in output


def test_rerun_resumes_and_other_settings_are_refused(segmented: tuple[str, str]) -> None:
    store, _ = segmented
    again = runner.invoke(app, ["datasets", "segment", "wild", "--store", store, "--asd", "sync"])
    assert again.exit_code == 0, again.output
    assert "0 processed, 2 done before" in again.output and "2 segments" in again.output
    other = runner.invoke(
        app, ["datasets", "segment", "wild", "--store", store, "--asd", "sync", "--min-s", "5"]
    )
    assert other.exit_code == 1 and "other settings" in other.output


def test_talknet_path_with_a_tiny_checkpoint(wild: WildVideo, tmp_path: Path) -> None:
    from featstore.asd.talknet.tiny import save_tiny_checkpoint

    ckpt = save_tiny_checkpoint(tmp_path / "tiny.model", seed=0)
    store = str(tmp_path / "f.zarr")
    fs = open_store(store, mode="a")
    df = _manifest(wild).iloc[1:]  # the video without audio: plumbing only, fast
    fs.write_manifest("w", df, attrs=df.attrs)
    out = runner.invoke(
        app,
        [
            "datasets",
            "segment",
            "w",
            "--store",
            store,
            "--asd",
            "talknet",
            "--checkpoint",
            str(ckpt),
            "--as",
            "w-tn",
        ],
    )
    assert out.exit_code == 0, out.output
    attrs = open_store(store).manifest("w-tn").attrs
    assert attrs["segment_settings"]["detector"]["asd"] == "talknet"
    assert len(attrs["segment_settings"]["detector"]["checkpoint_sha256"]) == 64
    missing = runner.invoke(
        app,
        [
            "datasets",
            "segment",
            "w",
            "--store",
            store,
            "--asd",
            "talknet",
            "--checkpoint",
            str(tmp_path / "no.model"),
        ],
    )
    assert missing.exit_code == 1 and "not found" in missing.output


# ------------------------------------------------------------------ extraction of segments


def _write_lossless(path: Path, frames: np.ndarray, audio: np.ndarray) -> None:
    """25 fps RGB frames (FFV1, RGB planes) and 16 kHz mono float PCM: decodes to exactly
    these arrays, so a cut file made from a decode from the start is the reference."""
    import av

    with av.open(str(path), "w", format="matroska") as out:
        vs = out.add_stream("ffv1", rate=25)
        vs.width, vs.height, vs.pix_fmt = frames.shape[2], frames.shape[1], "bgr0"
        as_ = out.add_stream("pcm_f32le", rate=16_000, layout="mono")
        for i, img in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            out.mux(vs.encode(frame))
        out.mux(vs.encode(None))
        for s in range(0, len(audio), 4000):
            frame = av.AudioFrame.from_ndarray(
                audio[None, s : s + 4000], format="flt", layout="mono"
            )
            frame.sample_rate, frame.pts = 16_000, s
            out.mux(as_.encode(frame))
        out.mux(as_.encode(None))


def test_extracting_segments_equals_extracting_the_spans_cut_to_files(
    wild: WildVideo, segmented: tuple[str, str], tmp_path: Path
) -> None:
    """Segment rows (a seek into the source, the segment's stored face track) equal the rows
    of the same spans cut to files from a decode of the whole source, cropped with the same
    tracks: exactly, since the span decode is the whole decode's slice (test_media_spans;
    the fixture's audio is AAC at 16 kHz, which needs no resampler)."""
    from featstore import media
    from featstore.crops import save_tracks

    store, _ = segmented
    fs = open_store(store, mode="a")
    seg = fs.manifest("wild-segments")
    whole = media.decode(wild.path)  # from the start, no seek
    rows = []
    for _, row in seg.iterrows():
        a, b = int(row["start_frame"]), int(row["end_frame"])
        cut = tmp_path / f"{row['video_id'].replace('@', '_')}.mkv"
        _write_lossless(cut, whole.frames[a:b], whole.audio[a * 640 : b * 640])
        rows.append({**row.to_dict(), "path": cut.name})
    cuts = pd.DataFrame(rows)[[c for c in seg.columns if c not in ("start_s", "end_s")]]
    cuts.attrs = {"root": str(tmp_path), "format": "csv"}
    fs.write_manifest("wild-cuts", cuts, attrs=cuts.attrs)
    for vid in seg["video_id"]:
        save_tracks(fs, "wild-cuts", vid, load_tracks(fs, "wild-segments", vid))

    for encoder in ("mouth-pixels", "logfbank"):
        for dataset in ("wild-segments", "wild-cuts"):
            args = ["--encoder", encoder, "--dataset", dataset, "--store", store]
            out = runner.invoke(app, ["extract", *args, "--dtype", "float32", "--num-workers", "1"])
            assert out.exit_code == 0, out.output
    fs = open_store(store)
    for _, row in seg.iterrows():
        vid, n = row["video_id"], int(row["end_frame"] - row["start_frame"])
        for encoder in ("mouth-pixels", "logfbank"):
            got = fs.video("wild-segments", encoder, vid, "last")
            want = fs.video("wild-cuts", encoder, vid, "last")
            assert got.shape[0] == n
            np.testing.assert_array_equal(got, want, err_msg=f"{encoder} {vid}")
    # no new tracks were made for the segments: they were cropped from their own
    assert len(fs.committed_videos("wild-segments", "tracks-dlib68", ["landmarks"])) == len(seg)


def test_a_segment_without_its_track_fails_and_is_not_tracked_again(
    segmented: tuple[str, str],
) -> None:
    store, _ = segmented
    fs = open_store(store, mode="a")
    seg = fs.manifest("wild-segments")
    fs.write_manifest("wild-untracked", seg, attrs=seg.attrs)  # the rows without their tracks
    out = runner.invoke(
        app,
        ["extract", "--encoder", "mouth-pixels", "--on", "wild-untracked", "--store", store],
    )
    assert out.exit_code == 0, out.output
    failures = open_store(store).failures("wild-untracked", "mouth-pixels")
    assert sorted(failures["video_id"]) == sorted(seg["video_id"])
    assert (failures["error_type"] == "MissingTracksError").all()
    assert failures["message"].str.contains("no stored face track").all(), failures["message"]
