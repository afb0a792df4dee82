"""A small synthetic talking-face dataset in AV-Deepfake1M format.

No real faces can be downloaded everywhere (CI, air-gapped machines), so this
module draws one: a frontal face whose mouth opening follows the short-time
energy of formant-synthesised speech, plus locally manipulated fakes in the
manner of AV-Deepfake1M:

- ``audio_modified``: a segment of the audio is replaced by another voice; the
  mouth still follows the original audio there (audio-visual mismatch).
- ``visual_modified``: the audio is untouched; the mouth in a segment is driven
  by other speech (desynchronised lips).
- ``both_modified``: the audio segment is replaced and the mouth is re-driven by
  the new audio (lip-synced), drawn slightly blurred like a generated mouth.

Fakes are made from a real clip of the same speaker (``original``) and share its
leading silence, so silence length is no shortcut. Everything is deterministic
for a seed, down to the bytes of the files (RGB->YUV is converted here and x264 runs
single-threaded without macroblock-tree rate control, which otherwise varied between runs).
Only the mouth is drawn per frame (from pre-drawn patches), so 40 clips take a few seconds.

>>> from featstore.sample import make_sample
>>> info = make_sample("sample-data", n_clips=40, seed=0)  # doctest: +SKIP
>>> info.counts  # doctest: +SKIP
{'real': 20, 'audio_modified': 7, 'visual_modified': 7, 'both_modified': 6}
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from featstore import timebase
from featstore.errors import FeatstoreError

log = logging.getLogger(__name__)

FRAME_HZ = int(timebase.FRAME_HZ)  # an int: the container's frame rate
SAMPLE_RATE_HZ = timebase.SAMPLE_RATE_HZ
SAMPLES_PER_FRAME = timebase.samples_per_frame()
# Clip lengths are multiples of 8 frames (0.32 s = 5120 samples = 5 AAC frames of 1024),
# so the decoded AAC stream has exactly ``audio_frames`` samples.
FRAME_QUANTUM = 8
AUDIO_MODEL = "synthetic-formant"
MODIFY_TYPES = ("real", "audio_modified", "visual_modified", "both_modified")
_FAKE_CYCLE = ("audio_modified", "visual_modified", "both_modified")
_FILE_NAME = {  # AV-Deepfake1M's own file names
    "real": "real",
    "audio_modified": "real_video_fake_audio",
    "visual_modified": "fake_video_real_audio",
    "both_modified": "fake_video_fake_audio",
}


class SampleError(FeatstoreError, ValueError):
    """The sample dataset cannot be made with these arguments."""


@dataclass(frozen=True)
class SampleInfo:
    """What ``make_sample`` wrote."""

    root: Path
    train_metadata: Path
    val_metadata: Path
    n_clips: int
    n_train: int
    n_val: int
    counts: dict[str, int]  # modify_type -> number of clips
    total_duration_s: float
    video_codec: str
    audio_codec: str
    elapsed_s: float


@dataclass(frozen=True)
class _Speaker:
    index: int
    voice: _Voice
    look: _Look


def make_sample(
    out_dir: str | Path,
    *,
    n_clips: int = 40,
    seed: int = 0,
    size: int = 224,
    duration_s: tuple[float, float] = (3.0, 5.0),
    val_fraction: float = 0.3,
    overwrite: bool = False,
) -> SampleInfo:
    """Write ``n_clips`` synthetic clips (about half real) and AV1M metadata under ``out_dir``.

    Speakers are split between ``train`` and ``val`` (about ``val_fraction`` of them in val);
    each fake lies beside the real clip it was made from. ``overwrite`` replaces a sample
    dataset written there before (only the files its metadata lists).
    """
    import av

    if n_clips < 2:
        raise SampleError(f"need at least 2 clips (one real, one fake), got {n_clips}")
    if size < 64 or size % 2:
        raise SampleError(f"frame size must be even and at least 64 pixels, got {size}")
    lo_s, hi_s = duration_s
    if not 1.0 <= lo_s <= hi_s <= 60.0:
        raise SampleError(f"duration range must satisfy 1 <= min <= max <= 60 s, got {duration_s}")
    if not 0.0 <= val_fraction < 1.0:
        raise SampleError(f"val_fraction must be in [0, 1), got {val_fraction}")
    t0 = time.perf_counter()
    root = Path(out_dir)
    _prepare_root(root, overwrite=overwrite)
    video_codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    audio_codec = "aac"

    n_real = (n_clips + 1) // 2
    n_fake = n_clips - n_real
    n_speakers = max(2, round(n_real / 3))
    seeds = np.random.SeedSequence(seed).spawn(n_speakers + n_real)
    speakers = [_make_speaker(i, np.random.default_rng(seeds[i])) for i in range(n_speakers)]
    n_val_speakers = min(n_speakers - 1, round(val_fraction * n_speakers)) if val_fraction else 0
    val_speakers = set(range(n_speakers - n_val_speakers, n_speakers))

    entries: dict[str, list[dict]] = {"train": [], "val": []}
    counts = dict.fromkeys(MODIFY_TYPES, 0)
    n_frames_total = 0
    layers_cache: dict[int, _FaceLayers] = {}
    for utt in range(n_real):
        rng = np.random.default_rng(seeds[n_speakers + utt])
        spk = speakers[utt % n_speakers]
        split = "val" if spk.index in val_speakers else "train"
        if spk.index not in layers_cache:
            layers_cache[spk.index] = _build_layers(spk.look, size=size)
        fake_type = _FAKE_CYCLE[utt % 3] if utt < n_fake else None
        folder = f"id{spk.index:05d}/{utt:05d}"  # relative to <root>/<split>/, as in AV1M
        for clip in _make_utterance(
            rng, spk, layers_cache[spk.index], lo_s=lo_s, hi_s=hi_s, fake_type=fake_type
        ):
            entry = {
                "file": f"{folder}/{_FILE_NAME[clip.modify_type]}.mp4",
                "original": None if clip.modify_type == "real" else f"{folder}/real.mp4",
                "split": split,
                "modify_type": clip.modify_type,
                "audio_model": AUDIO_MODEL if clip.audio_segments else "",
                "fake_segments": _seconds(sorted(set(clip.audio_segments + clip.visual_segments))),
                "audio_fake_segments": _seconds(clip.audio_segments),
                "visual_fake_segments": _seconds(clip.visual_segments),
                "video_frames": len(clip.video),
                "audio_frames": len(clip.audio),
            }
            _write_mp4(
                clip_path(root, entry),
                clip.video,
                clip.audio,
                video_codec=video_codec,
                audio_codec=audio_codec,
            )
            entries[split].append(entry)
            counts[clip.modify_type] += 1
            n_frames_total += len(clip.video)

    paths = {}
    for split, items in entries.items():
        paths[split] = root / f"{split}_metadata.json"
        lines = ",\n ".join(json.dumps(item) for item in items)  # one entry per line
        paths[split].write_text(f"[{lines}]\n" if items else "[]\n")
    elapsed = time.perf_counter() - t0
    log.info("wrote %d sample clips to %s in %.1f s", n_clips, root, elapsed)
    return SampleInfo(
        root=root,
        train_metadata=paths["train"],
        val_metadata=paths["val"],
        n_clips=n_clips,
        n_train=len(entries["train"]),
        n_val=len(entries["val"]),
        counts=counts,
        total_duration_s=n_frames_total / FRAME_HZ,
        video_codec=video_codec,
        audio_codec=audio_codec,
        elapsed_s=elapsed,
    )


def clip_path(root: Path, entry: dict) -> Path:
    """Where a metadata entry's clip lies: ``<root>/<split>/<file>`` (AV-Deepfake1M's layout)."""
    return Path(root) / entry["split"] / entry["file"]


def _prepare_root(root: Path, *, overwrite: bool) -> None:
    """Create ``root``; refuse a non-empty one unless ``overwrite`` and it holds a sample."""
    if root.exists() and not root.is_dir():
        raise SampleError(f"{root} exists and is not a directory")
    if root.is_dir() and any(root.iterdir()):
        metadata = [root / f"{split}_metadata.json" for split in ("train", "val")]
        if not overwrite:
            raise SampleError(
                f"{root} is not empty (use --overwrite, or overwrite=True, to replace a sample dataset)"
            )
        if not any(p.is_file() for p in metadata):
            raise SampleError(f"{root} is not empty and holds no sample metadata to replace")
        for path in metadata:
            if not path.is_file():
                continue
            for item in json.loads(path.read_text()):
                clip = clip_path(root, item)
                clip.unlink(missing_ok=True)
                for parent in clip.parents:  # prune emptied folders up to root
                    if parent == root or not parent.is_relative_to(root) or any(parent.iterdir()):
                        break
                    parent.rmdir()
            path.unlink()
    root.mkdir(parents=True, exist_ok=True)


def _seconds(segments: list[tuple[int, int]]) -> list[list[float]]:
    """Frame segments -> [[start_s, end_s], ...] (frame boundaries are exact at 2 decimals)."""
    return [[round(a / FRAME_HZ, 2), round(b / FRAME_HZ, 2)] for a, b in segments]


def _make_speaker(index: int, rng: np.random.Generator) -> _Speaker:
    return _Speaker(index=index, voice=_random_voice(rng), look=_random_look(rng))


@dataclass(frozen=True)
class _Clip:
    modify_type: str
    video: np.ndarray  # [T, H, W, 3] uint8
    audio: np.ndarray  # [N] float32
    audio_segments: list[tuple[int, int]]  # [start, end) in video frames
    visual_segments: list[tuple[int, int]]


def _make_utterance(
    rng: np.random.Generator,
    spk: _Speaker,
    layers: _FaceLayers,
    *,
    lo_s: float,
    hi_s: float,
    fake_type: str | None,
) -> list[_Clip]:
    """One real clip and, if ``fake_type``, one fake made from it."""
    lo_q = int(np.ceil(lo_s * FRAME_HZ / FRAME_QUANTUM))
    hi_q = max(lo_q, int(hi_s * FRAME_HZ // FRAME_QUANTUM))
    n_frames = FRAME_QUANTUM * int(rng.integers(lo_q, hi_q + 1))
    n_samples = n_frames * SAMPLES_PER_FRAME
    lead_s = float(rng.uniform(0.12, 0.4))
    audio = _synthesize(rng, spk.voice, n_samples, lead_s=lead_s)  # [N]
    ref_db = float(np.percentile(_frame_db(audio), 95))
    opening = _mouth_opening(audio, ref_db=ref_db)  # [T]
    motion = _random_motion(rng, n_frames, size=layers.size, margin=layers.margin)  # [T, 3]
    video = _render(layers, opening, motion)  # [T, H, W, 3]
    clips = [_Clip("real", video, audio, [], [])]
    if fake_type is None:
        return clips

    segments = _pick_segments(rng, n_frames, lead_s=lead_s)
    fake_audio, fake_video = audio, video
    if fake_type in ("audio_modified", "both_modified"):
        other = _synthesize(rng, _other_voice(rng, spk.voice), n_samples, lead_s=0.0)
        fake_audio = _splice(audio, other, segments)
    if fake_type in ("visual_modified", "both_modified"):
        # visual_modified: lips driven by other speech of the same speaker (out of sync);
        # both_modified: lips re-driven by the new audio (in sync) but drawn blurred.
        if fake_type == "visual_modified":
            driver = _synthesize(rng, spk.voice, n_samples, lead_s=0.0)
        else:
            driver = fake_audio
        driven = _mouth_opening(driver, ref_db=ref_db)  # [T]
        fake_video = video.copy()
        for a, b in segments:
            fake_video[a:b] = _render(
                layers, driven[a:b], motion[a:b], blurred=fake_type == "both_modified"
            )
    clips.append(
        _Clip(
            fake_type,
            fake_video,
            fake_audio,
            audio_segments=segments if fake_type != "visual_modified" else [],
            visual_segments=segments if fake_type != "audio_modified" else [],
        )
    )
    return clips


def _mouth_opening(audio: np.ndarray, *, ref_db: float) -> np.ndarray:
    """Per-video-frame mouth opening [T] in [0, 1] from short-time energy (30 dB range)."""
    raw = np.clip((_frame_db(audio) - (ref_db - 30.0)) / 24.0, 0.0, 1.0)
    padded = np.pad(raw, 1, mode="edge")
    return (0.25 * padded[:-2] + 0.5 * padded[1:-1] + 0.25 * padded[2:]).astype(np.float32)


def _frame_db(audio: np.ndarray) -> np.ndarray:
    """RMS energy in dB per video frame [T] (frame t = samples [640 t, 640 (t + 1)))."""
    frames = audio[: len(audio) // SAMPLES_PER_FRAME * SAMPLES_PER_FRAME]
    rms = np.sqrt(np.mean(frames.reshape(-1, SAMPLES_PER_FRAME) ** 2, axis=1))
    return 20 * np.log10(rms + 1e-6)


def _pick_segments(
    rng: np.random.Generator, n_frames: int, *, lead_s: float
) -> list[tuple[int, int]]:
    """One or two non-overlapping fake segments of 0.3-1.2 s inside the speech, frame-aligned."""
    first = int(np.ceil((lead_s + 0.3) * FRAME_HZ))
    last = n_frames - int(0.3 * FRAME_HZ)
    n_seg = 2 if rng.random() < 0.25 and last - first > 3 * FRAME_HZ else 1
    bounds = np.linspace(first, last, n_seg + 1).astype(int)
    segments = []
    for lo, hi in itertools.pairwise(bounds):
        length = int(rng.integers(round(0.3 * FRAME_HZ), round(1.2 * FRAME_HZ) + 1))
        length = min(length, hi - lo - 1)
        start = int(rng.integers(lo, hi - length))
        segments.append((start, start + length))
    return segments


def _splice(audio: np.ndarray, other: np.ndarray, segments: list[tuple[int, int]]) -> np.ndarray:
    """Replace each frame segment of ``audio`` by ``other`` (loudness-matched), fading inside it."""
    out = audio.copy()
    fade = SAMPLE_RATE_HZ // 200  # 5 ms, kept inside the segment so outside stays untouched
    speech_rms = float(np.sqrt(np.mean(audio[np.abs(audio) > 1e-3] ** 2)))
    for a, b in segments:
        s, e = a * SAMPLES_PER_FRAME, b * SAMPLES_PER_FRAME
        piece = other[s:e].copy()
        target = max(float(np.sqrt(np.mean(audio[s:e] ** 2))), 0.5 * speech_rms)
        piece *= target / max(float(np.sqrt(np.mean(piece**2))), 1e-6)
        ramp = np.ones(e - s, np.float32)
        ramp[:fade] = np.linspace(0.0, 1.0, fade)
        ramp[-fade:] = np.linspace(1.0, 0.0, fade)
        out[s:e] = ramp * piece + (1 - ramp) * audio[s:e]
    return np.clip(out, -0.99, 0.99)


# ---------------------------------------------------------------- voice


@dataclass(frozen=True)
class _Voice:
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


def _random_voice(rng: np.random.Generator) -> _Voice:
    """A new speaker's voice: lower or higher register, vocal-tract length, tilt, rate."""
    female = rng.random() < 0.5
    return _Voice(
        f0_hz=float(rng.uniform(175, 235) if female else rng.uniform(95, 135)),
        formant_scale=float(rng.uniform(1.08, 1.2) if female else rng.uniform(0.92, 1.04)),
        tilt=float(rng.uniform(0.9, 1.2)),
        rate_hz=float(rng.uniform(4.0, 5.0)),
    )


