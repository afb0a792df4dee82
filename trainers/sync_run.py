"""The sync network's shell: pair real videos, fit, write the run; score a run on a selection.

A run of kind ``sync`` holds ``model.safetensors`` (the network's state dict),
``history.csv`` and ``config.json`` (both feature keys, frame rate, widths,
hyperparameters, selections and split hashes, silence trimming, and the
thresholds learnt from real videos).

Scores. The network's own scores (``trainers.sync``) are the paper's: frame
``-Phi(a_t, v_t)``, video ``logsumexp_t(-Phi(a_t, v_t))``, higher = more
fake. A run shifts them by two constants learnt on real validation videos
(training videos when there is no validation set), so they follow the
shared logit convention of ``trainers.runs``:

- frame logit ``-Phi(a_t, v_t) - frame_threshold``, where ``frame_threshold``
  is the ``FRAME_QUANTILE`` (99 %) quantile of the real frames' ``-Phi``: a
  frame above 0 is flagged, so ``featstore eval`` (threshold 0) cuts fake
  segments with ``trainers.temporal.scores_to_segments`` at about 1 % of
  real frames flagged;
- video logit ``logsumexp_t(-Phi) - video_threshold`` (``VIDEO_QUANTILE``,
  95 %, of the real videos' scores); "probability" ``sigmoid(2 s)`` is a
  monotone map into [0, 1], 0.5 at that quantile, *not* calibrated.

Shifts change neither AUC nor temporal AUC.

Leading-silence trimming (``trim_silence``, AVH-Align's option) is opt-in and
needs the manifest column ``leading_silence_s`` (``trainers.pairs``); the
run scores with the trimming it was trained with. Frame scores stay on the
stored video's timeline: the trimmed leading rows get the video's lowest
frame score (no evidence either way), so segments and temporal AUC line up
with the annotations; the video score uses the scored rows only.

>>> run = train_sync(store, audio="avhubert-a", visual="avhubert-v", train="av1m:train",
...                  out="runs/sync")  # doctest: +SKIP
>>> scored = score_run(run, store, "av1m:test")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from featstore.layout import layer_key
from trainers.data import (
    AUTO,
    Auto,
    FeatureKey,
    Selection,
    SelectionError,
    default_val,
    selection_summary,
)
from trainers.runs import Run, RunError, Scored, check_writable, load_run, save_run

if TYPE_CHECKING:
    from featstore.store import FeatureStore
    from trainers.pairs import PairedVideo
    from trainers.sync import EpochStats, SyncConfig, SyncNet

log = logging.getLogger(__name__)

KIND = "sync"
FRAME_QUANTILE = 0.99
VIDEO_QUANTILE = 0.95

__all__ = [
    "AUTO",
    "FRAME_QUANTILE",
    "KIND",
    "VIDEO_QUANTILE",
    "load_net",
    "score_run",
    "train_sync",
]


def _real_pairs(
    store: FeatureStore,
    sel: Selection,
    audio: FeatureKey,
    visual: FeatureKey,
    *,
    allow_missing: bool,
    trim_silence: bool,
    frame_hz: float | None,
) -> list[PairedVideo]:
    from trainers.pairs import load_pairs

    try:
        return load_pairs(
            store,
            sel,
            audio,
            visual,
            real_only=True,
            allow_missing=allow_missing,
            trim_silence=trim_silence,
            frame_hz=frame_hz,
        )
    except SelectionError as exc:
        raise SelectionError(f"{exc}; the sync network trains on real videos only") from None


def _summary(sel: Selection, pairs: Sequence[PairedVideo]) -> dict[str, Any]:
    import pandas as pd

    frame = pd.DataFrame(
        {"video_id": [p.video_id for p in pairs], "label": [p.label for p in pairs]}
    )
    return {**selection_summary(sel, frame), "n_frames": int(sum(p.n_rows for p in pairs))}


def _encoder(store: FeatureStore, dataset: str, key: FeatureKey) -> dict[str, Any]:
    info = store.encoder_info(dataset, key.encoder)
    return {
        "encoder": key.encoder,
        "layer": layer_key(key.layer),
        "frame_hz": float(info.frame_hz),
        "checkpoint": info.checkpoint,
        "checkpoint_sha256": info.checkpoint_sha256,
        "random_init": info.random_init,
        "preprocessing_version": info.preprocessing_version,
    }


def _thresholds(net: SyncNet, pairs: Sequence[PairedVideo]) -> dict[str, float]:
    from trainers.sync import score_pairs

    videos, frames = score_pairs(net, pairs)
    flat = np.concatenate(frames)  # [sum T]
    return {
        "frame": float(np.quantile(flat, FRAME_QUANTILE)),
        "video": float(np.quantile(videos, VIDEO_QUANTILE)),
        "frame_quantile": FRAME_QUANTILE,
        "video_quantile": VIDEO_QUANTILE,
        "n_videos": len(pairs),
        "n_frames": int(flat.size),
    }


def train_sync(
    store: FeatureStore,
    *,
    audio: FeatureKey | str,
    visual: FeatureKey | str,
    train: Selection | str,
    out: str | os.PathLike[str],
    val: Selection | str | Auto | None = AUTO,
    config: SyncConfig | None = None,
    on_epoch: Callable[[EpochStats], None] | None = None,
    overwrite: bool = False,
    allow_missing: bool = False,
    trim_silence: bool = False,
    frame_hz: float | None = None,
) -> Run:
    """Fit the sync network on the *real* videos of ``train`` and write a run at ``out``.

    ``audio`` / ``visual`` are ``ENCODER[:LAYER]`` keys; both must run at one
    frame rate unless ``frame_hz`` names a common one (``trainers.pairs``).
    Fakes in ``train`` / ``val`` are ignored. ``val=AUTO`` uses the training
    dataset's ``val`` split when it has one, ``val=None`` none (no early
    stopping; thresholds then come from the training videos, optimistic as
    the network has seen them). An existing complete run is an error unless
    ``overwrite``.
    """
    from trainers.sync import SyncConfig, fit_sync, net_to_state

    config = config or SyncConfig()
    audio, visual = FeatureKey.parse(audio), FeatureKey.parse(visual)
    train_sel = Selection.parse(train, default_split="train")
    if isinstance(val, Auto):
        val_sel = default_val(store, train_sel)
    else:
        val_sel = None if val is None else Selection.parse(val, default_split="val")
    if val_sel == train_sel:
        raise SelectionError(f"validation selection {val_sel} is the training selection")
    check_writable(out, overwrite=overwrite)  # fail before a long fit

    kwargs = {"allow_missing": allow_missing, "trim_silence": trim_silence, "frame_hz": frame_hz}
    train_pairs = _real_pairs(store, train_sel, audio, visual, **kwargs)
    val_pairs = None if val_sel is None else _real_pairs(store, val_sel, audio, visual, **kwargs)
    rate = train_pairs[0].frame_hz
    if val_pairs is not None and not math.isclose(val_pairs[0].frame_hz, rate, rel_tol=1e-9):
        raise SelectionError(
            f"{train_sel} pairs at {rate:g} Hz but {val_sel} at {val_pairs[0].frame_hz:g} Hz"
        )
    log.info(
        "training a sync network on %s %s + %s (%d real videos)",
        train_sel,
        audio,
        visual,
        len(train_pairs),
    )
    result = fit_sync(train_pairs, val_pairs, config, on_epoch=on_epoch)
    reference, learnt_on = (val_pairs, "val") if val_pairs is not None else (train_pairs, "train")
    net = result.net
    run_config = {
        "kind": KIND,
        "audio": _encoder(store, train_sel.dataset, audio),
        "visual": _encoder(store, train_sel.dataset, visual),
        "audio_dim": net.audio_dim,
        "visual_dim": net.visual_dim,
        "frame_hz": float(rate),
        "resample_hz": None if frame_hz is None else float(frame_hz),
        "trim_silence": bool(trim_silence),
        "store": store.url if "://" in store.url else os.path.abspath(store.url),
        "train": _summary(train_sel, train_pairs),
        "val": None if val_pairs is None else _summary(val_sel, val_pairs),
        "architecture": {
            "type": "AVH-Align: L2-normalised inputs, projections, MLP on [visual; audio]",
            "proj_dim": config.proj_dim,
            "hidden": list(config.hidden),
            "tau": config.tau,
        },
        "hyperparameters": config.to_dict(),
        "thresholds": {**_thresholds(net, reference), "learnt_on": learnt_on},
        "score": {
            "frame": "-Phi(a_t, v_t) - thresholds.frame",
            "video": "logsumexp_t(-Phi(a_t, v_t)) - thresholds.video",
            "probability": "sigmoid(2 s); monotone, not calibrated",
        },
        "best_epoch": int(result.best_epoch),
        "epochs": len(result.history),
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
        out, config=run_config, tensors=net_to_state(net), history=history, overwrite=True
    )


def _sync_run(run: Run | str | os.PathLike[str]) -> Run:
    run = run if isinstance(run, Run) else load_run(run)
    if run.kind != KIND:
        raise RunError(f"{run.path} is a {run.kind!r} run, not a {KIND!r} run")
    return run


def load_net(run: Run | str | os.PathLike[str]) -> tuple[SyncNet, dict[str, float]]:
    """The trained network (eval mode, CPU) and the thresholds of a ``sync`` run."""
    from trainers.sync import SyncError, net_from_state

    run = _sync_run(run)
    try:
        thresholds = {k: float(run.config["thresholds"][k]) for k in ("frame", "video")}
    except (KeyError, TypeError, ValueError) as exc:
        raise RunError(f"{run.path}: malformed sync config: {exc}") from exc
    try:
        net = net_from_state(run.tensors())
    except SyncError as exc:
        raise RunError(f"{run.path}: {exc}") from exc
    return net, thresholds


def _on_timeline(frames: np.ndarray, skip: int) -> np.ndarray:
    """Frame scores ``[T]`` preceded by ``skip`` trimmed rows at the video's lowest score."""
    if skip == 0:
        return frames
    return np.concatenate([np.full(skip, frames.min(), dtype=frames.dtype), frames])


