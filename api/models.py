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
    "EvaluationSummary",
    "FeatureInfo",
    "InputInfo",
    "LocalizationCardInfo",
    "LocalizationInfo",
    "ModelInfo",
    "ModelsResponse",
    "ReadyResponse",
    "RunScore",
    "ScoreResponse",
    "SegmentInfo",
    "SegmentScore",
    "Segmentation",
    "SkippedRun",
    "SpatialFrame",
    "SpatialResult",
    "StoredScoreResponse",
    "Timings",
    "UploadRunScore",
    "ViewInfo",
    "WindowRuleInfo",
    "WindowScore",
    "WindowsInfo",
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


class SegmentInfo(BaseModel):
    """One fake segment under the run's segment rules."""

    start_s: float
    end_s: float
    score: float = Field(description="the highest smoothed frame score inside")
    confidence: float = Field(
        description="in (0, 1): how much the segment stands out from its neighbourhood "
        "(the measure proposals are ranked by)"
    )
    below_threshold: bool = Field(
        description="true only for the top-ranked segment of a video labelled fake whose "
        "frames all stay under the frame threshold (so a fake verdict always points somewhere)"
    )


class LocalizationInfo(BaseModel):
    """How the per-frame scores were read into segments, and what they gave."""

    frame_threshold: float = Field(description="smoothed frame scores above it are fake")
    threshold_name: str = Field(
        description="segment_f1 / real_videos (calibrated when the run was trained), paper "
        "(0), or given (a number in the request)"
    )
    calibrated: bool = Field(description="false for runs written before calibration existed")
    description: str = Field(description="the run card's threshold and what it was chosen on")
    smooth_s: float = Field(description="running-median window of the frame scores, seconds")
    min_segment_s: float = Field(description="shorter segments are dropped")
    merge_gap_s: float = Field(description="segments this close are merged")
    segments: list[SegmentInfo] = Field(description="time order; the same as segments above")
    proposals: list[tuple[float, float, float]] = Field(
        description="ranked [confidence, start_s, end_s] proposals (AV-Deepfake1M's format), "
        "at most 100"
    )


class WindowScore(BaseModel):
    start_s: float
    end_s: float
    score: float


class WindowsInfo(BaseModel):
    """Whether the video score is the maximum over windows of the training length."""

    applied: bool
    reason: str
    window_s: float | None = Field(description="window length (the median training length)")
    hop_s: float | None = Field(description="window step: half a window")
    whole_score: float = Field(description="the score of the whole input, unwindowed")
    scores: list[WindowScore] = Field(description="each window's score; score is their max")


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
        description="fake segments [start_s, end_s, score] under the run's segment rules "
        "(smoothed frame scores above the frame threshold, merged, long enough), time order; "
        "a video labelled fake has at least one (see localization.segments: below_threshold)"
    )
    spatial: SpatialResult | None = Field(
        None, description="with ?explain=spatial, for runs whose encoder supports it"
    )
    spatial_note: str | None = Field(
        None, description="with ?explain=spatial, why this run has no spatial explanation"
    )

    localization: LocalizationInfo
    windows: WindowsInfo


class UploadRunScore(RunScore):
    timings: Timings
    segment: int | None = Field(
        None,
        description="with segment=true: the index (in segmentation.segments) of the segment "
        "whose score is the video's (the maximum), and whose windows these are; "
        "frame_scores are then per segment only, segments and localization those of every "
        "segment (the 100 best proposals over all of them), in the upload's seconds",
    )


