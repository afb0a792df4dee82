"""Pydantic schemas of the API's responses (the OpenAPI document is built from these)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

__all__ = [
    "DatasetEncoder",
    "DatasetInfo",
    "DatasetsResponse",
    "Detail",
    "DroppedSpan",
    "FeatureInfo",
    "InputInfo",
    "ModelInfo",
    "ModelsResponse",
    "ReadyResponse",
    "RunScore",
    "ScoreResponse",
    "SegmentScore",
    "Segmentation",
    "SpatialFrame",
    "SpatialResult",
    "StoredScoreResponse",
    "Timings",
    "UploadRunScore",
]

SegmentList = list[tuple[float, float, float]]


class Detail(BaseModel):
    """Every error: ``{"detail": "..."}``."""

    detail: Any


class Timings(BaseModel):
    decode_ms: float = Field(description="probe + decode (+ crop) of the upload, once for all runs")
    encode_ms: float = Field(
        description="waiting for and running the encoders' batches (shared by the runs)"
    )
    score_ms: float = Field(description="the run's detector on the encoders' rows")


SCORE_HELP = (
    "video score s: a logit, higher = more fake, every kind's decision boundary at 0 "
    "(the threshold)"
)
PROBABILITY_HELP = (
    "P(fake) = sigmoid(2 s), for kinds trained to give probabilities (probe; fusions of "
    "probes); null for the others (ntp and sync anomaly scores, training-free syncfree scores), "
    "whose sigmoid(2 s) is only rank_score"
)
RANK_HELP = (
    "sigmoid(2 s) for every kind: in [0, 1], monotone in the score, 0.5 at the threshold; "
    "equal to probability when the run is calibrated, a ranking otherwise"
)


class SpatialFrame(BaseModel):
    """One explained frame (``?explain=spatial``)."""

    frame: int = Field(description="25 fps frame index in the video")
    time_s: float
    row: int = Field(description="the row of frame_scores this frame belongs to")
    score: float = Field(description="that row's score")
    peak: tuple[float, float] = Field(
        description="(x, y) of the map's maximum, relative to the frame (x / width, y / height)"
    )
    map: list[list[float | None]] = Field(
        description="the map over the frame, map_hw cells, top row first; null where the "
        "encoder saw nothing (outside its crop)"
    )


class SpatialResult(BaseModel):
    """A run's spatial explanation of its highest-scoring rows (``?explain=spatial``)."""

    encoder: str
    layer: str
    method: Literal["linear", "gradcam"] = Field(
        description="linear: exact patch contributions to the frame logit; gradcam: Grad-CAM"
    )
    target: str = Field(description="what was decomposed, or the module Grad-CAM hooked")
    exact: bool
    map_hw: tuple[int, int] = Field(description="rows, columns of every map (long side 16)")
    frames: list[SpatialFrame]


class RunScore(BaseModel):
    """One run's verdict on one video."""

    run: str
    kind: str = Field(description="the run kind (probe, ntp, sync, syncfree, fusion, ...)")
    features: list[str] = Field(
        description="the stored features the run reads, ENCODER:LAYER (sets and pairs in full)"
    )
    score: float = Field(description=SCORE_HELP)
    calibrated: bool = Field(description="whether probability is given (see probability)")
    probability: float | None = Field(description=PROBABILITY_HELP)
    rank_score: float = Field(description=RANK_HELP)
    threshold: float = Field(description="score threshold of the label (0: rank_score 0.5)")
    label: Literal["real", "fake"]
    frame_hz: float
    frame_scores: list[float] = Field(
        description="per-row scores on the score's scale; row t covers [t/hz, (t+1)/hz)"
    )
    segments: SegmentList = Field(
        description="fake segments [start_s, end_s, score] where frame scores pass the threshold"
    )
    spatial: SpatialResult | None = Field(
        None, description="with ?explain=spatial, for runs whose encoder supports it"
    )
    spatial_note: str | None = Field(
        None, description="with ?explain=spatial, why this run has no spatial explanation"
    )


