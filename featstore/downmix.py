"""Decoded audio of any format, channel layout and rate -> float32 mono at one rate.

One FFmpeg filter graph does the whole conversion in C, so no array is ever
made of the source's channels:

    abuffer -> aformat(fltp) -> pan(mono = mean of the channels) -> aresample(rate)
            -> aformat(flt, mono, rate) -> abuffersink

Only the mono float output is turned into a numpy array. (PyAV's
``AudioFrame.to_ndarray`` reads past the channel pointers of planar frames
with 8 channels or more and crashed the process on 7.1 audio: issue 13.)

**The mix is the mean of all channels**, ``pan=mono|c0<c0+c1+...`` (``<``
renormalises the gains to sum to 1), done in float before resampling (both
are linear, so this equals resampling each channel and averaging, as
featstore did before, up to float rounding). It is not FFmpeg's default
downmix, which ``aresample`` applies when asked for mono without a matrix:
that one weights channels by their role and is not normalised for float
output (stereo: 0.707 L + 0.707 R, 3 dB louder than the mean; 5.1: FL, FR
0.707, FC 1, LFE 0, surrounds 0.5), and for layouts whose channel order is
unknown (PCM in Matroska, WAV without a channel mask) it guesses a layout, so
the third of 3 channels is taken for LFE and dropped. The mean keeps stereo
exactly as before (a stereo file with two equal channels gives the samples of
its mono version), treats every layout alike, and matches what the paper's
reference code and common loaders (librosa, torchaudio) do: average the
channels.

Streams whose format, layout or rate change mid-way (concatenated broadcast
captures) get a new graph at the change; the old one is flushed first, so no
samples are lost. Audio that is already float mono at the target rate (AAC
at 16 kHz, as in AV-Deepfake1M) is passed through without a graph.
"""

from __future__ import annotations

import errno
import itertools
from fractions import Fraction
from typing import Any

import numpy as np

__all__ = ["MonoResampler", "mean_pan"]


def mean_pan(n_channels: int) -> str:
    """The ``pan`` filter argument that averages ``n_channels`` channels into mono.

    >>> mean_pan(3)
    'mono|c0<c0+c1+c2'
    """
    if n_channels < 1:
        raise ValueError(f"n_channels must be at least 1, got {n_channels}")
    return "mono|c0<" + "+".join(f"c{i}" for i in range(n_channels))


class MonoResampler:
    """Feed decoded ``av.AudioFrame``s, get ``[n]`` float32 mono pieces at ``sample_rate_hz``.

    >>> r = MonoResampler(16_000)  # doctest: +SKIP
    >>> pieces = [p for f in container.decode(audio=0) for p in r.resample(f)]  # doctest: +SKIP
    >>> pieces += r.resample(None)  # flush  # doctest: +SKIP

    ``skip_input_samples``: drop that many samples of the input before resampling (a
    span decode puts the resampler's first input on the whole decode's output grid:
    :mod:`featstore.seeking`).
    """

    def __init__(self, sample_rate_hz: int, *, skip_input_samples: int = 0) -> None:
        if sample_rate_hz < 1:
            raise ValueError(f"sample_rate_hz must be positive, got {sample_rate_hz}")
        if skip_input_samples < 0:
            raise ValueError(f"skip_input_samples must be >= 0, got {skip_input_samples}")
        self.sample_rate_hz = int(sample_rate_hz)
        self._skip = int(skip_input_samples)  # input samples still to drop before resampling
        self._key: tuple[str, str, int] | None = None
        self._source: Any = None  # abuffer context
        self._sink: Any = None  # abuffersink context
        self._graph: Any = None  # held: the contexts live as long as their graph

    def resample(self, frame: Any | None) -> list[np.ndarray]:
        """Mono pieces ready after ``frame`` (``None`` flushes what the graph still holds)."""
        if frame is None:
            return self._flush()
        key = (frame.format.name, frame.layout.name, int(frame.sample_rate))
        out: list[np.ndarray] = []
        if self._is_target(frame):  # already float mono at the rate (AAC at 16 kHz): no graph
            out += self._flush()
            mono = frame.to_ndarray()[0]  # [n]: one plane, a copy
            cut = min(self._skip, mono.shape[0])
            self._skip -= cut
            out.append(mono[cut:])
            return out
        if key != self._key:
            out += self._flush()  # parameters changed mid-stream: finish the old graph
            self._build(frame, key)
        self._source.push(frame)
        out += self._pull()
        return out

    def _is_target(self, frame: Any) -> bool:
        return (
            frame.layout.nb_channels == 1
            and frame.format.name in ("flt", "fltp")
            and frame.sample_rate == self.sample_rate_hz
        )

    def _build(self, frame: Any, key: tuple[str, str, int]) -> None:
        import av.filter

        fmt, layout, rate = key
        n_channels = int(frame.layout.nb_channels)
        time_base = frame.time_base or Fraction(1, rate)
        graph = av.filter.Graph()
        chain = [
            graph.add(
                "abuffer",
                sample_rate=str(rate),
                sample_fmt=fmt,
                channel_layout=layout,
                time_base=str(time_base),
            ),
        ]
        if self._skip:  # in C, on the source's own samples (no array of its channels)
            chain.append(graph.add("atrim", start_sample=str(self._skip)))
            self._skip = 0
        chain += [
            graph.add("aformat", sample_fmts="fltp"),  # mix in float, whatever the source
        ]
        if n_channels > 1:
            chain.append(graph.add("pan", mean_pan(n_channels)))
        chain += [
            graph.add("aresample", str(self.sample_rate_hz)),
            graph.add(
                "aformat",
                sample_fmts="flt",
                channel_layouts="mono",
                sample_rates=str(self.sample_rate_hz),
            ),
            graph.add("abuffersink"),
        ]
        for a, b in itertools.pairwise(chain):
            a.link_to(b)
        graph.configure()
        self._graph, self._source, self._sink, self._key = graph, chain[0], chain[-1], key

    def _pull(self) -> list[np.ndarray]:
        import av

        out = []
        while True:
            try:
                frame = self._sink.pull()
            except EOFError:
                break
            except av.error.FFmpegError as exc:
                if exc.errno != errno.EAGAIN:
                    raise
                break
            out.append(frame.to_ndarray()[0])  # [n]: mono packed float, one plane (a copy)
        return out

    def _flush(self) -> list[np.ndarray]:
        if self._graph is None:
            return []
        self._source.push(None)
        out = self._pull()
        self._graph = self._source = self._sink = self._key = None
        return out