class SegmentScore(BaseModel):
    """One single-speaker segment of an upload and every run's verdict on it."""

    start_s: float = Field(description="the segment's span in the upload, seconds")
    end_s: float
    face_px: float = Field(description="median side of the speaking face's box (pixels)")
    asd_score: float = Field(description="mean speaking score of that face (>= 0: speaking)")
    results: list[UploadRunScore] = Field(
        description="per run; frame_scores start at start_s, every other time (segments, "
        "localization, windows) in upload seconds"
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


class SkippedRun(BaseModel):
    """A loaded run that did not score the upload (only when ``runs`` was not given)."""

    run: str
    kind: str
    reason: Literal["no_audio_stream", "no_video_stream", "no_face", "too_short"] = Field(
        description="no_audio_stream / no_video_stream: the upload lacks a stream the run's "
        "encoders read (or, for audio, its leading-silence trimming); no_face: no face to crop "
        "for its mouth or face encoders; too_short: too short for one of its encoders or under the "
        "run's minimum length (windows.min_duration_s in /v1/models)"
    )
    detail: str = Field(description="the same in words, with the encoders concerned")


class ScoreResponse(BaseModel):
    filename: str | None
    size_bytes: int
    duration_s: float
    results: list[UploadRunScore] = Field(
        description="per run that scored, in the order the runs were loaded (or named); with "
        "segment=true the video's verdict, the maximum over the segments (label fake when any "
        "segment is), its fake segments those of every segment"
    )
    skipped: list[SkippedRun] = Field(
        default_factory=list,
        description="loaded runs that could not score this upload, and why: only when runs "
        "was not given (runs named in runs must all score, else 422); empty when every run "
        "scored",
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


class ViewInfo(BaseModel):
    """A named view of a dataset (manifest column ``split.<name>``): its own splits."""

    name: str = Field(description="select its videos as DATASET@NAME:SPLIT")
    default: bool = Field(description="whether selections without @VIEW use it")
    protocol: str | None = Field(description="the protocol or split files it was made from")
    seed: int | None = None
    n_videos: int = Field(description="videos inside the view (in one of its splits)")
    n_real: int
    n_fake: int
    splits: dict[str, int] = Field(description="videos per split of the view")


class DatasetInfo(BaseModel):
    name: str
    n_videos: int
    n_real: int
    n_fake: int
    splits: dict[str, int] = Field(description="videos per split of the official split column")
    default_view: str | None = Field(
        None, description="the view selections without @VIEW use (null: the split column)"
    )
    views: list[ViewInfo] = Field(
        default_factory=list, description="the dataset's views (protocols, split files)"
    )
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


class LocalizationCardInfo(BaseModel):
    """A run's frame threshold: every named one, the chosen one and what it was chosen on."""

    chosen: str
    threshold: float
    thresholds: dict[str, float]
    rules: dict[str, float] = Field(description="smooth_s, min_segment_s, merge_gap_s")
    calibrated_on: dict[str, Any] | None
    calibrated: bool
    description: str


class WindowRuleInfo(BaseModel):
    """How a run scores inputs by length."""

    window_s: float | None = Field(description="inputs longer than this are scored in windows")
    hop_s: float | None
    min_duration_s: float = Field(description="shorter uploads get 422")
    reason: str = Field(description="why the minimum is what it is")
    lengths: dict[str, Any] | None = Field(
        description="the lengths of the run's training videos (null: not recorded)"
    )


class EvaluationSummary(BaseModel):
    """One evaluation of a run, as metrics.json records it: its headline numbers."""

    selection: str | None = Field(description="what was scored, NAME[@VIEW]:SPLIT")
    view: str | None = None
    fakes: str | None = Field(
        None,
        description="the evaluation filter: 'paper' (reals and the fakes with both modalities "
        "manipulated, where the dataset says which) or 'all' (every fake); older entries' "
        "spellings read as these (featstore.trainers.evaluation_filter.recorded_fakes)",
    )
    n_scored: int | None = None
    n_evaluated: int | None = Field(None, description="videos the metrics count")
    n_real: int | None = None
    n_fake: int | None = None
    auc: float | None = Field(description="video-level ROC AUC")
    ap: float | None = Field(description="video-level average precision (fake = positive)")
    eer: float | None = Field(None, description="equal error rate")
    auc_ci: tuple[float, float] | None = Field(None, description="95 % bootstrap interval")
    ap_ci: tuple[float, float] | None = None
    temporal_auc: float | None = Field(
        None, description="mean per-video frame-level AUC over fake videos (localization)"
    )
    localization: dict[str, float] | None = Field(
        None, description="AV-Deepfake1M's AP@IoU and AR@N of the implied fake segments"
    )
    threshold: float | None = None
    split_hash: str | None = None


class ModelInfo(BaseModel):
    name: str
    kind: str
    calibrated: bool = Field(description="whether its scores give a probability (see RunScore)")
    frame_hz: float = Field(description="rate of its per-frame scores")
    inputs: list[InputInfo]
    threshold: float = Field(description="the video score's label threshold (0)")
    frame_threshold: float = Field(description="the frame threshold of its segments")
    localization: LocalizationCardInfo
    windows: WindowRuleInfo
    metrics: dict[str, EvaluationSummary] = Field(
        description="each evaluation in the run's metrics.json (featstore eval, fuse --out, "
        "syncscore --out), under its key there (e.g. sample:val)"
    )


class ModelsResponse(BaseModel):
    models: list[ModelInfo]


class ReadyResponse(BaseModel):
    status: str
    detail: str | None = None
