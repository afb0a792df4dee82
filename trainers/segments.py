"""AV-Deepfake1M's segment metrics (AP@IoU, AR@N) and its submission file formats.

Definitions follow the official evaluation (``avdeepfake1m.evaluation.ap_ar_1d``,
itself the LAV-DF / BA-TFD ``AP`` and ``AR`` metrics), re-implemented here:

- The evaluated videos are the keys of ``truth`` (every metadata entry, real
  videos included: their proposals are all false positives). Each needs an
  entry in ``proposals`` (an empty list is a valid "nothing found").
- IoU of two segments is intersection over union; a proposal matches a truth
  segment when the IoU is *strictly greater* than the threshold.
- AP: within a video, each truth segment in turn takes the highest-ranked not
  yet taken proposal that matches it (one-to-one); all proposals of all videos are then
  ranked by confidence (stable sort, so ties keep input order), precision and
  recall are accumulated over the ranking, and AP is the area under the
  precision envelope ``sum_k (R_k - R_{k-1}) max_{j >= k} P_j``.
- AR@N: per video, the top N proposals; a truth segment is recalled at an IoU
  threshold when any of them matches it (no one-to-one matching); true
  positives and misses are summed over all videos (recall over all truth
  segments, not a mean of per-video recalls), then recall is averaged over
  the IoU thresholds 0.5:0.05:0.95.

Two semantics (``SEMANTICS``); the default, ``"official"``, is what the tool
computes, hence what published AV-Deepfake1M numbers mean:

1. Numbers are float32 (confidences, bounds, IoUs, thresholds), so
   confidences equal in float32 tie, and ties keep input order (the file's
   video order, then each video's proposal order).
2. Each video's proposals are used in *file order*, both for "top N" and for
   which proposal a truth segment takes (every official pipeline writes them
   sorted by confidence; ``featstore.trainers.temporal.proposals_from_scores`` does).
3. The precision-recall curve lacks the recall-0 end point, so the step of the
   top-ranked proposal, ``R_1 * max_j P_j``, is left out of AP (one true
   proposal for one truth segment gets AP 0): at most ``1 / n_truth`` less.
4. The tool panics on a video with an empty proposal list, so a file meant
   for it carries one placeholder proposal there (``official_proposals``,
   ``write_proposals``): a zero-length segment at 0 s ranked below every
   other proposal. It never matches, so its truth segments count as missed
   in AR and AP does not change; an empty list is evaluated as that file.

``"corrected"`` keeps the definitions and fixes the quirks: float64
throughout, each video's proposals sorted by confidence (descending, stable)
first, and AP counts the first step. Both agree on empty lists (missed).

>>> segment_iou((0.0, 2.0), (1.0, 3.0))
0.3333333333333333
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from featstore.trainers.metrics import MetricError

__all__ = [
    "AP_IOU_THRESHOLDS",
    "AR_IOU_THRESHOLDS",
    "AR_N_PROPOSALS",
    "SEMANTICS",
    "ResultFileError",
    "check_semantics",
    "iou_matrix",
    "localization_metrics",
    "official_proposals",
    "read_proposals",
    "read_score_file",
    "segment_ap",
    "segment_ar",
    "segment_iou",
    "truth_from_metadata",
    "write_proposals",
    "write_score_file",
]

logger = logging.getLogger(__name__)

AP_IOU_THRESHOLDS: tuple[float, ...] = (0.5, 0.75, 0.9, 0.95)
AR_N_PROPOSALS: tuple[int, ...] = (50, 30, 20, 10, 5)
AR_IOU_THRESHOLDS: tuple[float, ...] = tuple(
    float(t) for t in np.round(np.arange(0.5, 1.0, 0.05), 2)
)
SEMANTICS: tuple[str, ...] = ("official", "corrected")

Proposals = Mapping[str, Sequence[Sequence[float]]]  # file -> [(confidence, start_s, end_s)]
Truth = Mapping[str, Sequence[Sequence[float]]]  # file -> [(start_s, end_s)]


class ResultFileError(MetricError):
    """A score or proposal file is malformed."""


def check_semantics(semantics: str) -> str:
    """``semantics`` if it is one of ``SEMANTICS``, else a ``MetricError``."""
    if semantics not in SEMANTICS:
        raise MetricError(
            f"unknown segment metric semantics {semantics!r} (choose from {', '.join(SEMANTICS)})"
        )
    return semantics


def segment_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two ``(start, end)`` segments; 0 when both are empty."""
    return float(iou_matrix(np.asarray([a], dtype=np.float64), np.asarray([b]))[0, 0])


