"""featstore.silence and ``featstore datasets silence``: leading silence into the manifest."""

from __future__ import annotations

import json
import math
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from featstore import media, timebase
from featstore.cli.datasets import app
from featstore.errors import ManifestError, ReadOnlyStoreError
from featstore.sample import clip_path, make_sample
from featstore.silence import (
    SILENCE_COLUMN,
    THRESHOLD_ATTR,
    measure_leading_silence,
    measure_manifest,
    measure_store_silence,
    measure_videos,
)
from featstore.store import EncoderInfo, open_store
from featstore.trainers.pairs import load_pairs

SR = timebase.SAMPLE_RATE_HZ
VCODEC = "libx264" if "libx264" in av.codecs_available else "mpeg4"


def tone_after(silence_samples: int, n: int, *, amp: float = 0.3) -> np.ndarray:
    """``n`` samples: zeros, then a cosine whose first sample is already at ``amp``."""
    x = np.zeros(n, np.float32)
    t = np.arange(n - silence_samples) / SR
    x[silence_samples:] = amp * np.cos(2 * np.pi * 440.0 * t)
    return x


def write_media(
    path: Path, audio: np.ndarray | None, *, video_frames: int = 0, acodec: str = "pcm_s16le"
) -> Path:
    """A file with mono 16 kHz ``audio`` (None: no audio) and ``video_frames`` 25 fps frames."""
    with av.open(str(path), "w") as out:
        vs = out.add_stream(VCODEC, rate=25) if video_frames else None
        if vs is not None:
            vs.width, vs.height, vs.pix_fmt = 32, 32, "yuv420p"
        as_ = out.add_stream(acodec, rate=SR, layout="mono") if audio is not None else None
        for i in range(video_frames):
            img = np.full((32, 32, 3), 10 * (i % 20), np.uint8)
            out.mux(vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        if vs is not None:
            out.mux(vs.encode(None))
        if as_ is not None:
            fmt = as_.codec_context.format.name
            step = as_.codec_context.frame_size or 1024
            for start in range(0, len(audio), step):
                chunk = audio[None, start : start + step]
                chunk = np.rint(chunk * 32767).astype(np.int16) if fmt.startswith("s16") else chunk
                frame = av.AudioFrame.from_ndarray(
                    np.ascontiguousarray(chunk), format=fmt, layout="mono"
                )
                frame.sample_rate, frame.pts = SR, start
                out.mux(as_.encode(frame))
            out.mux(as_.encode(None))
    return path


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    """A 6-clip generated sample dataset and its metadata entries."""
    root = tmp_path_factory.mktemp("silence") / "sample"
    make_sample(root, n_clips=6, seed=3, size=64, duration_s=(1.0, 1.5))
    entries = [
        e
        for split in ("train", "val")
        for e in json.loads((root / f"{split}_metadata.json").read_text())
    ]
    return root, entries


def manifest_of(root: Path, entries: list[dict]) -> pd.DataFrame:
    """A manifest in the store's format for the sample entries (with mixed column types)."""
    return pd.DataFrame(
        {
            "video_id": [f"{e['split']}/{e['file'][:-4]}" for e in entries],
            "path": [f"{e['split']}/{e['file']}" for e in entries],
            "label": [int(e["modify_type"] != "real") for e in entries],
            "split": ["test"] * len(entries),
            "modify_type": [e["modify_type"] for e in entries],
            "fake_segments": [e["fake_segments"] for e in entries],
            "original": [e["original"] for e in entries],  # None for real clips
            "duration_s": [e["video_frames"] / 25 for e in entries],
        }
    )


# -- measuring one file ------------------------------------------------------------------------


def test_pcm_wav_is_exact_to_the_sample(tmp_path: Path) -> None:
    path = write_media(tmp_path / "quiet.wav", tone_after(4_321, 16_000))
    silence, silent = measure_leading_silence(path)
    assert not silent
    assert abs(silence - 4_321 / SR) <= 1 / SR


def test_mp4_with_aac_is_within_a_frame(tmp_path: Path) -> None:
    path = write_media(
        tmp_path / "quiet.mp4", tone_after(8_320, 32_000), video_frames=50, acodec="aac"
    )
    silence, silent = measure_leading_silence(path)
    assert not silent and abs(silence - 0.52) <= 1 / 25
    # the streaming measure stops early but agrees with a full decode to the sample
    assert silence == media.leading_silence_s(media.decode(path, video=False).audio)


def test_silent_throughout_is_the_whole_length(tmp_path: Path) -> None:
    path = write_media(tmp_path / "hush.wav", np.full(24_000, 0.0004, np.float32))
    assert measure_leading_silence(path) == (pytest.approx(1.5, abs=1 / SR), True)


def test_threshold_is_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="threshold"):
        measure_leading_silence(tmp_path / "x.wav", threshold=math.nan)
    with pytest.raises(ValueError, match="workers"):
        measure_videos([("a", tmp_path / "x.wav")], workers=0)


