"""Scoring an upload in single-speaker segments: ``POST /v1/score?segment=true``.

Uploads from the wild (a trust-and-safety queue: minutes of several people, music,
cut-aways) are not one talking face, and every detector here was trained on one. As the
paper does for Deepfake-Eval-2024 (Supp. C) and ``featstore datasets segment`` does for
datasets, the upload is first cut into single-speaker segments
(:func:`featstore.asd.analysis.analyse_video`: shots, face tracks, an active speaker per
track, the segment rules: audio, one speaking face in every frame, at least 100 px, 3 to
60 s). Each segment is then scored as an upload of its own: its span decoded (a seek),
mouth and face crops cut from its speaking face's track (never re-tracked), every
requested run's verdict under the request's segment rules and windowing (``threshold``,
``smooth_s``, ``min_segment_s``, ``merge_gap_s``, ``windows``: each run's card by
default), checked against the run's minimum length and windowed as an upload of the
segment's length would be, every time but ``frame_scores`` in the upload's seconds. A
run's verdict on the video is the maximum over the segments (one fake segment makes a
fake video): that segment's verdict, with the fake segments and ``localization``
segments of every segment, the best ``MAX_PROPOSALS`` proposals of all of them, and the
``windows`` of the segment whose score it is. The response gives each segment's span
and scores and each dropped span with its reason. An upload without a segment is refused
with the reasons (422, :class:`NoSegmentError`).

The active speaker detector is the service's, loaded once at start-up
(:func:`load_asd`): ``talknet`` when its checkpoint is configured or found, else the
weight-free ``sync``. Time and memory are those of the upload limits: the analysis
streams the upload under ``--max-duration-s`` (the decoded duration, not the header's),
and segments last at most 60 s.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import time
from typing import TYPE_CHECKING

from featstore import timebase
from featstore.api.models import DroppedSpan, ScoreResponse, Segmentation, SegmentScore, Timings
from featstore.errors import FeatstoreError

if TYPE_CHECKING:
    from featstore.api.scoring import LoadedRun, ScoreOptions, ScoringService
    from featstore.api.settings import Settings
    from featstore.asd.analysis import VideoAnalysis
    from featstore.asd.detectors import ActiveSpeakerDetector

log = logging.getLogger(__name__)

__all__ = [
    "NoSegmentError",
    "SegmentOptionsError",
    "SegmentationUnavailableError",
    "load_asd",
    "score_in_segments",
]


class NoSegmentError(FeatstoreError):
    """The upload has no single-speaker segment (422): nothing to score."""


class SegmentOptionsError(FeatstoreError):
    """Options that do not combine with ``segment=true`` (422)."""


class SegmentationUnavailableError(FeatstoreError):
    """The service cannot segment uploads (the ``faces`` extra is not installed)."""


MAX_PROPOSALS = 100  # a video's ranked proposals over all its segments, as for one input

# what analysing a video imports (the faces extra), beyond each detector's own needs
_NEEDS = ("cv2", "dlib", "face_recognition_models")
_DETECTOR_NEEDS = {"sync": ("silero_vad",)}


def load_asd(settings: Settings) -> ActiveSpeakerDetector:
    """The service's active speaker detector: ``settings.asd``, or by default TalkNet when
    its checkpoint (``settings.asd_checkpoint``, else ``$FEATSTORE_CHECKPOINTS``) is found,
    else the weight-free ``sync``."""
    from featstore.asd.detectors import load_detector
    from featstore.asd.talknet.weights import find_talknet_checkpoint
    from featstore.encoders.base import CheckpointError

    name = settings.asd
    if name is None:
        try:
            find_talknet_checkpoint(settings.asd_checkpoint)
            name = "talknet"
        except CheckpointError as exc:
            if settings.asd_checkpoint is not None:
                raise
            log.info("no TalkNet checkpoint (%s); segmenting uploads with --asd sync", exc)
            name = "sync"
    missing = [m for m in (*_NEEDS, *_DETECTOR_NEEDS.get(name, ())) if not _importable(m)]
    if missing:
        from featstore.landmarks import FACES_INSTALL_HINT, FacesUnavailableError

        raise FacesUnavailableError(
            f"segmenting uploads with --asd {name} needs {', '.join(missing)}; {FACES_INSTALL_HINT}"
        )
    return load_detector(name, checkpoint=settings.asd_checkpoint, device=settings.device)


def _importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _analyse(path: str, detector: ActiveSpeakerDetector, max_duration_s: float) -> VideoAnalysis:
    from featstore.asd.analysis import analyse_video
    from featstore.decode_limits import DecodeLimits

    return analyse_video(path, detector, limits=DecodeLimits(max_duration_s=max_duration_s))


def _seconds(frames: int) -> float:
    return float(timebase.frames_to_seconds(frames))


def _no_segment(analysis: VideoAnalysis) -> NoSegmentError:
    dropped = analysis.result.dropped_s()
    reasons = ", ".join(f"{r} {s:.1f} s" for r, s in sorted(dropped.items(), key=lambda x: -x[1]))
    seconds = _seconds(analysis.n_frames)
    return NoSegmentError(
        f"no single-speaker segment: of the upload's {seconds:.1f} s none has one speaking "
        f"face of at least the minimum size for long enough (dropped: {reasons or 'nothing'}); "
        "score it without segment=true to treat it as one talking face"
    )


async def score_in_segments(
    service: ScoringService,
    path: str,
    chosen: list[LoadedRun],
    *,
    filename: str | None,
    options: ScoreOptions | None = None,
) -> ScoreResponse:
    """Segment the upload at ``path`` and score every segment with ``chosen`` runs under
    ``options`` (the request's segment rules and windowing; None: each run's card)."""
    from featstore.api.scoring import ScoreOptions

    options = ScoreOptions() if options is None else options
    detector = service.asd_detector()
    t0 = time.perf_counter()
    analysis = await asyncio.to_thread(_analyse, path, detector, service.settings.max_duration_s)
    analyse_ms = 1e3 * (time.perf_counter() - t0)
    found = analysis.result.segments
    if not found:
        raise _no_segment(analysis)
    segments: list[SegmentScore] = []
    for seg in found:
        results = await service.score_span(
            path,
            chosen,
            start_s=seg.start_s,
            until_s=seg.end_s,
            tracks=analysis.segment_tracks(seg),
            options=options,
        )
        segments.append(
            SegmentScore(
                start_s=seg.start_s,
                end_s=seg.end_s,
                face_px=analysis.segment_face_px(seg),
                asd_score=analysis.segment_asd_score(seg),
                results=results,
            )
        )
    videos = []
    for i in range(len(chosen)):
        per_segment = [s.results[i] for s in segments]
        top = max(range(len(per_segment)), key=lambda k: per_segment[k].score)
        best = per_segment[top]
        fakes = [tuple(x) for r in per_segment for x in r.segments]
        localization = best.localization.model_copy(
            update={
                "segments": sorted(
                    (x for r in per_segment for x in r.localization.segments),
                    key=lambda x: (x.start_s, x.end_s),
                ),
                "proposals": sorted(
                    (p for r in per_segment for p in r.localization.proposals),
                    key=lambda p: (-p[0], p[1], p[2]),
                )[:MAX_PROPOSALS],
            }
        )
        timings = Timings(
            decode_ms=analyse_ms + sum(r.timings.decode_ms for r in per_segment),
            encode_ms=sum(r.timings.encode_ms for r in per_segment),
            score_ms=sum(r.timings.score_ms for r in per_segment),
        )
        videos.append(
            best.model_copy(
                update={
                    "frame_scores": [],
                    "segments": sorted(fakes),
                    "localization": localization,
                    "segment": top,
                    "timings": timings,
                }
            )
        )
    dropped = [
        DroppedSpan(reason=reason, start_s=_seconds(a), end_s=_seconds(b))
        for reason, spans in analysis.result.dropped.items()
        for a, b in spans
    ]
    return ScoreResponse(
        filename=filename,
        size_bytes=os.path.getsize(path),
        duration_s=_seconds(analysis.n_frames),
        results=videos,
        segmentation=Segmentation(
            asd=detector.name,
            segments=segments,
            dropped=sorted(dropped, key=lambda d: d.start_s),
            dropped_s={k: round(v, 3) for k, v in analysis.result.dropped_s().items()},
        ),
    )
