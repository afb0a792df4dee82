"""Tests of featstore.media: media made at test time with PyAV."""

from __future__ import annotations

import json
import logging
import tracemalloc
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from featstore import media
from featstore.media import (
    CorruptMediaError,
    EmptyMediaError,
    MediaNotFoundError,
    NoAudioStreamError,
    NoVideoStreamError,
    UnsupportedMediaError,
)

VCODEC = "libx264" if "libx264" in av.codecs_available else "mpeg4"
LEVEL0, LEVEL_STEP, N_LEVELS = 20, 3, 70  # source frame i: flat grey of level 20 + 3 (i % 70)


def level(i: int) -> int:
    return LEVEL0 + LEVEL_STEP * (i % N_LEVELS)


def frame_indices(frames: np.ndarray) -> np.ndarray:
    """Recover the source frame index encoded as the grey level of each frame."""
    means = frames.reshape(frames.shape[0], -1).mean(axis=1)
    return np.rint((means - LEVEL0) / LEVEL_STEP).astype(int)


def sine(n: int, sr: int, *, hz: float = 440.0, amp: float = 0.5) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * hz * np.arange(n) / sr)).astype(np.float32)


def write_clip(
    path: Path,
    *,
    fps: int = 25,
    n_frames: int = 50,
    size: tuple[int, int] = (64, 48),
    pts_ms: list[int] | None = None,
    audio: np.ndarray | str | None = "sine",
    sample_rate_hz: int = 16_000,
    acodec: str = "pcm_s16le",
    video: bool = True,
    fmt: str | None = None,
) -> Path:
    """Write a clip: grey-level-coded frames and (by default) a mono 440 Hz tone.

    ``audio`` is ``"sine"``, ``None`` (no audio stream) or ``[C, N]``/``[N]`` samples in [-1, 1].
    ``pts_ms`` gives explicit (variable) frame times in milliseconds.
    """
    if isinstance(audio, str):
        audio = sine(round(n_frames / fps * sample_rate_hz), sample_rate_hz)
    with av.open(str(path), "w", format=fmt) as out:
        vs = as_ = None
        if video:
            vs = out.add_stream(VCODEC, rate=fps)
            vs.width, vs.height, vs.pix_fmt = size[0], size[1], "yuv420p"
            if VCODEC == "libx264":
                vs.options = {"qp": "0", "preset": "ultrafast"}
            else:
                vs.bit_rate = 4_000_000
            if pts_ms is not None:
                vs.codec_context.time_base = Fraction(1, 1000)
        if audio is not None:
            planes = np.atleast_2d(audio)  # [C, N]
            layout = {1: "mono", 2: "stereo"}[planes.shape[0]]
            as_ = out.add_stream(acodec, rate=sample_rate_hz, layout=layout)
        if vs is not None:
            for i in range(n_frames):
                img = np.full((size[1], size[0], 3), level(i), np.uint8)
                frame = av.VideoFrame.from_ndarray(img, format="rgb24")
                if pts_ms is not None:
                    frame.pts, frame.time_base = pts_ms[i], Fraction(1, 1000)
                out.mux(vs.encode(frame))
            out.mux(vs.encode(None))
        if as_ is not None:
            fmt_name = as_.codec_context.format.name
            step = as_.codec_context.frame_size or 1024
            for start in range(0, planes.shape[1], step):
                chunk = planes[:, start : start + step]
                if fmt_name.startswith("s16"):
                    chunk = np.rint(chunk * 32767).astype(np.int16)
                else:
                    chunk = chunk.astype(np.float32)
                if not fmt_name.endswith("p"):
                    chunk = chunk.T.reshape(1, -1)  # packed: interleave channels
                frame = av.AudioFrame.from_ndarray(
                    np.ascontiguousarray(chunk), format=fmt_name, layout=layout
                )
                frame.sample_rate, frame.pts = sample_rate_hz, start
                out.mux(as_.encode(frame))
            out.mux(as_.encode(None))
    return path


