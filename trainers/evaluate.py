"""Evaluating runs on stored datasets: metrics, late fusion and correlation (thin shells).

- ``evaluate``: video-level AUC / AP / EER on the videos the evaluation
  filter counts (``featstore.trainers.evaluation_filter``: ``fakes="paper"``, the
  default, keeps reals and the fakes with both modalities manipulated where
  the dataset says so; ``"all"`` every fake), temporal AUC over the evaluated
  fake videos with annotated segments (paper Sec. 5.2), and AV-Deepfake1M's
  AP@IoU / AR@N (official semantics by default) for the segment proposals
  implied by the per-frame scores of the evaluated videos.
- ``fuse``: late fusion (average of probabilities) of several runs, with each
  member evaluated on the same videos; optionally a ``fusion`` run directory
  that holds copies of its members and scores like any other run.
- ``correlate``: Pearson correlation of the runs' probabilities and the
  relative improvement of each pair's fusion over each model (paper Fig. 5).

All three take the same ``fakes`` filter and record it with its counts, so a
run gives the same numbers on the same videos whichever of them computes them.

Runs of every kind are scored through ``featstore.trainers.kinds`` (``load(run)``, then
the detector's ``score_selection``): nothing here knows what a kind is.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from featstore.trainers.data import AUTO, Auto, Selection, split_hash
from featstore.trainers.evaluation_filter import PAPER, check_fakes, evaluated, filter_record
from featstore.trainers.kinds import Detector, load
from featstore.trainers.metrics_file import save_metrics
from featstore.trainers.runs import Run, RunError, Scored, write_predictions

if TYPE_CHECKING:
    from featstore.store import FeatureStore
    from featstore.trainers.cluster import TaskProgress
    from featstore.trainers.localization import Localization, SegmentRules
    from featstore.trainers.runcard import RunCard

log = logging.getLogger(__name__)

__all__ = [
    "Evaluation",
    "correlate",
    "evaluate",
    "evaluation",
    "fuse",
    "record",
    "record_evaluation",
    "scored_metrics",
]

RunLike = Detector | Run | str | os.PathLike[str]


def _detector(run: RunLike) -> Detector:
    return run if isinstance(run, Detector) else load(run)


def _mask(scored: Scored, fakes: str) -> np.ndarray:
    """``[N]`` the scored videos ``fakes`` counts (``featstore.trainers.evaluation_filter.evaluated``)."""
    return evaluated(scored.manifest, fakes, scored.manifest.attrs)


def _temporal(scored: Scored, mask: np.ndarray, fakes: str) -> dict[str, Any] | None:
    """Temporal AUC over the evaluated fake videos with segments (None when not defined).

    ``mask`` is the video-level metrics' evaluation mask, so the localization
    score covers the same fakes as AUC/AP (paper Sec. 5.2).
    """
    from featstore.trainers.metrics import MetricError, temporal_auc

    if scored.frame_scores is None or not scored.frame_hz:
        return None
    segments = scored.fake_segments()
    if not any(segments):
        return None
    videos = [
        (video, frames, segs)
        for video, frames, segs, keep in zip(
            scored.video_ids, scored.frame_scores, segments, mask, strict=True
        )
        if keep
    ]
    try:
        result = temporal_auc(videos, scored.frame_hz)
    except MetricError as exc:
        log.warning("temporal AUC of %s undefined: %s", scored.selection, exc)
        return None
    return {
        "mean": result.mean,
        "n_videos": result.n_videos,
        "n_skipped": result.n_skipped,
        "fakes": fakes,
    }


def _localize(scored: Scored, rules: SegmentRules) -> list[Localization] | None:
    """Each video's segments and proposals under ``rules`` (None: no per-frame scores)."""
    from featstore.trainers.localization import localize

    if scored.frame_scores is None or not scored.frame_hz:
        return None
    return [localize(f, scored.frame_hz, rules) for f in scored.frame_scores]