def _other_voice(rng: np.random.Generator, v: _Voice) -> _Voice:
    """A clearly different voice (the 'synthetic' one spliced into audio fakes)."""
    up = rng.random() < 0.5
    return _Voice(
        f0_hz=v.f0_hz * float(rng.uniform(1.25, 1.45) if up else rng.uniform(0.65, 0.8)),
        formant_scale=v.formant_scale
        * float(rng.uniform(1.1, 1.18) if up else rng.uniform(0.85, 0.9)),
        tilt=v.tilt + float(rng.uniform(-0.3, 0.3)),
        rate_hz=float(rng.uniform(4.0, 5.0)),
    )


def _synthesize(
    rng: np.random.Generator, v: _Voice, n_samples: int, *, lead_s: float
) -> np.ndarray:
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


# ---------------------------------------------------------------- face
# Geometry is in units of a 224-pixel frame and scaled to ``size``; proportions follow an
# aligned frontal face crop (eyes at 0.48 H, nose base at 0.66 H, mouth at 0.76 H, chin at 0.9 H).

_MOUTH_LEVELS = 24
_MAX_OPEN = 15.0  # mouth opening at full energy, in 224-units
_MOUTH_Y = 171.0
_BLINKS = (1.0, 0.45, 0.0)  # eye openness per blink state


