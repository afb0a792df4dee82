"""TalkNet's inputs as its demo pipeline (``demoTalkNet.py``) makes them (PEERS.md).

- Audio: the track's span of the 16 kHz mono audio as int16 values (what the demo's
  ``ffmpeg -acodec pcm_s16le`` + ``wavfile.read`` give), MFCC with 13 coefficients, 25 ms
  windows every 10 ms (100 Hz): 4 rows per 25 fps frame.
- Video: per frame, the track's box as centre ``(x, y)`` and half-size ``s = max(w, h) / 2``,
  each median-filtered over 13 frames (``scipy.signal.medfilt``: zero-padded at the
  ends, as in the demo); the frame padded by ``int(s * (1 + 2 * 0.4))`` pixels of value
  110, the region ``[y - s, y + s (1 + 2 * 0.4))`` x ``[x - s (1 + 0.4), x + s (1 + 0.4))``
  (a square whose centre lies ``0.4 s`` below the face's: it keeps the chin and mouth),
  resized to 224x224, made grey, and its centre 112x112 kept.
- Lengths: ``n = min(MFCC rows // 4, frames)`` frames and ``4 n`` MFCC rows. For a track
  of ``T`` frames the audio gives ``4 T - 1`` rows, so the demo scores ``T - 1`` frames;
  :func:`track_inputs` keeps that rule and the caller gives the last frame the score of
  the one before.

The demo writes the crops to an XVID video and reads them back; that lossy round trip is
left out (it is an artefact of its file-based pipeline, not part of the model's input).
"""

from __future__ import annotations

import numpy as np

from featstore import timebase
from featstore.encoders.fbank import mfcc

__all__ = [
    "CROP_PAD_VALUE",
    "CROP_SCALE",
    "FACE_SIZE",
    "MEDIAN_KERNEL",
    "audio_int16",
    "crop_faces",
    "smooth_boxes",
    "track_inputs",
]

CROP_SCALE = 0.40
CROP_PAD_VALUE = 110
MEDIAN_KERNEL = 13
FACE_SIZE = 112
_RESIZED = 224
ROWS_PER_FRAME = 4


def audio_int16(audio: np.ndarray) -> np.ndarray:
    """Float audio in [-1, 1] -> int16 values as FFmpeg's s16 conversion rounds them."""
    x = np.asarray(audio, dtype=np.float32)
    return np.clip(np.rint(x * 32768.0), -32768, 32767).astype(np.int16)


def smooth_boxes(boxes: np.ndarray) -> np.ndarray:
    """Boxes ``[T, 4]`` (x0, y0, x1, y1) -> median-filtered ``[T, 3]`` (x, y, s)."""
    from scipy.signal import medfilt

    b = np.asarray(boxes, dtype=np.float64)
    s = np.maximum(b[:, 3] - b[:, 1], b[:, 2] - b[:, 0]) / 2
    y = (b[:, 1] + b[:, 3]) / 2
    x = (b[:, 0] + b[:, 2]) / 2
    return np.stack([medfilt(v, kernel_size=MEDIAN_KERNEL) for v in (x, y, s)], axis=1)


def crop_faces(
    frames: np.ndarray, xys: np.ndarray, *, crop_scale: float = CROP_SCALE
) -> np.ndarray:
    """Grey 112x112 face crops ``uint8 [T, 112, 112]`` from RGB frames ``[T, H, W, 3]``.

    ``xys`` are the smoothed ``(x, y, s)`` of :func:`smooth_boxes`. The padded frame is
    never built: the region is cut from a virtual one (pixels outside the image are 110).
    """
    from featstore.landmarks import load_cv2

    cv2 = load_cv2()
    if len(frames) != len(xys):
        raise ValueError(f"{len(xys)} boxes for {len(frames)} frames")
    out = np.empty((len(frames), FACE_SIZE, FACE_SIZE), dtype=np.uint8)
    lo = (_RESIZED - FACE_SIZE) // 2
    for t, (frame, (x, y, s)) in enumerate(zip(frames, xys, strict=True)):
        region = _padded_region(frame, x, y, s, crop_scale)
        face = cv2.resize(region, (_RESIZED, _RESIZED))
        grey = cv2.cvtColor(face, cv2.COLOR_RGB2GRAY)
        out[t] = grey[lo : lo + FACE_SIZE, lo : lo + FACE_SIZE]
    return out


def _padded_region(frame: np.ndarray, x: float, y: float, s: float, cs: float) -> np.ndarray:
    """``numpy.pad(frame, bsi, constant 110)[y0:y1, x0:x1]`` without padding the frame."""
    h, w = frame.shape[:2]
    bsi = int(s * (1 + 2 * cs))
    my, mx = y + bsi, x + bsi
    ph, pw = h + 2 * bsi, w + 2 * bsi
    # int() truncates as the demo's slice bounds do; numpy clips bounds past the end
    y0, y1 = int(my - s), int(my + s * (1 + 2 * cs))
    x0, x1 = int(mx - s * (1 + cs)), int(mx + s * (1 + cs))
    y0, y1, x0, x1 = (min(max(v, 0), lim) for v, lim in ((y0, ph), (y1, ph), (x0, pw), (x1, pw)))
    if y1 <= y0 or x1 <= x0:
        raise ValueError(f"empty face region for box centre ({x:.1f}, {y:.1f}) size {s:.1f}")
    out = np.full((y1 - y0, x1 - x0, frame.shape[2]), CROP_PAD_VALUE, dtype=frame.dtype)
    sy0, sy1 = max(y0 - bsi, 0), min(y1 - bsi, h)  # the part inside the image
    sx0, sx1 = max(x0 - bsi, 0), min(x1 - bsi, w)
    if sy1 > sy0 and sx1 > sx0:
        out[sy0 + bsi - y0 : sy1 + bsi - y0, sx0 + bsi - x0 : sx1 + bsi - x0] = frame[
            sy0:sy1, sx0:sx1
        ]
    return out


def track_inputs(
    audio: np.ndarray, crops: np.ndarray, *, sample_rate_hz: int = timebase.SAMPLE_RATE_HZ
) -> tuple[np.ndarray, np.ndarray]:
    """MFCC ``[4 n, 13]`` float32 and crops ``[n, 112, 112]`` of a track, lengths reconciled.

    ``audio`` is the float audio of the track's frames (``640 T`` samples at 16 kHz).
    """
    feats = mfcc(audio_int16(audio).astype(np.float64), sample_rate_hz)  # [F, 13]
    n = min(feats.shape[0] // ROWS_PER_FRAME, len(crops))
    return feats[: ROWS_PER_FRAME * n].astype(np.float32), crops[:n]
