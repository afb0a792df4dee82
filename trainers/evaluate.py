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
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from trainers.data import Selection, evaluation_mask, split_hash
from trainers.runs import (
    CONFIG,
    MEMBERS,
    MODEL,
    Run,
    RunError,
    Scored,
    check_writable,
    load_run,
    save_run,
    score,
    write_metrics,
    write_predictions,
)

if TYPE_CHECKING:
    from featstore.store import FeatureStore

log = logging.getLogger(__name__)

FUSION_KIND = "fusion"

__all__ = ["FUSION_KIND", "correlate", "evaluate", "fuse", "score_fusion", "scored_metrics"]

RunLike = Run | str | os.PathLike[str]


def _run(run: RunLike) -> Run:
    return run if isinstance(run, Run) else load_run(run)


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
) -> dict[str, Any]:
    """Score ``on`` (``NAME[@VIEW][:SPLIT]``, bare name = ``test``) with a run and compute its metrics.

    Video-level metrics use the dataset's evaluation subset (the paper's rule:
    only fakes with both modalities manipulated, where known), and so does the
    temporal localization AUC; ``all_fakes=True`` counts every fake in both.
    AV-Deepfake1M's AP/AR use ``segment_metrics`` semantics: ``"official"``
    (the official tool's, the default) or ``"corrected"``.

    Writes ``metrics.json`` (under the key ``NAME:SPLIT``) and
    ``predictions/NAME_SPLIT.*`` into the run unless ``write=False``; returns
    the metrics dict: ``binary`` (AUC, AP, EER, optional 95 % CIs),
    ``temporal`` and ``localization`` (``None`` when the dataset has no
    segments or the run no per-frame scores).
    """
    run = _run(run_dir)
    sel = Selection.parse(on, default_split="test")
    scored = score(run, store, sel, allow_missing=allow_missing)
    metrics, mask, segments = scored_metrics(
        scored,
        kind=run.kind,
        ci=ci,
        n_resamples=n_resamples,
        threshold=threshold,
        all_fakes=all_fakes,
        segment_metrics=segment_metrics,
    )
    if write:
        write_metrics(run, str(sel), metrics)
        write_predictions(
            run,
            scored,
            evaluated=mask,
            segments=segments,
            slug=sel.slug,
        )
    return metrics


# ------------------------------------------------------------------ fusion


def _names(runs: Sequence[Run]) -> list[str]:
    """Unique, readable model names: the run directories' names (parent added on a clash)."""
    names = [r.name for r in runs]
    if len(set(names)) < len(names):
        names = [f"{r.path.parent.name}/{r.name}" for r in runs]
    if len(set(names)) < len(names):
        names = [f"{i}:{r.name}" for i, r in enumerate(runs)]
    return names


def _aligned(scored: Sequence[Scored], names: Sequence[str], how: str) -> tuple[Scored, np.ndarray]:
    """The members' probabilities on common video ids ``[M, N]`` and a Scored shell of those rows."""
    from trainers.fusion import align_predictions

    preds = [dict(zip(s.video_ids, s.probabilities.tolist(), strict=True)) for s in scored]
    ids, probs = align_predictions(preds, names=names, how=how)  # [M, N]
    manifest = scored[0].manifest.set_index("video_id", drop=False).loc[ids].reset_index(drop=True)
    manifest.attrs = dict(scored[0].manifest.attrs)
    base = Scored(
        selection=scored[0].selection,
        manifest=manifest,
        scores=np.zeros(len(ids)),
        probabilities=np.zeros(len(ids)),
    )
    return base, probs


def _fused(base: Scored, probs: np.ndarray, weights: Sequence[float] | None) -> Scored:
    from trainers.fusion import fused_score, late_fusion

    p = late_fusion(probs, weights=weights)  # [N]
    return Scored(
        selection=base.selection, manifest=base.manifest, scores=fused_score(p), probabilities=p
    )


def score_fusion(
    run: RunLike, store: FeatureStore, selection: Selection | str, *, allow_missing: bool = False
) -> Scored:
    """Scorer of ``fusion`` runs: score every stored member, fuse their probabilities."""
    run = _run(run)
    members = run.config.get("members") or []
    if not members:
        raise RunError(f"fusion run {run.path} lists no members")
    runs = [load_run(run.path / m["path"]) for m in members]
    scored = [score(r, store, selection, allow_missing=allow_missing) for r in runs]
    base, probs = _aligned(scored, [m["name"] for m in members], run.config.get("how", "intersect"))
    return _fused(base, probs, run.config.get("weights"))


