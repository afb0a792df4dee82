"""Multichannel audio -> 16 kHz mono (issue 13.1): every layout, codec and decode path.

The references are independent of ``featstore.downmix``: exact arithmetic on the
samples the test wrote (lossless PCM), or the channels decoded separately (packed,
nothing mixed) and averaged in numpy (lossy codecs).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest

from featstore import media, silence
from featstore.downmix import MonoResampler, mean_pan

from media_factory import DEFAULT_LAYOUTS, tones, write_media  # isort: skip

ROOT = Path(__file__).resolve().parents[1]


def impulses(n_channels: int, n: int = 16_000) -> np.ndarray:
    """``[C, N]``: channel ``c`` is silent but for one sample of 0.5 at ``500 + 600 c``."""
    x = np.zeros((n_channels, n), np.float32)
    for c in range(n_channels):
        x[c, 500 + 600 * c] = 0.5
    return x


@pytest.mark.parametrize("ext", ["wav", "mkv"])  # wav: named layouts; mkv: PCM's order unknown
@pytest.mark.parametrize("n_channels", [1, 2, 3, 4, 6, 8, 24])
def test_mono_is_the_mean_of_all_channels(tmp_path: Path, n_channels: int, ext: str) -> None:
    path = write_media(tmp_path / f"imp{n_channels}.{ext}", audio=impulses(n_channels))
    info = media.probe(path)
    assert info.audio is not None and info.audio.channels == n_channels
    got = media.decode(path, video=False).audio
    # every channel counts 1/C, LFE and unnamed channels too (FFmpeg's own downmix
    # weights them 0.707 / 1 / 0.5 / 0, and drops the 3rd of 3 unnamed channels)
    expected = np.zeros(16_000, np.float32)
    for c in range(n_channels):
        expected[500 + 600 * c] = 0.5 / n_channels  # 0.5 is exact in int16 (16384 / 32768)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-7)


def separately_decoded_mean(path: Path) -> np.ndarray:
    """The reference: every channel decoded (packed: one plane, no mixing), averaged in
    numpy, then resampled to 16 kHz as mono."""
    means, rate = [], None
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        to_packed = av.AudioResampler(format="flt")  # same layout and rate: no mixing
        for frame in container.decode(stream):
            for packed in to_packed.resample(frame):
                n_channels = packed.layout.nb_channels
                planes = packed.to_ndarray().reshape(-1, n_channels)  # [n, C]
                means.append(planes.astype(np.float64).mean(axis=1).astype(np.float32))
                rate = packed.sample_rate
    mono = np.concatenate(means)
    to_16k = av.AudioResampler(format="flt", layout="mono", rate=16_000)
    out = []
    for start in range(0, len(mono), 4096):
        frame = av.AudioFrame.from_ndarray(
            mono[None, start : start + 4096], format="flt", layout="mono"
        )
        frame.sample_rate = rate
        out += [f.to_ndarray()[0] for f in to_16k.resample(frame)]
    out += [f.to_ndarray()[0] for f in to_16k.resample(None)]
    return np.concatenate(out)


CODECS = [  # codec, layout, container, rate: planar and packed sample formats
    ("aac", "7.1", "mp4", 48_000),  # fltp, 8 planes: the crash of issue 13.1
    ("aac", "5.1", "mp4", 44_100),
    ("libopus", "5.1", "mkv", 48_000),
    ("flac", "7.1", "mkv", 16_000),  # s16 packed
    ("ac3", "5.1", "mkv", 48_000),  # fltp
    ("mp3", "stereo", "mp3", 44_100),  # fltp / s16p
    ("pcm_f32le", "22.2", "wav", 16_000),  # flt packed, 24 channels
    ("pcm_s16le", "3.0", "mkv", 22_050),  # order unknown after the round trip
]


@pytest.mark.parametrize(("codec", "layout", "ext", "rate"), CODECS, ids=lambda x: str(x))
def test_lossy_and_planar_codecs_match_the_separately_decoded_mean(
    tmp_path: Path, codec: str, layout: str, ext: str, rate: int
) -> None:
    if codec not in av.codecs_available:
        pytest.skip(f"{codec} not in this FFmpeg build")
    n_channels = av.AudioLayout(layout).nb_channels
    path = write_media(
        tmp_path / f"tones.{ext}",
        audio=tones(n_channels, 1.0, rate),
        sample_rate_hz=rate,
        acodec=codec,
        layout=layout,
    )
    got = media.decode(path, video=False).audio
    ref = separately_decoded_mean(path)
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=0, atol=2e-6)
    assert np.abs(got).max() > 0.02  # not silence


def test_float_mono_at_the_rate_passes_through_unchanged(tmp_path: Path) -> None:
    path = write_media(tmp_path / "m.mp4", audio=tones(1, 1.0, 16_000), acodec="aac")
    with av.open(str(path)) as container:  # the decoder's own samples, nothing converted
        raw = np.concatenate([f.to_ndarray()[0] for f in container.decode(audio=0)])
    assert raw.dtype == np.float32
    np.testing.assert_array_equal(media.decode(path, video=False).audio, raw)


def test_every_decode_path_gives_the_same_mono(tmp_path: Path) -> None:
    audio = tones(8, 1.0, 48_000)
    audio[:, :4_800] = 0.0  # 0.1 s of leading silence
    path = write_media(
        tmp_path / "av71.mp4", audio=audio, sample_rate_hz=48_000, acodec="aac", video_size=(32, 32)
    )
    whole = media.decode(path)
    assert whole.n_frames == 25 and whole.audio is not None
    np.testing.assert_array_equal(
        np.concatenate(list(media.iter_audio(path, chunk_samples=3_000))), whole.audio
    )
    chunks = list(media.iter_chunks(path, chunk_frames=10))
    np.testing.assert_array_equal(np.concatenate([c.audio for c in chunks]), whole.audio)
    np.testing.assert_array_equal(np.concatenate([c.frames for c in chunks]), whole.frames)
    measured, silent = silence.measure_leading_silence(path)
    assert not silent
    assert measured == media.leading_silence_s(whole.audio)
    assert 0.08 < measured < 0.12


def test_stereo_mean_keeps_the_old_level(tmp_path: Path) -> None:
    # the mean, as before issue 13: (0.5 + 0.1) / 2, not FFmpeg's 0.707 (0.5 + 0.1)
    t = np.arange(32_000) / 16_000
    tone = np.sin(2 * np.pi * 440 * t).astype(np.float32)
    path = write_media(tmp_path / "lr.wav", audio=np.stack([0.5 * tone, 0.1 * tone]))
    got = media.decode(path, video=False).audio
    np.testing.assert_allclose(got, 0.3 * tone, atol=1e-4)


def test_known_issue_13_multichannel_decode_does_not_crash(tmp_path: Path) -> None:
    """Regression: 7.1 AAC (8 planes) and 24-channel PCM segfaulted PyAV's to_ndarray.

    Decoded in a child process, so that a crash fails this test instead of the run.
    """
    files = [
        write_media(
            tmp_path / "aac71.mp4", audio=tones(8, 0.5, 48_000), sample_rate_hz=48_000,
            acodec="aac", video_size=(32, 32),
        ),
        write_media(tmp_path / "pcm24.wav", audio=tones(24, 0.5, 16_000)),
        write_media(tmp_path / "flac8.mkv", audio=tones(8, 0.5, 16_000), acodec="flac"),
    ]  # fmt: skip
    code = (
        "import sys; from featstore import media, silence\n"
        "for p in sys.argv[1:]:\n"
        "    m = media.decode(p, video=False)\n"
        "    assert m.audio.ndim == 1 and 7_000 < m.n_samples < 9_000, m.n_samples\n"
        "    sum(c.shape[0] for c in media.iter_audio(p))\n"
        "    silence.measure_leading_silence(p)\n"
        "print('ok')\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code, *map(str, files)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, (run.returncode, run.stderr[-2000:])
    assert run.stdout.strip() == "ok"


def _frame(values: np.ndarray, layout: str, rate: int, pts: int) -> av.AudioFrame:
    frame = av.AudioFrame.from_ndarray(
        np.ascontiguousarray(values.T.reshape(1, -1)), format="flt", layout=layout
    )
    frame.sample_rate, frame.pts = rate, pts
    return frame


def test_a_stream_that_changes_layout_and_rate_midway() -> None:
    """Frames whose layout, rate and format change get a new graph (or none for float
    mono at the rate); nothing is lost."""
    resampler = MonoResampler(16_000)
    a = np.full((2, 44_100), [[0.2], [0.4]], np.float32)  # 1 s stereo 44.1 kHz: mean 0.3
    b = np.full((6, 48_000), [[0.1 * c] for c in range(6)], np.float32)  # 1 s 5.1: 0.25
    out = []
    for start in range(0, 44_100, 1_000):
        out += resampler.resample(_frame(a[:, start : start + 1_000], "stereo", 44_100, start))
    s16 = np.rint(b.T.reshape(1, -1) * 32767).astype(np.int16)
    frame = av.AudioFrame.from_ndarray(s16, format="s16", layout="5.1")
    frame.sample_rate, frame.pts = 48_000, 0
    out += resampler.resample(frame)
    out += resampler.resample(_frame(np.full((1, 8_000), 0.7, np.float32), "mono", 16_000, 0))
    out += resampler.resample(None)
    mono = np.concatenate(out)
    assert abs(len(mono) - 40_000) <= 2
    np.testing.assert_allclose(mono[200:15_800], 0.3, atol=1e-5)  # away from the seams
    np.testing.assert_allclose(mono[16_200:31_800], 0.25, atol=1e-4)
    np.testing.assert_array_equal(mono[-8_000:], np.float32(0.7))  # passed through, after 5.1
    assert resampler.resample(None) == []


def test_mean_pan() -> None:
    assert mean_pan(1) == "mono|c0<c0"
    assert mean_pan(2) == "mono|c0<c0+c1"
    with pytest.raises(ValueError):
        mean_pan(0)


def test_default_layouts_cover_the_tests() -> None:
    for n, name in DEFAULT_LAYOUTS.items():
        assert av.AudioLayout(name).nb_channels == n
