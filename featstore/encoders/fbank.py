"""Log mel filterbank features as AV-HuBERT's audio front end consumes them (numpy only).

:func:`logfbank` reproduces ``python_speech_features.logfbank`` with its defaults, the
function AV-HuBERT calls on 16 kHz audio (PEERS.md "AV-HuBERT"): pre-emphasis 0.97,
25 ms rectangular windows every 10 ms (the last partial window zero-padded), the
512-point power spectrum ``|rfft|^2 / 512``, 26 triangular mel filters on the FFT bins
from 0 Hz to Nyquist, and ``log`` with zero energies replaced by float64 ``eps`` first.
It is vectorised over frames.

:func:`stack_frames` concatenates ``k`` consecutive 100 Hz frames into one 25 Hz row
(26 x 4 = 104 dims), zero-padding the end to a multiple of ``k`` first, as
AV-HuBERT's ``stacker`` does. :func:`layer_norm_rows` is AV-HuBERT's per-row
``F.layer_norm`` (no affine, eps 1e-5).

>>> x = np.random.default_rng(0).standard_normal(16000)  # 1 s at 16 kHz
>>> logfbank(x).shape, stack_frames(logfbank(x)).shape
((99, 26), (25, 104))
"""

from __future__ import annotations

import functools
from decimal import ROUND_HALF_UP, Decimal

import numpy as np

from featstore.timebase import SAMPLE_RATE_HZ

__all__ = ["layer_norm_rows", "logfbank", "mel_filterbank", "mfcc", "stack_frames"]

_EPS = np.finfo(np.float64).eps  # the floor for zero energies before the log
LAYER_NORM_EPS = 1e-5  # torch.nn.functional.layer_norm's default


