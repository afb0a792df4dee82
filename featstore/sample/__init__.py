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
from featstore.sample import face, voice

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
    voice: voice.Voice
    look: face.Look


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
    layers_cache: dict[int, face.FaceLayers] = {}
    for utt in range(n_real):
        rng = np.random.default_rng(seeds[n_speakers + utt])
        spk = speakers[utt % n_speakers]
        split = "val" if spk.index in val_speakers else "train"
        if spk.index not in layers_cache:
            layers_cache[spk.index] = face.build_layers(spk.look, size=size)
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
            face.write_mp4(
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
    return _Speaker(index=index, voice=voice.random_voice(rng), look=face.random_look(rng))


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
    layers: face.FaceLayers,
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
    audio = voice.synthesize(rng, spk.voice, n_samples, lead_s=lead_s)  # [N]
    ref_db = float(np.percentile(_frame_db(audio), 95))
    opening = _mouth_opening(audio, ref_db=ref_db)  # [T]
    motion = face.random_motion(rng, n_frames, size=layers.size, margin=layers.margin)  # [T, 3]
    video = face.render(layers, opening, motion)  # [T, H, W, 3]
    clips = [_Clip("real", video, audio, [], [])]
    if fake_type is None:
        return clips

    segments = _pick_segments(rng, n_frames, lead_s=lead_s)
    fake_audio, fake_video = audio, video
    if fake_type in ("audio_modified", "both_modified"):
        other = voice.synthesize(rng, voice.other_voice(rng, spk.voice), n_samples, lead_s=0.0)
        fake_audio = _splice(audio, other, segments)
    if fake_type in ("visual_modified", "both_modified"):
        # visual_modified: lips driven by other speech of the same speaker (out of sync);
        # both_modified: lips re-driven by the new audio (in sync) but drawn blurred.
        if fake_type == "visual_modified":
            driver = voice.synthesize(rng, spk.voice, n_samples, lead_s=0.0)
        else:
            driver = fake_audio
        driven = _mouth_opening(driver, ref_db=ref_db)  # [T]
        fake_video = video.copy()
        for a, b in segments:
            fake_video[a:b] = face.render(
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
    layers = face.build_layers(spk.look, size=size)
    clip = _make_utterance(
        np.random.default_rng(seed), spk, layers, lo_s=duration_s, hi_s=duration_s, fake_type=None
    )[0]
    return clip.video, clip.audio


def write_clip(path: str | Path, video: np.ndarray, audio: np.ndarray | None) -> None:
    """Encode frames ``[T, H, W, 3]`` (25 fps) and mono 16 kHz audio (None: no audio stream)."""
    import av

    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    if audio is not None:
        face.write_mp4(Path(path), video, audio, video_codec=codec, audio_codec="aac")
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="mp4") as container:
        vs = container.add_stream(codec, rate=FRAME_HZ)
        vs.width, vs.height = video.shape[2], video.shape[1]
        vs.pix_fmt = "yuv420p"
        for img in face.to_yuv420p(video):
            for packet in vs.encode(av.VideoFrame.from_ndarray(img, format="yuv420p")):
                container.mux(packet)
        for packet in vs.encode():
            container.mux(packet)