def _localization(
    scored: Scored,
    found: list[Localization] | None,
    mask: np.ndarray,
    semantics: str,
    fakes: str,
) -> dict[str, Any] | None:
    """AV1M's AP@IoU / AR@N of the ranked proposals of the (smoothed) per-frame scores.

    Over every evaluated video, reals included (as the official evaluation
    runs over its whole metadata file, here the one the filter ``mask``
    selects, as for AUC/AP); ``semantics`` is ``"official"`` (the tool's) or
    ``"corrected"`` (``featstore.trainers.segments``), recorded beside the numbers.
    """
    from featstore.trainers.segments import check_semantics, localization_metrics

    check_semantics(semantics)
    if found is None:
        return None
    keep = np.flatnonzero(mask)
    all_segments = scored.fake_segments()
    segments = [all_segments[i] for i in keep]
    if not any(segments):
        return None
    ids = [scored.video_ids[i] for i in keep]
    proposals = {v: list(found[i].proposals) for v, i in zip(ids, keep, strict=True)}
    truth = dict(zip(ids, segments, strict=True))
    values = localization_metrics(proposals, truth, semantics=semantics)
    return {
        "semantics": semantics,
        "n_videos": len(ids),
        "fakes": fakes,
        "smooth_s": found[0].rules.smooth_s if found else 0.0,
        "min_segment_s": found[0].rules.min_segment_s if found else 0.0,
    } | {k: float(v) for k, v in values.items()}


def _at_threshold(
    scored: Scored, found: list[Localization] | None, mask: np.ndarray
) -> dict[str, Any] | None:
    """Frame F1 / IoU and segment precision / recall at IoU 0.5 of the segments at the
    frame threshold, over the evaluated videos (None: no annotated segment or frames)."""
    from featstore.trainers.localization_metrics import localization_scores

    segments = scored.fake_segments()
    if found is None or not any(s for s, keep in zip(segments, mask, strict=True) if keep):
        return None
    videos = [
        (int(y), [x.to_list() for x in loc.segments], truth, len(frames))
        for y, loc, truth, frames, keep in zip(
            scored.labels, found, segments, scored.frame_scores or [], mask, strict=True
        )
        if keep
    ]
    return localization_scores(videos, float(scored.frame_hz or 0.0)).to_dict()


def _durations_s(scored: Scored) -> np.ndarray:
    """``[N]`` each video's scored length in seconds (its frame scores, else the manifest's)."""
    if scored.frame_scores is not None and scored.frame_hz:
        return np.array([len(f) / scored.frame_hz for f in scored.frame_scores], dtype=np.float64)
    if "duration_s" in scored.manifest.columns:
        return scored.manifest["duration_s"].to_numpy(dtype=np.float64)
    return np.full(len(scored.scores), np.nan)


def _duration(scored: Scored) -> dict[str, Any] | None:
    """How real videos' scores follow their duration (a length bias shows as r > 0)."""
    from scipy.stats import pearsonr, spearmanr

    real = scored.labels == 0
    d, s = _durations_s(scored)[real], scored.scores[real]
    keep = np.isfinite(d)
    d, s = d[keep], s[keep]
    if d.size < 3 or np.ptp(d) == 0 or np.ptp(s) == 0:
        return None
    return {
        "n_real": int(d.size),
        "pearson_r": float(pearsonr(d, s).statistic),
        "spearman_r": float(spearmanr(d, s).statistic),
        "min_s": float(d.min()),
        "max_s": float(d.max()),
    }


def _binary(
    labels: np.ndarray, scores: np.ndarray, *, ci: bool, n_resamples: int
) -> dict[str, Any]:
    from featstore.trainers.metrics import binary_metrics

    return binary_metrics(labels, scores, ci=ci, n_resamples=n_resamples).to_dict()


def _too_short(scored: Scored) -> dict[str, Any] | None:
    """Videos the detector left out as shorter than its kind's minimum (``Detector.select``)."""
    short = scored.manifest.attrs.get("too_short")
    if not short:
        return None
    ids = list(short["video_ids"])
    return {"min_rows": int(short["min_rows"]), "n": len(ids), "video_ids": ids[:20]}