def test_sample_fakes_share_their_originals_silence(sample: tuple[Path, list[dict]]) -> None:
    root, entries = sample
    measured = {e["file"]: measure_leading_silence(clip_path(root, e))[0] for e in entries}
    fakes = [e for e in entries if e["original"]]
    assert fakes
    for e in fakes:
        assert measured[e["file"]] == measured[e["original"]]
    for e in entries:
        full = media.decode(clip_path(root, e), video=False).audio
        assert measured[e["file"]] == media.leading_silence_s(full)
        # the sample's 2e-4 noise floor crosses 0.0005 within a few ms of the start
        assert 0 <= measured[e["file"]] < 0.1


# -- failures ----------------------------------------------------------------------------------


def test_failures_are_nan_and_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_media(tmp_path / "film.mp4", None, video_frames=10)
    (tmp_path / "text.mp4").write_text("not a video")
    write_media(tmp_path / "ok.wav", tone_after(800, 8_000))
    manifest = pd.DataFrame(
        {
            "video_id": ["film", "text", "gone", "ok"],
            "path": ["film.mp4", "text.mp4", "gone.mp4", "ok.wav"],
        }
    )
    seen = []
    out, summary = measure_manifest(
        manifest, tmp_path, workers=3, progress=lambda d, t, r: seen.append((d, t))
    )
    values = dict(zip(out["video_id"], out[SILENCE_COLUMN], strict=True))
    assert values["ok"] == pytest.approx(800 / SR, abs=1 / SR)
    assert all(math.isnan(values[v]) for v in ("film", "text", "gone"))
    assert (summary.measured, summary.skipped, summary.failed) == (1, 0, 3)
    assert "no audio stream" in summary.failures["film"]
    assert "no such file" in summary.failures["gone"]
    assert "film" in caplog.text and "no audio stream" in caplog.text
    assert sorted(seen) == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert out.attrs[THRESHOLD_ATTR] == media.SILENCE_THRESHOLD
    assert "leading_silence_s" not in manifest.columns  # the input is not modified


# -- the store ---------------------------------------------------------------------------------


@pytest.fixture
def sample_store(tmp_path: Path, sample: tuple[Path, list[dict]]):
    """A store holding the sample's manifest plus one video without audio."""
    root, entries = sample
    manifest = manifest_of(root, entries)
    write_media(root / "no_audio.mp4", None, video_frames=20)
    extra = {"video_id": "no_audio", "path": "no_audio.mp4", "label": 0, "split": "test"}
    extra |= {"modify_type": "real", "fake_segments": [], "original": None, "duration_s": 0.8}
    manifest = pd.concat([manifest, pd.DataFrame([extra])], ignore_index=True)
    store = open_store(str(tmp_path / "features.zarr"), mode="a")
    attrs = {"format": "av1m", "root": str(root), "protocol": None, "n_problems": 0}
    store.write_manifest("sample", manifest, attrs=attrs)
    return store, manifest, attrs


def test_store_round_trip_keeps_columns_and_attrs(sample_store) -> None:
    store, manifest, attrs = sample_store
    before = store.manifest("sample")
    summary = measure_store_silence(store, "sample", workers=2)
    assert (summary.measured, summary.skipped, summary.failed) == (len(manifest) - 1, 0, 1)
    assert 0 <= summary.mean_s <= summary.max_s < 0.1
    df = open_store(store.url).manifest("sample")
    assert list(df.columns) == [*manifest.columns, SILENCE_COLUMN]
    pd.testing.assert_frame_equal(df[list(manifest.columns)], before)
    assert df.attrs == {**attrs, THRESHOLD_ATTR: media.SILENCE_THRESHOLD}
    assert df[SILENCE_COLUMN].dtype == np.float64
    assert df.set_index("video_id")[SILENCE_COLUMN].isna().to_dict() == {
        v: v == "no_audio" for v in manifest["video_id"]
    }