@pytest.fixture(scope="module")
def clip25(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 s, 25 fps, 64x48, mono 16 kHz pcm in mkv."""
    return write_clip(tmp_path_factory.mktemp("media") / "clip25.mkv")


# -- probe -------------------------------------------------------------------------------------


def test_probe_reads_headers(clip25: Path) -> None:
    info = media.probe(clip25)
    assert info.format.startswith("matroska")
    assert info.duration_s == pytest.approx(2.0, abs=0.05)
    assert info.size_bytes == clip25.stat().st_size
    v, a = info.video, info.audio
    assert v is not None and a is not None
    assert (v.width, v.height, v.fps, v.n_frames) == (64, 48, 25.0, 50)
    assert v.codec in {"h264", "mpeg4"}
    assert (a.sample_rate_hz, a.channels, a.codec) == (16_000, 1, "pcm_s16le")
    assert json.loads(json.dumps(info.to_dict()))["video"]["width"] == 64


def test_probe_mp4_aac(tmp_path: Path) -> None:
    path = write_clip(tmp_path / "c.mp4", fps=30, n_frames=30, acodec="aac", sample_rate_hz=44_100)
    info = media.probe(path)
    assert info.format.startswith("mov,mp4")
    assert info.video is not None and info.video.fps == 30.0 and info.video.n_frames == 30
    assert (
        info.audio is not None and info.audio.codec == "aac" and info.audio.sample_rate_hz == 44_100
    )


# -- decode: rates and timestamps --------------------------------------------------------------


def test_decode_25fps_with_audio(clip25: Path) -> None:
    m = media.decode(clip25)
    assert m.frames is not None and m.audio is not None
    assert m.frames.dtype == np.uint8 and m.frames.shape == (50, 48, 64, 3)
    assert abs(m.n_frames - 2.0 * 25) <= 1
    np.testing.assert_array_equal(frame_indices(m.frames), np.arange(50))
    assert m.audio.dtype == np.float32 and m.audio.ndim == 1
    assert abs(m.n_samples - 2.0 * 16_000) <= 640
    # the 440 Hz tone survives (pcm 16 kHz: only int16 quantisation)
    ref = sine(m.n_samples, 16_000)
    np.testing.assert_allclose(m.audio, ref, atol=2e-4)
    assert (m.fps, m.sample_rate_hz) == (25.0, 16_000)


@pytest.mark.parametrize(("src_fps", "n_src"), [(24, 48), (30, 60), (60, 60)])
def test_decode_resamples_constant_rates_by_timestamp(
    tmp_path: Path, src_fps: int, n_src: int
) -> None:
    path = write_clip(tmp_path / f"c{src_fps}.mp4", fps=src_fps, n_frames=n_src, audio=None)
    m = media.decode(path, audio=False)
    duration = Fraction(n_src, src_fps)
    n_out = -(-duration * 25 // 1)  # output frames k with k / 25 < duration
    assert m.n_frames == n_out
    # frame k shows the last source frame with pts <= k / 25, i.e. floor(k * src / 25)
    expected = [int(Fraction(k * src_fps, 25)) for k in range(int(n_out))]
    np.testing.assert_array_equal(frame_indices(m.frames), expected)


def test_decode_variable_frame_rate_with_start_offset(tmp_path: Path) -> None:
    pts_ms = [500, 540, 550, 630, 700, 1000]  # starts at 0.5 s; gaps of 10..300 ms
    path = write_clip(tmp_path / "vfr.mkv", n_frames=len(pts_ms), pts_ms=pts_ms, audio=None)
    m = media.decode(path, audio=False)
    rel = [p - pts_ms[0] for p in pts_ms]
    # output starts at the first frame; frame k takes the last source frame at or before 40 k ms
    n_checked = rel[-1] // 40 + 1
    expected = [max(i for i, r in enumerate(rel) if r <= 40 * k) for k in range(n_checked)]
    got = frame_indices(m.frames)
    np.testing.assert_array_equal(got[:n_checked], expected)
    assert got[0] == 0 and np.all(got[n_checked:] == len(pts_ms) - 1)
    assert n_checked <= m.n_frames <= n_checked + 1  # the last frame lasts one source frame


def test_audio_is_aligned_to_the_first_video_frame(tmp_path: Path) -> None:
    # video starts at 0.5 s, audio at 0: the first 0.5 s of audio precede the first frame
    pts_ms = [500 + 40 * i for i in range(25)]
    tone = sine(24_000, 16_000)  # 1.5 s
    path = write_clip(tmp_path / "late_video.mkv", n_frames=25, pts_ms=pts_ms, audio=tone)
    m = media.decode(path)
    assert m.n_frames == 25 and frame_indices(m.frames)[0] == 0
    assert m.n_samples == 16_000
    np.testing.assert_allclose(m.audio, tone[8_000:], atol=2e-4)
    # the same alignment when only audio is decoded
    np.testing.assert_array_equal(media.decode(path, video=False).audio, m.audio)


def test_decode_720p(tmp_path: Path) -> None:
    path = write_clip(tmp_path / "hd.mp4", n_frames=5, size=(1280, 720), audio=None)
    info = media.probe(path)
    assert info.video is not None and (info.video.width, info.video.height) == (1280, 720)
    m = media.decode(path, audio=False)
    assert m.frames.shape == (5, 720, 1280, 3)
    np.testing.assert_array_equal(frame_indices(m.frames), np.arange(5))


def test_decode_one_frame(tmp_path: Path) -> None:
    path = write_clip(tmp_path / "one.mp4", n_frames=1, audio=None)
    m = media.decode(path, audio=False)
    assert m.frames.shape == (1, 48, 64, 3)


def test_until_s_keeps_the_first_seconds(clip25: Path) -> None:
    m = media.decode(clip25, until_s=1.0)
    assert (m.n_frames, m.n_samples) == (25, 16_000)
    np.testing.assert_array_equal(frame_indices(m.frames), np.arange(25))


def test_stereo_44k_is_downmixed_and_resampled(tmp_path: Path) -> None:
    sr, n = 44_100, 88_200
    left, right = sine(n, sr, amp=0.5), sine(n, sr, amp=0.1)
    path = write_clip(tmp_path / "stereo.mkv", audio=np.stack([left, right]), sample_rate_hz=sr)
    info = media.probe(path)
    assert info.audio is not None and (info.audio.channels, info.audio.sample_rate_hz) == (2, sr)
    m = media.decode(path)
    assert abs(m.n_samples - 32_000) <= 640
    # mono = mean of channels: a 440 Hz tone of amplitude (0.5 + 0.1) / 2
    body = m.audio[1_000:-1_000]
    assert np.sqrt(np.mean(body**2)) == pytest.approx(0.3 / np.sqrt(2), rel=0.02)
    spectrum = np.abs(np.fft.rfft(body))
    assert np.fft.rfftfreq(body.shape[0], 1 / 16_000)[spectrum.argmax()] == pytest.approx(
        440, abs=2
    )


@pytest.mark.parametrize("sr", [8_000, 44_100, 48_000])
def test_resampling_keeps_time_alignment(tmp_path: Path, sr: int) -> None:
    click = np.zeros(sr, np.float32)  # 1 s with one click at 0.5 s
    click[sr // 2] = 0.9
    path = write_clip(
        tmp_path / "click.mkv", n_frames=25, audio=np.stack([click, click]), sample_rate_hz=sr
    )
    m = media.decode(path, video=False)
    assert m.n_samples == 16_000
    assert int(np.argmax(np.abs(m.audio))) == 8_000  # no resampler delay


def test_stereo_with_equal_channels_matches_mono(tmp_path: Path) -> None:
    tone = sine(32_000, 16_000)
    mono = media.decode(write_clip(tmp_path / "m.mkv", audio=tone), video=False).audio
    stereo = media.decode(
        write_clip(tmp_path / "s.mkv", audio=np.stack([tone, tone])), video=False
    ).audio
    np.testing.assert_allclose(stereo, mono, atol=1e-6)


def test_aac_audio_length(tmp_path: Path) -> None:
    path = write_clip(tmp_path / "aac.mp4", acodec="aac", sample_rate_hz=48_000)
    m = media.decode(path)
    assert m.n_frames == 50
    # AAC pads its last packet (up to 1024 samples at the source rate)
    assert 32_000 - 640 <= m.n_samples <= 32_000 + 640 + 1024 * 16_000 // 48_000


# -- errors ------------------------------------------------------------------------------------


def test_no_audio_stream(tmp_path: Path) -> None:
    path = write_clip(tmp_path / "silent_film.mp4", audio=None)
    assert media.probe(path).audio is None
    with pytest.raises(NoAudioStreamError, match=r"silent_film.mp4: no audio stream"):
        media.decode(path)
    with pytest.raises(NoAudioStreamError):
        list(media.iter_audio(path))
    m = media.decode(path, audio=False)
    assert m.audio is None and m.n_frames == 50


def test_audio_only(tmp_path: Path) -> None:
    path = write_clip(tmp_path / "speech.wav", video=False, audio=sine(16_000, 16_000))
    info = media.probe(path)
    assert info.video is None and info.audio is not None
    with pytest.raises(NoVideoStreamError, match=r"speech.wav: no video stream"):
        media.decode(path)
    with pytest.raises(NoVideoStreamError):
        list(media.iter_frames(path))
    m = media.decode(path, video=False)
    assert m.frames is None and m.n_samples == 16_000


def test_zero_bytes(tmp_path: Path) -> None:
    path = tmp_path / "empty.mp4"
    path.touch()
    with pytest.raises(EmptyMediaError, match=r"empty.mp4: empty file"):
        media.probe(path)
    with pytest.raises(EmptyMediaError):
        media.decode(path)


def test_text_file_named_mp4(tmp_path: Path) -> None:
    path = tmp_path / "notes.mp4"
    path.write_text("this is not a video\n" * 20)
    with pytest.raises(UnsupportedMediaError, match=r"notes.mp4: not a supported media file"):
        media.probe(path)
    with pytest.raises(UnsupportedMediaError):
        media.decode(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(MediaNotFoundError, match=r"nope.mp4: no such file"):
        media.decode(tmp_path / "nope.mp4")


def test_container_without_frames_is_empty(tmp_path: Path) -> None:
    path = tmp_path / "header_only.mp4"
    with av.open(str(path), "w") as out:  # a valid mp4 whose video stream never got a frame
        vs = out.add_stream(VCODEC, rate=25)
        vs.width, vs.height, vs.pix_fmt = 64, 48, "yuv420p"
        out.start_encoding()
    with pytest.raises(EmptyMediaError, match=r"header_only.mp4: no audio or video stream"):
        media.decode(path, audio=False)


def test_errors_are_featstore_errors() -> None:
    from featstore.errors import FeatstoreError

    for cls in (
        CorruptMediaError,
        EmptyMediaError,
        MediaNotFoundError,
        NoAudioStreamError,
        NoVideoStreamError,
        UnsupportedMediaError,
    ):
        assert issubclass(cls, media.MediaError) and issubclass(cls, FeatstoreError)


def _cut_in_half(src: Path, dst: Path) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 2])
    return dst


def test_truncated_mkv_raises_unless_allowed(
    clip25: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = _cut_in_half(clip25, tmp_path / "cut.mkv")
    with pytest.raises(
        CorruptMediaError,
        match=r"cut.mkv: truncated video: decoding ended at .* of a declared 2.00 s",
    ):
        media.decode(path)
    with pytest.raises(CorruptMediaError, match="truncated audio"):
        media.decode(path, video=False)
    with caplog.at_level(logging.WARNING, logger="featstore.media"):
        m = media.decode(path, allow_truncated=True)
    assert 0 < m.n_frames < 50 and 0 < m.n_samples < 32_000
    np.testing.assert_array_equal(frame_indices(m.frames), np.arange(m.n_frames))
    assert "truncated video" in caplog.text and "cut.mkv" in caplog.text


def test_truncated_mp4_without_index_is_corrupt(tmp_path: Path) -> None:
    # mp4's index (moov) is written last: half a file cannot even be opened
    path = _cut_in_half(write_clip(tmp_path / "full.mp4", acodec="aac"), tmp_path / "cut.mp4")
    with pytest.raises(CorruptMediaError, match=r"cut.mp4: corrupt or truncated"):
        media.probe(path)


def test_no_raw_pyav_errors_on_garbage_in_the_middle(clip25: Path, tmp_path: Path) -> None:
    data = bytearray(clip25.read_bytes())
    rng = np.random.default_rng(0)
    start = len(data) // 3
    data[start : start + 2_000] = rng.integers(0, 256, 2_000, dtype=np.uint8).tobytes()
    path = tmp_path / "garbled.mkv"
    path.write_bytes(bytes(data))
    try:
        media.decode(path)
    except media.MediaError as exc:  # anything typed is fine; raw av.error.* is not
        assert "garbled.mkv" in str(exc)


# -- streaming ---------------------------------------------------------------------------------


def test_streaming_equals_full_decode(clip25: Path) -> None:
    full = media.decode(clip25)
    chunks = list(media.iter_frames(clip25, chunk_frames=7))
    assert [c.shape[0] for c in chunks] == [7] * 7 + [1]
    np.testing.assert_array_equal(np.concatenate(chunks), full.frames)
    pieces = list(media.iter_audio(clip25, chunk_samples=5_000))
    assert all(p.shape == (5_000,) for p in pieces[:-1]) and 0 < pieces[-1].shape[0] <= 5_000
    np.testing.assert_array_equal(np.concatenate(pieces), full.audio)


def test_aligned_chunks(clip25: Path) -> None:
    full = media.decode(clip25)
    chunks = list(media.iter_chunks(clip25, chunk_frames=20))
    assert [c.start_frame for c in chunks] == [0, 20, 40]
    for c in chunks:
        assert c.frames is not None and c.audio is not None
        assert c.audio.shape[0] == c.frames.shape[0] * 640  # the same stretch of time
        np.testing.assert_array_equal(c.frames, full.frames[c.start_frame : c.start_frame + 20])
    np.testing.assert_array_equal(np.concatenate([c.audio for c in chunks]), full.audio)


def test_streaming_memory_does_not_grow_with_duration(tmp_path: Path) -> None:
    path = write_clip(tmp_path / "long.mkv", n_frames=250)  # 10 s
    frame_bytes = 48 * 64 * 3
    tracemalloc.start()
    try:
        n = sum(c.shape[0] for c in media.iter_frames(path, chunk_frames=10))
        _, peak_video = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        n_samples = sum(c.shape[0] for c in media.iter_audio(path, chunk_samples=6_400))
        _, peak_audio = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert n == 250 and n_samples == 160_000
    assert peak_video < 10 * frame_bytes + 200_000  # one chunk + a frame + overhead, not 250 frames
    assert peak_video < 250 * frame_bytes / 2
    assert peak_audio < 160_000 * 4 / 2


def test_bad_chunk_size(clip25: Path) -> None:
    with pytest.raises(ValueError):
        next(media.iter_frames(clip25, chunk_frames=0))


# -- leading silence (AVH-Align) ---------------------------------------------------------------


def test_leading_silence_threshold_is_strict() -> None:
    audio = np.zeros(1_000, np.float32)
    audio[100] = 0.0005  # not above the threshold
    audio[250] = -0.0006
    assert media.leading_silence_s(audio) == 250 / 16_000
    assert media.leading_silence_s(np.zeros(800, np.float32)) == 800 / 16_000


def test_trim_leading_silence_follows_avh_align(tmp_path: Path) -> None:
    tone = sine(32_000, 16_000)
    tone[:4_800] = 0.0  # 0.3 s of silence, then a tone whose first sample is 0 too
    path = write_clip(tmp_path / "quiet_start.mkv", audio=tone)
    m = media.decode(path)
    trimmed, trim = media.trim_leading_silence(m)
    sil = 4_801 / 16_000
    assert trim.silence_s == pytest.approx(sil)
    assert trim.frames == int(sil * 25) + 1 == 8
    assert trim.samples == int(sil * 25) * 640 + 640 == 5_120
    assert trimmed.n_frames == m.n_frames - 8 and frame_indices(trimmed.frames)[0] == 8
    np.testing.assert_array_equal(trimmed.audio, m.audio[5_120:])
    assert trimmed.info == m.info


def test_trim_needs_audio(clip25: Path) -> None:
    with pytest.raises(NoAudioStreamError):
        media.trim_leading_silence(media.decode(clip25, audio=False))


def test_importing_media_is_light() -> None:
    import subprocess
    import sys

    code = (
        "import sys, featstore.timebase, featstore.media, featstore.cli.media; "
        "bad = {'torch', 'transformers', 'zarr', 'av'} & set(sys.modules); "
        "assert not bad, bad"
    )
    subprocess.run(
        [sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1]
    )


# -- CLI ---------------------------------------------------------------------------------------


def test_cli_probe(clip25: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from featstore.cli.media import app

    runner = CliRunner()
    res = runner.invoke(app, ["probe", str(clip25), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["video"]["fps"] == 25.0 and data["audio"]["sample_rate_hz"] == 16_000
    res = runner.invoke(app, ["probe", str(clip25)])
    assert res.exit_code == 0 and "64x48" in res.output and "16000 Hz" in res.output
    bad = tmp_path / "bad.mp4"
    bad.write_text("hello")
    res = runner.invoke(app, ["probe", str(bad)])
    assert res.exit_code == 1 and "bad.mp4: not a supported media file" in res.output


@pytest.mark.parametrize("expected", [1, 7, 10, 40, 10**12])
def test_collect_handles_wrong_header_counts(expected: int) -> None:
    """Regression: decode() used to hold every chunk and their concatenation at once.

    A header that claims 10**12 frames must not allocate them (issue 13.5).
    """
    from featstore.media.clip import collect

    chunks = [np.full((4, 2, 2, 3), i, np.uint8) for i in range(3)]  # 10 frames in all
    chunks[-1] = chunks[-1][:2]
    out = collect(iter(chunks), expected=expected)
    assert out.shape == (10, 2, 2, 3)
    assert out[:, 0, 0, 0].tolist() == [0] * 4 + [1] * 4 + [2] * 2
    assert out.base is None or out.base.shape[0] <= 11  # no large overallocation kept alive
