"""Frame thresholds learnt when a run is trained, and the card that records them.

A run's per-frame scores are read through :class:`~featstore.trainers.localization.SegmentRules`
(smoothing, merging, minimum length) at a frame threshold. The paper reads
them at 0; that flags fragments on real videos and misses most fakes of a
probe whose video logit (a log-sum-exp) is positive while every frame logit
is negative. :func:`calibrate` picks the threshold on validation videos,
with the post-processing held fixed, under two named objectives:

- ``real_videos``: from the real videos alone (what every kind has, the
  anomaly detectors' only evidence): the lowest threshold at which at most
  ``real_video_rate`` (5 %) of the real validation videos get any segment.
  Each real video has a level above which it has none (its segments only
  shrink as the threshold rises), so this is a quantile of those levels.
- ``segment_f1``: where fake segments are annotated, the threshold that
  maximises segment F1 at IoU 0.5 over the validation videos (annotated fakes
  and reals; every segment on a real is a false positive), ties broken by
  frame F1, then by the higher threshold, among the thresholds that keep the
  ``real_videos`` budget (at most 5 % of real videos with a segment: F1
  alone, on a weak detector, buys recall with a segment on every real
  video, which nobody can act on). Chosen over frame F1 because
  segments are what a user acts on: frame F1 is indifferent to a true
  segment reported as ten 40 ms fragments (the same frames) and is dominated
  by long segments, while segment F1 counts each reported segment once, as
  right (one annotated segment, IoU > 0.5, AV1M's rule) or wrong.

The run uses ``segment_f1`` when the validation data has annotated fake
segments and some threshold within the budget finds one of them (segment F1
above 0), else ``real_videos`` (where F1 is 0 at every threshold it cannot
choose: its tie-breaks would pick a threshold above every frame, a run that
never reports a segment; the budget's threshold at least reports what stands
out most on real-looking data, and the card says why); ``paper`` (0) is
always there. All three are
in the card (``config.json`` ``localization``, ``/v1/models``), with what
they were chosen on; any of them, or a number, can be asked for per request.

>>> card = calibrate(videos, 25.0, selection="av1m:val")  # doctest: +SKIP
>>> card.chosen, card.threshold  # doctest: +SKIP
('segment_f1', 0.83)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from featstore.trainers.localization import (
    DEFAULT_RULES,
    PAPER_RULES,
    SegmentRules,
    find_segments,
    smooth,
)
from featstore.trainers.localization_metrics import SEGMENT_IOU, localization_scores
from featstore.trainers.metrics import MetricError

if TYPE_CHECKING:
    from featstore.trainers.runs import Scored

log = logging.getLogger(__name__)

__all__ = [
    "LEGACY_CARD",
    "PAPER",
    "REAL_VIDEOS",
    "REAL_VIDEO_RATE",
    "SEGMENT_F1",
    "LocalizationCard",
    "calibrate",
    "calibrate_scored",
]

SEGMENT_F1, REAL_VIDEOS, PAPER = "segment_f1", "real_videos", "paper"
REAL_VIDEO_RATE = 0.05
N_LEVELS = 100  # candidate thresholds: quantiles of the smoothed validation frame scores


@dataclass(frozen=True)
class LocalizationCard:
    """What a run records about reading its frame scores: the rules (with the chosen
    threshold), every named threshold, and what they were chosen on.

    ``calibrated`` is False for runs written before thresholds were learnt
    (they keep the paper's reading: threshold 0, no post-processing).
    """

    rules: SegmentRules
    chosen: str
    thresholds: Mapping[str, float]
    calibrated_on: Mapping[str, Any] | None = field(default=None, repr=False)
    calibrated: bool = True

    def __post_init__(self) -> None:
        if self.chosen not in self.thresholds:
            raise MetricError(
                f"chosen threshold {self.chosen!r} is not among {list(self.thresholds)}"
            )
        object.__setattr__(
            self, "thresholds", {str(k): float(v) for k, v in self.thresholds.items()}
        )

    @property
    def threshold(self) -> float:
        return self.rules.threshold

    def describe(self) -> str:
        """One line: the threshold and what it was chosen on."""
        if not self.calibrated:
            return (
                "not calibrated: the run was written before frame thresholds were learnt; "
                "the paper's 0, no post-processing (train it again to calibrate)"
            )
        on = self.calibrated_on or {}
        if "note" in on:
            return f"{self.chosen} = {self.threshold:.4g}: not calibrated, {on['note']}"
        what = {
            SEGMENT_F1: f"max segment F1 at IoU {on.get('iou', SEGMENT_IOU):g} with at most "
            f"{on.get('real_video_rate', REAL_VIDEO_RATE):.0%} of real videos with a segment",
            REAL_VIDEOS: f"at most {on.get('real_video_rate', REAL_VIDEO_RATE):.0%} of real "
            "videos with a segment",
            PAPER: "the paper's 0",
        }.get(self.chosen, self.chosen)
        if self.chosen == REAL_VIDEOS and "segment_f1_note" in on:
            what += f" ({on['segment_f1_note']})"
        where = on.get("selection")
        counts = (
            f" ({on.get('n_real', 0)} real, {on.get('n_fake_annotated', 0)} annotated fake videos)"
            if where
            else ""
        )
        return f"{self.chosen} = {self.threshold:.4g}: {what}" + (
            f" on {where}{counts}" if where else ""
        )

    def resolve(
        self,
        threshold: str | float | None = None,
        *,
        smooth_s: float | None = None,
        min_segment_s: float | None = None,
        merge_gap_s: float | None = None,
    ) -> tuple[SegmentRules, str]:
        """The rules a request asks for: a named or numeric ``threshold`` (None: the
        run's) and post-processing overrides; with the name of the threshold used."""
        name, value = self.chosen, self.threshold
        if threshold is not None:
            name, value = self.named(threshold)
        rules = self.rules.with_(
            threshold=value, smooth_s=smooth_s, min_segment_s=min_segment_s, merge_gap_s=merge_gap_s
        )
        return rules, name

    def named(self, threshold: str | float) -> tuple[str, float]:
        """``(name, value)`` of a threshold given by name or as a number."""
        if isinstance(threshold, int | float) and not isinstance(threshold, bool):
            value = float(threshold)
        else:
            text = str(threshold).strip()
            if text in self.thresholds:
                return text, self.thresholds[text]
            try:
                value = float(text)
            except ValueError:
                raise MetricError(
                    f"threshold {text!r} is neither a number nor one of this run's named "
                    f"thresholds ({', '.join(self.thresholds)})"
                ) from None
        if not math.isfinite(value):
            raise MetricError(f"threshold must be finite, got {threshold!r}")
        return "given", value

    def to_dict(self) -> dict[str, Any]:
        return {
            "chosen": self.chosen,
            "threshold": self.threshold,
            "thresholds": dict(self.thresholds),
            "rules": self.rules.post_processing(),
            "calibrated_on": None if self.calibrated_on is None else dict(self.calibrated_on),
            "calibrated": self.calibrated,
            "description": self.describe(),
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> LocalizationCard:
        unknown = set(doc) - {
            "chosen", "threshold", "thresholds", "rules", "calibrated_on", "calibrated",
            "description",
        }  # fmt: skip
        if unknown:
            raise MetricError(f"unknown keys {sorted(unknown)} in a run's localization record")
        thresholds = {str(k): float(v) for k, v in dict(doc["thresholds"]).items()}
        chosen = str(doc["chosen"])
        rules = SegmentRules.from_dict({**dict(doc["rules"]), "threshold": thresholds[chosen]})
        return cls(
            rules=rules,
            chosen=chosen,
            thresholds=thresholds,
            calibrated_on=doc.get("calibrated_on"),
            calibrated=bool(doc.get("calibrated", True)),
        )


LEGACY_CARD = LocalizationCard(PAPER_RULES, PAPER, {PAPER: 0.0}, calibrated=False)
"""The card of a run written before calibration: the paper's reading, as those runs had."""


# ------------------------------------------------------------------ calibration


def _level(s: np.ndarray, frame_hz: float, rules: SegmentRules) -> float:
    """The threshold below which smoothed scores ``s`` give a segment (-inf: never)."""
    values = np.unique(s)  # ascending
    lo, hi, best = 0, values.size - 1, -math.inf

    def has_segment(v: float) -> bool:
        below = float(np.nextafter(v, -np.inf))  # s > below  <=>  s >= v
        return bool(find_segments(s, frame_hz, rules.with_(threshold=below), smoothed=True))

    while lo <= hi:  # has_segment holds for low values and fails above some level
        mid = (lo + hi) // 2
        if has_segment(float(values[mid])):
            best, lo = float(values[mid]), mid + 1
        else:
            hi = mid - 1
    return best


def _real_videos_threshold(levels: Sequence[float], rate: float) -> float | None:
    """The lowest threshold giving at most ``rate`` of the videos of ``levels`` a segment."""
    if not levels:
        return None
    desc = np.sort(np.asarray(levels, dtype=np.float64))[::-1]
    k = math.floor(rate * desc.size + 1e-9)  # videos allowed a segment
    if k >= desc.size:
        return None
    value = float(desc[k])  # videos with a level above it: at most k
    return value if math.isfinite(value) else None


def calibrate(
    videos: Sequence[tuple[int, np.ndarray, Sequence[Sequence[float]]]],
    frame_hz: float,
    *,
    post: SegmentRules = DEFAULT_RULES,
    selection: str | None = None,
    real_video_rate: float = REAL_VIDEO_RATE,
) -> LocalizationCard:
    """The card of ``(label, frame_scores [T], annotated segments)`` validation videos.

    ``post`` is the post-processing held fixed (its threshold is ignored).
    Fakes without annotated segments inform neither objective.
    """
    if not 0.0 <= real_video_rate < 1.0:
        raise MetricError(f"real_video_rate must be in [0, 1), got {real_video_rate}")
    smoothed = [
        (int(y), smooth(f, frame_hz, post.smooth_s), [tuple(s[:2]) for s in truth])
        for y, f, truth in videos
        if len(f)
    ]
    used = [(y, s, t) for y, s, t in smoothed if not y or t]
    reals = [s for y, s, _ in used if not y]
    n_annotated = sum(1 for y, _, _ in used if y)
    on: dict[str, Any] = {
        "selection": selection,
        "n_real": len(reals),
        "n_fake_annotated": n_annotated,
        "iou": SEGMENT_IOU,
        "real_video_rate": real_video_rate,
        "post_processing": post.post_processing(),
    }
    thresholds: dict[str, float] = {PAPER: 0.0}
    levels = [_level(s, frame_hz, post) for s in reals]
    real_thr = _real_videos_threshold(levels, real_video_rate)
    if real_thr is not None:
        thresholds[REAL_VIDEOS] = real_thr
    chosen = REAL_VIDEOS if real_thr is not None else PAPER
    if n_annotated:
        best = _best_segment_f1(
            used, frame_hz, post, extra=list(thresholds.values()), floor=real_thr
        )
        thresholds[SEGMENT_F1] = best["threshold"]
        on.update({k: v for k, v in best.items() if k != "threshold"})
        if best["segment_f1"] or real_thr is None:
            chosen = SEGMENT_F1
        else:  # no threshold within the budget finds a fake segment: F1 cannot choose
            on["segment_f1_note"] = (
                "segment F1 is 0 at every threshold within the real videos' budget: "
                "the budget's threshold is used"
            )
            log.warning("%s: %s", selection, on["segment_f1_note"])
    if chosen == PAPER:
        log.warning(
            "no real or annotated fake validation video to calibrate the frame threshold on "
            "(%s): keeping the paper's 0",
            selection,
        )
    return LocalizationCard(
        rules=post.with_(threshold=thresholds[chosen]),
        chosen=chosen,
        thresholds=thresholds,
        calibrated_on=on,
    )


def _score_at(
    used: Sequence[tuple[int, np.ndarray, Sequence[Sequence[float]]]],
    frame_hz: float,
    rules: SegmentRules,
) -> Any:
    videos = (
        (y, [x.to_list() for x in find_segments(s, frame_hz, rules, smoothed=True)], t, len(s))
        for y, s, t in used
    )
    return localization_scores(videos, frame_hz)


def _best_segment_f1(
    used: Sequence[tuple[int, np.ndarray, Sequence[Sequence[float]]]],
    frame_hz: float,
    post: SegmentRules,
    *,
    extra: Sequence[float],
    floor: float | None,
) -> dict[str, Any]:
    """The threshold of the highest segment F1 (then frame F1, then the higher threshold),
    at or above ``floor`` (the real videos' budget; None: any).

    Segment F1 only changes where some smoothed score is crossed, so the search
    runs over those values: ``N_LEVELS`` quantiles first, then every value (at
    most ``N_LEVELS``, evenly spaced) between the best one's neighbours, twice.
    """
    values = np.unique(np.concatenate([s for _, s, _ in used]))  # ascending
    if floor is not None:
        values = np.unique(np.concatenate([[floor], values[values >= floor]]))
        extra = [e for e in extra if e >= floor]
    qs = np.linspace(0.0, 1.0, N_LEVELS + 1)[1:-1]
    candidates = np.unique(np.concatenate([np.quantile(values, qs), np.asarray(extra, float)]))
    seen: dict[float, tuple[tuple[float, float, float], Any]] = {}
    for _ in range(3):
        for level in candidates:
            if float(level) not in seen:
                scores = _score_at(used, frame_hz, post.with_(threshold=float(level)))
                key = (scores.segment_f1 or 0.0, scores.frame_f1 or 0.0, float(level))
                seen[float(level)] = (key, scores)
        tried = np.array(sorted(seen))
        best_level = max(seen.values(), key=lambda v: v[0])[0][2]
        i = int(np.searchsorted(tried, best_level))
        lo = tried[i - 1] if i > 0 else -np.inf
        hi = tried[i + 1] if i + 1 < tried.size else np.inf
        inside = values[(values > lo) & (values < hi)]
        if inside.size == 0:
            break
        take = np.unique(np.linspace(0, inside.size - 1, min(inside.size, N_LEVELS)).astype(int))
        candidates = inside[take]
    key, best = max(seen.values(), key=lambda v: v[0])
    return {
        "threshold": key[2],
        "segment_f1": best.segment_f1,
        "segment_precision": best.segment_precision,
        "segment_recall": best.segment_recall,
        "frame_f1": best.frame_f1,
        "reals_with_segment": best.reals_with_segment,
        "fakes_with_segment": best.fakes_with_segment,
        "n_levels": len(seen),
    }


def calibrate_scored(
    scored: Scored,
    *,
    post: SegmentRules = DEFAULT_RULES,
    real_video_rate: float = REAL_VIDEO_RATE,
) -> LocalizationCard:
    """:func:`calibrate` on a run's scores of a validation selection."""
    if scored.frame_scores is None or not scored.frame_hz:
        raise MetricError(f"{scored.selection} has no per-frame scores to calibrate on")
    videos = list(
        zip(scored.labels.tolist(), scored.frame_scores, scored.fake_segments(), strict=True)
    )
    return calibrate(
        videos,
        float(scored.frame_hz),
        post=post,
        selection=scored.selection,
        real_video_rate=real_video_rate,
    )
