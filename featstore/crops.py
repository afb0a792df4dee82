"""Mouth and face crops for the visual encoders, and their per-video landmark cache.

- Mouth ROI (AV-HuBERT, Auto-AVSR; PEERS.md "Mouth ROI"): landmarks smoothed over 12
  frames, similarity-aligned to :data:`~featstore.landmarks.MEAN_FACE_68` on the nose tip
  and eye corners, 96x96 grey crop centred on the mouth -> ``uint8 [T, 96, 96]``.
- Face crop (FSFM): the detector-like box enlarged x1.3, square, smoothed over time, padded
  with black outside the image, resized bicubic to 224x224 -> ``uint8 [T, 224, 224, 3]``.

Landmarks are cached in the store as the pseudo-encoder ``tracks-dlib68`` so that every
mouth-crop encoder reuses one tracking pass (:func:`save_tracks`, :func:`load_tracks`).

>>> crops = crop_video(frames, mouth=True, face=True)  # doctest: +SKIP
>>> crops.mouth.shape, crops.face.shape  # doctest: +SKIP
((250, 96, 96), (250, 224, 224, 3))
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from featstore import timebase
from featstore.landmarks import (
    MEAN_FACE_68,
    MOUTH_POINTS,
    STABLE_POINTS,
    FaceTracks,
    TrackerConfig,
    apply_transform,
    load_cv2,
    moving_average,
    similarity_transform,
    track_faces,
)

if TYPE_CHECKING:
    from featstore.store import EncoderInfo, FeatureStore

log = logging.getLogger(__name__)

MOUTH_SIZE = 96
MOUTH_SMOOTH_WINDOW = 12
MOUTH_INPUT_SIZE = 88
MOUTH_MEAN, MOUTH_STD = 0.421, 0.165
FACE_SIZE = 224
FACE_ENLARGE = 1.3
FACE_SMOOTH_WINDOW = 5

TRACKS_ENCODER = "tracks-dlib68"
_STABLE = list(STABLE_POINTS)
_MOUTH = list(MOUTH_POINTS)


@dataclass(frozen=True, eq=False)
class VideoCrops:
    """The tracks of one video and the crops made from them (None when not asked for)."""

    tracks: FaceTracks
    mouth: np.ndarray | None = None  # [T, 96, 96] uint8 grey
    face: np.ndarray | None = None  # [T, 224, 224, 3] uint8 RGB


def crop_video(
    frames: np.ndarray,
    *,
    mouth: bool = True,
    face: bool = False,
    tracks: FaceTracks | None = None,
    config: TrackerConfig | None = None,
) -> VideoCrops:
    """Track the face (unless ``tracks`` are given, e.g. from the cache) and crop.

    ``frames`` is uint8 RGB ``[T, H, W, 3]`` at 25 fps. Raises ``NoFaceError`` when the
    video has no usable face; there is no whole-frame fallback.
    """
    if tracks is None:
        tracks = track_faces(frames, config=config)
    elif tracks.n_frames != len(frames):
        raise ValueError(f"tracks cover {tracks.n_frames} frames, the video has {len(frames)}")
    return VideoCrops(
        tracks=tracks,
        mouth=crop_mouth(frames, tracks) if mouth else None,
        face=crop_face(frames, tracks) if face else None,
    )


def mouth_transforms(
    landmarks: np.ndarray, *, size: int = MOUTH_SIZE, smooth_window: int = MOUTH_SMOOTH_WINDOW
) -> np.ndarray:
    """Per-frame 2x3 matrices from frame pixels to mouth-crop pixels ``[T, 2, 3]``.

    As AV-HuBERT's ``crop_patch``: the similarity transform is fitted on landmarks averaged
    over ``smooth_window`` frames (centred here; AV-HuBERT's queue averages the window
    starting at the frame), and the crop is centred on the frame's own mouth points mapped by
    it, so the crop is ``[c - size/2, c + size/2)`` of the mean-face frame.
    """
    landmarks = np.asarray(landmarks, dtype=np.float64)  # [T, 68, 2]
    smoothed = moving_average(landmarks, smooth_window)
    ref = MEAN_FACE_68[_STABLE]  # [5, 2]
    out = np.empty((len(landmarks), 2, 3))
    for t in range(len(landmarks)):
        m = similarity_transform(smoothed[t, _STABLE], ref)
        centre = apply_transform(m, landmarks[t, _MOUTH]).mean(0)
        m[:, 2] += size / 2 - centre
        out[t] = m
    return out


def crop_mouth(
    frames: np.ndarray | Sequence[np.ndarray],
    tracks: FaceTracks,
    *,
    size: int = MOUTH_SIZE,
    smooth_window: int = MOUTH_SMOOTH_WINDOW,
    indices: Sequence[int] | None = None,
) -> np.ndarray:
    """Grey mouth ROIs ``uint8 [T, size, size]`` (bilinear; black outside the image).

    ``indices``: ``frames`` are only the video's frames at these indices (the tracks
    still cover the whole video, whose smoothing they need).
    """
    cv2 = load_cv2()
    mats = mouth_transforms(tracks.landmarks, size=size, smooth_window=smooth_window)
    if indices is not None:
        mats = mats[np.asarray(indices, dtype=np.int64)]
    if len(frames) != len(mats):
        raise ValueError(f"tracks cover {len(mats)} frames, got {len(frames)} frames")
    out = np.empty((len(mats), size, size), dtype=np.uint8)
    for t, (frame, m) in enumerate(zip(frames, mats, strict=True)):
        # warp RGB then convert: the same as converting first up to rounding, and at 720p
        # much cheaper than converting the whole frame
        rgb = cv2.warpAffine(
            frame, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT
        )
        out[t] = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    return out


def mouth_model_input(mouth: np.ndarray, *, size: int = MOUTH_INPUT_SIZE) -> np.ndarray:
    """The encoders' input from mouth crops: centre ``size`` crop, /255, (x - 0.421) / 0.165.

    ``uint8 [T, 96, 96]`` -> ``float32 [T, 88, 88]``.
    """
    mouth = np.asarray(mouth)
    h, w = mouth.shape[-2:]
    if h < size or w < size:
        raise ValueError(f"mouth crops of {h}x{w} are smaller than the {size}x{size} input")
    y0, x0 = (h - size) // 2, (w - size) // 2
    x = mouth[..., y0 : y0 + size, x0 : x0 + size].astype(np.float32) / 255.0
    return (x - MOUTH_MEAN) / MOUTH_STD


def face_boxes(
    tracks: FaceTracks, *, enlarge: float = FACE_ENLARGE, smooth_window: int = FACE_SMOOTH_WINDOW
) -> np.ndarray:
    """Square crop boxes ``[T, 4]`` (x0, y0, x1, y1 edges, pixel-centre coordinates).

    The tracks' detector-like boxes, smoothed over ``smooth_window`` frames, made square on
    their longer side and enlarged ``enlarge`` times about their centre. They may reach past
    the image; :func:`crop_face` pads there.
    """
    boxes = moving_average(tracks.boxes.astype(np.float64), smooth_window)  # [T, 4]
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    side = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) * enlarge
    return np.concatenate([centre - side[:, None] / 2, centre + side[:, None] / 2], axis=1)


def crop_face(
    frames: np.ndarray | Sequence[np.ndarray],
    tracks: FaceTracks,
    *,
    size: int = FACE_SIZE,
    enlarge: float = FACE_ENLARGE,
    smooth_window: int = FACE_SMOOTH_WINDOW,
    indices: Sequence[int] | None = None,
) -> np.ndarray:
    """RGB face crops ``uint8 [T, size, size, 3]`` for FSFM.

    Bicubic, with the same pixel-centre convention as ``cv2.resize``; parts of the square box
    outside the image are black (the face stays centred and undistorted). Faces over twice
    the output size are first shrunk by an integer factor with area averaging, so large
    faces do not alias. ``indices``: ``frames`` are only the video's frames at these
    indices (the tracks cover the whole video).
    """
    cv2 = load_cv2()
    boxes = face_boxes(tracks, enlarge=enlarge, smooth_window=smooth_window)
    if indices is not None:
        boxes = boxes[np.asarray(indices, dtype=np.int64)]
    if len(frames) != len(boxes):
        raise ValueError(f"tracks cover {len(boxes)} frames, got {len(frames)} frames")
    out = np.empty((len(boxes), size, size, 3), dtype=np.uint8)
    for t, (frame, box) in enumerate(zip(frames, boxes, strict=True)):
        out[t] = _crop_square(cv2, frame, box, size)
    return out


def _crop_square(cv2: Any, frame: np.ndarray, box: np.ndarray, size: int) -> np.ndarray:
    x0, y0, x1, _ = box  # edges: pixel i spans [i - 0.5, i + 0.5]
    step = (x1 - x0) / size  # source pixels per output pixel
    shrink = int(step)
    if shrink >= 2:
        h, w = frame.shape[:2]
        # integer region around the box, clipped, area-shrunk; coordinates follow
        ix0, iy0 = max(0, int(np.floor(x0)) - shrink), max(0, int(np.floor(y0)) - shrink)
        ix1, iy1 = min(w, int(np.ceil(x1)) + shrink + 1), min(h, int(np.ceil(box[3])) + shrink + 1)
        ix1 = ix0 + (ix1 - ix0) // shrink * shrink
        iy1 = iy0 + (iy1 - iy0) // shrink * shrink
        if ix1 > ix0 and iy1 > iy0:
            region = frame[iy0:iy1, ix0:ix1]
            frame = cv2.resize(
                region, ((ix1 - ix0) // shrink, (iy1 - iy0) // shrink), interpolation=cv2.INTER_AREA
            )
            # edge e in the frame -> (e - origin_edge) / shrink in the shrunk region
            x0, y0 = (x0 - (ix0 - 0.5)) / shrink - 0.5, (y0 - (iy0 - 0.5)) / shrink - 0.5
            step /= shrink
    # output pixel j centre -> source x0 + (j + 0.5) * step (pixel-centre coordinates)
    m = np.array([[step, 0.0, x0 + step / 2], [0.0, step, y0 + step / 2]])
    return cv2.warpAffine(
        frame,
        m,
        (size, size),
        flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(0, 0, 0),
    )


# ------------------------------------------------------------------ the cache


def tracks_encoder_info() -> EncoderInfo:
    """The store's pseudo-encoder for landmark tracks (``boxes`` column 5 = detected flag)."""
    from featstore.store import EncoderInfo

    return EncoderInfo(
        name=TRACKS_ENCODER,
        frame_hz=timebase.FRAME_HZ,
        layer_dims={"landmarks": 136, "boxes": 5},
        dtype="float32",
        preprocessing_version="1",
        extra={
            "landmarks": "dlib 68-point (iBUG 300-W), x, y pixels",
            "boxes": "x0, y0, x1, y1, detected",
        },
    )


