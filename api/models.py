"""Pydantic schemas of the API's responses (the OpenAPI document is built from these)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

__all__ = [
    "DatasetEncoder",
    "DatasetInfo",
    "DatasetsResponse",
    "Detail",
    "ModelInfo",
    "ModelsResponse",
    "ReadyResponse",
    "RunScore",
    "ScoreResponse",
    "StoredScoreResponse",
    "Timings",
]

SegmentList = list[tuple[float, float, float]]


class Detail(BaseModel):
    """Every error: ``{"detail": "..."}``."""

    detail: Any


class Timings(BaseModel):
    decode_ms: float = Field(description="probe + decode (+ crop) of the upload")
    encode_ms: float = Field(description="waiting for and running the encoder's batch")
    score_ms: float = Field(description="the run's head on the encoder's rows")


class RunScore(BaseModel):
    """One run's verdict on one video."""

    run: str
    kind: str
    encoder: str
    layer: str
    checkpoint_sha256: str | None = None
    score: float = Field(description="video logit s; P(fake) = sigmoid(2 s)")
    probability: float
    threshold: float = Field(description="score threshold of the label (0 = P 0.5)")
    label: Literal["real", "fake"]
    frame_hz: float
    frame_scores: list[float] = Field(description="per-row logits; row t covers [t/hz, (t+1)/hz)")
    segments: SegmentList = Field(
        description="fake segments [start_s, end_s, score] where frame scores pass the threshold"
    )


class UploadRunScore(RunScore):
    timings: Timings


class ScoreResponse(BaseModel):
    filename: str | None
    size_bytes: int
    duration_s: float
    results: list[UploadRunScore]


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


class ModelInfo(BaseModel):
    name: str
    kind: str
    encoder: str | None
    layer: str | None
    frame_hz: float | None
    checkpoint: str | None
    checkpoint_sha256: str | None
    random_init: bool
    threshold: float
    uploads: bool = Field(description="whether the run can score uploads (else stored-only)")
    metrics: dict[str, dict[str, float]] = Field(
        description="numeric entries of metrics.json, by selection"
    )


class ModelsResponse(BaseModel):
    models: list[ModelInfo]


class ReadyResponse(BaseModel):
    status: str
    detail: str | None = None
