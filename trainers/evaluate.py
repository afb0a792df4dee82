"""Evaluating runs on stored datasets: metrics, late fusion and correlation (thin shells).

- ``evaluate``: video-level AUC / AP / EER on the dataset's evaluation subset
  (``trainers.data.evaluation_mask``: only fakes with both modalities
  manipulated where the dataset says so), temporal AUC over the evaluated fake
  videos with annotated segments (paper Sec. 5.2), and AV-Deepfake1M's AP@IoU /
  AR@N (official semantics by default) for the segment proposals implied by
  the per-frame scores.
- ``fuse``: late fusion (average of probabilities) of several runs, with each
  member evaluated on the same videos; optionally a ``fusion`` run directory
  that holds copies of its members and scores like any other run.
- ``correlate``: Pearson correlation of the runs' probabilities and the
  relative improvement of each pair's fusion over each model (paper Fig. 5).

Runs of every kind are scored through ``trainers.kinds`` (``load(run)``, then
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

from trainers.data import Selection, evaluation_mask, split_hash
from trainers.kinds import Detector, load
from trainers.runs import Run, RunError, Scored, write_metrics, write_predictions

if TYPE_CHECKING:
    from featstore.store import FeatureStore
    from trainers.cluster import TaskProgress

log = logging.getLogger(__name__)

__all__ = ["Evaluation", "correlate", "evaluate", "evaluation", "fuse", "record", "scored_metrics"]

RunLike = Detector | Run | str | os.PathLike[str]


def _detector(run: RunLike) -> Detector:
    return run if isinstance(run, Detector) else load(run)


def _mask(scored: Scored) -> np.ndarray:
    return evaluation_mask(scored.manifest, scored.manifest.attrs)


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


def _localization(scored: Scored, semantics: str) -> dict[str, Any] | None:
    """AV1M's AP@IoU / AR@N of the proposals implied by the per-frame scores.

    Over every scored video (as the official evaluation runs over its whole
    metadata file); ``semantics`` is ``"official"`` (the tool's) or
    ``"corrected"`` (``trainers.segments``), recorded beside the numbers.
    """
    from trainers.segments import check_semantics, localization_metrics
    from trainers.temporal import proposals_from_scores

    check_semantics(semantics)
    if scored.frame_scores is None or not scored.frame_hz:
        return None
    segments = scored.fake_segments()
    if not any(segments):
        return None
    ids = scored.video_ids
    proposals = {
        v: proposals_from_scores(f, scored.frame_hz)
        for v, f in zip(ids, scored.frame_scores, strict=True)
    }
    truth = dict(zip(ids, segments, strict=True))
    values = localization_metrics(proposals, truth, semantics=semantics)
    return {"semantics": semantics, "n_videos": len(ids)} | {k: float(v) for k, v in values.items()}


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
    all_fakes: bool = False,
    segment_metrics: str = "official",
) -> tuple[dict[str, Any], np.ndarray, list[list[list[float]]] | None]:
    """``(metrics, evaluated mask, implied segments)`` of scored videos, as ``evaluate`` reports
    them (every detector's command uses this, so all report identical numbers)."""
    mask = np.ones(len(scored.scores), dtype=bool) if all_fakes else _mask(scored)
    fakes = "all" if all_fakes else "evaluation filter"
    metrics: dict[str, Any] = {
        "selection": str(scored.selection),
        "view": scored.manifest.attrs.get("view"),  # the view a NAME:SPLIT resolved to
        "fakes": fakes,
        "kind": kind,
        "n_scored": len(scored.scores),
        "n_evaluated": int(mask.sum()),
        "split_hash": split_hash(scored.video_ids),
        "binary": _binary(scored.labels[mask], scored.scores[mask], ci=ci, n_resamples=n_resamples),
        "temporal": _temporal(scored, mask, fakes),
        "localization": _localization(scored, segment_metrics),
        "threshold": threshold,
    }
    return metrics, mask, _implied_segments(scored, threshold)


@dataclass(frozen=True)
class Evaluation:
    """What ``evaluate`` computes before writing it: metrics, the scores, the evaluated
    mask and the fake segments the frame scores imply (None: the kind has no frame scores)."""

    selection: Selection
    metrics: dict[str, Any]
    scored: Scored = field(repr=False)
    mask: np.ndarray = field(repr=False)
    segments: list[list[list[float]]] | None = field(repr=False)


def evaluation(
    run_dir: RunLike,
    store: FeatureStore,
    on: Selection | str,
    *,
    ci: bool = False,
    n_resamples: int = 1000,
    threshold: float = 0.0,
    allow_missing: bool = False,
    all_fakes: bool = False,
    segment_metrics: str = "official",
    scored: Scored | None = None,
) -> Evaluation:
    """``evaluate`` without writing (a cluster task returns this; ``record`` writes it).

    ``scored``: the selection's scores when already computed (e.g. partition
    by partition on a cluster), else the detector scores ``on`` here.
    """
    detector = _detector(run_dir)
    sel = Selection.parse(on, default_split="test")
    if scored is None:
        scored = detector.score_selection(store, sel, allow_missing=allow_missing)
    metrics, mask, segments = scored_metrics(
        scored,
        kind=detector.kind,
        ci=ci,
        n_resamples=n_resamples,
        threshold=threshold,
        all_fakes=all_fakes,
        segment_metrics=segment_metrics,
    )
    return Evaluation(sel, metrics, scored, mask, segments)


def record(run: Run | Path, result: Evaluation) -> None:
    """Write an evaluation into a run: ``metrics.json`` (key ``NAME:SPLIT``), ``predictions/``."""
    write_metrics(run, str(result.selection), result.metrics)
    write_predictions(
        run,
        result.scored,
        evaluated=result.mask,
        segments=result.segments,
        slug=result.selection.slug,
    )


def evaluate(
    run_dir: RunLike,
    store: FeatureStore,
    on: Selection | str,
    *,
    ci: bool = False,
    n_resamples: int = 1000,
    threshold: float = 0.0,
    allow_missing: bool = False,
    all_fakes: bool = False,
    segment_metrics: str = "official",
    write: bool = True,
    cluster: Any = None,
    n_workers: int = 2,
    on_progress: Callable[[TaskProgress], None] | None = None,
) -> dict[str, Any]:
    """Score ``on`` (``NAME[@VIEW][:SPLIT]``, bare name = ``test``) with a run and compute its metrics.

    Video-level metrics use the dataset's evaluation subset (the paper's rule:
    only fakes with both modalities manipulated, where known), and so does the
    temporal localization AUC; ``all_fakes=True`` counts every fake in both.
    AV-Deepfake1M's AP/AR use ``segment_metrics`` semantics: ``"official"``
    (the official tool's, the default) or ``"corrected"``.

    ``run_dir`` is a run directory of any kind or a loaded detector. Writes
    ``metrics.json`` (under the key ``NAME:SPLIT``) and
    ``predictions/NAME_SPLIT.*`` into the run unless ``write=False`` (or the
    detector has no run directory); returns
    the metrics dict: ``binary`` (AUC, AP, EER, optional 95 % CIs),
    ``temporal`` and ``localization`` (``None`` when the dataset has no
    segments or the run no per-frame scores).

    ``cluster`` (``"local"``, ``"tcp://HOST:PORT"`` or a ``distributed.Client``)
    scores the videos on Dask, a partition of videos per task
    (``trainers.cluster``), to the same numbers; an interrupted run resumes
    from the partitions it finished (kept in the run directory until done).
    """
    if cluster is not None:
        from featstore.cluster import check_cluster

        check_cluster(cluster)
    detector = _detector(run_dir)
    scored = None
    if cluster is not None:
        from trainers.cluster import PARTITIONS, score_on_cluster

        resume = None
        if write and detector.run is not None:
            resume = detector.run.path / PARTITIONS
        scored, _ = score_on_cluster(
            detector,
            store,
            on,
            cluster=cluster,
            n_workers=n_workers,
            allow_missing=allow_missing,
            resume_dir=resume,
            on_progress=on_progress,
        )
    result = evaluation(
        detector,
        store,
        on,
        ci=ci,
        n_resamples=n_resamples,
        threshold=threshold,
        allow_missing=allow_missing,
        all_fakes=all_fakes,
        segment_metrics=segment_metrics,
        scored=scored,
    )
    if write and detector.run is not None:
        record(detector.run, result)
        if cluster is not None:
            from trainers.cluster import PARTITIONS, clear_partitions

            clear_partitions(detector.run.path / PARTITIONS, result.selection)
    return result.metrics


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
) -> dict[str, Any]:
    """Late fusion of runs on ``on``: metrics of every member and of the fusion, same videos.

    With ``out``, writes a ``fusion`` run holding copies of its members (so
    it stays valid when the originals move), its metrics and predictions.
    """
    from trainers.kinds import fusion as fusion_kind
    from trainers.runs import check_writable

    fusion = _fusion(run_dirs, "fusion", how, weights)
    if out is not None:
        check_writable(out, overwrite=overwrite)
    sel = Selection.parse(on, default_split="test")
    result_scores = fusion.score_members(store, sel, allow_missing=allow_missing)
    fused, probs = result_scores.fused, result_scores.probabilities  # [N], [M, N]
    mask = _mask(fused)
    labels = fused.labels[mask]
    result: dict[str, Any] = {
        "selection": str(sel),
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
        metrics, mask, segments = scored_metrics(
            fused, kind=fusion_kind.KIND, ci=ci, n_resamples=n_resamples
        )
        write_metrics(run, str(sel), metrics)
        write_predictions(run, fused, evaluated=mask, segments=segments, slug=sel.slug)
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
) -> dict[str, Any]:
    """Pearson correlation and pairwise-fusion relative improvement of runs on ``on``.

    Computed on the evaluation subset of the videos every run scored. Writes
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

    fusion = _fusion(run_dirs, "correlation")
    sel = Selection.parse(on, default_split="test")
    scores = fusion.score_members(store, sel, allow_missing=allow_missing)
    names = list(scores.names)
    mask = _mask(scores.fused)
    probs, labels = scores.probabilities[:, mask], scores.fused.labels[mask]  # [M, N], [N]
    pearson = pearson_matrix(probs)  # [M, M]
    improvement = relative_improvement(labels, probs, metric=metric)  # [M, M], percent
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n, n_fake = int(mask.sum()), int(np.sum(labels == 1))
    short, dropped = short_labels(names)
    videos = (
        f"{sel}, n = {n} videos ({n - n_fake} real / {n_fake} fake), "
        f"{filter_text('evaluation filter')}"
        + (f"; model names without their common '{dropped}'" if dropped else "")
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
            "fakes": "evaluation filter",
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
        "fakes": "evaluation filter",
        "names": names,
        "metric": metric,
        "pearson": pearson.tolist(),
        "relative_improvement": improvement.tolist(),
        "files": files,
    }
