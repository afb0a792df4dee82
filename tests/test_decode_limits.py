"""Bounded decoding (issue 13.5): duration, frame size and decoded bytes, on the headers
and while decoding, whatever the headers say."""

from __future__ import annotations

import math
import pickle
import time
import tracemalloc
from pathlib import Path

import pytest

from featstore import media, silence
from featstore.decode_limits import EXTRACT_LIMITS, DecodeLimits, InvalidLimitsError
from featstore.media_errors import (
    CorruptMediaError,
    DecodedBytesLimitError,
    DecodeMemoryError,
    DurationLimitError,
    FrameSizeLimitError,
    MediaLimitError,
)

from media_factory import lie_about_duration, tones, write_media, write_silence  # isort: skip


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("limits")
    clip = write_media(d / "clip.mkv", audio=tones(2, 2.0, 16_000), video_size=(64, 48))
    long_video = write_media(d / "long_video.mkv", video_size=(32, 32), n_frames=750)  # 30 s
    return {
        "clip": clip,  # 2 s, 64x48, stereo
        "silence_120": write_silence(d / "silence_120.mkv", 120.0),
        "lying_audio": lie_about_duration(
            write_silence(d / "a.mkv", 120.0), d / "lying_audio.mkv", 1.0
        ),
        "lying_video": lie_about_duration(long_video, d / "lying_video.mkv", 1.0),
        "vga": write_media(d / "vga.mp4", audio=tones(1, 0.4, 16_000), video_size=(640, 480)),
    }


# -- the limits themselves ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_duration_s": 0},
        {"max_duration_s": -1.0},
        {"max_duration_s": math.nan},
        {"max_duration_s": math.inf},
        {"max_frame_pixels": True},
        {"max_decoded_bytes": "4G"},
    ],
)
def test_bad_limits_are_refused(kwargs: dict) -> None:
    with pytest.raises(InvalidLimitsError):
        DecodeLimits(**kwargs)