def test_resume_skips_measured_videos(sample_store) -> None:
    store, manifest, _ = sample_store
    calls = []

    def stop_after_two(done: int, total: int, result) -> None:
        calls.append(result.video_id)
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        measure_store_silence(store, "sample", workers=1, progress=stop_after_two)
    partial = store.manifest("sample").set_index("video_id")[SILENCE_COLUMN]
    assert set(partial.dropna().index) == set(calls[:2])  # saved on the interrupt

    n = len(manifest)
    again = measure_store_silence(store, "sample", workers=2)
    assert (again.measured, again.skipped, again.failed) == (n - 3, 2, 1)

    df = store.manifest("sample")
    first = df["video_id"].iloc[0]
    df.loc[0, SILENCE_COLUMN] = 9.5  # a value already there is kept without --overwrite
    store.write_manifest("sample", df, attrs=df.attrs)
    resumed = measure_store_silence(store, "sample")
    assert (resumed.measured, resumed.skipped, resumed.failed) == (0, n - 1, 1)  # NaN retried
    assert store.manifest("sample").set_index("video_id").at[first, SILENCE_COLUMN] == 9.5
    redone = measure_store_silence(store, "sample", overwrite=True)
    assert (redone.measured, redone.skipped, redone.failed) == (n - 1, 0, 1)
    assert store.manifest("sample").set_index("video_id").at[first, SILENCE_COLUMN] < 0.1

    with pytest.raises(ManifestError, match="threshold"):
        measure_store_silence(store, "sample", threshold=0.01)
    with pytest.raises(ReadOnlyStoreError):
        measure_store_silence(open_store(store.url, mode="r"), "sample")


def test_load_pairs_trims_with_the_measured_column(sample_store) -> None:
    store, manifest, _ = sample_store
    measure_store_silence(store, "sample", workers=2)
    rng = np.random.default_rng(0)
    frames = dict(zip(manifest["video_id"], manifest["duration_s"] * 25, strict=True))
    for name in ("aud", "vis"):
        info = EncoderInfo(name=name, frame_hz=25.0, layer_dims={"last": 4})
        with store.writer("sample", info) as writer:
            for vid, n in frames.items():
                if vid != "no_audio":  # an audio encoder fails on it, so it has no features
                    writer.add(vid, {"last": rng.standard_normal((round(n), 4)).astype(np.float16)})
    pairs = load_pairs(store, "sample:test", "aud", "vis", trim_silence=True, allow_missing=True)
    silences = store.manifest("sample").set_index("video_id")[SILENCE_COLUMN]
    assert len(pairs) == len(manifest) - 1
    for p in pairs:
        skip, _ = timebase.silence_trim_counts(float(silences[p.video_id]))
        assert p.silence_skip_rows == skip >= 1
        assert p.n_rows == round(frames[p.video_id]) - skip
        np.testing.assert_array_equal(
            p.audio, store.video("sample", "aud", p.video_id, "last")[skip:].astype(np.float32)
        )


def test_cli_silence(sample_store) -> None:
    store, manifest, _ = sample_store
    runner = CliRunner()
    args = ["silence", "sample", "--store", store.url, "--workers", "2"]
    result = runner.invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    n = len(manifest)
    assert f"measured {n - 1}, skipped 0 (already measured), failed 1" in result.output
    assert "mean " in result.output and "max " in result.output
    assert "no_audio:" in result.output and "no audio stream" in result.output
    stats = result.output.split("leading silence ")[1].splitlines()[0]
    result = runner.invoke(app, args, catch_exceptions=False)
    assert f"measured 0, skipped {n - 1} (already measured), failed 1" in result.output
    assert stats in result.output  # mean / max over the whole column, also when resuming
    result = runner.invoke(app, [*args, "--overwrite"], catch_exceptions=False)
    assert f"measured {n - 1}, skipped 0" in result.output
    result = runner.invoke(app, ["silence", "nope", "--store", store.url])
    assert result.exit_code == 1 and "error: no dataset 'nope'" in result.output