@dataclass(frozen=True)
class _Look:
    """A speaker's appearance (RGB colours in 0-255)."""

    skin: tuple[float, float, float]
    hair: tuple[float, float, float]
    lips: tuple[float, float, float]
    iris: tuple[float, float, float]
    shirt: tuple[float, float, float]
    background: tuple[float, float, float]
    texture: tuple[float, ...]  # background texture: (fx, fy, phase) triples


@dataclass(frozen=True)
class _FaceLayers:
    """Pre-drawn layers of one speaker: everything but the mouth is drawn once."""

    size: int
    margin: int  # the face layer is larger than the frame by this on each side (head motion)
    premult: np.ndarray  # [B, H + 2M, W + 2M, 3] face colour x alpha, one per blink state
    inv_alpha: np.ndarray  # [H + 2M, W + 2M, 1] 1 - alpha of the face layer
    background: np.ndarray  # [H, W, 3]
    mouth_box: tuple[int, int, int, int]  # y0, y1, x0, x1 on the face layer
    mouths: np.ndarray  # [L, h, w, 3] mouth patches, opening level 0..L-1
    mouths_blurred: np.ndarray  # [L, h, w, 3] the same, blurred (lip-sync artefact)


_HAIR = ((30, 22, 18), (60, 40, 28), (100, 70, 45), (150, 115, 70), (120, 60, 35), (20, 20, 22))


