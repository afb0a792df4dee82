"""Span decodes (``start_s`` / ``until_s``) seek, and equal the slice of a whole decode.

The reference is the whole file decoded from its start (no seek), sliced on the 25 fps /
16 kHz grid. Files are made here: a moving texture (so every frame differs) in H.264 with
B-frames at 30 fps (frames resampled by timestamp) and 25 fps, audio in containers whose
timestamps count samples (MOV), count milliseconds (Matroska) and in AAC at 16 kHz (the
project's own sample files, no resampler).
"""

from __future__ import annotations

import math
from pathlib import Path

import av
import numpy as np
import pytest

from featstore import media, seeking
from featstore.decode_limits import DecodeLimits
from featstore.media_errors import DurationLimitError, EmptyMediaError
from featstore.seeking import InvalidSpanError

SECONDS = 8.0


def write_av(
    path: Path,
    *,
    fps: int = 30,
    keyint: int = 12,
    sample_rate_hz: int = 44_100,
    channels: int = 2,
    acodec: str = "pcm_s16le",
    fmt: str | None = None,
    audio_options: dict[str, str] | None = None,
) -> Path:
    """A moving texture (96x64, B-frames, a keyframe every ``keyint``) and two tones."""
    layout = {1: "mono", 2: "stereo"}[channels]
    with av.open(str(path), "w", format=fmt) as out:
        vs = out.add_stream("libx264", rate=fps)
        vs.width, vs.height, vs.pix_fmt = 96, 64, "yuv420p"
        vs.options = {"preset": "veryfast", "x264-params": f"keyint={keyint}:bframes=3"}
        as_ = out.add_stream(acodec, rate=sample_rate_hz, layout=layout)
        if audio_options:
            as_.options = audio_options
        y, x = np.mgrid[0:64, 0:96]
        for i in range(round(SECONDS * fps)):
            img = np.stack([(2 * x + 3 * i) % 256, (3 * y + i) % 256, (x + y + 5 * i) % 256], -1)
            frame = av.VideoFrame.from_ndarray(img.astype(np.uint8), format="rgb24")
            frame.pts = i
            out.mux(vs.encode(frame))
        out.mux(vs.encode(None))
        t = np.arange(round(SECONDS * sample_rate_hz)) / sample_rate_hz
        wave = np.stack(
            [
                0.3 * np.sin(2 * np.pi * (300 + 70 * c) * t + 3 * np.sin(1.4 * t))
                for c in range(channels)
            ]
        ).astype(np.float32)  # [C, N]
        for s in range(0, wave.shape[1], 1024):
            chunk = np.ascontiguousarray(wave[:, s : s + 1024].T.reshape(1, -1))  # packed
            frame = av.AudioFrame.from_ndarray(chunk, format="flt", layout=layout)
            frame.sample_rate, frame.pts = sample_rate_hz, s
            out.mux(as_.encode(frame))
        out.mux(as_.encode(None))
    return path


FORMATS = {
    # MOV: audio timestamps count samples; 44.1 kHz stereo -> resampler, mean mix, input trim
    "mov-pcm44k": dict(fmt="mov", sample_rate_hz=44_100),
    # Matroska: 1 ms timestamps, rounded per block; 48 kHz stereo PCM
    "mkv-pcm48k": dict(fmt="matroska", sample_rate_hz=48_000, fps=25, keyint=250),
    # AAC 16 kHz mono, what featstore.sample writes: no resampler
    "mp4-aac16k": dict(acodec="aac", sample_rate_hz=16_000, channels=1, fps=25),
    # AAC 48 kHz without noise substitution (see test_aac_noise_substitution_is_documented)
    "mp4-aac48k": dict(acodec="aac", sample_rate_hz=48_000, audio_options={"aac_pns": "0"}),
}
EXT = {"mov": ".mov", "matroska": ".mkv", None: ".mp4"}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, media.DecodedMedia]]:
    root = tmp_path_factory.mktemp("spans")
    out = {}
    for name, kw in FORMATS.items():
        path = write_av(root / f"{name}{EXT[kw.get('fmt')]}", **kw)
        out[name] = (path, media.decode(path))  # the reference: decoded from the start
    return out


def _slice(
    whole: media.DecodedMedia, start_s: float, until_s: float
) -> tuple[np.ndarray, np.ndarray]:
    k0, k1 = (math.ceil(x * 25 - 1e-9) for x in (start_s, until_s))
    i0, i1 = (math.ceil(x * 16_000 - 1e-9) for x in (start_s, until_s))
    return whole.frames[k0:k1], whole.audio[i0:i1]


SPANS = [(5.0, 7.0), (2.52, 4.0), (0.4, 1.6), (6.013, 20.0)]  # late, mid, early, past the end


@pytest.mark.parametrize("name", list(FORMATS))
def test_span_equals_the_slice_of_a_whole_decode(
    files: dict[str, tuple[Path, media.DecodedMedia]], name: str
) -> None:
    path, whole = files[name]
    for start_s, until_s in SPANS:
        span = media.decode(path, start_s=start_s, until_s=until_s)
        frames, audio = _slice(whole, start_s, until_s)
        assert span.frames.shape == frames.shape and span.audio.shape == audio.shape
        np.testing.assert_array_equal(span.frames, frames, err_msg=f"{name} {start_s}")
        np.testing.assert_array_equal(span.audio, audio, err_msg=f"{name} {start_s}")