def tracks_to_layers(tracks: FaceTracks) -> dict[str, np.ndarray]:
    """``{"landmarks": [T, 136], "boxes": [T, 5]}`` float32 rows for the store."""
    n = tracks.n_frames
    boxes = np.concatenate([tracks.boxes, tracks.detected[:, None]], axis=1)
    return {
        "landmarks": tracks.landmarks.reshape(n, 136).astype(np.float32),
        "boxes": boxes.astype(np.float32),
    }


def tracks_from_layers(landmarks: np.ndarray, boxes: np.ndarray) -> FaceTracks:
    """Inverse of :func:`tracks_to_layers`."""
    return FaceTracks(
        landmarks=np.asarray(landmarks, dtype=np.float32).reshape(-1, 68, 2),
        boxes=np.asarray(boxes[:, :4], dtype=np.float32),
        detected=np.asarray(boxes[:, 4]) > 0.5,
    )


def save_tracks_many(
    store: FeatureStore, dataset: str, items: Iterable[tuple[str, FaceTracks | BaseException]]
) -> int:
    """Cache many videos' tracks in one writer (few parts, one commit each).

    An exception in place of tracks (e.g. ``NoFaceError``) is recorded as that video's
    failure. Returns the number of videos written.
    """
    n = 0
    with store.writer(dataset, tracks_encoder_info()) as writer:
        for video_id, tracks in items:
            if isinstance(tracks, BaseException):
                writer.fail(video_id, tracks)
            else:
                writer.add(video_id, tracks_to_layers(tracks))
                n += 1
    return n


def save_tracks(store: FeatureStore, dataset: str, video_id: str, tracks: FaceTracks) -> None:
    """Cache one video's tracks (prefer :func:`save_tracks_many` for many videos)."""
    save_tracks_many(store, dataset, [(video_id, tracks)])


def load_tracks(store: FeatureStore, dataset: str, video_id: str) -> FaceTracks | None:
    """A video's cached tracks, or None when they are not in the store."""
    if not store.has(dataset, TRACKS_ENCODER, video_id, layers=["landmarks", "boxes"]):
        return None
    return tracks_from_layers(
        store.video(dataset, TRACKS_ENCODER, video_id, "landmarks"),
        store.video(dataset, TRACKS_ENCODER, video_id, "boxes"),
    )