def scored_metrics(
    scored: Scored,
    *,
    kind: str,
    ci: bool = False,
    n_resamples: int = 1000,
    rules: SegmentRules | None = None,
    threshold_name: str = "paper",
    card: RunCard | None = None,
    fakes: str = PAPER,
    segment_metrics: str = "official",
) -> tuple[dict[str, Any], np.ndarray, list[list[list[float]]] | None]:
    """``(metrics, evaluated mask, segments)`` of scored videos, as ``evaluate`` reports them
    (every detector's command uses this, so all report identical numbers).

    ``rules`` reads the per-frame scores (None: the paper's, threshold 0 and no
    post-processing); ``threshold_name`` and ``card`` say where they come from.
    ``fakes`` is the evaluation filter (``paper`` or ``all``) of AUC/AP/EER,
    the temporal AUC, AP/AR and the at-threshold scores alike; ``metrics``
    records it (``fakes``) and its counts (``filter``).
    """
    from featstore.trainers.localization import PAPER_RULES

    rules = PAPER_RULES if rules is None else rules
    fakes = check_fakes(fakes)
    mask = _mask(scored, fakes)
    found = _localize(scored, rules)
    localization_card = None if card is None else card.localization
    metrics: dict[str, Any] = {
        "selection": str(scored.selection),
        "view": scored.manifest.attrs.get("view"),  # the view a NAME:SPLIT resolved to
        "fakes": fakes,
        "filter": filter_record(scored.labels, mask, fakes).to_dict(),
        "kind": kind,
        "n_scored": len(scored.scores),
        "n_evaluated": int(mask.sum()),
        "split_hash": split_hash(scored.video_ids),
        "binary": _binary(scored.labels[mask], scored.scores[mask], ci=ci, n_resamples=n_resamples),
        "temporal": _temporal(scored, mask, fakes),
        "localization": _localization(scored, found, mask, segment_metrics, fakes),
        "threshold": rules.threshold,
        "frame_threshold": {
            "value": rules.threshold,
            "name": threshold_name,
            "rules": rules.to_dict(),
            "run_card": None if localization_card is None else localization_card.describe(),
        },
        "at_threshold": _at_threshold(scored, found, mask),
        "duration": _duration(scored),
        "too_short": _too_short(scored),
    }
    segments = None if found is None else [[x.to_list() for x in loc.segments] for loc in found]
    return metrics, mask, segments


def record_evaluation(
    run: Run,
    scored: Scored,
    metrics: dict[str, Any],
    segments: list[list[list[float]]] | None,
    *,
    slug: str,
) -> str:
    """Store a result in the run: ``metrics.json`` under its (selection, filter) key (the
    other filter's entry is kept) and ``predictions/<slug>.*``, whose ``evaluated``
    column marks the videos the paper's filter counts (every one counts under ``all``)."""
    key = save_metrics(run, metrics)
    paper = _mask(scored, PAPER)
    write_predictions(run, scored, evaluated=paper, segments=segments, slug=slug)
    return key


@dataclass(frozen=True)
class Evaluation:
    """What ``evaluate`` computes before writing it: metrics, the scores and the fake
    segments the frame scores imply (None: the kind has no frame scores)."""

    selection: Selection
    metrics: dict[str, Any]
    scored: Scored = field(repr=False)
    segments: list[list[list[float]]] | None = field(repr=False)


def windowed_scores(
    detector: Detector, store: FeatureStore, selection: Selection
) -> tuple[Scored, dict[str, np.ndarray]]:
    """``detector.score_windows`` as a cluster scorer (``featstore.trainers.cluster``): the scores
    and ``windowed`` ``[n]`` (whether each video was scored in windows)."""
    scored, results = detector.score_windows(store, selection)
    return scored, {"windowed": np.array([bool(r.windowed) for r in results], dtype=bool)}


def evaluation(
    run_dir: RunLike,
    store: FeatureStore,
    on: Selection | str,
    *,
    ci: bool = False,
    n_resamples: int = 1000,
    threshold: str | float | None = None,
    smooth_s: float | None = None,
    min_segment_s: float | None = None,
    merge_gap_s: float | None = None,
    windows: bool = False,
    allow_missing: bool = False,
    fakes: str = PAPER,
    segment_metrics: str = "official",
    scored: Scored | None = None,
    n_windowed: int | None = None,
) -> Evaluation:
    """``evaluate`` without writing (a cluster task returns this; ``record`` writes it).

    ``scored``: the selection's scores when already computed (e.g. partition
    by partition on a cluster; with ``windows``, ``n_windowed`` says how many
    videos were scored in windows), else the detector scores ``on`` here.
    """
    fakes = check_fakes(fakes)  # before scoring: a typo fails at once
    detector = _detector(run_dir)
    sel = Selection.parse(on, default_split="test")
    rules, name = detector.localization.resolve(
        threshold, smooth_s=smooth_s, min_segment_s=min_segment_s, merge_gap_s=merge_gap_s
    )
    windowed = None
    if scored is None:
        if windows:
            scored, results = detector.score_windows(store, sel, allow_missing=allow_missing)
            n_windowed = sum(r.windowed for r in results)
        else:
            scored = detector.score_selection(store, sel, allow_missing=allow_missing)
    if windows:
        windowed = {
            **detector.window_rule.to_dict(),
            "n_windowed": int(n_windowed or 0),
            "length_profile": None if detector.lengths is None else detector.lengths.to_dict(),
        }
    metrics, _, segments = scored_metrics(
        scored,
        kind=detector.kind,
        ci=ci,
        n_resamples=n_resamples,
        rules=rules,
        threshold_name=name,
        card=detector.card,
        fakes=fakes,
        segment_metrics=segment_metrics,
    )
    metrics["windows"] = windowed
    return Evaluation(sel, metrics, scored, segments)