def iou_matrix(props: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """``[P, G]`` IoU of every ``props [P, 2]`` segment with every ``truth [G, 2]`` segment.

    Float32 inputs give float32 IoUs (as the official tool computes them).
    """
    p, g = np.asarray(props), np.asarray(truth)
    dtype = np.result_type(p.dtype, g.dtype, np.float32)
    if p.size == 0 or g.size == 0:
        return np.zeros((p.reshape(-1, 2).shape[0], g.reshape(-1, 2).shape[0]), dtype=dtype)
    if p.ndim != 2 or p.shape[1] != 2 or g.ndim != 2 or g.shape[1] != 2:
        raise MetricError(f"segments must be [N, 2] (start, end), got {p.shape} and {g.shape}")
    p, g = p.astype(dtype), g.astype(dtype)
    inter = np.minimum(p[:, None, 1], g[None, :, 1]) - np.maximum(p[:, None, 0], g[None, :, 0])
    inter = np.maximum(inter, 0)  # [P, G]
    # Where they overlap, the union is the hull; elsewhere the IoU is 0 whatever the union.
    hull = np.maximum(p[:, None, 1], g[None, :, 1]) - np.minimum(p[:, None, 0], g[None, :, 0])
    safe = np.where(hull > 0, hull, 1)
    return np.where(hull > 0, inter / safe, 0).astype(dtype)  # [P, G]


def _as_rows(name: str, rows: Any, width: int) -> np.ndarray:
    """``[N, width]`` float64 rows, finite, with ``end >= start`` in the last two columns."""
    try:
        a = np.asarray(rows, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise MetricError(f"{name}: rows must be numbers, got {rows!r:.80}") from exc
    if a.size == 0:
        return np.zeros((0, width))
    if a.ndim != 2 or a.shape[1] != width:
        raise MetricError(f"{name}: expected rows of {width} numbers, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise MetricError(f"{name}: NaN or infinite values")
    if np.any(a[:, -1] < a[:, -2]):
        raise MetricError(f"{name}: a segment ends before it starts")
    return a


def _videos(
    proposals: Proposals, truth: Truth, semantics: str
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per truth video: ``(confidence [P], bounds [P, 2], truth [G, 2])`` as evaluated.

    Official: float32, file order, an empty list replaced by the placeholder
    (confidence -inf: ranked below everything, as the file's placeholder is).
    Corrected: float64, each video's proposals ranked by confidence.
    """
    official = check_semantics(semantics) == "official"
    missing = [f for f in truth if f not in proposals]
    if missing:
        raise MetricError(
            f"{len(missing)} videos have no proposals entry (e.g. {missing[0]!r}); "
            "give an empty list for a video with nothing found"
        )
    extra = len(set(proposals) - set(truth))
    if extra:
        logger.warning("ignoring proposals of %d videos that are not in the truth", extra)
    dtype = np.float32 if official else np.float64
    out = []
    for file, segments in truth.items():
        gt = _as_rows(f"truth of {file!r}", segments, 2)
        rows = _as_rows(f"proposals of {file!r}", proposals[file], 3)
        if official and rows.shape[0] == 0:
            rows = np.array([[-np.inf, 0.0, 0.0]])  # quirk 4: the placeholder
        elif not official:
            rows = rows[np.argsort(-rows[:, 0], kind="stable")]
        out.append((rows[:, 0].astype(dtype), rows[:, 1:].astype(dtype), gt.astype(dtype)))
    if not any(gt.shape[0] for _, _, gt in out):
        raise MetricError("the truth holds no fake segment: AP and AR are undefined")
    return out


def _check_thresholds(thresholds: Iterable[float]) -> tuple[float, ...]:
    ts = tuple(float(t) for t in thresholds)
    if not ts or not all(0.0 <= t < 1.0 for t in ts):
        raise MetricError(f"IoU thresholds must be a non-empty list in [0, 1), got {ts}")
    return ts


def _match(candidates: np.ndarray) -> np.ndarray:
    """``[P]`` true-positive flags: each truth column takes the first free candidate row."""
    taken = np.zeros(candidates.shape[0], dtype=bool)
    for g in range(candidates.shape[1]):
        free = np.flatnonzero(candidates[:, g] & ~taken)
        if free.size:
            taken[free[0]] = True
    return taken


def _average_precision(is_tp: np.ndarray, n_truth: int, official: bool) -> float:
    """Area under the precision envelope of a ranked ``is_tp [N]`` list."""
    if is_tp.size == 0:
        return 0.0
    tp = np.cumsum(is_tp)
    precision = tp / np.arange(1, is_tp.size + 1)
    recall = tp / n_truth
    envelope = np.maximum.accumulate(precision[::-1])[::-1]  # max precision at ranks >= k
    steps = np.diff(recall, prepend=0.0)
    if official:
        steps[0] = 0.0  # the tool's curve has no recall-0 point (quirk 3)
    return float(np.sum(steps * envelope))


def segment_ap(
    proposals: Proposals,
    truth: Truth,
    *,
    iou_thresholds: Iterable[float] = AP_IOU_THRESHOLDS,
    semantics: str = "official",
) -> dict[float, float]:
    """AP at each IoU threshold over all videos of ``truth`` (see the module docstring).

    ``proposals``: ``{file: [(confidence, start_s, end_s), ...]}``;
    ``truth``: ``{file: [(start_s, end_s), ...]}``, empty for real videos;
    ``semantics``: ``"official"`` (the tool's) or ``"corrected"``.
    """
    thresholds = _check_thresholds(iou_thresholds)
    videos = _videos(proposals, truth, semantics)
    official = semantics == "official"
    n_truth = sum(gt.shape[0] for _, _, gt in videos)
    confidence = np.concatenate([c for c, _, _ in videos])  # [N], float32 when official
    order = np.argsort(-confidence, kind="stable")
    ious = [iou_matrix(bounds, gt) for _, bounds, gt in videos]  # each [P, G]
    result: dict[float, float] = {}
    for t in thresholds:
        thr = np.float32(t) if official else t
        is_tp = np.concatenate([_match(iou > thr) for iou in ious])  # [N]
        result[t] = _average_precision(is_tp[order], n_truth, official)
    return result


def segment_ar(
    proposals: Proposals,
    truth: Truth,
    *,
    n_proposals: Iterable[int] = AR_N_PROPOSALS,
    iou_thresholds: Iterable[float] = AR_IOU_THRESHOLDS,
    semantics: str = "official",
) -> dict[int, float]:
    """AR@N for each N: recall of all truth segments by each video's top N, averaged over IoUs."""
    ns = tuple(int(n) for n in n_proposals)
    if not ns or min(ns) < 1:
        raise MetricError(f"n_proposals must be a non-empty list of positive counts, got {ns}")
    videos = _videos(proposals, truth, semantics)
    thresholds = np.asarray(
        _check_thresholds(iou_thresholds),
        dtype=np.float32 if semantics == "official" else np.float64,
    )
    tp = np.zeros((thresholds.size, len(ns)), dtype=np.int64)  # [T, N]
    n_truth = 0
    for _, bounds, gt in videos:
        n_truth += gt.shape[0]
        kept = bounds[: max(ns)]  # [P', 2]
        if kept.shape[0] == 0 or gt.shape[0] == 0:
            continue  # nothing proposed: every truth segment of the video is missed
        best = np.maximum.accumulate(iou_matrix(kept, gt), axis=0)  # [P', G] best IoU in top k+1
        best_at = best[np.minimum(ns, kept.shape[0]) - 1]  # [N, G]
        tp += (best_at[None] > thresholds[:, None, None]).sum(axis=-1)
    recall = tp / n_truth  # [T, N]
    return {n: float(r) for n, r in zip(ns, recall.mean(axis=0), strict=True)}


def localization_metrics(
    proposals: Proposals, truth: Truth, *, semantics: str = "official"
) -> dict[str, float]:
    """The AV-Deepfake1M table: ``AP@0.5 .. AP@0.95`` and ``AR@50 .. AR@5``."""
    ap = segment_ap(proposals, truth, semantics=semantics)
    ar = segment_ar(proposals, truth, semantics=semantics)
    return {f"AP@{t:g}": v for t, v in ap.items()} | {f"AR@{n}": v for n, v in ar.items()}


def truth_from_metadata(
    entries: Iterable[Mapping[str, Any]], *, segments_key: str = "fake_segments"
) -> dict[str, list[tuple[float, float]]]:
    """``{file: [(start_s, end_s), ...]}`` from AV-Deepfake1M metadata entries."""
    truth: dict[str, list[tuple[float, float]]] = {}
    for i, entry in enumerate(entries):
        try:
            file, segments = entry["file"], entry[segments_key]
        except (KeyError, TypeError) as exc:
            raise MetricError(f"metadata entry {i} lacks 'file' or {segments_key!r}") from exc
        if file in truth:
            raise MetricError(f"metadata lists {file!r} twice")
        rows = _as_rows(f"metadata of {file!r}", segments, 2)
        truth[file] = [(float(s), float(e)) for s, e in rows]
    return truth


def _check_file_name(file: Any) -> str:
    if not isinstance(file, str) or not file or any(c in file for c in ";\n\r"):
        raise ResultFileError(
            f"file names must be non-empty strings without ';' or newlines: {file!r}"
        )
    return file


def write_score_file(path: str | os.PathLike[str], scores: Mapping[str, float]) -> None:
    """Write the official ``file;score`` lines (one video per line, higher = more fake)."""
    lines = []
    for file, score in scores.items():
        value = float(score)
        if not math.isfinite(value):
            raise ResultFileError(f"score of {file!r} is not finite: {score!r}")
        lines.append(f"{_check_file_name(file)};{value!r}\n")
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(lines)


def read_score_file(path: str | os.PathLike[str]) -> dict[str, float]:
    """Read ``file;score`` lines; blank lines are skipped, anything else malformed raises."""
    scores: dict[str, float] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            parts = line.rstrip("\r\n").split(";")
            where = f"{os.fspath(path)}:{lineno}"
            if len(parts) != 2 or not parts[0]:
                raise ResultFileError(f"{where}: expected 'file;score', got {line.strip()!r}")
            try:
                value = float(parts[1])
            except ValueError:
                raise ResultFileError(f"{where}: score {parts[1]!r} is not a number") from None
            if not math.isfinite(value):
                raise ResultFileError(f"{where}: score {parts[1]!r} is not finite")
            if parts[0] in scores:
                raise ResultFileError(f"{where}: {parts[0]!r} is listed twice")
            scores[parts[0]] = value
    return scores


def _proposal_rows(file: Any, rows: Any) -> list[list[float]]:
    _check_file_name(file)
    try:
        a = _as_rows(f"proposals of {file!r}", rows, 3)
    except MetricError as exc:
        raise ResultFileError(str(exc)) from exc
    return [[float(c), float(s), float(e)] for c, s, e in a]


def official_proposals(proposals: Proposals) -> dict[str, list[list[float]]]:
    """The proposals as a file for the official tool: every video gets at least one.

    The tool panics on an empty list, so such a video gets one placeholder,
    ``[c, 0.0, 0.0]``: a zero-length segment (IoU 0 with everything, so it
    never matches) whose confidence ``c`` is the next float32 below the
    file's lowest confidence (so it ranks last and leaves AP unchanged). AR
    then counts that video's truth segments as missed, as both semantics here
    do. Other rows are kept as given, in their order.
    """
    data = {file: _proposal_rows(file, rows) for file, rows in proposals.items()}
    empty = [file for file, rows in data.items() if not rows]
    if empty:
        lowest = min((r[0] for rows in data.values() for r in rows), default=0.0)
        below = float(np.nextafter(np.float32(lowest), np.float32(-np.inf)))
        if not math.isfinite(below):
            raise ResultFileError(
                "no float32 confidence lies below the lowest one for the placeholder proposals"
            )
        for file in empty:
            data[file] = [[below, 0.0, 0.0]]
        logger.info(
            "%d videos without proposals get a placeholder (confidence %g)", len(empty), below
        )
    return data


def write_proposals(path: str | os.PathLike[str], proposals: Proposals) -> None:
    """Write ``{file: [[confidence, start_s, end_s], ...]}`` JSON the official tool can read.

    Videos without proposals get the placeholder of ``official_proposals``, so
    the file evaluates to the same AP/AR here and in the official tool.
    """
    data = official_proposals(proposals)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f)


def read_proposals(path: str | os.PathLike[str]) -> dict[str, list[tuple[float, float, float]]]:
    """Read a proposals JSON file, checking every row is ``[confidence, start_s, end_s]``."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as exc:
        raise ResultFileError(f"{os.fspath(path)}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ResultFileError(f"{os.fspath(path)}: expected a JSON object {{file: [[c, s, e]]}}")
    return {
        file: [(c, s, e) for c, s, e in _proposal_rows(file, rows)] for file, rows in data.items()
    }