def test_counts_allowed_by_the_limits() -> None:
    limits = DecodeLimits(max_duration_s=10.0, max_decoded_bytes=1_000_000)
    # 10 s at 25 fps = 250 frames; 1 MB / 64x48x3 = 108 frames: the bytes bound is tighter
    assert limits.max_frames(fps=25.0, frame_bytes=64 * 48 * 3) == (1_000_000 // 9_216, "bytes")
    assert limits.max_frames(fps=25.0, frame_bytes=100) == (250, "duration")
    assert limits.max_samples(sample_rate_hz=16_000) == (160_000, "duration")
    assert limits.max_samples(sample_rate_hz=16_000, used_bytes=900_000) == (25_000, "bytes")
    assert DecodeLimits.unbounded().max_frames(fps=25.0, frame_bytes=1) == (None, "")
    assert DecodeLimits(max_duration_s=1.001).max_frames(fps=25.0, frame_bytes=1)[0] == 26


def test_limits_and_errors_pickle() -> None:
    limits = DecodeLimits(max_duration_s=5.0)
    assert pickle.loads(pickle.dumps(limits)) == limits
    err = pickle.loads(pickle.dumps(DurationLimitError("/v.mp4", "too long")))
    assert isinstance(err, MediaLimitError) and (err.path, err.reason) == ("/v.mp4", "too long")
    assert str(err) == "/v.mp4: too long"


# -- duration ----------------------------------------------------------------------------------


def test_exactly_at_the_duration_limit_passes(files: dict[str, Path]) -> None:
    m = media.decode(files["clip"], limits=DecodeLimits(max_duration_s=2.0))
    assert (m.n_frames, m.n_samples) == (50, 32_000)
    with pytest.raises(DurationLimitError, match=r"lasts 2\.0 s by its header"):
        media.decode(files["clip"], limits=DecodeLimits(max_duration_s=1.9))
    # until_s keeps the first seconds instead, and is within the limit
    m = media.decode(files["clip"], until_s=1.0, limits=DecodeLimits(max_duration_s=1.5))
    assert (m.n_frames, m.n_samples) == (25, 16_000)


def test_long_media_are_refused_from_the_header_without_decoding(files: dict[str, Path]) -> None:
    limits = DecodeLimits(max_duration_s=60.0)
    start = time.perf_counter()
    for call in (
        lambda: media.decode(files["silence_120"], video=False, limits=limits),
        lambda: next(media.iter_audio(files["silence_120"], limits=limits)),
        lambda: silence.measure_leading_silence(files["silence_120"], limits=limits),
    ):
        with pytest.raises(DurationLimitError, match=r"audio lasts 120.0 s by its header"):
            call()
    assert time.perf_counter() - start < 1.0  # 120 s of audio were never decoded


def test_a_lying_audio_header_stops_at_the_limit(files: dict[str, Path]) -> None:
    path = files["lying_audio"]
    assert media.probe(path).duration_s == pytest.approx(1.0)
    unbounded = media.decode(path, video=False, limits=DecodeLimits.unbounded())
    assert unbounded.n_samples == 120 * 16_000  # the header lies: 120 s are there
    limits = DecodeLimits(max_duration_s=5.0)
    tracemalloc.start()
    try:
        with pytest.raises(DurationLimitError) as caught:
            media.decode(path, video=False, limits=limits)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "decoding stopped at 5.0 s, though its header declares 1.0 s" in caught.value.reason
    assert peak < 5.5 * 16_000 * 4 * 2  # about 5 s of audio, not the 7.7 MB of 120 s
    with pytest.raises(DurationLimitError, match=r"stopped at 5\.0 s"):
        sum(len(c) for c in media.iter_audio(path, limits=limits))


def test_a_lying_video_header_stops_at_the_limit(files: dict[str, Path]) -> None:
    path = files["lying_video"]
    assert media.probe(path).video.duration_s == pytest.approx(1.0)
    assert media.decode(path, audio=False, limits=DecodeLimits.unbounded()).n_frames == 750
    limits = DecodeLimits(max_duration_s=4.0)
    with pytest.raises(DurationLimitError, match=r"video lasts longer .* stopped at 4.0 s"):
        media.decode(path, audio=False, limits=limits)
    seen = 0
    with pytest.raises(DurationLimitError):
        for chunk in media.iter_frames(path, chunk_frames=10, limits=limits):
            seen += len(chunk)
    assert seen == 100  # 4 s were yielded, not one frame more


# -- frame size --------------------------------------------------------------------------------


def test_large_frames_are_refused_from_the_stream(files: dict[str, Path]) -> None:
    small = DecodeLimits(max_frame_pixels=100_000)
    for call in (
        lambda: media.decode(files["vga"], limits=small),
        lambda: next(media.iter_frames(files["vga"], limits=small)),
        # audio alone too: aligning it decodes a video frame
        lambda: media.decode(files["vga"], video=False, limits=small),
    ):
        with pytest.raises(
            FrameSizeLimitError, match=r"640x480 \(0.3 MP, declared by the stream\)"
        ):
            call()
    assert (
        media.decode(files["vga"], limits=DecodeLimits(max_frame_pixels=640 * 480)).n_frames == 10
    )


def test_frames_that_grow_midstream_are_refused_by_the_decoder(tmp_path: Path) -> None:
    """An MPEG-TS whose header (first SPS) says 64x64, then switches to 1280x720."""
    a = write_media(tmp_path / "a.ts", video_size=(64, 64), n_frames=40, fmt="mpegts")
    times = [1.6 + i / 25 for i in range(3)]  # timestamps go on where the first part ends
    b = write_media(tmp_path / "b.ts", video_size=(1280, 720), frame_times_s=times, fmt="mpegts")
    path = tmp_path / "grows.ts"
    path.write_bytes(a.read_bytes() + b.read_bytes())
    assert (media.probe(path).video.width, media.probe(path).video.height) == (64, 64)
    fits = media.decode(path, audio=False, limits=DecodeLimits(max_frame_pixels=1280 * 720))
    assert fits.frames.shape[1:] == (64, 64, 3) and fits.n_frames >= 42  # scaled to the first
    with pytest.raises(CorruptMediaError, match="max_frame_pixels"):
        media.decode(path, audio=False, limits=DecodeLimits(max_frame_pixels=64 * 64))


# -- decoded bytes -----------------------------------------------------------------------------


def test_decoded_bytes_bound_frames_and_audio_together(files: dict[str, Path]) -> None:
    frames_bytes = 50 * 64 * 48 * 3  # the clip: 2 s of 64x48 video
    audio_bytes = 32_000 * 4
    fits = DecodeLimits(max_decoded_bytes=frames_bytes + audio_bytes)
    m = media.decode(files["clip"], limits=fits)
    assert m.frames.nbytes + m.audio.nbytes == frames_bytes + audio_bytes
    short = DecodeLimits(max_decoded_bytes=frames_bytes + audio_bytes - 1)
    with pytest.raises(DecodedBytesLimitError, match="by the headers"):
        media.decode(files["clip"], limits=short)
    # video alone fits in less
    assert media.decode(files["clip"], audio=False, limits=short).n_frames == 50


def test_decoded_bytes_stop_a_lying_header(files: dict[str, Path]) -> None:
    limits = DecodeLimits(max_decoded_bytes=100 * 32 * 32 * 3)  # 100 frames of 32x32
    with pytest.raises(DecodedBytesLimitError, match=r"decoded frames \(101 of 32x32\)"):
        media.decode(files["lying_video"], audio=False, limits=limits)


def test_streamed_chunks_are_bounded_too(files: dict[str, Path]) -> None:
    limits = DecodeLimits(max_decoded_bytes=10 * 640 * 480 * 3)
    assert sum(len(c) for c in media.iter_frames(files["vga"], chunk_frames=10, limits=limits))
    with pytest.raises(DecodedBytesLimitError, match="chunks of 11 frames of 640x480"):
        next(media.iter_frames(files["vga"], chunk_frames=11, limits=limits))
    with pytest.raises(DecodedBytesLimitError, match="chunks of 1000 samples"):
        next(
            media.iter_audio(
                files["vga"], chunk_samples=1_000, limits=DecodeLimits(max_decoded_bytes=100)
            )
        )


# -- running out of memory ---------------------------------------------------------------------


def test_memory_error_while_decoding_is_the_files_error(
    files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = media.video.constant_rate_frames

    def after_one(*args, **kwargs):
        for i, frame in enumerate(real(*args, **kwargs)):
            if i == 1:
                raise MemoryError("cannot allocate")
            yield frame

    monkeypatch.setattr(media.video, "constant_rate_frames", after_one)
    with pytest.raises(
        DecodeMemoryError, match="out of memory while decoding the video frames"
    ) as e:
        media.decode(files["clip"])
    # the MemoryError keeps no frames alive (they hold the partial arrays)
    assert e.value.__context__.__traceback__ is None
    with pytest.raises(DecodeMemoryError, match="chunks of 250 frames"):
        list(media.iter_frames(files["clip"]))


def test_default_limits_fit_the_papers_datasets() -> None:
    # the library's default bounds memory only; extraction adds 600 s
    assert DecodeLimits().max_duration_s is None
    assert DecodeLimits(max_duration_s=600.0) == EXTRACT_LIMITS
    limits = EXTRACT_LIMITS
    # a 20 s AV-Deepfake1M / FakeAVCeleb clip (224x224), a 60 s 720p segment, 10 min of audio
    assert limits.max_frames(fps=25.0, frame_bytes=224 * 224 * 3)[0] >= 20 * 25
    assert limits.max_frames(fps=25.0, frame_bytes=1280 * 720 * 3)[0] >= 60 * 25
    assert limits.max_samples(sample_rate_hz=16_000)[0] == 600 * 16_000
    assert 3840 * 2160 <= limits.max_frame_pixels < 8000 * 8000
