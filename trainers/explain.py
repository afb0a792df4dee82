"""Temporal explanations of a stored video (paper Fig. 3): where does a detector see a fake?

The per-frame scores ``s_t`` of a run of any kind (a probe's logits, the ntp
/ sync / syncfree runs' frame scores, a fusion's fused frame scores) and the
fake segments they imply under the run's segment rules (its calibrated frame
threshold, smoothing, merging, minimum length: ``featstore.trainers.localization``;
the threshold can be given by name or number), in seconds, beside the
annotated segments.

>>> e = explain_temporal("runs/w2v", store, "av1m", "id00/clip", out_png="clip.png")  # doctest: +SKIP
>>> e.predicted_segments  # doctest: +SKIP
[Segment(start_s=1.2, end_s=1.68, score=2.7)]
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from featstore.trainers.data import Selection
from featstore.trainers.kinds import Detector, load
from featstore.trainers.runs import Run, RunError

if TYPE_CHECKING:
    from featstore.store import FeatureStore
    from featstore.trainers.localization import LocalSegment, SegmentRules

__all__ = ["TemporalExplanation", "explain_temporal"]


@dataclass(frozen=True)
class TemporalExplanation:
    """Per-frame scores of one video and the segments they imply, in seconds."""

    dataset: str
    video_id: str
    label: int
    score: float  # video logit
    probability: float  # sigmoid(2 * score): P(fake) for calibrated kinds, else a rank score
    frame_hz: float
    threshold: float
    times_s: np.ndarray = field(repr=False)  # [T] start time of each row
    frame_scores: np.ndarray = field(repr=False)  # [T] per-frame logits
    predicted_segments: tuple[LocalSegment, ...] = ()
    truth_segments: tuple[tuple[float, float], ...] = ()
    png: Path | None = None
    rules: SegmentRules | None = None
    threshold_name: str = "paper"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (per-frame scores included)."""
        return {
            "dataset": self.dataset,
            "video_id": self.video_id,
            "label": self.label,
            "score": self.score,
            "probability": self.probability,
            "frame_hz": self.frame_hz,
            "threshold": self.threshold,
            "threshold_name": self.threshold_name,
            "rules": None if self.rules is None else self.rules.to_dict(),
            "frame_scores": self.frame_scores.tolist(),
            "predicted_segments": [s.to_dict() for s in self.predicted_segments],
            "truth_segments": [list(s) for s in self.truth_segments],
            "png": None if self.png is None else str(self.png),
        }


def explain_temporal(
    run_dir: Detector | Run | str | os.PathLike[str],
    store: FeatureStore,
    dataset: str,
    video_id: str,
    *,
    out_png: str | os.PathLike[str] | None = None,
    threshold: str | float | None = None,
) -> TemporalExplanation:
    """Explain one stored video with a run of any kind that has per-frame scores (every
    registered kind has them); draw it to ``out_png`` when given (PNG, PDF or SVG by its
    suffix).

    ``threshold``: the frame threshold, a number or a name of the run's card
    (None: the run's own); the run's post-processing applies.
    """
    from featstore.trainers.localization import localize

    detector = run_dir if isinstance(run_dir, Detector) else load(run_dir)
    scored = detector.score_selection(store, Selection.of_videos(dataset, [video_id]))
    if scored.frame_scores is None or not scored.frame_hz:
        raise RunError(
            f"temporal explanations need per-frame scores, and {detector.where()} has none"
        )
    rows = scored.manifest
    frames = np.asarray(scored.frame_scores[0], dtype=np.float32)  # [T]
    video_score = float(scored.scores[0])
    frame_hz = float(scored.frame_hz)
    truth = scored.fake_segments()[0]
    rules, name = detector.localization.resolve(threshold)
    found = localize(frames, frame_hz, rules, fake=video_score > detector.threshold)
    predicted = found.segments
    threshold = rules.threshold
    times = np.arange(len(frames), dtype=np.float64) / frame_hz  # [T]
    png = None
    if out_png is not None:
        from featstore.trainers.plots import temporal_png

        label = int(rows["label"].iloc[0])
        png = temporal_png(
            out_png,
            times_s=times,
            frame_scores=frames,
            threshold=threshold,
            truth_segments=truth,
            predicted_segments=[(s.start_s, s.end_s) for s in predicted],
            title=f"{'fake' if label else 'real'} video, score {video_score:+.2f}",
            calibrated=detector.calibrated,
            caption=(
                f"{dataset}/{video_id}: per-frame scores of the {detector.kind} "
                f"{detector.where()}, n = {len(frames)} frames at {frame_hz:g} Hz; "
                f"frames above {threshold:g} are predicted fake"
            ),
        )
        png = Path(png) if png is not None else Path(out_png)
    return TemporalExplanation(
        dataset=dataset,
        video_id=video_id,
        label=int(rows["label"].iloc[0]),
        score=video_score,
        probability=float(scored.probabilities[0]),
        frame_hz=frame_hz,
        threshold=threshold,
        times_s=times,
        frame_scores=frames,
        predicted_segments=predicted,
        truth_segments=tuple(truth),
        png=png,
        rules=rules,
        threshold_name=name,
    )
