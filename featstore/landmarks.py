"""68-point facial landmark tracking: detect on a subset of frames, track in between.

dlib's HOG face detector runs every ``detect_every``-th frame (on a downscaled grey
frame) and whenever the track is lost; on the frames in between the 68-point shape
predictor runs inside the box derived from the previous frame's landmarks, which costs
about a sixth of a detection. Frames without a usable face are filled by linear
interpolation; a video with no usable face raises :class:`NoFaceError`.

dlib and OpenCV come from the optional ``faces`` extra and are imported on first use.

>>> tracks = track_faces(frames)  # doctest: +SKIP
>>> tracks.landmarks.shape, tracks.detected.mean()  # doctest: +SKIP
((250, 68, 2), 1.0)
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from featstore.errors import FeatstoreError

log = logging.getLogger(__name__)

FACES_INSTALL_HINT = (
    "pip install 'featstore[faces]'  (dlib-bin, face-recognition-models, opencv-python-headless)"
)


class FacesUnavailableError(FeatstoreError, ImportError):
    """The optional ``faces`` extra (dlib, its landmark model, OpenCV) is not installed."""


class NoFaceError(FeatstoreError):
    """A video has no usable face: none found, or too many frames without one."""

    def __init__(self, reason: str, *, n_frames: int = 0, n_found: int = 0) -> None:
        super().__init__(f"no usable face: {reason}")
        self.reason = reason
        self.n_frames = n_frames
        self.n_found = n_found


# dlib's 68-point mean shape (iBUG 300-W markup, 0-based: jaw 0-16, brows 17-26, nose 27-35,
# eyes 36-47, mouth 48-67), in the coordinates of the detector box: (0, 0) is its top-left
# corner and (1, 1) its bottom-right. The numbers are the ``initial_shape`` that dlib's shape
# predictor starts its cascade from, i.e. the mean of its 300-W training shapes normalised to
# the HOG detector's boxes; they were read once from the serialised
# ``shape_predictor_68_face_landmarks.dat`` shipped in face_recognition_models 0.3.0 and are
# rounded to 1e-5. Being expressed in detector-box units, they also turn landmarks back into
# the detector-like box the predictor expects (``box_from_landmarks``).
# fmt: off
DLIB_MEAN_SHAPE_68 = np.array(
    [
        (0.02945, 0.32195), (0.03263, 0.44643), (0.04594, 0.57043), (0.07179, 0.69202),
        (0.12027, 0.80495), (0.19473, 0.90289), (0.28582, 0.98460), (0.38631, 1.05021),
        (0.50000, 1.06971), (0.61370, 1.05021), (0.71419, 0.98460), (0.80528, 0.90289),
        (0.87974, 0.80495), (0.92823, 0.69202), (0.95408, 0.57043), (0.96740, 0.44643),
        (0.97058, 0.32195), (0.11918, 0.23091), (0.17751, 0.17839), (0.25983, 0.16274),
        (0.34509, 0.17488), (0.42490, 0.20806), (0.57514, 0.20806), (0.65496, 0.17488),
        (0.74021, 0.16273), (0.82254, 0.17838), (0.88087, 0.23091), (0.50002, 0.30555),
        (0.50002, 0.38574), (0.50002, 0.46522), (0.50001, 0.54703), (0.40451, 0.60234),
        (0.45037, 0.61923), (0.50001, 0.63366), (0.54965, 0.61924), (0.59553, 0.60235),
        (0.21387, 0.31557), (0.26475, 0.28632), (0.32586, 0.28718), (0.37938, 0.32756),
        (0.32208, 0.33778), (0.26125, 0.33697), (0.62067, 0.32756), (0.67418, 0.28717),
        (0.73529, 0.28631), (0.78617, 0.31557), (0.73879, 0.33697), (0.67796, 0.33778),
        (0.31711, 0.75112), (0.38443, 0.72420), (0.45255, 0.71026), (0.50001, 0.72200),
        (0.54748, 0.71026), (0.61560, 0.72421), (0.68292, 0.75112), (0.61777, 0.81689),
        (0.55159, 0.84600), (0.50001, 0.85150), (0.44844, 0.84600), (0.38226, 0.81689),
        (0.34519, 0.75467), (0.45194, 0.74994), (0.50001, 0.75504), (0.54809, 0.74994),
        (0.65484, 0.75467), (0.54902, 0.78569), (0.50002, 0.79160), (0.45101, 0.78568),
    ],
    dtype=np.float64,
)  # [68, 2] (x, y)
# fmt: on

MEAN_FACE_SIZE = 256
"""Side of the reference frame of :data:`MEAN_FACE_68` (LRW's 256x256 frames, the frame
AV-HuBERT's own mean face lives in)."""

MEAN_FACE_SCALE = 140.0
"""Pixels per detector-box unit in :data:`MEAN_FACE_68`: outer eye corners 80 px apart,
mouth corners 51 px, mouth centre to chin 42 px, so a 96x96 crop around the mouth spans from
the nostrils to the chin with the mouth about half the crop wide, as in AV-HuBERT's ROIs."""

MEAN_FACE_68 = (
    DLIB_MEAN_SHAPE_68 * MEAN_FACE_SCALE
    + (MEAN_FACE_SIZE - MEAN_FACE_SCALE * (DLIB_MEAN_SHAPE_68.min(0) + DLIB_MEAN_SHAPE_68.max(0)))
    / 2
)  # [68, 2] the dlib mean shape centred in a 256x256 reference frame

STABLE_POINTS = (33, 36, 39, 42, 45)
"""Nose tip and eye corners: the points AV-HuBERT aligns to the mean face."""
MOUTH_POINTS = tuple(range(48, 68))


@dataclass(frozen=True)
class TrackerConfig:
    """How faces are detected and tracked.

    ``detect_every``: full detection every k-th frame (the track is re-anchored there);
    ``detect_height``: frames taller than this are downscaled to it for detection (HOG finds
    faces of about 80 px and up at ``upsample=0``); ``max_missing_fraction``: a video with more
    frames without a face fails; ``max_missed_detections``: periodic detections that may fail in
    a row while the tracked shape still looks right (HOG misses some turned faces).
    """

    detect_every: int = 10
    detect_height: int = 360
    upsample: int = 0
    detect_threshold: float = 0.0
    max_missing_fraction: float = 0.5
    max_missed_detections: int = 1
    min_face_px: float = 40.0
    max_scale_change: float = 1.25  # per frame, ratio of tracked box sides
    max_shift: float = 0.3  # per frame, box centre shift in box sides
    max_shape_residual: float = 0.12  # RMS distance to the mean shape, in box sides
    min_box_std: float = 6.0  # grey-level std inside the box; below it the "face" is blank
    min_similarity: float = 0.5  # correlation of the face patch with the previous frame's

    def __post_init__(self) -> None:
        if self.detect_every < 1:
            raise ValueError(f"detect_every must be >= 1, got {self.detect_every}")
        if not 0.0 <= self.max_missing_fraction <= 1.0:
            raise ValueError(
                f"max_missing_fraction must be in [0, 1], got {self.max_missing_fraction}"
            )


@dataclass(frozen=True, eq=False)
class FaceTracks:
    """Per-frame 68-point landmarks of one face, at the video's frame rate (25 Hz).

    ``boxes`` are detector-like boxes (x0, y0, x1, y1) fitted to the landmarks;
    ``detected`` is True where the landmarks were predicted on the frame (detected or
    tracked) and False where they were interpolated from neighbouring frames.
    """

    landmarks: np.ndarray  # [T, 68, 2] float32 (x, y) pixels
    boxes: np.ndarray  # [T, 4] float32 (x0, y0, x1, y1) pixels
    detected: np.ndarray  # [T] bool

    def __post_init__(self) -> None:
        n = len(self.detected)
        if self.landmarks.shape != (n, 68, 2) or self.boxes.shape != (n, 4):
            raise ValueError(
                f"inconsistent tracks: landmarks {self.landmarks.shape}, boxes {self.boxes.shape}, "
                f"detected {self.detected.shape}"
            )

    @property
    def n_frames(self) -> int:
        return len(self.detected)

    @property
    def detection_rate(self) -> float:
        """Fraction of frames with landmarks predicted on the frame itself."""
        return float(self.detected.mean()) if self.n_frames else 0.0

    @classmethod
    def from_landmarks(cls, landmarks: np.ndarray, detected: np.ndarray) -> FaceTracks:
        """Tracks from (already gap-free) landmarks; boxes are fitted to them."""
        landmarks = np.asarray(landmarks, dtype=np.float32)
        return cls(
            landmarks=landmarks,
            boxes=box_from_landmarks(landmarks).astype(np.float32),
            detected=np.asarray(detected, dtype=bool),
        )


@dataclass(frozen=True)
class _FaceModels:
    detector: Any
    predictor: Any
    cv2: Any


def load_cv2() -> Any:
    """OpenCV, or :class:`FacesUnavailableError` with an install hint."""
    try:
        import cv2
    except ImportError as exc:
        raise FacesUnavailableError(
            f"face cropping needs the faces extra ({exc}); {FACES_INSTALL_HINT}"
        ) from exc
    return cv2


_THREAD_MODELS = threading.local()


def load_face_models() -> _FaceModels:
    """dlib's HOG detector, the 68-point predictor and cv2, loaded once per thread.

    dlib's detector and predictor are not safe to call from two threads at once, and
    the extraction worker decodes and crops in a thread pool: each thread gets its own.
    """
    models = getattr(_THREAD_MODELS, "models", None)
    if models is None:
        models = _THREAD_MODELS.models = _load_face_models()
    return models


def reset_face_models() -> None:
    """Forget this thread's loaded models (the next call loads them again)."""
    _THREAD_MODELS.__dict__.pop("models", None)


def _load_face_models() -> _FaceModels:
    cv2 = load_cv2()
    try:
        import dlib
    except ImportError as exc:
        raise FacesUnavailableError(
            f"face cropping needs the faces extra ({exc}); {FACES_INSTALL_HINT}"
        ) from exc
    # face_recognition_models' own helper imports pkg_resources (gone from recent setuptools);
    # find its data directory without importing the package.
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FacesUnavailableError(
            f"face_recognition_models is not installed; {FACES_INSTALL_HINT}"
        )
    path = (
        Path(next(iter(spec.submodule_search_locations)))
        / "models"
        / "shape_predictor_68_face_landmarks.dat"
    )
    if not path.is_file():
        raise FacesUnavailableError(f"landmark model missing at {path}; {FACES_INSTALL_HINT}")
    return _FaceModels(dlib.get_frontal_face_detector(), dlib.shape_predictor(str(path)), cv2)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping src to dst.

    Umeyama (1991), "Least-squares estimation of transformation parameters between two
    point patterns": returns the 2x3 matrix ``M`` minimising ``sum |M @ [p, 1] - q|^2``.
    """
    src = np.asarray(src, dtype=np.float64)  # [N, 2]
    dst = np.asarray(dst, dtype=np.float64)  # [N, 2]
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s0, d0 = src - mu_s, dst - mu_d
    var_s = (s0**2).sum() / len(src)
    if var_s <= 1e-12:
        raise ValueError("similarity_transform: source points are all identical")
    cov = d0.T @ s0 / len(src)  # [2, 2]
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:  # a reflection: flip the weakest axis
        d[-1] = -1.0
    rot = u @ np.diag(d) @ vt
    scale = (sig * d).sum() / var_s
    m = np.empty((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - scale * rot @ mu_s
    return m


def apply_transform(m: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 2x3 affine matrix to points ``[..., 2]``."""
    return points @ m[:, :2].T + m[:, 2]


def box_from_landmarks(landmarks: np.ndarray) -> np.ndarray:
    """Detector-like square boxes (x0, y0, x1, y1) fitted to landmarks ``[..., 68, 2]``.

    The dlib mean shape lives in detector-box units, so the similarity fit of it to the
    landmarks maps the unit box onto the box the detector would have drawn; the box is kept
    axis-aligned (the fit's centre and scale), as the detector's are, also for tilted heads.
    """
    pts = np.asarray(landmarks, dtype=np.float64)
    flat = pts.reshape(-1, 68, 2)
    m0 = DLIB_MEAN_SHAPE_68 - DLIB_MEAN_SHAPE_68.mean(0)
    var_m = (m0**2).sum(-1).mean()
    mu = flat.mean(1)  # [N, 2]
    p0 = flat - mu[:, None]
    # closed-form 2-D Umeyama scale: |sum(p . m) + i sum(p x m)| / sum |m|^2
    a = (p0 * m0).sum((1, 2))
    b = (p0[..., 1] * m0[:, 0] - p0[..., 0] * m0[:, 1]).sum(1)
    norm = np.maximum(np.hypot(a, b), 1e-12)
    scale = norm / (68 * var_m)  # [N]
    cos, sin = a / norm, b / norm
    cx, cy = 0.5 - DLIB_MEAN_SHAPE_68.mean(0)  # unit-box centre relative to the shape's mean
    centre = mu + scale[:, None] * np.stack([cos * cx - sin * cy, sin * cx + cos * cy], axis=1)
    half = scale[:, None] / 2
    return np.concatenate([centre - half, centre + half], axis=1).reshape(*pts.shape[:-2], 4)


def shape_residual(landmarks: np.ndarray) -> float:
    """RMS distance between landmarks and the best-aligned mean shape, in box sides."""
    m = similarity_transform(DLIB_MEAN_SHAPE_68, landmarks)
    scale = float(np.sqrt(abs(np.linalg.det(m[:, :2]))))
    if scale <= 1e-6:
        return float("inf")
    err = apply_transform(m, DLIB_MEAN_SHAPE_68) - landmarks
    return float(np.sqrt((err**2).sum(1).mean())) / scale


def moving_average(x: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average over axis 0 (frames ``[t - w//2, t + (w-1)//2]``, edges shrink)."""
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    if window <= 1 or n == 0:
        return x.copy()
    cs = np.concatenate([np.zeros((1, *x.shape[1:])), np.cumsum(x, axis=0)])
    t = np.arange(n)
    lo = np.clip(t - window // 2, 0, n)
    hi = np.clip(t + (window - 1) // 2 + 1, 0, n)
    shape = (n,) + (1,) * (x.ndim - 1)
    return (cs[hi] - cs[lo]) / (hi - lo).reshape(shape)


def interpolate_missing(values: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Fill frames where ``present`` is False linearly from neighbours along axis 0.

    Leading and trailing gaps copy the nearest present frame. Needs at least one present frame.
    """
    values = np.asarray(values, dtype=np.float64)
    present = np.asarray(present, dtype=bool)
    if not present.any():
        raise ValueError("interpolate_missing: no present frame to interpolate from")
    if present.all():
        return values.copy()
    t = np.arange(len(values))
    flat = values.reshape(len(values), -1)
    out = np.empty_like(flat)
    for j in range(flat.shape[1]):
        out[:, j] = np.interp(t, t[present], flat[present, j])
    return out.reshape(values.shape)


def track_faces(
    frames: np.ndarray | Iterable[np.ndarray],
    *,
    config: TrackerConfig | None = None,
) -> FaceTracks:
    """Landmarks of the main face in every frame of a video (uint8 RGB ``[T, H, W, 3]``).

    Frames may also come one by one from a decoder (any iterable of ``[H, W, 3]``); with an
    array (or anything with ``len``) a hopeless video fails as soon as too many frames lack a
    face. Raises :class:`NoFaceError` when no face is found or too many frames lack one.
    """
    cfg = config or TrackerConfig()
    models = load_face_models()
    total = len(frames) if hasattr(frames, "__len__") else None  # type: ignore[arg-type]
    points: list[np.ndarray | None] = []
    box: np.ndarray | None = None  # the tracked face's box, dlib convention (l, t, r, b)
    patch: np.ndarray | None = None  # [24, 24] grey appearance of the box in the last frame
    last_detect = -cfg.detect_every
    misses = 0
    n_missing = 0
    n_runs = 0
    for t, frame in enumerate(frames):
        frame = _check_frame(frame, t)
        pts: np.ndarray | None = None
        new_patch: np.ndarray | None = None
        if box is None or t - last_detect >= cfg.detect_every:
            last_detect = t
            n_runs += 1
            chosen = _choose(_detect(models, frame, cfg), box)
            if chosen is not None:
                pts = _predict(models, frame, chosen)
                misses = 0
            elif box is not None and patch is not None and misses < cfg.max_missed_detections:
                misses += 1
                pts, new_patch = _track(models, frame, box, patch, cfg)
        else:
            assert patch is not None
            pts, new_patch = _track(models, frame, box, patch, cfg)
            if pts is None:  # lost between detections: re-detect on this frame
                last_detect = t
                n_runs += 1
                found_boxes = _detect(models, frame, cfg)
                chosen = _choose(found_boxes, box)
                if chosen is None:  # nothing where the face was: the largest face, if any
                    chosen = _choose(found_boxes, None)
                pts = _predict(models, frame, chosen) if chosen is not None else None
                misses = 0
        points.append(pts)
        if pts is None:
            box = None
            n_missing += 1
            if total and n_missing > cfg.max_missing_fraction * total:
                raise NoFaceError(
                    f"{n_missing} of {total} frames have no face already at frame {t} "
                    f"(at most {cfg.max_missing_fraction:.0%} may be missing)",
                    n_frames=total,
                    n_found=t + 1 - n_missing,
                )
        else:
            box = box_from_landmarks(pts)
            patch = new_patch if new_patch is not None else _patch(models.cv2, frame, box)
    n = len(points)
    found = np.array([p is not None for p in points], dtype=bool)  # [T]
    n_found = int(found.sum())
    if n == 0:
        raise NoFaceError("the video has no frames", n_frames=0)
    if n_found == 0:
        raise NoFaceError(f"no face detected in any of {n} frames", n_frames=n)
    if n - n_found > cfg.max_missing_fraction * n:
        raise NoFaceError(
            f"face found in only {n_found} of {n} frames "
            f"(at most {cfg.max_missing_fraction:.0%} may be missing)",
            n_frames=n,
            n_found=n_found,
        )
    stacked = np.zeros((n, 68, 2))
    stacked[found] = np.stack([p for p in points if p is not None])
    log.debug("tracked %d frames: %d with a face, %d detector runs", n, n_found, n_runs)
    return FaceTracks.from_landmarks(interpolate_missing(stacked, found), found)


def _check_frame(frame: np.ndarray, t: int) -> np.ndarray:
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(
            f"frame {t}: expected uint8 RGB [H, W, 3], got {frame.dtype} {frame.shape}"
        )
    return np.ascontiguousarray(frame)


def _detect(models: _FaceModels, frame: np.ndarray, cfg: TrackerConfig) -> list[np.ndarray]:
    """Face boxes (l, t, r, b) in full-resolution pixels, from a downscaled grey frame."""
    cv2 = models.cv2
    h, w = frame.shape[:2]
    scale = 1.0
    if h > cfg.detect_height:
        scale = cfg.detect_height / h
        frame = cv2.resize(
            frame, (max(1, round(w * scale)), cfg.detect_height), interpolation=cv2.INTER_AREA
        )
    grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
    rects, _scores, _ = models.detector.run(grey, cfg.upsample, cfg.detect_threshold)
    # pixel centres: x_full = (x_small + 0.5) / scale - 0.5
    return [
        (np.array([r.left(), r.top(), r.right(), r.bottom()], dtype=np.float64) + 0.5) / scale - 0.5
        for r in rects
    ]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _choose(boxes: list[np.ndarray], track: np.ndarray | None) -> np.ndarray | None:
    """The detection consistent with the track (IoU >= 0.3), else (no track) the largest."""
    if not boxes:
        return None
    if track is not None:
        best = max(boxes, key=lambda b: _iou(b, track))
        return best if _iou(best, track) >= 0.3 else None
    return max(boxes, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]))


def _predict(models: _FaceModels, frame: np.ndarray, box: np.ndarray) -> np.ndarray:
    import dlib

    left, top, right, bottom = (round(float(v)) for v in box)
    shape = models.predictor(frame, dlib.rectangle(left, top, right, bottom))
    return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)  # [68, 2]


def _track(
    models: _FaceModels, frame: np.ndarray, box: np.ndarray, patch: np.ndarray, cfg: TrackerConfig
) -> tuple[np.ndarray, np.ndarray] | tuple[None, None]:
    """Landmarks predicted in the previous frame's box and the new face patch, or (None, None)
    when the track is lost: the box drifts (scale, jump, off the frame), the shape is no face
    shape, the box is blank, or its content no longer looks like the previous frame's face
    (a cut: the predictor would otherwise creep onto whatever is there)."""
    pts = _predict(models, frame, box)
    new = box_from_landmarks(pts)
    side, new_side = box[2] - box[0], new[2] - new[0]
    h, w = frame.shape[:2]
    cx, cy = (new[0] + new[2]) / 2, (new[1] + new[3]) / 2
    new_patch: np.ndarray | None = None
    reason = ""
    if new_side < cfg.min_face_px:
        reason = f"box {new_side:.0f} px"
    elif not (0 <= cx < w and 0 <= cy < h):
        reason = "box centre left the frame"
    elif max(new_side / side, side / new_side) > cfg.max_scale_change:
        reason = f"box scale changed x{new_side / side:.2f}"
    elif np.hypot(cx - (box[0] + box[2]) / 2, cy - (box[1] + box[3]) / 2) > cfg.max_shift * side:
        reason = "box jumped"
    elif (res := shape_residual(pts)) > cfg.max_shape_residual:
        reason = f"implausible shape (residual {res:.3f})"
    else:
        new_patch = _patch(models.cv2, frame, new)
        if new_patch.std() < cfg.min_box_std:
            reason = "blank box"
        elif (sim := _correlation(patch, new_patch)) < cfg.min_similarity:
            reason = f"face changed (correlation {sim:.2f})"
    if reason or new_patch is None:
        log.debug("track lost: %s", reason)
        return None, None
    return pts, new_patch


_PATCH = 24


def _patch(cv2: Any, frame: np.ndarray, box: np.ndarray) -> np.ndarray:
    """The box's content as a 24x24 grey patch (area-averaged from a strided subsample)."""
    h, w = frame.shape[:2]
    x0, y0 = max(0, int(box[0])), max(0, int(box[1]))
    x1, y1 = min(w, int(box[2]) + 1), min(h, int(box[3]) + 1)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return np.zeros((_PATCH, _PATCH), np.float32)
    step = max(1, min(x1 - x0, y1 - y0) // (2 * _PATCH))
    region = np.ascontiguousarray(frame[y0:y1:step, x0:x1:step])
    small = cv2.resize(region, (_PATCH, _PATCH), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(small, cv2.COLOR_RGB2GRAY).astype(np.float32)  # [24, 24]


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised cross-correlation of two patches (1 = same up to brightness and contrast)."""
    a, b = a - a.mean(), b - b.mean()
    den = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum()) / den if den > 0 else 0.0
