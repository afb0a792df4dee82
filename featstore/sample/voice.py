"""The sample's voices: formant-synthesised speech with a per-speaker pitch, tract and tilt."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from featstore import timebase

SAMPLE_RATE_HZ = timebase.SAMPLE_RATE_HZ


@dataclass(frozen=True)
class Voice:
    """A speaker's voice: mean pitch, vocal-tract scale (formants) and spectral tilt."""

    f0_hz: float
    formant_scale: float
    tilt: float  # harmonic amplitude ~ k ** -tilt
    rate_hz: float  # syllables per second


# Formants of five vowels (adult male averages), scaled per voice.
_VOWELS = np.array(
    [
        [730, 1090, 2440, 3400],
        [270, 2290, 3010, 3500],
        [300, 870, 2240, 3300],
        [530, 1840, 2480, 3400],
        [570, 840, 2410, 3300],
    ],
    dtype=np.float32,
)  # (F1, F2, F3, F4) in Hz
_BANDWIDTHS_HZ = np.array([80.0, 110.0, 160.0, 250.0], dtype=np.float32)
_HOP = 80  # control rate: 200 Hz


def random_voice(rng: np.random.Generator) -> Voice:
    """A new speaker's voice: lower or higher register, vocal-tract length, tilt, rate."""
    female = rng.random() < 0.5
    return Voice(
        f0_hz=float(rng.uniform(175, 235) if female else rng.uniform(95, 135)),
        formant_scale=float(rng.uniform(1.08, 1.2) if female else rng.uniform(0.92, 1.04)),
        tilt=float(rng.uniform(0.9, 1.2)),
        rate_hz=float(rng.uniform(4.0, 5.0)),
    )


def other_voice(rng: np.random.Generator, v: Voice) -> Voice:
    """A clearly different voice (the 'synthetic' one spliced into audio fakes)."""
    up = rng.random() < 0.5
    return Voice(
        f0_hz=v.f0_hz * float(rng.uniform(1.25, 1.45) if up else rng.uniform(0.65, 0.8)),
        formant_scale=v.formant_scale
        * float(rng.uniform(1.1, 1.18) if up else rng.uniform(0.85, 0.9)),
        tilt=v.tilt + float(rng.uniform(-0.3, 0.3)),
        rate_hz=float(rng.uniform(4.0, 5.0)),
    )


def synthesize(rng: np.random.Generator, v: Voice, n_samples: int, *, lead_s: float) -> np.ndarray:
    """Speech-like audio [N] float32: harmonic source, moving formants, syllables, pauses, noise."""
    sr = SAMPLE_RATE_HZ
    n_ctl = n_samples // _HOP + 2
    env = np.zeros(n_ctl, np.float32)  # syllable amplitude envelope
    formants = np.empty((n_ctl, 4), np.float32)
    formants[:] = _VOWELS[3] * v.formant_scale
    f0 = np.full(n_ctl, v.f0_hz, np.float32)
    noise_env = np.zeros(n_ctl, np.float32)
    t = lead_s
    end_s = n_samples / sr - 0.15
    while t < end_s - 0.2:
        n_syl = int(rng.integers(2, 7))
        phrase_start = t
        phrase_len = n_syl / v.rate_hz
        for _ in range(n_syl):
            dur = float(rng.uniform(0.7, 1.3)) / v.rate_hz
            if t + dur > end_s:
                break
            i0, i1 = int(t * sr / _HOP), int((t + dur) * sr / _HOP)
            x = np.linspace(0.0, 1.0, i1 - i0, dtype=np.float32)
            env[i0:i1] = np.maximum(
                env[i0:i1], np.clip(np.sin(np.pi * x**0.8), 0, 1) ** 1.5 * rng.uniform(0.6, 1.0)
            )
            formants[i0:i1] = _VOWELS[rng.integers(len(_VOWELS))] * v.formant_scale
            decl = 0.12 - 0.24 * (t - phrase_start) / phrase_len  # pitch declination over a phrase
            accent = 0.12 * rng.random() * np.sin(np.pi * x)
            f0[i0:i1] = v.f0_hz * (1 + decl + accent)
            if rng.random() < 0.6:  # consonant onset: a short noise burst
                nb = int(rng.uniform(0.02, 0.07) * sr / _HOP)
                lo = max(0, i0 - nb // 2)
                noise_env[lo : lo + nb] = rng.uniform(0.04, 0.12)
            t += dur
        t += float(rng.uniform(0.12, 0.45))  # pause between phrases
    # Smooth the control tracks (co-articulation) with a 40 ms moving average.
    kernel = np.ones(8, np.float32) / 8
    formants = np.stack(
        [np.convolve(np.pad(f, 4, mode="edge"), kernel, "same")[4:-4] for f in formants.T], 1
    )
    f0 = np.convolve(np.pad(f0, 4, mode="edge"), kernel, "same")[4:-4]
    f0 *= 1 + 0.01 * np.cumsum(rng.normal(0, 0.05, n_ctl)).clip(-1, 1)  # slow drift
    env = np.convolve(env, np.ones(3, np.float32) / 3, "same")

    n_harm = int(5000 // (0.8 * v.f0_hz))
    k = np.arange(1, n_harm + 1, dtype=np.float32)[:, None]  # [K, 1]
    freq = k * f0[None, :]  # [K, C]
    gain = np.ones_like(freq)
    for i in range(4):  # cascade of second-order resonances, unit gain at DC
        fi, bi = formants[None, :, i], _BANDWIDTHS_HZ[i]
        gain /= np.sqrt((1 - (freq / fi) ** 2) ** 2 + (freq * bi / fi**2) ** 2)
    gain *= k ** (-v.tilt) * (freq < 0.45 * sr) * env[None, :]  # [K, C]
    pos = np.arange(n_samples, dtype=np.float32) / _HOP
    phase = 2 * np.pi * np.cumsum(np.interp(pos, np.arange(n_ctl), f0)) / sr  # [N]
    x = np.zeros(n_samples, np.float32)
    for i in range(n_harm):
        amp = np.interp(pos, np.arange(n_ctl), gain[i])
        x += (amp * np.sin((i + 1) * phase)).astype(np.float32)
    white = rng.normal(0, 1, n_samples).astype(np.float32)
    hiss = np.diff(white, prepend=0.0)  # high-passed noise for consonants
    x /= max(float(np.sqrt(np.mean(x[env.repeat(_HOP)[:n_samples] > 0.3] ** 2))), 1e-6)
    x = 0.07 * x + 0.07 * np.interp(pos, np.arange(n_ctl), noise_env) * hiss
    x += 2e-4 * white  # room noise floor
    return np.clip(x, -0.99, 0.99).astype(np.float32)
