"""Every face of a video, tracked per shot, as TalkNet's demo tracks them (with dlib).

TalkNet's demo detects faces on every frame (S3FD) and links them per shot
(PEERS.md): a track grows greedily in frame order with the detection whose IoU with its
last box is > 0.5, as long as no more than ``max_missed`` (10) frames passed; tracks of
more than ``min_track`` (10) detections are kept, and the boxes of the frames in between
are interpolated linearly. Here the detector is dlib's HOG detector (S3FD's weights are not
available offline; dlib's ship with the ``faces`` extra) and the 68 landmarks are
predicted in every detected box, so a track is a :class:`~featstore.landmarks.FaceTracks`
(what the mouth and face crops and the ``tracks-dlib68`` store rows use) plus its place
in the video. dlib's boxes are tighter than S3FD's (brow to chin rather than hairline to
chin), which frames TalkNet's 0.4-padded crops a little closer than its demo does.

Frames taller than ``detect_height`` are downscaled for detection (HOG finds faces of
about 80 px and up there); landmarks are predicted at full resolution.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from featstore.landmarks import FaceTracks, box_from_landmarks, load_face_models

__all__ = ["Detection", "FaceTrackConfig", "FrameDetector", "Track", "link_tracks"]


@dataclass(frozen=True)
class FaceTrackConfig:
    detect_every: int = 1  # TalkNet detects on every frame
    detect_height: int = 720
    upsample: int = 0
    iou: float = 0.5
    max_missed: int = 10
    min_track: int = 10

    def __post_init__(self) -> None:
        if self.detect_every < 1 or self.detect_every > self.max_missed:
            raise ValueError(
                f"detect_every must be in [1, max_missed={self.max_missed}], got {self.detect_every}"
            )


@dataclass(frozen=True)
class Detection:
    frame: int
    box: np.ndarray  # [4] x0, y0, x1, y1 pixels (the detector's box)
    landmarks: np.ndarray  # [68, 2] predicted in that box


@dataclass(frozen=True, eq=False)
class Track:
    """One face over frames ``[start, start + n)`` of a shot."""

    start: int
    boxes: np.ndarray  # [T, 4] detector boxes, interpolated between detections
    faces: FaceTracks  # landmarks [T, 68, 2], their boxes, ``detected`` flags
    shot: int = 0
    meta: dict = field(default_factory=dict)

    @property
    def n_frames(self) -> int:
        return self.faces.n_frames

    @property
    def end(self) -> int:
        return self.start + self.n_frames


class FrameDetector:
    """Faces (box + landmarks) in one RGB frame; dlib's models are per thread."""

    def __init__(self, config: FaceTrackConfig | None = None) -> None:
        self.config = config or FaceTrackConfig()

    def __call__(self, frame: np.ndarray, t: int) -> list[Detection]:
        import dlib

        models = load_face_models()
        cv2 = models.cv2
        h, w = frame.shape[:2]
        scale = 1.0
        small = frame
        if h > self.config.detect_height:
            scale = self.config.detect_height / h
            small = cv2.resize(
                frame,
                (max(1, round(w * scale)), self.config.detect_height),
                interpolation=cv2.INTER_AREA,
            )
        grey = cv2.cvtColor(np.ascontiguousarray(small), cv2.COLOR_RGB2GRAY)
        rects, _, _ = models.detector.run(grey, self.config.upsample, 0.0)
        out = []
        for r in rects:
            # pixel centres: x_full = (x_small + 0.5) / scale - 0.5
            box = (np.array([r.left(), r.top(), r.right(), r.bottom()], float) + 0.5) / scale - 0.5
            rect = dlib.rectangle(*(round(float(v)) for v in box))
            shape = models.predictor(frame, rect)
            pts = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)  # [68, 2]
            out.append(Detection(frame=t, box=box, landmarks=pts))
        return out


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def link_tracks(
    detections: list[Detection], *, shot: int = 0, config: FaceTrackConfig | None = None
) -> list[Track]:
    """Tracks of one shot's detections (TalkNet's ``track_shot``), in the order found.

    Each pass starts a track at the earliest unused detection and extends it frame by
    frame with the first unused detection whose IoU with the track's last box is above
    ``iou``, until ``max_missed`` frames pass without one.
    """
    cfg = config or FaceTrackConfig()
    by_frame: dict[int, list[Detection]] = {}
    for det in sorted(detections, key=lambda d: d.frame):
        by_frame.setdefault(det.frame, []).append(det)
    frames = sorted(by_frame)
    tracks = []
    while any(by_frame[f] for f in frames):
        track: list[Detection] = []
        for f in frames:
            if track and f - track[-1].frame > cfg.max_missed:
                break
            for det in by_frame[f]:
                if not track or _iou(det.box, track[-1].box) > cfg.iou:
                    track.append(det)
                    by_frame[f].remove(det)
                    break
        if len(track) > cfg.min_track:
            tracks.append(_interpolate(track, shot))
    return tracks


def _interpolate(track: list[Detection], shot: int) -> Track:
    found = np.array([d.frame for d in track])
    span = np.arange(found[0], found[-1] + 1)
    boxes = np.stack([np.interp(span, found, [d.box[j] for d in track]) for j in range(4)], 1)
    lms = np.stack([d.landmarks for d in track]).reshape(len(track), -1)  # [N, 136]
    landmarks = np.stack([np.interp(span, found, lms[:, j]) for j in range(136)], 1)
    detected = np.isin(span, found)
    faces = FaceTracks(
        landmarks=landmarks.reshape(-1, 68, 2).astype(np.float32),
        boxes=box_from_landmarks(landmarks.reshape(-1, 68, 2)).astype(np.float32),
        detected=detected,
    )
    return Track(start=int(found[0]), boxes=boxes, faces=faces, shot=shot)