class UploadRunScore(RunScore):
    timings: Timings
    segment: int | None = Field(
        None,
        description="with segment=true: the index (in segmentation.segments) of the segment "
        "whose score is the video's (the maximum); frame_scores are then per segment only",
    )


class SegmentScore(BaseModel):
    """One single-speaker segment of an upload and every run's verdict on it."""

    start_s: float = Field(description="the segment's span in the upload, seconds")
    end_s: float
    face_px: float = Field(description="median side of the speaking face's box (pixels)")
    asd_score: float = Field(description="mean speaking score of that face (>= 0: speaking)")
    results: list[UploadRunScore] = Field(
        description="per run; frame_scores start at start_s, fake segments in upload seconds"
    )


class DroppedSpan(BaseModel):
    """A span of the upload no segment covers, and why."""

    reason: str = Field(
        description="no_audio, no_face, several_faces, nobody_speaking, face_too_small, too_short"
    )
    start_s: float
    end_s: float


class Segmentation(BaseModel):
    """How an upload was cut into single-speaker segments (segment=true)."""

    asd: str = Field(description="the active speaker detector (talknet or sync)")
    segments: list[SegmentScore]
    dropped: list[DroppedSpan]
    dropped_s: dict[str, float] = Field(description="seconds dropped per reason")


class ScoreResponse(BaseModel):
    filename: str | None
    size_bytes: int
    duration_s: float
    results: list[UploadRunScore] = Field(
        description="per run; with segment=true the video's verdict, the maximum over the "
        "segments (label fake when any segment is), its fake segments those of every segment"
    )
    segmentation: Segmentation | None = Field(
        None, description="with segment=true: the segments, their scores, the dropped spans"
    )


class StoredScoreResponse(RunScore):
    dataset: str
    video_id: str
    duration_s: float = Field(description="rows / frame_hz")
    annotated_label: int | None = Field(None, description="the manifest's label (0 real, 1 fake)")
    annotated_segments: list[tuple[float, float]] = Field(default_factory=list)


class DatasetEncoder(BaseModel):
    name: str
    frame_hz: float
    layers: list[str]
    checkpoint: str | None
    n_videos: int


class DatasetInfo(BaseModel):
    name: str
    n_videos: int
    n_real: int
    n_fake: int
    splits: dict[str, int]
    encoders: list[DatasetEncoder]


class DatasetsResponse(BaseModel):
    datasets: list[DatasetInfo]


class FeatureInfo(BaseModel):
    """One stored feature a run reads, as recorded when it was trained."""

    encoder: str = Field(description="the encoder's name in the store")
    layer: str
    frame_hz: float
    dim: int | None
    dtype: str | None = Field(description="how the store rounds rows (uploads are rounded alike)")
    source_encoder: str = Field(description="the registered encoder run on uploads")
    checkpoint: str | None
    checkpoint_sha256: str | None
    random_init: bool


class InputInfo(BaseModel):
    """One input of a run: a role and its features, concatenated per frame at frame_hz."""

    role: str = Field(description="features, audio or visual")
    frame_hz: float
    features: list[FeatureInfo]


class ModelInfo(BaseModel):
    name: str
    kind: str
    calibrated: bool = Field(description="whether its scores give a probability (see RunScore)")
    frame_hz: float = Field(description="rate of its per-frame scores")
    inputs: list[InputInfo]
    threshold: float
    metrics: dict[str, dict[str, float]] = Field(
        description="headline metrics (auc, ap, eer, temporal_auc, n, n_real, n_fake) of "
        "each metrics.json entry, by key: NAME:SPLIT (the paper's evaluation filter) or "
        "NAME:SPLIT|fakes=all (every fake counted)"
    )


class ModelsResponse(BaseModel):
    models: list[ModelInfo]


class ReadyResponse(BaseModel):
    status: str
    detail: str | None = None
