"""Run kind ``probe``: the paper's linear probe (Eq. 1) on one feature set.

The numeric core is :mod:`featstore.trainers.probe`; this module reads the store,
fits, writes the run and scores. A probe reads one input (role ``features``):
a stored layer, or a feature set of several concatenated per frame
(``wav2vec2:last+clip:last``). Its video logit is ``s = logsumexp_t z_t``
and, as its loss is cross-entropy over ``[-s, s]``, ``sigmoid(2 s)`` is its
P(fake) (``calibrated``).

>>> run = train(store, features="wav2vec2:last", train="av1m:train",
...             out="runs/w2v")  # doctest: +SKIP
>>> load(run).score_selection(store, "av1m:test").scores.shape  # doctest: +SKIP
(10000,)
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
from featstore.trainers.runs import Run, RunError, Scored, save_run
from featstore.trainers.streams import StoreSource

if TYPE_CHECKING:
    from featstore.spatial import FrameHead
    from featstore.store import FeatureStore
    from featstore.trainers.inputs import StoredFeature
    from featstore.trainers.probe import EpochStats, ProbeConfig, ProbeParams

log = logging.getLogger(__name__)

KIND = "probe"

__all__ = ["KIND", "ProbeDetector", "ProbeRunConfig", "train"]


@dataclass(frozen=True)
class ProbeRunConfig:
    """What a probe run is: the features it reads and its hyperparameters."""

    features: FeatureInput
    hyperparameters: ProbeConfig

    def to_dict(self) -> dict[str, Any]:
        return {
            "features": self.features.to_dict(),
            "hyperparameters": self.hyperparameters.to_dict(),
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> ProbeRunConfig:
        from featstore.trainers.probe import ProbeConfig

        strict_fields(cls, doc, "a probe run config")
        return cls(
            features=FeatureInput.from_dict(doc["features"]),
            hyperparameters=ProbeConfig.from_dict(dict(doc["hyperparameters"])),
        )


@register
class ProbeDetector(Detector):
    """A trained probe: per-frame logits ``w . phi_t + b``, video logit ``logsumexp_t``."""

    kind = KIND
    config_type = ProbeRunConfig
    calibrated = True
    score_batch_videos = 64
    rerun = "`featstore train probe --store URL --encoder FEATURES --train NAME:SPLIT`"
    config: ProbeRunConfig

    def __init__(
        self,
        config: ProbeRunConfig,
        params: ProbeParams,
        *,
        run: Run | None = None,
        device: str = "cpu",
    ) -> None:
        super().__init__(config, run=run, device=device)
        if params.dim != config.features.dim:
            raise RunError(
                f"{self.where()}: the probe is {params.dim}-wide but its features "
                f"{config.features.label} are {config.features.dim}-wide"
            )
        self.params = params

    @classmethod
    def from_run(cls, run: Run, doc: Mapping[str, Any], *, device: str = "cpu") -> ProbeDetector:
        from featstore.trainers.probe import ProbeParams

        config = ProbeRunConfig.from_dict(doc["config"])
        return cls(config, ProbeParams.from_state(run.tensors()), run=run, device=device)

    @staticmethod
    def upgrade_v1(doc: Mapping[str, Any]) -> dict[str, Any]:
        """Format 1: ``encoder``, ``layer``, ``frame_hz``, ``dim``, ``encoder_info`` at the top."""
        feature = v1_feature(doc, encoder=doc["encoder"], layer=doc["layer"], dim=doc["dim"])
        config = {
            "features": FeatureInput(FEATURES, (feature,), feature.frame_hz).to_dict(),
            "hyperparameters": dict(doc["hyperparameters"]),
        }
        fit = {k: doc[k] for k in ("best_epoch", "epochs", "stopped_early") if k in doc}
        return upgraded(doc, config=config, fit=fit)

    @property
    def inputs(self) -> tuple[FeatureInput, ...]:
        return (self.config.features,)

    def score_rows(
        self, rows: Mapping[FeatureKey, np.ndarray], *, leading_silence_s: float | None = None
    ) -> VideoScore:
        import torch

        from featstore.trainers.probe import frame_logits

        x = self.config.features.assemble(rows)  # [T, D]
        frames = np.asarray(frame_logits(self.params, x), dtype=np.float32)  # [T]
        return VideoScore(float(torch.logsumexp(torch.from_numpy(frames), dim=0)), frames)

    def spatial_head(self) -> tuple[StoredFeature, FrameHead]:
        """``w . phi(f) + b`` on the probe's feature (one feature at its own rate)."""
        from featstore.spatial import FrameHead

        inp = self.config.features
        if len(inp.features) != 1 or inp.resampled:
            raise RunError(
                f"{self.where()} reads {inp.label}: spatial explanations need a probe on one "
                "feature at its own rate"
            )
        p = self.params
        return inp.features[0], FrameHead(weight=p.w, bias=p.b, l2_normalize=p.l2_normalize)

    def score_selection(
        self, store: FeatureStore, selection: Selection | str, *, allow_missing: bool = False
    ) -> Scored:
        """Batched: videos concatenated without padding (``featstore.trainers.probe.score_source``)."""
        from featstore.trainers.probe import score_source

        sel, rows = self.select(store, selection, allow_missing=allow_missing)
        source = StoreSource(store, sel.dataset, self.config.features, rows)
        scores, frames = score_source(self.params, source, batch_videos=self.score_batch_videos)
        return self.scored(sel, rows, scores, [np.asarray(f, dtype=np.float32) for f in frames])


