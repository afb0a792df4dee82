"""Run kind ``ntp``: next-token prediction, an anomaly detector trained on real videos only.

The numeric core is :mod:`featstore.trainers.ntp` (a causal Transformer predicting
frame ``t+1`` from frames up to ``t``; the error ``e_t`` is the evidence).
A run reads one input (a stored layer or a feature set such as
``avhubert-a+avhubert-v``, the paper's combination rows) and records the
thresholds learnt from real videos. Scores follow the shared logit
convention: frame ``log(e_t / tau_f) / 2``, video ``log(max_t e_t / tau_v) / 2``,
so threshold 0 is the learnt frame threshold and ``sigmoid(2 s)`` ranks
videos but is not calibrated.

>>> run = train(store, features="avhubert-a+avhubert-v", train="av1m:train",
...             out="runs/ntp")  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from featstore.trainers import runcard
from featstore.trainers.data import AUTO, Auto, FeatureKey, Selection, SelectionError
from featstore.trainers.inputs import FEATURES, FeatureInput, select_videos
from featstore.trainers.kinds import register
from featstore.trainers.kinds.base import (
    Detector,
    VideoScore,
    feature_input,
    store_location,
    strict_fields,
    upgraded,
    v1_feature,
)
from featstore.trainers.kinds.fitting import (
    Holdout,
    finish,
    fit_record,
    nothing_to_save,
    prepare_run_dir,
    run_control,
    training_rows,
    training_selections,
)
from featstore.trainers.memory import execution_record, resolve_cache_bytes
from featstore.trainers.runs import Run, Scored, save_run
from featstore.trainers.streams import StoreSource

if TYPE_CHECKING:
    from featstore.store import FeatureStore
    from featstore.trainers.ntp import NextFrameTransformer, NTPConfig, NTPEpochStats, NTPThresholds

log = logging.getLogger(__name__)

KIND = "ntp"

__all__ = ["KIND", "NTPDetector", "NTPRunConfig", "train"]


@dataclass(frozen=True)
class NTPRunConfig:
    """What an ntp run is: the features it reads, the architecture and training settings."""

    features: FeatureInput
    hyperparameters: NTPConfig

    def to_dict(self) -> dict[str, Any]:
        return {
            "features": self.features.to_dict(),
            "hyperparameters": self.hyperparameters.to_dict(),
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> NTPRunConfig:
        from featstore.trainers.ntp import NTPConfig

        strict_fields(cls, doc, "an ntp run config")
        return cls(
            features=FeatureInput.from_dict(doc["features"]),
            hyperparameters=NTPConfig.from_dict(dict(doc["hyperparameters"])),
        )


def _thresholds(doc: Mapping[str, Any]) -> NTPThresholds:
    from featstore.trainers.ntp import NTPThresholds

    return NTPThresholds(
        frame=float(doc["frame"]),
        video=float(doc["video"]),
        quantile=float(doc["quantile"]),
        n_videos=int(doc["n_videos"]),
        n_frames=int(doc["n_frames"]),
    )


@register
class NTPDetector(Detector):
    """A trained next-frame predictor and the thresholds learnt on real videos."""

    kind = KIND
    config_type = NTPRunConfig
    calibrated = False
    score_batch_videos = 32
    rerun = "`featstore train ntp --store URL --encoder FEATURES --train NAME:SPLIT`"
    config: NTPRunConfig

    def __init__(
        self,
        config: NTPRunConfig,
        model: NextFrameTransformer,
        thresholds: NTPThresholds,
        *,
        run: Run | None = None,
        device: str = "cpu",
    ) -> None:
        super().__init__(config, run=run, device=device)
        self.model, self.thresholds = model, thresholds

    @classmethod
    def from_run(cls, run: Run, doc: Mapping[str, Any], *, device: str = "cpu") -> NTPDetector:
        from featstore.trainers.ntp import NextFrameTransformer

        config = NTPRunConfig.from_dict(doc["config"])
        thresholds = _thresholds(doc["learnt"]["thresholds"])
        model = NextFrameTransformer.from_state(
            run.tensors(), config.features.dim, config.hyperparameters
        )
        return cls(config, model, thresholds, run=run, device=device)

    @staticmethod
    def upgrade_v1(doc: Mapping[str, Any]) -> dict[str, Any]:
        """Format 1: the feature at the top, ``thresholds`` beside the hyperparameters."""
        feature = v1_feature(doc, encoder=doc["encoder"], layer=doc["layer"], dim=doc["dim"])
        config = {
            "features": FeatureInput(FEATURES, (feature,), feature.frame_hz).to_dict(),
            "hyperparameters": dict(doc["hyperparameters"]),
        }
        keys = ("best_epoch", "epochs", "planned_steps", "stopped_early")
        fit = {k: doc[k] for k in keys if k in doc}
        return upgraded(doc, config=config, fit=fit, learnt={"thresholds": doc["thresholds"]})

    @property
    def inputs(self) -> tuple[FeatureInput, ...]:
        return (self.config.features,)

    @property
    def min_rows(self) -> int:
        return 2

    @property
    def min_rows_reason(self) -> str:
        return "a single frame has no next frame to predict"

    def _verdicts(self, errors: Sequence[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        from featstore.trainers.ntp import frame_logits, video_logits, video_scores

        scores = video_logits(video_scores(errors), self.thresholds)  # [N]
        frames = [frame_logits(e, self.thresholds).astype(np.float32) for e in errors]
        return scores, frames

    def score_rows(
        self, rows: Mapping[FeatureKey, np.ndarray], *, leading_silence_s: float | None = None
    ) -> VideoScore:
        from featstore.trainers.ntp import frame_errors
        from featstore.trainers.sources import ArraySource

        x = self.config.features.assemble(rows)  # [T, D]
        errors = frame_errors(self.model, ArraySource([x], [0]), device=self.device)
        scores, frames = self._verdicts(errors)
        return VideoScore(float(scores[0]), frames[0])

    def score_selection(
        self, store: FeatureStore, selection: Selection | str, *, allow_missing: bool = False
    ) -> Scored:
        """Batched: windows of several videos per forward pass (padding-safe)."""
        from featstore.trainers.ntp import frame_errors

        sel, rows = self.select(store, selection, allow_missing=allow_missing)
        source = StoreSource(store, sel.dataset, self.config.features, rows)  # >= 2 rows each
        errors = frame_errors(
            self.model, source, batch_videos=self.score_batch_videos, device=self.device
        )
        scores, frames = self._verdicts(errors)
        return self.scored(sel, rows, scores, frames)


def train(
    store: FeatureStore,
    *,
    features: str | FeatureKey | Sequence[str | FeatureKey],
    train: Selection | str,
    out: str | os.PathLike[str],
    val: Selection | str | Auto | None = AUTO,
    config: NTPConfig | None = None,
    frame_hz: float | None = None,
    on_epoch: Callable[[NTPEpochStats], None] | None = None,
    overwrite: bool = False,
    allow_missing: bool = False,
    holdout: Holdout | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
) -> Run:
    """Fit the next-token predictor on the *real* videos of ``train`` and write a run at ``out``.

    ``features`` is ``ENCODER[:LAYER]`` or a feature set (``A+B`` or a list;
    members at different rates need ``frame_hz``). Fakes in ``train`` /
    ``val`` are ignored (the paper trains on real videos only); a selection
    without real videos is an error. ``val=AUTO`` uses the training
    dataset's ``val`` split when it has one (a warning when it has none),
    ``val=None`` none (no early stopping), ``holdout`` a seeded part of the
    training reals. Thresholds (``threshold_quantile`` of real frame errors and
    video scores) are learnt on the validation reals when there are some,
    else on the training reals (optimistic: the model has seen them).
    ``checkpoint_every``, ``resume`` and interrupts as in
    :func:`featstore.trainers.kinds.probe.train`.
    """
    from featstore.trainers.ntp import NTPConfig, fit_ntp, fit_thresholds, frame_errors

    hyper = config or NTPConfig()
    hyper = dataclasses.replace(hyper, cache_bytes=resolve_cache_bytes(hyper.cache_bytes))
    train_sel, val_sel = training_selections(
        store, train, val, holdout=holdout, max_epochs=hyper.max_epochs
    )
    prepare_run_dir(out, resume=resume, overwrite=overwrite)  # fail before a long fit
    inp = feature_input(store, train_sel.dataset, FEATURES, features, frame_hz=frame_hz)

    def reals(sel: Selection) -> Any:
        try:
            return select_videos(store, sel, inp.keys, real_only=True, allow_missing=allow_missing)
        except SelectionError as exc:
            raise SelectionError(f"{exc}; the next-token predictor trains on real videos") from None

    rows = training_rows(
        train_sel,
        val_sel,
        holdout,
        reals,
        check_val=lambda dataset: inp.check_store(store, dataset),
    )
    train_src = StoreSource(store, train_sel.dataset, inp, rows.train)
    val_src = None
    if rows.val is not None and rows.val_dataset is not None:
        val_src = StoreSource(store, rows.val_dataset, inp, rows.val)
    log.info(
        "training a next-token predictor on %s %s (%d real videos, %.1f MB)",
        train_sel,
        inp.label,
        len(train_src),
        train_src.nbytes / 2**20,
    )
    run_config = NTPRunConfig(inp, hyper).to_dict()
    control = run_control(
        out,
        checkpoint_every=checkpoint_every,
        resume=resume,
        fingerprint={
            "kind": KIND,
            "config": run_config,
            "train": rows.train_summary,
            "val": rows.val_summary,
        },
    )
    result = fit_ntp(train_src, val_src, hyper, on_epoch=on_epoch, control=control)
    nothing_to_save(result.interruption)
    threshold_src, learnt_on = (val_src, "val") if val_src is not None else (train_src, "train")
    errors = frame_errors(result.model, threshold_src, device=hyper.device)
    thresholds = fit_thresholds(errors, hyper.threshold_quantile)
    card = runcard.record(
        NTPDetector(NTPRunConfig(inp, hyper), result.model, thresholds, device=hyper.device),
        store,
        lengths_of=(train_sel, rows.train),
        calibrate_on=val_sel or train_sel,
        allow_missing=allow_missing,
    )
    doc = {
        "kind": KIND,
        "config": run_config,
        "learnt": {"thresholds": {**thresholds.to_dict(), "learnt_on": learnt_on}},
        "score": {
            "video": "0.5 * log(max_t e_t / thresholds.video)",
            "frame": "0.5 * log(e_t / thresholds.frame); e_0 = e_1",
            "probability": "sigmoid(2 s) = m / (m + thresholds.video); not calibrated",
        },
        "fit": {
            "best_epoch": int(result.best_epoch),
            "epochs": len(result.history),
            "planned_steps": int(result.planned_steps),
            "stopped_early": bool(result.stopped_early),
            **fit_record(result, control),
        },
        "execution": execution_record(
            hyper.cache_bytes,
            train_bytes=train_src.nbytes,
            val_bytes=None if val_src is None else val_src.nbytes,
        ),
        "store": store_location(store),
        "train": rows.train_summary,
        "val": rows.val_summary,
        **card,
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
    run = save_run(
        out, config=doc, tensors=result.model.to_state(), history=history, overwrite=True
    )
    return finish(run, result.interruption, control)