def test_spans_seek_instead_of_decoding_from_the_start(
    files: dict[str, tuple[Path, media.DecodedMedia]], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _ = files["mov-pcm44k"]  # a keyframe every 12 frames (0.4 s)
    landed: dict[str, float] = {}
    seek_video, seek_audio = seeking.seek_video, seeking.seek_audio

    def spy_video(container, stream, *, t0, at):
        frames = seek_video(container, stream, t0=t0, at=at)
        first = next(frames)
        landed["video"] = float(first.pts * stream.time_base - t0)
        return seeking.chain(first, frames)

    def spy_audio(container, stream, **kw):
        result = seek_audio(container, stream, **kw)
        landed["audio"] = result.first_output / 16_000
        return result

    monkeypatch.setattr(seeking, "seek_video", spy_video)
    monkeypatch.setattr(seeking, "seek_audio", spy_audio)
    media.decode(path, start_s=6.0, until_s=7.0)
    assert 5.5 < landed["video"] <= 6.0  # the keyframe before the span, not the start
    assert 5.0 <= landed["audio"] <= 6.0 - float(seeking.AUDIO_WARMUP_S)


def test_a_failed_seek_decodes_from_the_start(
    files: dict[str, tuple[Path, media.DecodedMedia]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """When seeking fails after moving the container, a fresh one decodes from the start."""
    path, whole = files["mov-pcm44k"]

    def moved_and_failed(container, stream, **kw):
        container.seek(math.floor(3 / stream.time_base), stream=stream)
        return None

    monkeypatch.setattr(seeking, "seek_video", moved_and_failed)
    monkeypatch.setattr(seeking, "seek_audio", moved_and_failed)
    span = media.decode(path, start_s=5.0, until_s=6.0)
    frames, audio = _slice(whole, 5.0, 6.0)
    np.testing.assert_array_equal(span.frames, frames)
    np.testing.assert_array_equal(span.audio, audio)
    # the frames decoded before the span count against the duration limit then
    with pytest.raises(DurationLimitError, match="before the span"):
        media.decode(path, start_s=5.0, until_s=6.0, limits=DecodeLimits(max_duration_s=2))


def test_streaming_spans(files: dict[str, tuple[Path, media.DecodedMedia]]) -> None:
    path, whole = files["mkv-pcm48k"]
    frames, audio = _slice(whole, 3.0, 7.0)
    chunks = list(media.iter_chunks(path, chunk_frames=40, start_s=3.0, until_s=7.0))
    assert [c.start_frame for c in chunks] == [75, 115, 155]
    np.testing.assert_array_equal(np.concatenate([c.frames for c in chunks]), frames)
    np.testing.assert_array_equal(np.concatenate([c.audio for c in chunks]), audio)
    it = media.iter_frames(path, chunk_frames=33, start_s=3.0, until_s=7.0)
    np.testing.assert_array_equal(np.concatenate(list(it)), frames)
    it = media.iter_audio(path, chunk_samples=5000, start_s=3.0, until_s=7.0)
    np.testing.assert_array_equal(np.concatenate(list(it)), audio)


def test_the_duration_limit_counts_from_the_span(
    files: dict[str, tuple[Path, media.DecodedMedia]],
) -> None:
    path, _ = files["mp4-aac48k"]
    limits = DecodeLimits(max_duration_s=3.0)
    span = media.decode(path, start_s=5.0, until_s=7.5, limits=limits)
    assert span.n_frames == 63 and span.n_samples == 40_000  # frames 125..187
    with pytest.raises(DurationLimitError):
        media.decode(path, start_s=1.0, until_s=7.5, limits=limits)


def test_bad_spans(files: dict[str, tuple[Path, media.DecodedMedia]]) -> None:
    path, _ = files["mp4-aac16k"]
    for start_s, until_s in [(-1.0, 2.0), (3.0, 3.0), (4.0, 2.0), (float("nan"), None)]:
        with pytest.raises(InvalidSpanError):
            media.decode(path, start_s=start_s, until_s=until_s)
    with pytest.raises(EmptyMediaError, match="ends at"):
        media.decode(path, audio=False, start_s=30.0, until_s=40.0)
    with pytest.raises(EmptyMediaError, match="no audio samples from"):
        media.decode(path, video=False, start_s=30.0, until_s=40.0)


def test_aac_noise_substitution_is_documented(tmp_path: Path) -> None:
    """FFmpeg's AAC decoder fills noise-substituted (PNS) bands from a pseudo-random
    generator that runs through the whole stream, so after a seek those bands hold other
    noise of the same energy: the one difference from a whole decode (with PNS off the
    samples are equal, see mp4-aac48k). The span stays on the grid: the signal itself
    (a tone well above the noise) agrees to the noise level, at lag 0."""
    path = tmp_path / "pns.mp4"
    write_av(path, acodec="aac", sample_rate_hz=48_000)
    whole = media.decode(path, audio=True)
    span = media.decode(path, start_s=5.0, until_s=7.0)
    _, audio = _slice(whole, 5.0, 7.0)
    assert span.audio.shape == audio.shape
    assert np.abs(span.audio - audio).max() < 1e-3  # the tones are 0.3; PNS bands ~1e-5
    lags = [np.abs(whole.audio[80_000 + d : 112_000 + d] - span.audio).max() for d in (-1, 0, 1)]
    assert int(np.argmin(lags)) == 1