def _random_look(rng: np.random.Generator) -> _Look:
    """Skin tone, hair, eye, clothes and background colours of a new speaker."""
    tone = rng.uniform(0.0, 1.0)
    skin = np.array([236, 196, 170]) * (1 - tone) + np.array([150, 100, 72]) * tone
    hair = np.array(_HAIR[rng.integers(len(_HAIR))]) * rng.uniform(0.8, 1.15)
    lips = skin * np.array([0.86, 0.58, 0.58]) + np.array([20, 0, 5])
    iris = rng.choice([[70, 45, 25], [60, 90, 120], [80, 100, 60], [40, 30, 25]])
    shirt = rng.uniform(30, 200, 3)
    background = rng.uniform(90, 210, 3)
    texture = tuple(float(x) for x in rng.uniform([0.2, 0.2, 0], [2.5, 2.5, 6.3], (4, 3)).ravel())
    return _Look(
        *(tuple(float(c) for c in col) for col in (skin, hair, lips, iris, shirt, background)),
        texture=texture,
    )


def _step(d: np.ndarray, s: float) -> np.ndarray:
    """Antialiased step: 0 for d < 0, 1 for d > 0, over about one pixel (d in 224-units)."""
    return np.clip(d * s + 0.5, 0.0, 1.0)


def _ellipse(
    yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, ry: float, rx: float, s: float
) -> np.ndarray:
    """Antialiased filled ellipse mask (centre, radii in 224-units; ``s`` pixels per unit)."""
    r = np.sqrt(((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2)
    return _step((1 - r) * min(rx, ry), s)


def _blob(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, sy: float, sx: float) -> np.ndarray:
    """Gaussian bump in [0, 1] for soft shading."""
    return np.exp(-0.5 * (((yy - cy) / sy) ** 2 + ((xx - cx) / sx) ** 2))


def _paint(rgb: np.ndarray, mask: np.ndarray, color: object) -> None:
    """Blend ``color`` into ``rgb`` [h, w, 3] in place with opacity ``mask`` [h, w]."""
    rgb += mask[..., None] * (np.asarray(color, np.float32) - rgb)


def _shade(rgb: np.ndarray, amount: np.ndarray) -> None:
    """Darken ``rgb`` in place by ``amount`` [h, w] (negative brightens)."""
    rgb *= (1 - amount)[..., None]


def _build_layers(look: _Look, *, size: int) -> _FaceLayers:
    """Draw a speaker once: background, face per blink state, mouth patches per opening."""
    s = size / 224.0
    margin = max(2, round(6 * s))
    n = size + 2 * margin
    grid = (np.arange(n, dtype=np.float32) - margin) / s
    yy, xx = grid[:, None], grid[None, :]  # 224-units
    skin = np.asarray(look.skin, np.float32)
    rgb = np.zeros((n, n, 3), np.float32)
    alpha = np.zeros((n, n), np.float32)

    def layer(mask: np.ndarray, color: object) -> None:
        _paint(rgb, mask, color)
        np.maximum(alpha, mask, out=alpha)

    layer(_ellipse(yy, xx, 268, 112, 76, 128, s), look.shirt)  # shoulders
    neck = _step(30 - np.abs(xx - 112), s) * _step(yy - 150, s) * _step(236 - yy, s)
    layer(neck, skin * 0.8)
    _shade(rgb, 0.35 * _blob(yy, xx, 198, 112, 7, 34) * neck)  # shadow under the chin
    hair_back = _ellipse(yy, xx, 94, 112, 68, 71, s)
    layer(hair_back, look.hair)
    for side in (-1, 1):
        ear = _ellipse(yy, xx, 120, 112 + side * 60, 16, 8, s)
        layer(ear, skin * 0.9)
        _shade(rgb, 0.25 * _blob(yy, xx, 121, 112 + side * 61, 8, 3) * ear)
    rx = 62 * (1 - 0.32 * np.clip((yy - 118) / 84, 0, 1) ** 2)  # jaw tapers to the chin
    r = np.sqrt(((xx - 112) / rx) ** 2 + ((yy - 118) / 84) ** 2)
    face_mask = _step((1 - r) * 60, s)
    shade = 1.08 - 0.3 * np.clip(r, 0, 1) ** 3 - 0.05 * (xx - 112) / 62
    layer(face_mask, skin)
    rgb *= np.where(face_mask[..., None] > 0, shade[..., None], 1.0)
    hairline = 50 + 26 * ((xx - 112) / 62) ** 4
    layer(_step(hairline - yy, s) * np.maximum(hair_back, face_mask), look.hair)
    # Shading that makes the face read as a face: eye sockets, nose sides and base, blush.
    for side in (-1, 1):
        _shade(rgb, 0.16 * _blob(yy, xx, 103, 112 + side * 27, 9, 16))
        _shade(rgb, 0.12 * _blob(yy, xx, 126, 112 + side * 9, 14, 3))
        _shade(rgb, 0.14 * _blob(yy, xx, 144, 112 + side * 11, 4, 4.5))
        _paint(rgb, 0.08 * _blob(yy, xx, 140, 112 + side * 36, 12, 14), look.lips)
        _paint(rgb, _ellipse(yy, xx, 148, 112 + side * 6.5, 2.3, 4, s), skin * 0.3)  # nostril
    _shade(rgb, -0.07 * _blob(yy, xx, 139, 112, 5, 6))  # nose tip highlight
    _shade(rgb, 0.13 * _blob(yy, xx, 152, 112, 2.5, 10))  # under the nose
    _shade(rgb, 0.05 * _blob(yy, xx, 158, 112, 5, 3))  # philtrum
    _shade(rgb, 0.10 * _blob(yy, xx, 190, 112, 3, 14))  # above the chin
    for side in (-1, 1):  # eyebrows
        bx = 112 + side * 28
        u = (xx - bx) / 18
        yb = 92 - 5 * (1 - u**2) + 1.5 * side * u
        thick = 3.4 - 1.2 * side * u
        _paint(rgb, _step(1 - np.abs(u), s * 18) * _step(thick - np.abs(yy - yb), s), look.hair)

    eyes = []
    for openness in _BLINKS:
        out = rgb.copy()
        _draw_eyes(out, yy, xx, s, openness, look)
        eyes.append(out * alpha[..., None])
    y0, y1 = round(margin + 153 * s), round(margin + 193 * s)
    x0, x1 = round(margin + 84 * s), round(margin + 140 * s)
    base = rgb[y0:y1, x0:x1]
    my, mx = yy[y0:y1], xx[:, x0:x1]
    mouths = np.stack(
        [
            _draw_mouth(base, my, mx, s, _MAX_OPEN * i / (_MOUTH_LEVELS - 1), look)
            for i in range(_MOUTH_LEVELS)
        ]
    )
    feather = np.minimum.outer(
        *(np.minimum(np.arange(k), np.arange(k)[::-1]) for k in base.shape[:2])
    )
    feather = np.clip(feather / (4 * s), 0, 1)[None, ..., None]
    blurred = feather * _box_blur(mouths, max(1, round(s))) + (1 - feather) * mouths
    return _FaceLayers(
        size=size,
        margin=margin,
        premult=np.stack(eyes),
        inv_alpha=(1 - alpha)[..., None],
        background=_background(look, size),
        mouth_box=(y0, y1, x0, x1),
        mouths=mouths,
        mouths_blurred=blurred.astype(np.float32),
    )


def _draw_eyes(
    rgb: np.ndarray, yy: np.ndarray, xx: np.ndarray, s: float, openness: float, look: _Look
) -> None:
    """Sclera, iris, pupil, catch-light, lids and creases; ``openness`` 0 = closed."""
    for side in (-1, 1):
        ex, ey = 112 + side * 27, 108.0
        u = (xx - ex) / 13
        inside = _step(1 - np.abs(u), s * 13)
        bulge = np.clip(1 - u**2, 0, 1)
        upper = ey - 6.5 * openness * bulge - 0.6
        lower = ey + 3.8 * openness * bulge
        _shade(rgb, 0.12 * _step(upper + 0.5 - yy, s) * _step(yy - (upper - 5), s) * inside)  # lid
        if openness > 0:
            sclera = inside * _step(yy - upper, s) * _step(lower - yy, s)
            _paint(rgb, sclera, (232, 226, 220))
            iris = _ellipse(yy, xx, ey - 0.5, ex, 5.8, 5.8, s) * sclera
            _paint(rgb, iris, look.iris)
            _paint(rgb, _ellipse(yy, xx, ey - 0.5, ex, 2.6, 2.6, s) * sclera, (12, 10, 10))
            _paint(rgb, _ellipse(yy, xx, ey - 2.2, ex + 1.8, 1.1, 1.1, s) * sclera, (250, 250, 250))
            _paint(
                rgb,
                0.5 * inside * _step(1.0 - np.abs(yy - lower - 0.3), s),
                np.asarray(look.skin) * 0.6,
            )
        lid = inside * _step(1.3 - np.abs(yy - upper), s)
        _paint(rgb, lid, np.asarray(look.hair) * 0.4)
        _paint(
            rgb,
            0.35 * inside * _step(0.8 - np.abs(yy - (ey - 9.5 * bulge - 1)), s),
            np.asarray(look.skin) * 0.6,
        )  # crease


def _draw_mouth(
    base: np.ndarray, yy: np.ndarray, xx: np.ndarray, s: float, opening: float, look: _Look
) -> np.ndarray:
    """Lips, dark interior and upper teeth for ``opening`` (224-units) on a copy of ``base``."""
    rgb = base.copy()
    hw = 22 * (1 - 0.08 * opening / _MAX_OPEN)
    u = (xx - 112) / hw
    e = np.sqrt(np.clip(1 - u**2, 0, 1))
    inside = _step(1 - np.abs(u), s * hw)
    upper_in = _MOUTH_Y - 0.25 * opening * e**0.8
    lower_in = _MOUTH_Y + 0.75 * opening * e**0.8
    upper_out = upper_in - 7.0 * e**0.7 + 1.8 * np.exp(-((u / 0.15) ** 2)) * e
    lower_out = lower_in + 8.5 * e**0.6
    _shade(rgb, 0.14 * _blob(yy, xx, _MOUTH_Y + 0.75 * opening + 12, 112, 3, 12))
    lips = np.asarray(look.lips, np.float32)
    _paint(rgb, inside * _step(yy - upper_out, s) * _step(upper_in - yy, s), lips * 0.85)
    lower = inside * _step(yy - lower_in, s) * _step(lower_out - yy, s)
    _paint(rgb, lower, lips)
    glint = np.exp(
        -(((yy - (lower_in + 0.45 * (lower_out - lower_in))) / 2.5) ** 2) - (u / 0.5) ** 2
    )
    _paint(rgb, 0.15 * glint * lower, (255, 235, 230))
    interior = inside * _step(yy - upper_in, s) * _step(lower_in - yy, s)
    _paint(rgb, interior, (48, 16, 20))
    teeth_end = upper_in + np.minimum(0.4 * (lower_in - upper_in), 4.5)
    _paint(
        rgb, interior * _step(teeth_end - yy, s) * _step(0.65 - np.abs(u), s * hw), (226, 220, 206)
    )
    line = _step(1.05 - np.abs(u), s * hw) * _step(
        0.8 - np.abs(yy - 0.5 * (upper_in + lower_in)), s
    )
    _paint(rgb, 0.85 * line * (1 - _step(opening - 1.5, 1.0)), (70, 30, 32))
    return rgb


def _box_blur(x: np.ndarray, r: int) -> np.ndarray:
    """Separable box blur of [L, h, w, 3] patches with radius ``r`` (edges clamped)."""
    for axis in (1, 2):
        pad = [(0, 0)] * x.ndim
        pad[axis] = (r + 1, r)
        c = np.cumsum(np.pad(x, pad, mode="edge"), axis=axis)
        n = x.shape[axis]
        x = (
            np.take(c, np.arange(2 * r + 1, n + 2 * r + 1), axis) - np.take(c, np.arange(n), axis)
        ) / (2 * r + 1)
    return x


def _background(look: _Look, size: int) -> np.ndarray:
    g = np.linspace(0, 1, size, dtype=np.float32)
    yy, xx = g[:, None], g[None, :]
    tex = np.zeros((size, size), np.float32)
    t = look.texture
    for i in range(0, len(t), 3):
        tex += np.sin(2 * np.pi * (t[i] * xx + t[i + 1] * yy) + t[i + 2])
    light = 1.1 - 0.25 * yy + 0.04 * tex
    return np.clip(np.asarray(look.background, np.float32) * light[..., None], 0, 255)


def _random_motion(
    rng: np.random.Generator, n_frames: int, *, size: int, margin: int
) -> np.ndarray:
    """Per frame (dy, dx, blink state) [T, 3] int: smooth head sway and occasional blinks."""
    t = np.arange(n_frames) / FRAME_HZ
    shift = np.zeros((n_frames, 2))
    for axis, amp in ((0, 1.5), (1, 3.0)):
        for _ in range(3):
            f, ph = rng.uniform(0.1, 0.7), rng.uniform(0, 2 * np.pi)
            shift[:, axis] += amp / 2 * np.sin(2 * np.pi * f * t + ph)
    shift = np.clip(np.rint(shift * size / 224), -margin, margin)
    blink = np.zeros(n_frames, int)
    at = rng.uniform(0.3, 2.0)
    while at < t[-1]:
        i = int(at * FRAME_HZ)
        for k, state in enumerate((1, 2, 2, 1)):
            if i + k < n_frames:
                blink[i + k] = state
        at += rng.uniform(1.8, 4.5)
    return np.column_stack([shift.astype(int), blink])


def _render(
    layers: _FaceLayers, opening: np.ndarray, motion: np.ndarray, *, blurred: bool = False
) -> np.ndarray:
    """Frames [T, H, W, 3] uint8 for per-frame mouth opening [T] in [0, 1] and motion [T, 3]."""
    S, M = layers.size, layers.margin
    levels = np.rint(np.clip(opening, 0, 1) * (_MOUTH_LEVELS - 1)).astype(int)
    mouths = layers.mouths_blurred if blurred else layers.mouths
    y0, y1, x0, x1 = layers.mouth_box
    out = np.empty((len(opening), S, S, 3), np.uint8)
    for i, (dy, dx, state) in enumerate(motion):
        ys, xs = M - dy, M - dx  # the face moves by (dy, dx): read the layer shifted back
        premult = layers.premult[state, ys : ys + S, xs : xs + S]
        frame = layers.background * layers.inv_alpha[ys : ys + S, xs : xs + S] + premult
        frame[y0 - ys : y1 - ys, x0 - xs : x1 - xs] = mouths[levels[i]]
        out[i] = np.clip(frame, 0, 255)
    return out


def _write_mp4(
    path: Path, video: np.ndarray, audio: np.ndarray, *, video_codec: str, audio_codec: str
) -> None:
    """Encode ``video`` [T, H, W, 3] uint8 at 25 fps and ``audio`` [N] float32 at 16 kHz mono."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="mp4") as container:
        vs = container.add_stream(video_codec, rate=FRAME_HZ)
        vs.width, vs.height = video.shape[2], video.shape[1]
        vs.pix_fmt = "yuv420p"
        vs.codec_context.thread_count = 1
        if video_codec == "libx264":
            # Single-threaded and without macroblock-tree rate control: with mbtree on, x264
            # gave different bytes for the same input from one encode to the next.
            vs.options = {
                "crf": "20",
                "preset": "veryfast",
                "threads": "1",
                "x264-params": "mbtree=0",
            }
        else:
            vs.bit_rate = 800_000
        aus = container.add_stream(audio_codec, rate=SAMPLE_RATE_HZ)
        aus.layout = "mono"
        aus.bit_rate = 64_000
        aus.options = {"aac_coder": "fast"}
        for img in _to_yuv420p(video):
            for packet in vs.encode(av.VideoFrame.from_ndarray(img, format="yuv420p")):
                container.mux(packet)
        for packet in vs.encode():
            container.mux(packet)
        chunk = 1024
        samples = audio.astype(np.float32)
        for start in range(0, len(samples), chunk):
            frame = av.AudioFrame.from_ndarray(
                samples[None, start : start + chunk], format="fltp", layout="mono"
            )
            frame.sample_rate = SAMPLE_RATE_HZ
            frame.pts = start
            for packet in aus.encode(frame):
                container.mux(packet)
        for packet in aus.encode():
            container.mux(packet)


def _to_yuv420p(video: np.ndarray) -> np.ndarray:
    """RGB [T, H, W, 3] uint8 -> planar YUV 4:2:0 [T, 3H/2, W] uint8 (BT.601 limited range).

    Integer arithmetic here instead of swscale keeps the encoder input bit-exact between
    runs (swscale's conversion gave occasional run-to-run differences under load).
    """
    t, h, w, _ = video.shape
    out = np.empty((t, h * 3 // 2, w), np.uint8)  # [T, 3H/2, W]
    for i, img in enumerate(video):  # one frame at a time stays in cache
        r, g, b = (img[..., c].astype(np.int32) for c in range(3))  # [H, W]
        out[i, :h] = ((66 * r + 129 * g + 25 * b + 128) >> 8) + 16
        r4, g4, b4 = (
            c[0::2, 0::2] + c[1::2, 0::2] + c[0::2, 1::2] + c[1::2, 1::2] for c in (r, g, b)
        )
        u = ((-38 * r4 - 74 * g4 + 112 * b4 + 512) >> 10) + 128  # [H/2, W/2], in 16..240
        v = ((112 * r4 - 94 * g4 - 18 * b4 + 512) >> 10) + 128
        out[i, h : h + h // 4] = u.reshape(h // 4, w)
        out[i, h + h // 4 :] = v.reshape(h // 4, w)
    return out


# ---------------------------------------------------------------- building blocks


def talking_clip(
    *, seed: int, duration_s: float, size: int = 224, speaker_seed: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """One real talking-face clip: frames ``[T, size, size, 3]`` uint8 and audio ``[640 T]``.

    The same ``speaker_seed`` (default ``seed``) gives the same face and voice, so longer
    videos can be assembled from several utterances of one speaker (the in-the-wild tests).
    ``duration_s`` is rounded to a multiple of 0.32 s (8 frames).
    """
    if size < 64 or size % 2:
        raise SampleError(f"frame size must be even and at least 64 pixels, got {size}")
    if not 1.0 <= duration_s <= 60.0:
        raise SampleError(f"duration must be within 1-60 s, got {duration_s}")
    spk = _make_speaker(0, np.random.default_rng(seed if speaker_seed is None else speaker_seed))
    layers = _build_layers(spk.look, size=size)
    clip = _make_utterance(
        np.random.default_rng(seed), spk, layers, lo_s=duration_s, hi_s=duration_s, fake_type=None
    )[0]
    return clip.video, clip.audio


def write_clip(path: str | Path, video: np.ndarray, audio: np.ndarray | None) -> None:
    """Encode frames ``[T, H, W, 3]`` (25 fps) and mono 16 kHz audio (None: no audio stream)."""
    import av

    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    if audio is not None:
        _write_mp4(Path(path), video, audio, video_codec=codec, audio_codec="aac")
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="mp4") as container:
        vs = container.add_stream(codec, rate=FRAME_HZ)
        vs.width, vs.height = video.shape[2], video.shape[1]
        vs.pix_fmt = "yuv420p"
        for img in _to_yuv420p(video):
            for packet in vs.encode(av.VideoFrame.from_ndarray(img, format="yuv420p")):
                container.mux(packet)
        for packet in vs.encode():
            container.mux(packet)