def record(run: Run, result: Evaluation) -> str:
    """Write an evaluation into a run (``record_evaluation``): ``metrics.json`` under its
    (selection, filter) key, ``predictions/``."""
    return record_evaluation(
        run, result.scored, result.metrics, result.segments, slug=result.selection.slug
    )


def evaluate(
    run_dir: RunLike,
    store: FeatureStore,
    on: Selection | str,
    *,
    ci: bool = False,
    n_resamples: int = 1000,
    threshold: str | float | None = None,
    smooth_s: float | None = None,
    min_segment_s: float | None = None,
    merge_gap_s: float | None = None,
    windows: bool = False,
    allow_missing: bool = False,
    fakes: str = PAPER,
    segment_metrics: str = "official",
    write: bool = True,
    cluster: Any = None,
    n_workers: int = 2,
    on_progress: Callable[[TaskProgress], None] | None = None,
) -> dict[str, Any]:
    """Score ``on`` (``NAME[@VIEW][:SPLIT]``, bare name = ``test``) with a run and compute its metrics.

    Video-level metrics count the videos of the evaluation filter ``fakes``:
    ``"paper"`` (the paper's rule: reals and only the fakes with both
    modalities manipulated, where known) or ``"all"`` (every fake); so do the
    temporal localization AUC and AP/AR.
    AV-Deepfake1M's AP/AR use ``segment_metrics`` semantics: ``"official"``
    (the official tool's, the default) or ``"corrected"``.

    Segments (``at_threshold``: frame F1 / IoU, segment precision / recall at
    IoU 0.5; the AP/AR proposals; ``predictions/*.segments.json``) follow the
    run's card: its calibrated frame threshold and post-processing
    (``featstore.trainers.calibration``), each overridable (``threshold``: a number or
    a name of the card, e.g. ``"paper"``). Videos are scored whole, as the
    paper does; ``windows=True`` scores longer ones in windows of the
    training length (``featstore.trainers.windows``, recorded under ``windows``).
    Videos shorter than the kind's minimum are left out and listed
    (``too_short``); ``duration`` is the correlation of real videos' scores
    with their length.

    ``run_dir`` is a run directory of any kind or a loaded detector. Writes
    ``metrics.json`` (under the key ``NAME:SPLIT``, ``NAME:SPLIT|fakes=all``
    for the ``all`` filter: ``featstore.trainers.metrics_file``) and
    ``predictions/NAME_SPLIT.*`` into the run unless ``write=False`` (or the
    detector has no run directory); returns
    the metrics dict: ``binary`` (AUC, AP, EER, optional 95 % CIs),
    ``temporal`` and ``localization`` (``None`` when the dataset has no
    segments or the run no per-frame scores).

    ``cluster`` (``"local"``, ``"tcp://HOST:PORT"`` or a ``distributed.Client``)
    scores the videos on Dask, a partition of videos per task
    (``featstore.trainers.cluster``), to the same numbers; an interrupted run resumes
    from the partitions it finished (kept in the run directory until done).
    """
    fakes = check_fakes(fakes)  # before scoring: a typo fails at once
    if cluster is not None:
        from featstore.cluster import check_cluster

        check_cluster(cluster)
    detector = _detector(run_dir)
    scored = None
    n_windowed = None
    if cluster is not None:
        from featstore.trainers.cluster import PARTITIONS, score_on_cluster

        resume = None
        if write and detector.run is not None:
            resume = detector.run.path / PARTITIONS
        scored, extras = score_on_cluster(
            detector,
            store,
            on,
            cluster=cluster,
            n_workers=n_workers,
            allow_missing=allow_missing,
            scorer=windowed_scores if windows else None,
            resume_dir=resume,
            on_progress=on_progress,
        )
        if windows:
            n_windowed = int(extras["windowed"].sum()) if "windowed" in extras else 0
    result = evaluation(
        detector,
        store,
        on,
        ci=ci,
        n_resamples=n_resamples,
        threshold=threshold,
        smooth_s=smooth_s,
        min_segment_s=min_segment_s,
        merge_gap_s=merge_gap_s,
        windows=windows,
        allow_missing=allow_missing,
        fakes=fakes,
        segment_metrics=segment_metrics,
        scored=scored,
        n_windowed=n_windowed,
    )
    if write and detector.run is not None:
        record(detector.run, result)
        if cluster is not None:
            from featstore.trainers.cluster import PARTITIONS, clear_partitions

            clear_partitions(detector.run.path / PARTITIONS, result.selection)
    return result.metrics