def _round_half_up(x: float) -> int:
    # Window and hop lengths in samples round halves up (25 ms at 16 kHz = 400.00000000000006)
    return int(Decimal(x).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def _hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


@functools.lru_cache(maxsize=16)
def _filterbank(
    n_filters: int, n_fft: int, sample_rate_hz: int, low_hz: float, high_hz: float
) -> np.ndarray:
    mels = np.linspace(_hz_to_mel(low_hz), _hz_to_mel(high_hz), n_filters + 2)  # [n_filters + 2]
    # Filter edges snap to FFT bins: floor((n_fft + 1) * f / sample_rate)
    edges = np.floor((n_fft + 1) * _mel_to_hz(mels) / sample_rate_hz)  # [n_filters + 2]
    left, centre, right = edges[:-2, None], edges[1:-1, None], edges[2:, None]  # [n_filters, 1]
    bins = np.arange(n_fft // 2 + 1, dtype=np.float64)[None, :]  # [1, n_bins]
    with np.errstate(divide="ignore", invalid="ignore"):
        rising = np.where((bins >= left) & (bins < centre), (bins - left) / (centre - left), 0.0)
        falling = np.where(
            (bins >= centre) & (bins < right), (right - bins) / (right - centre), 0.0
        )
    fb = rising + falling  # [n_filters, n_bins]; the two ranges never overlap
    fb.setflags(write=False)
    return fb


def mel_filterbank(
    n_filters: int = 26,
    n_fft: int = 512,
    sample_rate_hz: int = SAMPLE_RATE_HZ,
    *,
    low_hz: float = 0.0,
    high_hz: float | None = None,
) -> np.ndarray:
    """Triangular mel filters on the rfft bins: ``[n_filters, n_fft // 2 + 1]`` float64."""
    high = sample_rate_hz / 2 if high_hz is None else high_hz
    if not 0 <= low_hz < high <= sample_rate_hz / 2:
        raise ValueError(
            f"need 0 <= low_hz < high_hz <= sample_rate_hz / 2, got {low_hz}, {high}, "
            f"{sample_rate_hz}"
        )
    if n_filters < 1 or n_fft < 2:
        raise ValueError(f"need n_filters >= 1 and n_fft >= 2, got {n_filters}, {n_fft}")
    return _filterbank(n_filters, n_fft, int(sample_rate_hz), float(low_hz), float(high))


def _frames(signal: np.ndarray, frame_len: int, step: int) -> np.ndarray:
    """Windows of ``frame_len`` every ``step`` samples: ``[S] -> [F, frame_len]``.

    At least one frame; the last partial window is completed with zeros, so
    ``F = 1 + ceil((S - frame_len) / step)`` for ``S > frame_len``.
    """
    n = signal.shape[0]
    n_frames = 1 if n <= frame_len else 1 + -(-(n - frame_len) // step)
    padded = np.zeros((n_frames - 1) * step + frame_len, dtype=np.float64)
    padded[:n] = signal
    view = np.lib.stride_tricks.sliding_window_view(padded, frame_len)  # [P - L + 1, L]
    return view[::step]  # [F, frame_len]


def _fbank(
    signal: np.ndarray,
    sample_rate_hz: int,
    *,
    win_s: float,
    step_s: float,
    n_filters: int,
    n_fft: int,
    low_hz: float,
    high_hz: float | None,
    preemph: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Mel energies ``[F, n_filters]`` and total frame energies ``[F]`` (zeros floored to eps)."""
    x = np.asarray(signal)
    if x.ndim != 1:
        raise ValueError(f"expected a 1-D signal [S], got shape {x.shape}")
    x = x.astype(np.float64, copy=False)
    frame_len = _round_half_up(win_s * sample_rate_hz)
    step = _round_half_up(step_s * sample_rate_hz)
    if frame_len < 1 or step < 1:
        raise ValueError(f"window and step must be at least one sample, got {frame_len}, {step}")
    fb = mel_filterbank(n_filters, n_fft, sample_rate_hz, low_hz=low_hz, high_hz=high_hz)
    if x.shape[0]:
        x = np.concatenate([x[:1], x[1:] - preemph * x[:-1]])  # [S] pre-emphasis
    frames = _frames(x, frame_len, step)  # [F, frame_len]
    power = np.abs(np.fft.rfft(frames, n_fft)) ** 2 / n_fft  # [F, n_fft // 2 + 1]
    energies = power @ fb.T  # [F, n_filters]
    energies[energies == 0] = _EPS
    total = power.sum(axis=1)  # [F]
    total[total == 0] = _EPS
    return energies, total


def mfcc(
    signal: np.ndarray,
    sample_rate_hz: int = SAMPLE_RATE_HZ,
    *,
    n_ceps: int = 13,
    win_s: float = 0.025,
    step_s: float = 0.01,
    n_filters: int = 26,
    n_fft: int = 512,
    low_hz: float = 0.0,
    high_hz: float | None = None,
    preemph: float = 0.97,
    lifter: int = 22,
    append_energy: bool = True,
) -> np.ndarray:
    """Mel cepstra ``[S] -> [F, n_ceps]`` float64, equal to ``python_speech_features.mfcc``.

    The log filterbank energies above, an orthonormal DCT-II over the filters, the first
    ``n_ceps`` coefficients, sinusoidal liftering ``1 + (L / 2) sin(pi n / L)`` and, with
    ``append_energy``, coefficient 0 replaced by the log of the frame's total power. TalkNet
    (PEERS.md) calls it with these defaults on int16-valued 16 kHz audio.
    """
    from scipy.fft import dct

    energies, total = _fbank(
        signal,
        sample_rate_hz,
        win_s=win_s,
        step_s=step_s,
        n_filters=n_filters,
        n_fft=n_fft,
        low_hz=low_hz,
        high_hz=high_hz,
        preemph=preemph,
    )
    ceps = dct(np.log(energies), type=2, axis=1, norm="ortho")[:, :n_ceps]  # [F, n_ceps]
    if lifter > 0:
        n = np.arange(ceps.shape[1])
        ceps = ceps * (1 + (lifter / 2.0) * np.sin(np.pi * n / lifter))
    if append_energy:
        ceps[:, 0] = np.log(total)
    return ceps


def logfbank(
    signal: np.ndarray,
    sample_rate_hz: int = SAMPLE_RATE_HZ,
    *,
    win_s: float = 0.025,
    step_s: float = 0.01,
    n_filters: int = 26,
    n_fft: int = 512,
    low_hz: float = 0.0,
    high_hz: float | None = None,
    preemph: float = 0.97,
) -> np.ndarray:
    """Log mel filterbank energies: ``[S]`` samples -> ``[F, n_filters]`` float64 at 1 / step_s Hz.

    Equal to ``python_speech_features.logfbank`` with the same arguments (its defaults
    here). ``F = 1`` for signals no longer than one window, else
    ``1 + ceil((S - win) / step)``. Windows longer than ``n_fft`` are truncated by
    the FFT, as in the reference.
    """
    energies, _ = _fbank(
        signal,
        sample_rate_hz,
        win_s=win_s,
        step_s=step_s,
        n_filters=n_filters,
        n_fft=n_fft,
        low_hz=low_hz,
        high_hz=high_hz,
        preemph=preemph,
    )
    return np.log(energies)


def stack_frames(feats: np.ndarray, k: int = 4) -> np.ndarray:
    """Concatenate ``k`` consecutive frames: ``[F, D] -> [ceil(F / k), k * D]``.

    A count that is not a multiple of ``k`` is padded at the end with zero rows (in
    the log-energy domain, before any normalisation), as AV-HuBERT's ``stacker``
    does, so the last row's missing frames are zeros.

    >>> stack_frames(np.ones((5, 2)), k=4)[:, ::2]
    array([[1., 1., 1., 1.],
           [1., 0., 0., 0.]])
    """
    if feats.ndim != 2:
        raise ValueError(f"stack_frames expects [F, D], got shape {feats.shape}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    n, d = feats.shape
    remainder = -n % k
    if remainder:
        feats = np.concatenate([feats, np.zeros((remainder, d), dtype=feats.dtype)])
    return feats.reshape(-1, k * d)  # [ceil(F / k), k * D]


def layer_norm_rows(x: np.ndarray, *, eps: float = LAYER_NORM_EPS) -> np.ndarray:
    """Each row to zero mean and unit variance (biased variance, no affine): ``[T, D] -> [T, D]``.

    AV-HuBERT applies ``F.layer_norm(feats, feats.shape[1:])`` to its stacked audio rows.
    """
    mean = x.mean(axis=-1, keepdims=True)  # [T, 1]
    var = x.var(axis=-1, keepdims=True)  # [T, 1]
    return (x - mean) / np.sqrt(var + eps)