def train(
    store: FeatureStore,
    *,
    features: str | FeatureKey | Sequence[str | FeatureKey],
    train: Selection | str,
    out: str | os.PathLike[str],
    val: Selection | str | Auto | None = AUTO,
    config: ProbeConfig | None = None,
    frame_hz: float | None = None,
    on_epoch: Callable[[EpochStats], None] | None = None,
    overwrite: bool = False,
    allow_missing: bool = False,
    holdout: Holdout | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
) -> Run:
    """Fit a linear probe on stored features and write its run directory at ``out``.

    ``features`` is ``ENCODER[:LAYER]`` or a feature set (``A+B``, or a list);
    members at different rates need ``frame_hz``. ``train`` / ``val`` are
    ``NAME[@VIEW][:SPLIT]`` selections (a bare name means the ``train`` / ``val``
    split); ``val=AUTO`` uses the training dataset's ``val`` split when it
    has one (a warning when it has none), ``val=None`` trains without
    validation (no early stopping), ``holdout`` validates on a seeded part of
    the training videos instead (``featstore.trainers.kinds.fitting``). An existing
    complete run at ``out`` is an error unless ``overwrite``.
    ``checkpoint_every`` N checkpoints the fit into ``out`` every N epochs;
    ``resume`` continues from that checkpoint (same arguments otherwise). On
    SIGINT/SIGTERM the best-so-far run is saved, marked interrupted, and
    :class:`~featstore.trainers.training.TrainingInterrupted` is raised.
    """
    from featstore.trainers.probe import ProbeConfig, fit_probe

    hyper = config or ProbeConfig()
    hyper = dataclasses.replace(hyper, cache_bytes=resolve_cache_bytes(hyper.cache_bytes))
    train_sel, val_sel = training_selections(
        store, train, val, holdout=holdout, max_epochs=hyper.max_epochs
    )
    prepare_run_dir(out, resume=resume, overwrite=overwrite)  # fail before a long fit
    inp = feature_input(store, train_sel.dataset, FEATURES, features, frame_hz=frame_hz)
    rows = training_rows(
        train_sel,
        val_sel,
        holdout,
        lambda sel: select_videos(store, sel, inp.keys, allow_missing=allow_missing),
        check_val=lambda dataset: inp.check_store(store, dataset),
    )
    if rows.train["label"].nunique() < 2:
        held = " once validation is held out" if holdout is not None else ""
        raise SelectionError(f"{train_sel} needs both real and fake videos to train a probe{held}")
    train_src = StoreSource(store, train_sel.dataset, inp, rows.train)
    val_src = None
    if rows.val is not None and rows.val_dataset is not None:
        val_src = StoreSource(store, rows.val_dataset, inp, rows.val)
    log.info(
        "training a probe on %s %s (%d videos, %.1f MB)",
        train_sel,
        inp.label,
        len(train_src),
        train_src.nbytes / 2**20,
    )
    run_config = ProbeRunConfig(inp, hyper).to_dict()
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
    result = fit_probe(train_src, val_src, hyper, on_epoch=on_epoch, control=control)
    nothing_to_save(result.interruption)
    card = runcard.record(
        ProbeDetector(ProbeRunConfig(inp, hyper), result.params),
        store,
        lengths_of=(train_sel, rows.train),
        calibrate_on=val_sel or train_sel,
        allow_missing=allow_missing,
    )
    doc = {
        "kind": KIND,
        "config": run_config,
        "fit": {
            "best_epoch": int(result.best_epoch),
            "epochs": len(result.history),
            "stopped_early": bool(result.stopped_early),
            "batch_videos": int(result.batch_videos),
            "lr": float(result.lr),
            "engine": result.engine,
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
            "val_auc": h.val_auc,
            "seconds": h.seconds,
        }
        for h in result.history
    ]
    run = save_run(
        out, config=doc, tensors=result.params.to_state(), history=history, overwrite=True
    )
    return finish(run, result.interruption, control)
