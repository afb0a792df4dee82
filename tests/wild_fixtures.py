"""Long synthetic in-the-wild videos assembled from the sample generator (made at test time).

``wild.mp4`` (224x224, 25 fps, 24 s), shot by shot:

=========  ==========================================  ===============================
seconds    picture                                     sound
=========  ==========================================  ===============================
0 - 6      speaker A (face ~125 px)                    A speaking
6 - 9      speaker A still in view                     silence
9 - 11     a faceless cut-away (moving texture)        speaker C speaking (voice-over)
11 - 16    speaker B (face ~125 px)                    B speaking
16 - 20    speaker D's face, lips moving               speaker E (voice-over)
20 - 24    speaker F, small (face ~90 px)              F speaking
=========  ==========================================  ===============================

``silent.mp4``: 4 s of speaker A without an audio stream. ``SPEAKING`` lists the spans
where a visible face speaks its own audio, measured from the audio itself (first and last
40 ms frame within 30 dB of the clip's loudest), for comparison with the segments found.

``two-speakers.mp4`` (:func:`make_two_speaker_video`, 224x224, 13 s): speaker A speaking
(0-6 s), a faceless cut-away under a voice-over (6-8 s), speaker B speaking (8-13 s): an
upload to score in segments.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from featstore.sample import talking_clip, write_clip

FPS, SPF = 25, 640
SIZE = 224


@dataclass(frozen=True)
class WildVideo:
    path: Path
    silent_path: Path
    speaking: list[tuple[float, float]]  # [start_s, end_s] of speech by a large visible face
    spans: dict[str, tuple[float, float]]  # what each part of the video is


def _voiced_span(audio: np.ndarray) -> tuple[float, float]:
    frames = audio[: len(audio) // SPF * SPF].reshape(-1, SPF)
    db = 20 * np.log10(np.sqrt((frames**2).mean(1)) + 1e-9)
    loud = np.flatnonzero(db > db.max() - 30)
    return loud[0] / FPS, (loud[-1] + 1) / FPS


def _small(video: np.ndarray) -> np.ndarray:
    """A 160 px clip centred on a 224 canvas filled with its own border colour."""
    t, h, w, _ = video.shape
    out = np.empty((t, SIZE, SIZE, 3), np.uint8)
    border = video[:, :4].reshape(t, -1, 3).mean(1).astype(np.uint8)  # [T, 3]
    out[:] = border[:, None, None, :]
    o = (SIZE - h) // 2
    out[:, o : o + h, o : o + w] = video
    return out


def _cutaway(n: int) -> np.ndarray:
    y, x = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    frames = []
    for i in range(n):
        r = 128 + 100 * np.sin(6 * x + 0.1 * i)
        g = 128 + 100 * np.sin(5 * y - 0.07 * i)
        b = 128 + 80 * np.cos(4 * (x + y) + 0.05 * i)
        frames.append(np.stack([r, g, b], -1))
    return np.clip(np.stack(frames), 0, 255).astype(np.uint8)


def make_wild_video(root: Path) -> WildVideo:
    a_video, a_audio = talking_clip(seed=11, duration_s=6.0, speaker_seed=101)
    a2_video, _ = talking_clip(seed=12, duration_s=3.0, speaker_seed=101)
    _, c_audio = talking_clip(seed=13, duration_s=2.0, speaker_seed=103)
    b_video, b_audio = talking_clip(seed=14, duration_s=5.0, speaker_seed=102)
    d_video, _ = talking_clip(seed=15, duration_s=4.0, speaker_seed=107)
    _, e_audio = talking_clip(seed=16, duration_s=4.0, speaker_seed=105)
    f_video, f_audio = talking_clip(seed=17, duration_s=4.0, size=160, speaker_seed=106)
    parts = [
        ("a", a_video, a_audio),
        ("silence", a2_video[: 3 * FPS], np.zeros(3 * FPS * SPF, np.float32)),
        ("cutaway", _cutaway(2 * FPS), c_audio[: 2 * FPS * SPF]),
        ("b", b_video, b_audio),
        ("voiceover", d_video, e_audio),
        ("small", _small(f_video), f_audio),
    ]
    path = root / "wild" / "wild.mp4"
    speaking, spans = _assemble(path, parts)
    silent = root / "wild" / "silent.mp4"
    write_clip(silent, a_video[: 4 * FPS], None)
    return WildVideo(path=path, silent_path=silent, speaking=speaking, spans=spans)


def make_two_speaker_video(root: Path) -> WildVideo:
    """Speaker A, a cut-away under a voice-over, speaker B (see the module docs)."""
    a_video, a_audio = talking_clip(seed=21, duration_s=6.0, speaker_seed=201)
    _, c_audio = talking_clip(seed=22, duration_s=2.0, speaker_seed=203)
    b_video, b_audio = talking_clip(seed=23, duration_s=5.0, speaker_seed=202)
    parts = [
        ("a", a_video, a_audio),
        ("cutaway", _cutaway(2 * FPS), c_audio),
        ("b", b_video, b_audio),
    ]
    path = root / "two" / "two-speakers.mp4"
    speaking, spans = _assemble(path, parts)
    silent = root / "two" / "silent.mp4"
    write_clip(silent, a_video[: 2 * FPS], None)
    return WildVideo(path=path, silent_path=silent, speaking=speaking, spans=spans)


def _assemble(
    path: Path, parts: list[tuple[str, np.ndarray, np.ndarray]]
) -> tuple[list[tuple[float, float]], dict[str, tuple[float, float]]]:
    """Write the parts one after the other; the speaking spans of ``a`` and ``b``, and each
    part's span."""
    spans, speaking, t = {}, [], 0.0
    videos, audios = [], []
    for name, v, a in parts:
        n = len(v)
        a = np.pad(a[: n * SPF], (0, max(0, n * SPF - len(a))))
        spans[name] = (t, t + n / FPS)
        if name in ("a", "b"):
            s, e = _voiced_span(a)
            speaking.append((t + s, t + e))
        videos.append(v)
        audios.append(a)
        t += n / FPS
    write_clip(path, np.concatenate(videos), np.concatenate(audios).astype(np.float32))
    return speaking, spans