# ------------------------------------------------------------------ fusion


def _fusion(
    run_dirs: Sequence[RunLike],
    what: str,
    how: str = "intersect",
    weights: Sequence[float] | None = None,
) -> Any:
    """The runs as one in-memory fusion (``featstore.trainers.kinds.fusion``)."""
    from featstore.trainers.kinds.fusion import in_memory

    detectors = [_detector(r) for r in run_dirs]
    if len(detectors) < 2:
        raise RunError(f"{what} needs at least two runs")
    return in_memory(detectors, how=how, weights=weights)


def fuse(
    run_dirs: Sequence[RunLike],
    store: FeatureStore,
    on: Selection | str,
    *,
    out: str | os.PathLike[str] | None = None,
    how: str = "intersect",
    weights: Sequence[float] | None = None,
    ci: bool = False,
    n_resamples: int = 1000,
    calibrate_on: Selection | str | Auto | None = AUTO,
    overwrite: bool = False,
    allow_missing: bool = False,
    fakes: str = PAPER,
) -> dict[str, Any]:
    """Late fusion of runs on ``on``: metrics of every member and of the fusion, same videos.

    The videos are those every member scored, counted by the evaluation
    filter ``fakes`` (``paper`` or ``all``), so a member's numbers equal
    ``evaluate``'s on the same videos. With ``out``, writes a ``fusion`` run
    holding copies of its members (so it stays valid when the originals
    move), its metrics and predictions; its frame threshold is calibrated on
    ``calibrate_on`` (``AUTO``: the validation selection all members were
    trained with, when they share one).
    """
    from featstore.trainers.kinds import fusion as fusion_kind
    from featstore.trainers.runs import check_writable

    fusion = _fusion(run_dirs, "fusion", how, weights)
    if out is not None:
        check_writable(out, overwrite=overwrite)
    fakes = check_fakes(fakes)
    sel = Selection.parse(on, default_split="test")
    result_scores = fusion.score_members(store, sel, allow_missing=allow_missing)
    fused, probs = result_scores.fused, result_scores.probabilities  # [N], [M, N]
    mask = _mask(fused, fakes)
    labels = fused.labels[mask]
    result: dict[str, Any] = {
        "selection": str(sel),
        "fakes": fakes,
        "filter": filter_record(fused.labels, mask, fakes).to_dict(),
        "n_scored": len(fused.scores),
        "n_evaluated": int(mask.sum()),
        "split_hash": split_hash(fused.video_ids),
        "members": {
            name: _binary(labels, probs[i][mask], ci=ci, n_resamples=n_resamples)
            for i, name in enumerate(result_scores.names)
        },
        "fused": _binary(labels, fused.scores[mask], ci=ci, n_resamples=n_resamples),
    }
    if out is not None:
        run = fusion_kind.train(
            fusion, out=out, store=store, fused_on=sel, calibrate_on=calibrate_on,
            allow_missing=allow_missing, overwrite=True,
        )  # fmt: skip
        fusion.card = load(run).card  # the card fusion_kind.train recorded
        rules, name = fusion.localization.resolve()
        metrics, _, segments = scored_metrics(
            fused, kind=fusion_kind.KIND, ci=ci, n_resamples=n_resamples, rules=rules,
            threshold_name=name, card=fusion.card, fakes=fakes,
        )  # fmt: skip
        record_evaluation(run, fused, metrics, segments, slug=sel.slug)
        result["out"] = str(run.path)
    return result


