"""``?explain=spatial``: spatial explanations in the API's answers, bounded in size.

For a run whose detector has a per-frame linear head on a visual feature whose
encoder supports spatial maps (:mod:`featstore.spatial`), the answer carries,
for the ``k`` highest-scoring rows (``explain_frames``, default
:data:`DEFAULT_FRAMES`, at most :data:`MAX_FRAMES`), the frame's peak (relative
coordinates) and a low-resolution map over the frame (long side
:data:`MAP_LONG_SIDE` cells, ``null`` where the model saw nothing), so a
response holds at most ``16 x 16 x 16`` map values per run. Other runs get
``spatial: null`` and the reason in ``spatial_note``.

Uploads: the chosen frames are decoded again from the upload by seeking (the
first decode kept only the encoders' crops) and explained with the service's
loaded encoder (its forward hook only sees this thread's forwards, so scoring
in other threads goes on). Stored videos: their media must be where the
manifest says (the dataset's import root), else the answer says so.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from featstore import timebase
from featstore.api.models import RunScore, SpatialFrame, SpatialResult
from featstore.errors import FeatstoreError
from featstore.layout import layer_key
from featstore.spatial.geometry import long_side_hw

if TYPE_CHECKING:
    from pathlib import Path

    from featstore.api.clips import PreparedUpload
    from featstore.api.scoring import EncoderKey, EncoderSlot, LoadedRun
    from featstore.encoders.base import Encoder
    from featstore.landmarks import FaceTracks
    from featstore.spatial import SpatialMaps
    from featstore.store import FeatureStore
    from featstore.trainers.kinds import Detector

V = TypeVar("V", bound=RunScore)

__all__ = [
    "DEFAULT_FRAMES",
    "MAP_LONG_SIDE",
    "MAX_FRAMES",
    "SPATIAL",
    "explain",
    "explain_stored",
    "explain_upload",
    "result",
]

SPATIAL = "spatial"
DEFAULT_FRAMES = 4
MAX_FRAMES = 16
MAP_LONG_SIDE = 16


def explain(
    detector: Detector,
    encoder: Encoder,
    path: Path | str,
    frame_scores: np.ndarray,
    *,
    k: int,
    tracks: FaceTracks | None,
    n_frames: int,
) -> SpatialMaps:
    """Maps of the ``k`` highest-scoring rows' first frames of the video at ``path``."""
    from pathlib import Path

    from featstore.trainers.spatial import Explaining, choose_frames, explain_frames

    feature, head = detector.spatial_head()
    explainer = encoder.spatial(feature.layer)
    explaining = Explaining(detector, feature, head, encoder, explainer)
    frames = choose_frames(
        "top",
        frame_scores=frame_scores,
        frame_hz=feature.frame_hz,
        last_frame=explainer.last_frame(n_frames),
        top_k=min(k, MAX_FRAMES),
    )
    maps, _ = explain_frames(explaining, Path(path), frames, n_frames=n_frames, tracks=tracks)
    return maps


def explain_upload(
    run: LoadedRun,
    encoders: Mapping[EncoderKey, EncoderSlot],
    path: str,
    prepared: PreparedUpload,
    verdict: V,
    k: int,
) -> V:
    """``verdict`` with the upload's spatial explanation (or the reason it has none)."""
    scores = np.asarray(verdict.frame_scores, dtype=np.float64)

    def maps() -> SpatialMaps:
        encoder = _encoder(run, encoders)
        n_frames, tracks = prepared.n_frames, prepared.tracks
        return explain(run.detector, encoder, path, scores, k=k, tracks=tracks, n_frames=n_frames)

    return _attach(verdict, maps, scores)


def explain_stored(
    run: LoadedRun,
    encoders: Mapping[EncoderKey, EncoderSlot],
    store: FeatureStore,
    dataset: str,
    video_id: str,
    verdict: V,
    k: int,
) -> V:
    """``verdict`` with a stored video's spatial explanation, from its media (the manifest's
    path under the dataset's import root), or the reason it has none."""
    scores = np.asarray(verdict.frame_scores, dtype=np.float64)

    def maps() -> SpatialMaps:
        from featstore.trainers.spatial import frames_of_rows, media_path, video_tracks

        encoder = _encoder(run, encoders)
        path = media_path(store, dataset, video_id, media_root=None)
        tracks = None
        if encoder.spec.crop != "none":
            tracks = video_tracks(store, dataset, video_id, path)
        feature, _ = run.detector.spatial_head()
        n_frames = (
            tracks.n_frames if tracks is not None else frames_of_rows(len(scores), feature.frame_hz)
        )
        return explain(run.detector, encoder, path, scores, k=k, tracks=tracks, n_frames=n_frames)

    return _attach(verdict, maps, scores)


def _encoder(run: LoadedRun, encoders: Mapping[EncoderKey, EncoderSlot]) -> Encoder:
    """The service's loaded encoder of the run's explained feature."""
    feature, _ = run.detector.spatial_head()
    return encoders[run.encoders[feature.key]].encoder


def _attach(verdict: V, maps: Callable[[], SpatialMaps], scores: np.ndarray) -> V:
    try:
        explained = maps()
    except FeatstoreError as exc:  # unsupported run or encoder, media not at hand, no face
        return verdict.model_copy(update={"spatial_note": str(exc)})
    return verdict.model_copy(update={"spatial": result(explained, scores)})


def result(maps: SpatialMaps, frame_scores: np.ndarray) -> SpatialResult:
    """The bounded answer: peaks and low-resolution maps of every explained frame."""
    hw = long_side_hw(maps.frame_hw, MAP_LONG_SIDE)
    small = maps.frame_maps(hw)  # [N, h, w]
    frames = []
    for i, f in enumerate(maps.frames):
        row = int(maps.rows[i])
        cells = [[None if math.isnan(v) else round(float(v), 6) for v in line] for line in small[i]]
        frames.append(
            SpatialFrame(
                frame=int(f),
                time_s=float(timebase.frames_to_seconds(int(f))),
                row=row,
                score=float(frame_scores[min(row, len(frame_scores) - 1)]),
                peak=(float(maps.peaks[i][0]), float(maps.peaks[i][1])),
                map=cells,
            )
        )
    return SpatialResult(
        encoder=maps.encoder,
        layer=layer_key(maps.layer),
        method=maps.method,
        target=maps.target,
        exact=maps.exact,
        map_hw=hw,
        frames=frames,
    )
