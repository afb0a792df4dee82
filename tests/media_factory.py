"""Media made at test time: multichannel audio in any codec, and hostile files.

Audio is handed to the encoder as packed float frames (PyAV converts them to the
codec's own sample format in C): ``AudioFrame.from_ndarray`` on planar formats with
8 channels or more is what crashed (issue 13.1), so tests never call it that way.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

VCODEC = "libx264" if "libx264" in av.codecs_available else "mpeg4"
DEFAULT_LAYOUTS = {1: "mono", 2: "stereo", 3: "3.0", 4: "quad", 6: "5.1", 8: "7.1", 24: "22.2"}


def tones(n_channels: int, seconds: float, sample_rate_hz: int) -> np.ndarray:
    """``[C, N]`` float32: channel ``c`` is a sine of its own frequency and amplitude."""
    t = np.arange(round(seconds * sample_rate_hz)) / sample_rate_hz
    return np.stack(
        [0.04 * (c + 1) * np.sin(2 * np.pi * (220 + 90 * c) * t) for c in range(n_channels)]
    ).astype(np.float32)


def _grey_frame(width: int, height: int, level: int) -> av.VideoFrame:
    """A flat yuv420p frame, made without an RGB array (cheap at 8000x8000)."""
    frame = av.VideoFrame(width, height, "yuv420p")
    for i, plane in enumerate(frame.planes):
        plane.update(bytes([level if i == 0 else 128]) * plane.buffer_size)
    return frame


def write_media(
    path: Path,
    *,
    audio: np.ndarray | None = None,
    sample_rate_hz: int = 16_000,
    acodec: str = "pcm_s16le",
    layout: str | None = None,
    video_size: tuple[int, int] | None = None,
    n_frames: int | None = None,
    frame_times_s: Sequence[float] | None = None,
    fps: int = 25,
    fmt: str | None = None,
) -> Path:
    """Write ``audio`` (``[C, N]`` in [-1, 1]) and/or a video of grey-level frames.

    The video (``video_size`` = (width, height)) has ``n_frames`` frames at ``fps``
    (default: as long as the audio), or one frame at each of ``frame_times_s``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format=fmt) as out:
        vs = as_ = None
        if video_size is not None:
            vs = out.add_stream(VCODEC, rate=fps)
            vs.width, vs.height, vs.pix_fmt = *video_size, "yuv420p"
            if VCODEC == "libx264":
                vs.options = {"preset": "ultrafast", "crf": "30"}
            if frame_times_s is not None:
                vs.codec_context.time_base = Fraction(1, 1000)
        if audio is not None:
            layout = layout or DEFAULT_LAYOUTS[audio.shape[0]]
            as_ = out.add_stream(acodec, rate=sample_rate_hz, layout=layout)
        if vs is not None:
            if frame_times_s is None:
                n = (
                    n_frames
                    if n_frames is not None
                    else round(audio.shape[1] / sample_rate_hz * fps)
                )
                times = [i / fps for i in range(n)]
            else:
                times = list(frame_times_s)
            for i, t in enumerate(times):
                frame = _grey_frame(*video_size, 16 + (7 * i) % 200)
                if frame_times_s is None:
                    frame.pts = i
                else:
                    frame.pts, frame.time_base = round(t * 1000), Fraction(1, 1000)
                out.mux(vs.encode(frame))
            out.mux(vs.encode(None))
        if as_ is not None:
            _encode_audio(out, as_, audio, sample_rate_hz, layout)
    return path


def _encode_audio(
    out: av.container.OutputContainer,
    stream: av.stream.Stream,
    audio: np.ndarray,
    rate: int,
    layout: str,
) -> None:
    step = 1024
    for start in range(0, audio.shape[1], step):
        chunk = np.ascontiguousarray(audio[:, start : start + step].T.reshape(1, -1))  # packed
        frame = av.AudioFrame.from_ndarray(chunk, format="flt", layout=layout)
        frame.sample_rate, frame.pts = rate, start
        out.mux(stream.encode(frame))
    out.mux(stream.encode(None))


def write_silence(
    path: Path,
    seconds: float,
    *,
    sample_rate_hz: int = 8_000,
    frame_every_s: float | None = None,
    video_size: tuple[int, int] = (32, 32),
) -> Path:
    """Hours of silent FLAC audio in a few kilobytes, fast (digital silence compresses to
    almost nothing); with ``frame_every_s``, a sparse video of one frame every so many
    seconds over the same span (a 25 fps decode repeats each frame until the next)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        vs = None
        if frame_every_s is not None:  # every stream is added before the first packet
            vs = out.add_stream(VCODEC, rate=25)
            vs.width, vs.height, vs.pix_fmt = *video_size, "yuv420p"
            vs.codec_context.time_base = Fraction(1, 1000)
        as_ = out.add_stream("flac", rate=sample_rate_hz, layout="mono")
        if vs is not None:
            times = [*np.arange(0.0, seconds, frame_every_s), seconds - 0.04]
            for i, t in enumerate(times):
                frame = _grey_frame(*video_size, 16 + 7 * i % 200)
                frame.pts, frame.time_base = round(t * 1000), Fraction(1, 1000)
                out.mux(vs.encode(frame))
            out.mux(vs.encode(None))
        step = 65_536
        zeros = np.zeros((1, step), np.int16)
        total = round(seconds * sample_rate_hz)
        for start in range(0, total, step):
            frame = av.AudioFrame.from_ndarray(
                zeros[:, : min(step, total - start)], format="s16", layout="mono"
            )
            frame.sample_rate, frame.pts = sample_rate_hz, start
            out.mux(as_.encode(frame))
        out.mux(as_.encode(None))
    return path


def lie_about_duration(src: Path, dst: Path, seconds: float) -> Path:
    """Copy a Matroska file whose headers (segment ``Duration``, each stream's ``DURATION``
    tag) now declare ``seconds``; the media inside is unchanged."""
    data = bytearray(src.read_bytes())
    at = data.find(b"\x44\x89\x88")  # EBML id of Info/Duration, 8-byte float, in ms
    if at < 0:
        raise ValueError(f"{src}: no Matroska Duration element")
    data[at + 3 : at + 11] = struct.pack(">d", seconds * 1000.0)
    h, m, s = int(seconds // 3600), int(seconds % 3600 // 60), seconds % 60
    tag = f"{h:02d}:{m:02d}:{s:012.9f}".encode()
    patched = re.sub(rb"\d\d:\d\d:\d\d\.\d{9}", lambda _: tag, bytes(data))
    dst.write_bytes(patched)
    return dst


def write_streams_without_packets(path: Path) -> Path:
    """A Matroska file with a video and an audio stream and not one packet in either."""
    with av.open(str(path), "w") as out:
        vs = out.add_stream(VCODEC, rate=25)
        vs.width, vs.height, vs.pix_fmt = 32, 32, "yuv420p"
        out.add_stream("pcm_s16le", rate=16_000, layout="mono")
        out.start_encoding()
    return path


def garble(src: Path, dst: Path, *, start_frac: float = 0.3, seed: int = 0) -> Path:
    """Copy ``src`` with everything after ``start_frac`` of it replaced by random bytes."""
    data = bytearray(src.read_bytes())
    start = int(len(data) * start_frac)
    data[start:] = np.random.default_rng(seed).bytes(len(data) - start)
    dst.write_bytes(bytes(data))
    return dst