# ------------------------------------------------------------- correlation


def _matrix_csv(path: Path, matrix: np.ndarray, names: Sequence[str]) -> None:
    import csv

    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["model", *names])
        for name, row in zip(names, matrix, strict=True):
            writer.writerow([name, *(f"{v:.6f}" for v in row)])


def correlate(
    run_dirs: Sequence[RunLike],
    store: FeatureStore,
    on: Selection | str,
    *,
    out_dir: str | os.PathLike[str],
    metric: str = "auc",
    allow_missing: bool = False,
    plot_format: str = "png",
    fakes: str = PAPER,
) -> dict[str, Any]:
    """Pearson correlation and pairwise-fusion relative improvement of runs on ``on``.

    Computed on the videos every run scored that the evaluation filter
    ``fakes`` (``paper`` or ``all``) counts. Writes
    ``correlation.{csv,json}`` and ``improvement.{csv,json}`` (rows: the model
    being improved, columns: its fusion partner; percent) and a heatmap of each
    as ``<stem>.<plot_format>`` (png, pdf or svg): Pearson on a fixed [-1, 1]
    diverging scale, the improvement centred on 0 with its diagonal (a model
    fused with itself) masked; captions give n and the evaluation filter.
    """
    import json

    from featstore.trainers.correlation import pearson_matrix, relative_improvement
    from featstore.trainers.figures import filter_text, short_labels
    from featstore.trainers.plots import heatmap_png

    fakes = check_fakes(fakes)
    fusion = _fusion(run_dirs, "correlation")
    sel = Selection.parse(on, default_split="test")
    scores = fusion.score_members(store, sel, allow_missing=allow_missing)
    names = list(scores.names)
    mask = _mask(scores.fused, fakes)
    probs, labels = scores.probabilities[:, mask], scores.fused.labels[mask]  # [M, N], [N]
    pearson = pearson_matrix(probs)  # [M, M]
    improvement = relative_improvement(labels, probs, metric=metric)  # [M, M], percent
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n, n_fake = int(mask.sum()), int(np.sum(labels == 1))
    short, dropped = short_labels(names)
    videos = f"{sel}, n = {n} videos ({n - n_fake} real / {n_fake} fake), {filter_text(fakes)}" + (
        f"; model names without their common '{dropped}'" if dropped else ""
    )
    files: dict[str, str] = {}
    for stem, matrix, heatmap in (
        (
            "correlation",
            pearson,
            {
                "title": "Pearson correlation of P(fake)",
                "caption": f"Pearson correlation of the models' probabilities on {videos}.",
                "value_format": "{:.2f}",
                "cmap": "RdBu_r",
                "limits": (-1.0, 1.0),
                "colorbar_label": "Pearson r",
            },
        ),
        (
            "improvement",
            improvement,
            {
                "title": f"relative {metric.upper()} gain of fusion, %",
                "caption": (
                    f"Relative {metric.upper()} improvement (%) of the row's model when fused "
                    f"with the column's (average of probabilities), on {videos}."
                ),
                "value_format": "{:+.1f}",
                "cmap": "RdBu",
                "center": 0.0,
                "mask_diagonal": True,
                "colorbar_label": "%",
            },
        ),
    ):
        _matrix_csv(out / f"{stem}.csv", matrix, names)
        doc = {
            "selection": str(sel),
            "n": n,
            "n_real": n - n_fake,
            "n_fake": n_fake,
            "fakes": fakes,
            "names": names,
            "matrix": matrix.tolist(),
        }
        (out / f"{stem}.json").write_text(json.dumps(doc, indent=2) + "\n")
        heatmap_png(
            matrix,
            out / f"{stem}.{plot_format}",
            row_labels=short,
            col_labels=short,
            **heatmap,
        )
        files.update(
            {f"{stem}.{ext}": str(out / f"{stem}.{ext}") for ext in ("csv", "json", plot_format)}
        )
    return {
        "selection": str(sel),
        "n": n,
        "n_real": n - n_fake,
        "n_fake": n_fake,
        "fakes": fakes,
        "filter": filter_record(scores.fused.labels, mask, fakes).to_dict(),
        "names": names,
        "metric": metric,
        "pearson": pearson.tolist(),
        "relative_improvement": improvement.tolist(),
        "files": files,
    }