def score_run(
    run: Run | str | os.PathLike[str],
    store: FeatureStore,
    selection: Selection | str,
    *,
    allow_missing: bool = False,
) -> Scored:
    """Video logits, (uncalibrated) probabilities and per-frame logits of a ``sync`` run.

    A bare dataset name means its ``test`` split; real and fake videos are
    scored alike, and no evaluation filter is applied here.
    """
    from scipy.special import expit, logsumexp

    from trainers.pairs import read_pairs, select_pairs
    from trainers.sync import SyncError, frame_scores

    run = _sync_run(run)
    cfg = run.config
    audio = FeatureKey(cfg["audio"]["encoder"], cfg["audio"]["layer"])
    visual = FeatureKey(cfg["visual"]["encoder"], cfg["visual"]["layer"])
    sel = Selection.parse(selection, default_split="test")
    net, thresholds = load_net(run)
    rows = select_pairs(store, sel, audio, visual, allow_missing=allow_missing)
    pairs = read_pairs(
        store,
        sel.dataset,
        rows,
        audio,
        visual,
        trim_silence=bool(cfg.get("trim_silence")),
        frame_hz=cfg.get("resample_hz"),
    )
    rate = float(cfg["frame_hz"])
    raw, frames = np.empty(len(rows), dtype=np.float64), []  # [N], [T_i] each
    for i, pair in enumerate(pairs):  # one video in memory at a time
        if not math.isclose(pair.frame_hz, rate, rel_tol=1e-9):
            raise RunError(
                f"run {run.path} was trained on pairs at {rate:g} Hz; {sel.dataset} pairs "
                f"{audio} and {visual} at {pair.frame_hz:g} Hz"
            )
        try:
            f = frame_scores(net, pair.audio, pair.visual)  # [T]
        except SyncError as exc:
            raise RunError(f"run {run.path} cannot score {sel}: {exc}") from exc
        raw[i] = float(logsumexp(f.astype(np.float64)))
        frames.append(_on_timeline(f - np.float32(thresholds["frame"]), pair.silence_skip_rows))
    scores = raw - thresholds["video"]  # [N]
    return Scored(
        selection=str(sel),
        manifest=rows,
        scores=scores,
        probabilities=np.asarray(expit(2.0 * scores), dtype=np.float64),
        frame_scores=frames,
        frame_hz=rate,
    )
