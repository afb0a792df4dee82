"""Evaluating runs on stored datasets: metrics, late fusion and correlation (thin shells).

- ``evaluate``: video-level AUC / AP / EER on the videos the evaluation
  filter counts (``trainers.evaluation_filter``: ``fakes="paper"``, the
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

Runs of every kind are scored through ``trainers.kinds`` (``load(run)``, then
the detector's ``score_selection``): nothing here knows what a kind is.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from trainers.data import Selection, split_hash
from trainers.evaluation_filter import PAPER, check_fakes, evaluated, filter_record
from trainers.kinds import Detector, load
from trainers.metrics_file import save_metrics
from trainers.runs import Run, RunError, Scored, write_predictions

if TYPE_CHECKING:
    from featstore.store import FeatureStore

log = logging.getLogger(__name__)

__all__ = ["correlate", "evaluate", "fuse", "record_evaluation", "scored_metrics"]

RunLike = Detector | Run | str | os.PathLike[str]


def _detector(run: RunLike) -> Detector:
    return run if isinstance(run, Detector) else load(run)


def _mask(scored: Scored, fakes: str) -> np.ndarray:
    """``[N]`` the scored videos ``fakes`` counts (``trainers.evaluation_filter.evaluated``)."""
    return evaluated(scored.manifest, fakes, scored.manifest.attrs)


def _temporal(scored: Scored, mask: np.ndarray, fakes: str) -> dict[str, Any] | None:
    """Temporal AUC over the evaluated fake videos with segments (None when not defined).

    ``mask`` is the video-level metrics' evaluation mask, so the localization
    score covers the same fakes as AUC/AP (paper Sec. 5.2).
    """
    from trainers.metrics import MetricError, temporal_auc

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


def _localization(
    scored: Scored, mask: np.ndarray, semantics: str, fakes: str
) -> dict[str, Any] | None:
    """AV1M's AP@IoU / AR@N of the proposals implied by the per-frame scores.

    Over every evaluated video, reals included (as the official evaluation
    runs over its whole metadata file, here the one the filter ``mask``
    selects, as for AUC/AP); ``semantics`` is ``"official"`` (the tool's) or
    ``"corrected"`` (``trainers.segments``), recorded beside the numbers.
    """
    from trainers.segments import check_semantics, localization_metrics
    from trainers.temporal import proposals_from_scores

    check_semantics(semantics)
    if scored.frame_scores is None or not scored.frame_hz:
        return None
    keep = np.flatnonzero(mask)
    segments = [scored.fake_segments()[i] for i in keep]
    if not any(segments):
        return None
    ids = [scored.video_ids[i] for i in keep]
    proposals = {
        v: proposals_from_scores(scored.frame_scores[i], scored.frame_hz)
        for v, i in zip(ids, keep, strict=True)
    }
    truth = dict(zip(ids, segments, strict=True))
    values = localization_metrics(proposals, truth, semantics=semantics)
    return {"semantics": semantics, "n_videos": len(ids), "fakes": fakes} | {
        k: float(v) for k, v in values.items()
    }


def _implied_segments(scored: Scored, threshold: float) -> list[list[list[float]]] | None:
    from trainers.temporal import scores_to_segments

    if scored.frame_scores is None or not scored.frame_hz:
        return None
    return [
        [s.to_list() for s in scores_to_segments(f, scored.frame_hz, threshold=threshold)]
        for f in scored.frame_scores
    ]


def _binary(
    labels: np.ndarray, scores: np.ndarray, *, ci: bool, n_resamples: int
) -> dict[str, Any]:
    from trainers.metrics import binary_metrics

    return binary_metrics(labels, scores, ci=ci, n_resamples=n_resamples).to_dict()


def scored_metrics(
    scored: Scored,
    *,
    kind: str,
    ci: bool = False,
    n_resamples: int = 1000,
    threshold: float = 0.0,
    fakes: str = PAPER,
    segment_metrics: str = "official",
) -> tuple[dict[str, Any], np.ndarray, list[list[list[float]]] | None]:
    """``(metrics, evaluated mask, implied segments)`` of scored videos, as ``evaluate`` reports
    them (every detector's command uses this, so all report identical numbers).

    ``fakes`` is the evaluation filter (``paper`` or ``all``) of AUC/AP/EER,
    the temporal AUC and AP/AR alike; ``metrics`` records it (``fakes``) and
    its counts (``filter``).
    """
    fakes = check_fakes(fakes)
    mask = _mask(scored, fakes)
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
        "localization": _localization(scored, mask, segment_metrics, fakes),
        "threshold": threshold,
    }
    return metrics, mask, _implied_segments(scored, threshold)


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


def evaluate(
    run_dir: RunLike,
    store: FeatureStore,
    on: Selection | str,
    *,
    ci: bool = False,
    n_resamples: int = 1000,
    threshold: float = 0.0,
    allow_missing: bool = False,
    fakes: str = PAPER,
    segment_metrics: str = "official",
    write: bool = True,
) -> dict[str, Any]:
    """Score ``on`` (``NAME[@VIEW][:SPLIT]``, bare name = ``test``) with a run and compute its metrics.

    Video-level metrics count the videos of the evaluation filter ``fakes``:
    ``"paper"`` (the paper's rule: reals and only the fakes with both
    modalities manipulated, where known) or ``"all"`` (every fake); so do the
    temporal localization AUC and AP/AR.
    AV-Deepfake1M's AP/AR use ``segment_metrics`` semantics: ``"official"``
    (the official tool's, the default) or ``"corrected"``.

    ``run_dir`` is a run directory of any kind or a loaded detector. Writes
    ``metrics.json`` (under the key ``NAME:SPLIT``, ``NAME:SPLIT|fakes=all``
    for the ``all`` filter: ``trainers.metrics_file``) and
    ``predictions/NAME_SPLIT.*`` into the run unless ``write=False`` (or the
    detector has no run directory); returns
    the metrics dict: ``binary`` (AUC, AP, EER, optional 95 % CIs),
    ``temporal`` and ``localization`` (``None`` when the dataset has no
    segments or the run no per-frame scores).
    """
    fakes = check_fakes(fakes)  # before scoring: a typo fails at once
    detector = _detector(run_dir)
    sel = Selection.parse(on, default_split="test")
    scored = detector.score_selection(store, sel, allow_missing=allow_missing)
    metrics, _, segments = scored_metrics(
        scored,
        kind=detector.kind,
        ci=ci,
        n_resamples=n_resamples,
        threshold=threshold,
        fakes=fakes,
        segment_metrics=segment_metrics,
    )
    if write and detector.run is not None:
        record_evaluation(detector.run, scored, metrics, segments, slug=sel.slug)
    return metrics


# ------------------------------------------------------------------ fusion


def _fusion(
    run_dirs: Sequence[RunLike],
    what: str,
    how: str = "intersect",
    weights: Sequence[float] | None = None,
) -> Any:
    """The runs as one in-memory fusion (``trainers.kinds.fusion``)."""
    from trainers.kinds.fusion import in_memory

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
    overwrite: bool = False,
    allow_missing: bool = False,
    fakes: str = PAPER,
) -> dict[str, Any]:
    """Late fusion of runs on ``on``: metrics of every member and of the fusion, same videos.

    The videos are those every member scored, counted by the evaluation
    filter ``fakes`` (``paper`` or ``all``), so a member's numbers equal
    ``evaluate``'s on the same videos. With ``out``, writes a ``fusion`` run
    holding copies of its members (so it stays valid when the originals
    move), its metrics and predictions.
    """
    from trainers.kinds import fusion as fusion_kind
    from trainers.runs import check_writable

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
        run = fusion_kind.train(fusion, out=out, store=store, fused_on=sel, overwrite=True)
        metrics, _, segments = scored_metrics(
            fused, kind=fusion_kind.KIND, ci=ci, n_resamples=n_resamples, fakes=fakes
        )
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

    from trainers.correlation import pearson_matrix, relative_improvement
    from trainers.figures import filter_text, short_labels
    from trainers.plots import heatmap_png

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
