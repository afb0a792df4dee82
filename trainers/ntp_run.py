"""The next-token predictor's shell: read real videos, fit, write the run; score a run.

A run of kind ``ntp`` holds ``model.safetensors`` (the Transformer's state
dict), ``history.csv`` and ``config.json`` (architecture and hyperparameters,
selections and split hashes, frame rate, and the thresholds learnt from real
videos). Scores follow the shared logit convention (``trainers.ntp``: frame
logit ``log(e_t / tau_f) / 2``, video logit ``log(max_t e_t / tau_v) / 2``),
so ``featstore eval RUN --on ...`` thresholds frames at 0 = the learnt frame
threshold, and the video "probability" ``m / (m + tau_v)`` is not calibrated.

>>> run = train_ntp(store, feature="avhubert-a:last", train="av1m:train", out="runs/ntp")  # doctest: +SKIP
>>> scored = score_run(run, store, "av1m:test")  # doctest: +SKIP
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
    from trainers.ntp import NextFrameTransformer, NTPConfig, NTPEpochStats, NTPThresholds

log = logging.getLogger(__name__)

KIND = "ntp"

__all__ = ["AUTO", "KIND", "load_model", "score_run", "train_ntp"]


def train_ntp(
    store: FeatureStore,
    *,
    feature: FeatureKey | str,
    train: Selection | str,
    out: str | os.PathLike[str],
    val: Selection | str | Auto | None = AUTO,
    config: NTPConfig | None = None,
    on_epoch: Callable[[NTPEpochStats], None] | None = None,
    overwrite: bool = False,
    allow_missing: bool = False,
) -> Run:
    """Fit the next-token predictor on the *real* videos of ``train`` and write a run at ``out``.

    Fakes in ``train`` / ``val`` are ignored (the paper trains on real videos
    only); a selection without real videos is an error. ``val=AUTO`` uses the
    training dataset's ``val`` split when it has one, ``val=None`` none (no
    early stopping). Thresholds (``NTPConfig.threshold_quantile`` of real
    frame errors and video scores) are learnt on the validation reals when
    there are some, else on the training reals (optimistic: the model has
    seen them).
    """
    from trainers.ntp import NTPConfig, fit_ntp, fit_thresholds, frame_errors

    config = config or NTPConfig()
    feature = FeatureKey.parse(feature)
    train_sel = Selection.parse(train, default_split="train")
    if isinstance(val, Auto):
        val_sel = default_val(store, train_sel)
    else:
        val_sel = None if val is None else Selection.parse(val, default_split="val")
    if val_sel == train_sel:
        raise SelectionError(f"validation selection {val_sel} is the training selection")
    check_writable(out, overwrite=overwrite)  # fail before a long fit

    train_rows = select(store, train_sel, feature, real_only=True, allow_missing=allow_missing)
    val_rows = (
        None
        if val_sel is None
        else select(store, val_sel, feature, real_only=True, allow_missing=allow_missing)
    )
    train_src = StoreSource(store, train_sel.dataset, feature, train_rows)
    val_src = None if val_rows is None else StoreSource(store, val_sel.dataset, feature, val_rows)
    if val_src is not None and val_src.dim != train_src.dim:
        raise SelectionError(
            f"{feature} is {train_src.dim}-wide in {train_sel.dataset} but {val_src.dim}-wide in "
            f"{val_sel.dataset}"
        )
    if val_src is not None and abs(val_src.frame_hz - train_src.frame_hz) > 1e-9:
        raise SelectionError(
            f"{feature} is stored at {train_src.frame_hz} Hz in {train_sel.dataset} but "
            f"{val_src.frame_hz} Hz in {val_sel.dataset}"
        )
    log.info(
        "training a next-token predictor on %s %s (%d real videos, %.1f MB)",
        train_sel,
        feature,
        len(train_src),
        train_src.nbytes / 2**20,
    )
    result = fit_ntp(train_src, val_src, config, on_epoch=on_epoch)
    threshold_src, threshold_on = (val_src, "val") if val_src is not None else (train_src, "train")
    errors = frame_errors(result.model, threshold_src, device=config.device)
    thresholds = fit_thresholds(errors, config.threshold_quantile)
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
        "architecture": {
            "type": "decoder-only transformer, pre-LayerNorm, causal",
            "input_dim": int(train_src.dim),
            "d_model": config.d_model,
            "n_layers": config.n_layers,
            "n_heads": config.n_heads,
            "d_ff": config.d_ff,
            "positions": config.positions,
            "max_context": config.max_context,
        },
        "hyperparameters": config.to_dict(),
        "thresholds": {**thresholds.to_dict(), "learnt_on": threshold_on},
        "score": {
            "video": "0.5 * log(max_t e_t / thresholds.video)",
            "frame": "0.5 * log(e_t / thresholds.frame); e_0 = e_1",
            "probability": "sigmoid(2 s) = m / (m + thresholds.video); not calibrated",
        },
        "best_epoch": int(result.best_epoch),
        "epochs": len(result.history),
        "planned_steps": int(result.planned_steps),
        "stopped_early": bool(result.stopped_early),
    }
    history = [
        {
            "epoch": h.epoch,
            "train_loss": h.train_loss,
            "val_loss": h.val_loss,
            "lr": h.lr,
            "seconds": h.seconds,
        }
        for h in result.history
    ]
    return save_run(
        out, config=run_config, tensors=result.model.to_state(), history=history, overwrite=True
    )


def _ntp_run(run: Run | str | os.PathLike[str]) -> Run:
    run = run if isinstance(run, Run) else load_run(run)
    if run.kind != KIND:
        raise RunError(f"{run.path} is a {run.kind!r} run, not a {KIND!r} run")
    return run


def load_model(run: Run | str | os.PathLike[str]) -> tuple[NextFrameTransformer, NTPThresholds]:
    """The trained Transformer (eval mode, CPU) and the thresholds of an ``ntp`` run."""
    from trainers.ntp import NextFrameTransformer, NTPConfig, NTPError, NTPThresholds

    run = _ntp_run(run)
    try:
        config = NTPConfig.from_dict(dict(run.config["hyperparameters"]))
        th = dict(run.config["thresholds"])
        thresholds = NTPThresholds(
            frame=float(th["frame"]),
            video=float(th["video"]),
            quantile=float(th["quantile"]),
            n_videos=int(th["n_videos"]),
            n_frames=int(th["n_frames"]),
        )
        dim = int(run.config["dim"])
    except (KeyError, TypeError, ValueError, NTPError) as exc:
        raise RunError(f"{run.path}: malformed ntp config: {exc}") from exc
    try:
        model = NextFrameTransformer.from_state(run.tensors(), dim, config)
    except NTPError as exc:
        raise RunError(f"{run.path}: {exc}") from exc
    return model, thresholds


def score_run(
    run: Run | str | os.PathLike[str],
    store: FeatureStore,
    selection: Selection | str,
    *,
    allow_missing: bool = False,
    batch_videos: int = 32,
    device: str = "cpu",
) -> Scored:
    """Video logits, (uncalibrated) probabilities and per-frame logits of an ``ntp`` run.

    A bare dataset name means its ``test`` split; real and fake videos are
    scored alike, and no evaluation filter is applied here.
    """
    from trainers.ntp import frame_errors, frame_logits, probability, video_logits, video_scores

    run = _ntp_run(run)
    feature = FeatureKey(run.config["encoder"], run.config["layer"])
    sel = Selection.parse(selection, default_split="test")
    rows = select(store, sel, feature, allow_missing=allow_missing)
    check_compatible(run, store, sel.dataset, feature)
    model, thresholds = load_model(run)
    source = StoreSource(store, sel.dataset, feature, rows)
    n_single = int((source.lengths < 2).sum())
    if n_single:
        log.warning(
            "%d videos of %s have a single frame: nothing to predict, scored as error 0",
            n_single,
            sel,
        )
    errors = frame_errors(model, source, batch_videos=batch_videos, device=device)
    scores = video_logits(video_scores(errors), thresholds)  # [N]
    return Scored(
        selection=str(sel),
        manifest=rows,
        scores=scores,
        probabilities=probability(scores),
        frame_scores=[frame_logits(e, thresholds).astype(np.float32) for e in errors],
        frame_hz=float(run.config["frame_hz"]),
    )
