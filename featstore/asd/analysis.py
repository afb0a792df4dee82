"""One video -> shots, face tracks, per-frame speaking scores and single-speaker segments.

Two streaming passes over the frames keep memory bounded by a chunk of frames plus the
crops of the video's tracks (112x112 or 96x96 grey per tracked frame):

1. shot detection and face detection (box + 68 landmarks) on every ``detect_every``-th
   frame; the detections of each shot are linked into tracks;
2. the crops the detector needs (TalkNet's padded face crops or the mouth ROI), cut for
   every track from the frames it covers.

The whole 16 kHz audio is decoded once (38 MB for ten minutes). A video without an audio
stream skips pass 2: all of it is dropped as ``no_audio``.

>>> analysis = analyse_video("upload.mp4", load_detector("sync"))  # doctest: +SKIP
>>> [(s.start_s, s.end_s) for s in analysis.result.segments]  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import numpy as np

from featstore import media
from featstore.asd.detectors import ActiveSpeakerDetector
from featstore.asd.facetracks import FaceTrackConfig, FrameDetector, Track, link_tracks
from featstore.asd.shots import Shot, ShotConfig, ShotDetector, shots_from_cuts
from featstore.decode_limits import DecodeLimits
from featstore.landmarks import FaceTracks
from featstore.segments import (
    ScoredTrack,
    Segment,
    SegmentRules,
    VideoSegments,
    find_segments,
)

log = logging.getLogger(__name__)

__all__ = ["AnalysisConfig", "VideoAnalysis", "analyse_video"]


@dataclass(frozen=True)
class AnalysisConfig:
    rules: SegmentRules = field(default_factory=SegmentRules)
    shots: ShotConfig = field(default_factory=ShotConfig)
    faces: FaceTrackConfig = field(default_factory=FaceTrackConfig)
    chunk_frames: int = 100


@dataclass(frozen=True, eq=False)
class VideoAnalysis:
    n_frames: int
    has_audio: bool
    shots: list[Shot]
    tracks: list[Track]
    scores: list[np.ndarray]  # per track, [T]
    face_px: list[np.ndarray]  # per track, [T]
    result: VideoSegments

    def _span(self, segment: Segment) -> tuple[Track, int, int]:
        tr = self.tracks[segment.track]
        return tr, segment.start_frame - tr.start, segment.end_frame - tr.start

    def segment_tracks(self, segment: Segment) -> FaceTracks:
        """The speaking face's landmarks and boxes over ``segment``, from its first frame."""
        tr, a, b = self._span(segment)
        faces = tr.faces
        return FaceTracks(faces.landmarks[a:b], faces.boxes[a:b], faces.detected[a:b])

    def segment_face_px(self, segment: Segment) -> float:
        """Median side of the speaking face's box over ``segment`` (pixels)."""
        _, a, b = self._span(segment)
        return float(np.median(self.face_px[segment.track][a:b]))

    def segment_asd_score(self, segment: Segment) -> float:
        """Mean per-frame speaking score of the speaking face over ``segment``."""
        _, a, b = self._span(segment)
        return float(np.mean(self.scores[segment.track][a:b]))


def analyse_video(
    path: str | os.PathLike[str],
    detector: ActiveSpeakerDetector,
    config: AnalysisConfig | None = None,
    *,
    limits: DecodeLimits = media.DEFAULT_LIMITS,
) -> VideoAnalysis:
    """Shots, tracks, scores and segments of the video at ``path`` (see module docs).

    ``limits`` bound every decoding pass (the scoring service's upload duration, say).
    """
    from featstore.asd.talknet.preprocess import smooth_boxes

    cfg = config or AnalysisConfig()
    info = media.probe(path)
    if info.video is None:
        raise media.NoVideoStreamError(path, "no video stream")
    shot_detector = ShotDetector(cfg.shots)
    find_faces = FrameDetector(cfg.faces)
    cuts: list[int] = []
    detections = []
    last_cut = 0
    t = 0
    for chunk in media.iter_frames(path, chunk_frames=cfg.chunk_frames, threads=1, limits=limits):
        for frame in chunk:
            if shot_detector.update(frame):
                cuts.append(t)
                last_cut = t
            if (t - last_cut) % cfg.faces.detect_every == 0:
                detections += find_faces(frame, t)
            t += 1
    n_frames = t
    shots = shots_from_cuts(cuts, n_frames)
    tracks: list[Track] = []
    for i, shot in enumerate(shots):
        in_shot = [d for d in detections if shot.start <= d.frame < shot.end]
        tracks += link_tracks(in_shot, shot=i, config=cfg.faces)
    log.debug("%s: %d frames, %d shots, %d tracks", path, n_frames, len(shots), len(tracks))
    xys = [smooth_boxes(tr.boxes) for tr in tracks]
    face_px = [2 * xy[:, 2] for xy in xys]
    if info.audio is None:
        result = find_segments(n_frames, [], cfg.rules, has_audio=False)
        return VideoAnalysis(n_frames, False, shots, tracks, [], face_px, result)
    audio = media.decode(path, video=False, limits=limits).audio
    prepared = detector.prepare(audio, n_frames)
    crops = _crops(path, tracks, xys, detector.crop, cfg.chunk_frames, limits) if tracks else []
    scores = [detector.score_track(prepared, tr, c) for tr, c in zip(tracks, crops, strict=True)]
    scored = [
        ScoredTrack(tr.start, sc, px) for tr, sc, px in zip(tracks, scores, face_px, strict=True)
    ]
    result = find_segments(n_frames, scored, cfg.rules)
    return VideoAnalysis(n_frames, True, shots, tracks, scores, face_px, result)


def _crops(
    path: str | os.PathLike[str],
    tracks: list[Track],
    xys: list[np.ndarray],
    kind: str,
    chunk_frames: int,
    limits: DecodeLimits,
) -> list[np.ndarray]:
    """Per track, ``uint8 [T, 112, 112]`` (``talknet``) or ``[T, 96, 96]`` (``mouth``)."""
    from featstore.asd.talknet.preprocess import FACE_SIZE, crop_faces
    from featstore.crops import MOUTH_SIZE, mouth_transforms
    from featstore.landmarks import load_cv2

    cv2 = load_cv2()
    size = FACE_SIZE if kind == "talknet" else MOUTH_SIZE
    out = [np.zeros((tr.n_frames, size, size), np.uint8) for tr in tracks]
    mats = [mouth_transforms(tr.faces.landmarks) for tr in tracks] if kind == "mouth" else []
    t = 0
    for chunk in media.iter_frames(path, chunk_frames=chunk_frames, threads=1, limits=limits):
        lo, hi = t, t + len(chunk)
        for k, tr in enumerate(tracks):
            s, e = max(lo, tr.start), min(hi, tr.end)
            for f in range(s, e):
                frame, i = chunk[f - lo], f - tr.start
                if kind == "talknet":
                    out[k][i] = crop_faces(frame[None], xys[k][i : i + 1])[0]
                else:
                    rgb = cv2.warpAffine(
                        frame,
                        mats[k][i],
                        (size, size),
                        flags=cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_CONSTANT,
                    )
                    out[k][i] = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        t = hi
    if t < max(tr.end for tr in tracks):
        raise media.CorruptMediaError(
            path, f"second decoding pass gave {t} frames, fewer than the first"
        )
    return out