def _copy_member(src: Run, dst: Path) -> None:
    """A member's config, model and (for nested fusions) its own members; not its outputs."""
    dst.mkdir(parents=True)
    for name in (MODEL, CONFIG):
        if (src.path / name).is_file():
            shutil.copy2(src.path / name, dst / name)
    if (src.path / MEMBERS).is_dir():
        shutil.copytree(src.path / MEMBERS, dst / MEMBERS)


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
    runs = [_run(r) for r in run_dirs]
    if len(runs) < 2:
        raise RunError("fusion needs at least two runs")
    if out is not None:
        check_writable(out, overwrite=overwrite)
    sel = Selection.parse(on, default_split="test")
    names = _names(runs)
    scored = [score(r, store, sel, allow_missing=allow_missing) for r in runs]
    base, probs = _aligned(scored, names, how)
    fused = _fused(base, probs, weights)
    mask = _mask(fused)
    labels = fused.labels[mask]
    result: dict[str, Any] = {
        "selection": str(sel),
        "n_scored": len(fused.scores),
        "n_evaluated": int(mask.sum()),
        "split_hash": split_hash(fused.video_ids),
        "members": {
            name: _binary(labels, probs[i][mask], ci=ci, n_resamples=n_resamples)
            for i, name in enumerate(names)
        },
        "fused": _binary(labels, fused.scores[mask], ci=ci, n_resamples=n_resamples),
    }
    if out is not None:
        member_dirs = [f"{MEMBERS}/{i:02d}-{r.name}" for i, r in enumerate(runs)]

        def copy_members(path: Path) -> None:
            for r, rel in zip(runs, member_dirs, strict=True):
                _copy_member(r, path / rel)

        config = {
            "kind": FUSION_KIND,
            "members": [
                {"name": n, "path": rel, "kind": r.kind, "source": str(r.path.resolve())}
                for n, rel, r in zip(names, member_dirs, runs, strict=True)
            ],
            "how": how,
            "weights": None if weights is None else [float(w) for w in weights],
            "fused_on": str(sel),
            "store": store.url if "://" in store.url else os.path.abspath(store.url),
        }
        w = np.full(len(runs), 1.0 / len(runs)) if weights is None else np.asarray(weights, float)
        fused_run = save_run(
            out,
            config=config,
            tensors={"weights": w.astype(np.float64)},
            files=copy_members,
            overwrite=True,
        )
        fused_metrics = {
            "selection": str(sel),
            "kind": FUSION_KIND,
            "n_scored": result["n_scored"],
            "n_evaluated": result["n_evaluated"],
            "split_hash": result["split_hash"],
            "binary": result["fused"],
            "temporal": None,
            "localization": None,
        }
        write_metrics(fused_run, str(sel), fused_metrics)
        write_predictions(fused_run, fused, evaluated=mask, slug=sel.slug)
        result["out"] = str(fused_run.path)
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
) -> dict[str, Any]:
    """Pearson correlation and pairwise-fusion relative improvement of runs on ``on``.

    Computed on the evaluation subset of the videos every run scored. Writes
    ``correlation.{csv,json,png}`` and ``improvement.{csv,json,png}`` (rows:
    the model being improved, columns: its fusion partner; percent).
    """
    import json

    from trainers.correlation import pearson_matrix, relative_improvement
    from trainers.plots import heatmap_png

    runs = [_run(r) for r in run_dirs]
    if len(runs) < 2:
        raise RunError("correlation needs at least two runs")
    sel = Selection.parse(on, default_split="test")
    names = _names(runs)
    scored = [score(r, store, sel, allow_missing=allow_missing) for r in runs]
    base, probs = _aligned(scored, names, "intersect")
    mask = _mask(base)
    probs, labels = probs[:, mask], base.labels[mask]  # [M, N], [N]
    pearson = pearson_matrix(probs)  # [M, M]
    improvement = relative_improvement(labels, probs, metric=metric)  # [M, M], percent
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    for stem, matrix, title, fmt, cmap, center in (
        ("correlation", pearson, f"Pearson correlation ({sel})", "{:.2f}", "viridis", None),
        (
            "improvement",
            improvement,
            f"relative {metric.upper()} improvement of row fused with column, % ({sel})",
            "{:+.1f}",
            "RdBu",
            0.0,
        ),
    ):
        _matrix_csv(out / f"{stem}.csv", matrix, names)
        doc = {
            "selection": str(sel),
            "n": int(mask.sum()),
            "names": names,
            "matrix": matrix.tolist(),
        }
        (out / f"{stem}.json").write_text(json.dumps(doc, indent=2) + "\n")
        heatmap_png(
            matrix,
            out / f"{stem}.png",
            row_labels=names,
            col_labels=names,
            title=title,
            value_format=fmt,
            cmap=cmap,
            center=center,
        )
        files.update(
            {f"{stem}.{ext}": str(out / f"{stem}.{ext}") for ext in ("csv", "json", "png")}
        )
    return {
        "selection": str(sel),
        "n": int(mask.sum()),
        "names": names,
        "metric": metric,
        "pearson": pearson.tolist(),
        "relative_improvement": improvement.tolist(),
        "files": files,
    }
