"""A weight-free active speaker detector: voice activity + audio-visual agreement of the mouth.

Used when no TalkNet checkpoint is at hand (``--asd sync``). A track speaks at frame ``t``
when (1) Silero VAD hears speech there and (2) the track's mouth moves with the audio
around ``t``:

- audio envelope ``a_t``: log of the frame's total mel energy, from the 26-band log
  filterbank of the ``logfbank`` baseline (100 Hz, the 4 rows of each 25 fps frame
  averaged), floored 7 nats (30 dB) below the video's 95th percentile, so that digital
  silence does not dominate a correlation;
- mouth envelope ``v_t``: the ``mouth-pixels`` baseline's rows (22x22 grey mouth ROI,
  normalised) projected on their first principal component over the track, its sign
  chosen so that it grows as the centre of the mouth darkens (an opening mouth);
- agreement ``r_t``: the Pearson correlation of ``a`` and ``v`` over the speech frames of
  a window of ``window_s`` (4 s) centred on ``t`` (clipped to the track), maximised over
  shifts of ``-shift..shift`` (1) frames (the best-alignment structure of the training-free sync score,
  paper Eq. 3; in-the-wild video is often a frame or two out of sync).

The frame score is ``r_t - threshold`` in speech and -1 elsewhere, so that, as with
TalkNet, a frame speaks where its score is >= 0. (The training-free sync score itself
compares per-frame features of one space by cosine; log-filterbank and mouth-pixel rows
live in different spaces of different widths, so each is reduced to the one-dimensional
envelope that carries speech in it, and their agreement over time is measured.)
Measured on 8 synthetic speakers (each face against its own audio and three others'),
the agreement of a speaking face is >= 0.70 for 99 % of its speech frames and that of a
face with another voice is <= 0.53 for 99 %; the threshold (0.6) lies between.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from featstore import timebase

__all__ = [
    "SyncAsdConfig",
    "audio_envelope",
    "mouth_envelope",
    "sync_track_scores",
    "windowed_agreement",
]


@dataclass(frozen=True)
class SyncAsdConfig:
    window_s: float = 4.0
    shift: int = 1
    threshold: float = 0.6
    vad_threshold: float = 0.5
    min_frames: int = 8
    floor_nats: float = 7.0

    def __post_init__(self) -> None:
        if self.window_s * timebase.FRAME_HZ < 5 or self.shift < 0 or not -1 < self.threshold < 1:
            raise ValueError(f"invalid sync ASD settings: {self}")


def audio_envelope(audio: np.ndarray, n_frames: int, *, floor_nats: float = 7.0) -> np.ndarray:
    """``[n_frames]`` float64: log total mel energy per 25 fps frame, floored (see above)."""
    from featstore.encoders.fbank import logfbank

    lf = logfbank(np.asarray(audio, dtype=np.float64) * 32768.0)  # [F, 26] at 100 Hz
    energy = np.log(np.exp(lf).sum(axis=1))  # [F]
    rows = 4 * n_frames
    energy = np.pad(energy, (0, max(0, rows - len(energy))), mode="edge")[:rows]
    env = energy.reshape(n_frames, 4).mean(axis=1)
    return np.maximum(env, np.percentile(env, 95) - floor_nats) if n_frames else env


def mouth_envelope(rows: np.ndarray) -> np.ndarray:
    """``[T, 484]`` mouth-pixel rows -> ``[T]``: first principal component, darker = higher."""
    x = np.asarray(rows, dtype=np.float64)
    centred = x - x.mean(axis=0)
    if len(x) < 2 or not np.any(centred):
        return np.zeros(len(x))
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    pc = centred @ vt[0]  # [T]
    side = round(np.sqrt(x.shape[1]))
    grid = centred.reshape(len(x), side, side)
    lo, hi = side // 4, side - side // 4
    darkness = -grid[:, lo:hi, lo:hi].mean(axis=(1, 2))  # [T]
    return -pc if float(pc @ darkness) < 0 else pc


def _corr_rows(a: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Pearson correlation of each row pair ``[N, W]`` (0 where a row is constant)."""
    a = a - a.mean(axis=1, keepdims=True)
    v = v - v.mean(axis=1, keepdims=True)
    den = np.sqrt((a * a).sum(axis=1) * (v * v).sum(axis=1))
    num = (a * v).sum(axis=1)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 1e-12)


def windowed_agreement(
    a: np.ndarray,
    v: np.ndarray,
    speech: np.ndarray,
    *,
    window: int,
    shift: int,
    min_frames: int = 8,
) -> np.ndarray:
    """``r_t = max_d corr(a[w_t], v[w_t + d])`` for each speech frame ``t`` (-1 elsewhere).

    ``w_t`` are the speech frames of the window centred on ``t`` (clipped to ``[0, T)``;
    a track shorter than the window uses all of it). A frame whose own stretch of speech
    (its run of ``speech`` inside the track) is shorter than ``min_frames`` gets -1: too
    little to tell, and typically speech spilling over a cut into the next shot. A shift
    drops the frames it moves past the track's ends.
    """
    n = len(a)
    if n != len(v) or n != len(speech):
        raise ValueError(f"lengths differ: {n}, {len(v)}, {len(speech)}")
    speech = np.asarray(speech, dtype=bool)
    out = np.full(n, -1.0)
    region = np.cumsum(np.r_[speech[:1], speech[1:] & ~speech[:-1]])  # run id of each frame
    region_frames = np.bincount(region[speech], minlength=int(region.max()) + 1)
    w = min(window, n)
    idx = np.arange(n)
    for t in np.flatnonzero(speech):
        if region_frames[region[t]] < min_frames:
            continue
        lo = min(max(0, t - w // 2), n - w)
        win = idx[lo : lo + w]
        frames = win[speech[win]]
        best = -1.0
        for d in range(-shift, shift + 1):
            f = frames[(frames + d >= 0) & (frames + d < n)]
            if len(f) >= min_frames:
                best = max(best, float(_corr_rows(a[None, f], v[None, f + d])[0]))
        out[t] = best
    return out


def sync_track_scores(
    audio_env: np.ndarray, mouth_rows: np.ndarray, speech: np.ndarray, config: SyncAsdConfig
) -> np.ndarray:
    """Per-frame scores of one track (speaking where >= 0) from its frames' audio envelope,
    mouth-pixel rows and voice activity, all ``[T]`` / ``[T, 484]``."""
    window = round(config.window_s * timebase.FRAME_HZ)
    r = windowed_agreement(
        audio_env,
        mouth_envelope(mouth_rows),
        speech,
        window=window,
        shift=config.shift,
        min_frames=config.min_frames,
    )
    return np.where(speech, r - config.threshold, -1.0)
