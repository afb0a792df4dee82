"""The linear probe's shell: read the store, fit, write the run; score a run on a selection.

>>> run = train_probe(store, feature="wav2vec2:last", train="av1m:train", out="runs/w2v")  # doctest: +SKIP
>>> scored = score_run(run, store, "av1m:test")  # doctest: +SKIP
>>> scored.scores.shape, len(scored.frame_scores)  # doctest: +SKIP
((10000,), 10000)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from featstore.layout import layer_key
from trainers.data import (
    AUTO,
    Auto,
    FeatureKey,
    Selection,
    SelectionError,
    StoreSource,
    default_val,
    select,
    selection_summary,
)
from trainers.runs import (
    Run,
    RunError,
    Scored,
    check_compatible,
    check_writable,
    load_run,
    save_run,
)

if TYPE_CHECKING:
    from featstore.store import FeatureStore
    from trainers.probe import EpochStats, ProbeConfig

log = logging.getLogger(__name__)

KIND = "probe"


__all__ = ["AUTO", "KIND", "score_run", "score_video", "selection_summary", "train_probe"]


def train_probe(
    store: FeatureStore,
    *,
    feature: FeatureKey | str,
    train: Selection | str,
    out: str | os.PathLike[str],
    val: Selection | str | Auto | None = AUTO,
    config: ProbeConfig | None = None,
    on_epoch: Callable[[EpochStats], None] | None = None,
    overwrite: bool = False,
    allow_missing: bool = False,
) -> Run:
    """Fit a linear probe on stored features and write its run directory at ``out``.

    ``train`` / ``val`` are ``NAME[@VIEW][:SPLIT]`` selections (a bare name means the
    ``train`` / ``val`` split); ``val=AUTO`` uses the training dataset's
    ``val`` split when it has one, ``val=None`` trains without validation
    (no early stopping). An existing complete run at ``out`` is an error
    unless ``overwrite``.
    """
    from trainers.probe import ProbeConfig, fit_probe

    config = config or ProbeConfig()
    feature = FeatureKey.parse(feature)
    train_sel = Selection.parse(train, default_split="train")
    if isinstance(val, Auto):
        val_sel = default_val(store, train_sel)
    else:
        val_sel = None if val is None else Selection.parse(val, default_split="val")
    if val_sel == train_sel:
        raise SelectionError(f"validation selection {val_sel} is the training selection")
    check_writable(out, overwrite=overwrite)  # fail before a long fit

    train_rows = select(store, train_sel, feature, allow_missing=allow_missing)
    if train_rows["label"].nunique() < 2:
        raise SelectionError(f"{train_sel} needs both real and fake videos to train a probe")
    val_rows = (
        None if val_sel is None else select(store, val_sel, feature, allow_missing=allow_missing)
    )
    train_src = StoreSource(store, train_sel.dataset, feature, train_rows)
    val_src = None if val_rows is None else StoreSource(store, val_sel.dataset, feature, val_rows)
    if val_src is not None and val_src.dim != train_src.dim:
        raise SelectionError(
            f"{feature} is {train_src.dim}-wide in {train_sel.dataset} but {val_src.dim}-wide in "
            f"{val_sel.dataset}"
        )
    log.info(
        "training a probe on %s %s (%d videos, %.1f MB)",
        train_sel,
        feature,
        len(train_src),
        train_src.nbytes / 2**20,
    )
    result = fit_probe(train_src, val_src, config, on_epoch=on_epoch)
    info = store.encoder_info(train_sel.dataset, feature.encoder)
    run_config = {
        "kind": KIND,
        "encoder": feature.encoder,
        "layer": layer_key(feature.layer),
        "frame_hz": float(info.frame_hz),
        "dim": int(train_src.dim),
        "encoder_info": {
            "checkpoint": info.checkpoint,
            "checkpoint_sha256": info.checkpoint_sha256,
            "random_init": info.random_init,
            "preprocessing_version": info.preprocessing_version,
        },
        "store": store.url if "://" in store.url else os.path.abspath(store.url),
        "train": selection_summary(train_sel, train_rows),
        "val": None if val_rows is None else selection_summary(val_sel, val_rows),
        "hyperparameters": config.to_dict(),
        "best_epoch": int(result.best_epoch),
        "epochs": len(result.history),
        "stopped_early": bool(result.stopped_early),
    }
    history = [
        {
            "epoch": h.epoch,
            "train_loss": h.train_loss,
            "val_loss": h.val_loss,
            "val_auc": h.val_auc,
            "seconds": h.seconds,
        }
        for h in result.history
    ]
    return save_run(
        out, config=run_config, tensors=result.params.to_state(), history=history, overwrite=True
    )


def _probe_run(run: Run | str | os.PathLike[str]) -> Run:
    run = run if isinstance(run, Run) else load_run(run)
    if run.kind != KIND:
        raise RunError(f"{run.path} is a {run.kind!r} run, not a {KIND!r} run")
    return run


def _feature(run: Run) -> FeatureKey:
    return FeatureKey(run.config["encoder"], run.config["layer"])


def score_run(
    run: Run | str | os.PathLike[str],
    store: FeatureStore,
    selection: Selection | str,
    *,
    allow_missing: bool = False,
    batch_videos: int = 64,
) -> Scored:
    """Video scores, probabilities and per-frame logits of a probe run on ``selection``.

    A bare dataset name means its ``test`` split. No evaluation filter is
    applied here (``trainers.evaluate`` decides which rows count).
    """
    from trainers.probe import ProbeParams, probability, score_source

    run = _probe_run(run)
    feature = _feature(run)
    sel = Selection.parse(selection, default_split="test")
    rows = select(store, sel, feature, allow_missing=allow_missing)
    check_compatible(run, store, sel.dataset, feature)
    params = ProbeParams.from_state(run.tensors())
    source = StoreSource(store, sel.dataset, feature, rows)
    scores, frames = score_source(params, source, batch_videos=batch_videos)
    scores = np.asarray(scores, dtype=np.float64)  # [N]
    return Scored(
        selection=str(sel),
        manifest=rows,
        scores=scores,
        probabilities=np.asarray(probability(scores), dtype=np.float64),
        frame_scores=[np.asarray(f, dtype=np.float32) for f in frames],
        frame_hz=float(run.config["frame_hz"]),
    )


def score_video(
    run: Run | str | os.PathLike[str], store: FeatureStore, dataset: str, video_id: str
) -> tuple[float, np.ndarray]:
    """One stored video's score and per-frame logits ``[T]`` under a probe run."""
    from trainers.probe import ProbeParams, frame_logits, video_logit

    run = _probe_run(run)
    feature = _feature(run)
    check_compatible(run, store, dataset, feature)
    params = ProbeParams.from_state(run.tensors())
    x = store.video(dataset, feature.encoder, video_id, feature.layer)  # [T, D]
    frames = np.asarray(frame_logits(params, x), dtype=np.float32)  # [T]
    return float(video_logit(params, x)), frames
