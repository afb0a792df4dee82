"""Run kind ``sync``: AVH-Align's audio-visual synchronisation network, trained on reals.

The numeric core is :mod:`featstore.trainers.sync`. A run reads two inputs, ``audio``
and ``visual`` (each a stored layer or a feature set, both at one rate),
paired by :func:`featstore.trainers.pairs.pair_rows`: trimmed to the shorter, and with
``trim_silence`` (AVH-Align's option) after dropping each video's leading
silence, which then has to be known (the manifest column
``leading_silence_s`` for stored videos; the service measures it on an upload).

Scores. The network's own scores are the paper's: frame ``-Phi(a_t, v_t)``,
video ``logsumexp_t(-Phi(a_t, v_t))``, higher = more fake. A run shifts them
by two constants learnt on real validation videos (training videos when
there is no validation set), so they follow the shared logit convention:

- frame logit ``-Phi(a_t, v_t) - frame_threshold``, the ``FRAME_QUANTILE``
  (99 %) quantile of the real frames' ``-Phi``: a frame above 0 is flagged
  (about 1 % of real frames);
- video logit ``logsumexp_t(-Phi) - video_threshold`` (``VIDEO_QUANTILE``,
  95 %, of the real videos' scores); ``sigmoid(2 s)`` is a monotone map into
  [0, 1], 0.5 at that quantile, *not* calibrated.

Shifts change neither AUC nor temporal AUC. Frame scores stay on the video's
own timeline: rows dropped as leading silence get the video's lowest frame
score (no evidence either way); the video score uses the scored rows only.

>>> run = train(store, audio="avhubert-a", visual="avhubert-v", train="av1m:train",
...             out="runs/sync")  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from featstore.trainers import runcard
from featstore.trainers.data import AUTO, Auto, FeatureKey, Selection, SelectionError
from featstore.trainers.inputs import AUDIO, VISUAL, FeatureInput
from featstore.trainers.kinds import register
from featstore.trainers.kinds.base import (
    Detector,
    VideoScore,
    finite,
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
from featstore.trainers.pairs import PairingError, pair_inputs, pair_rows, select_pairs
from featstore.trainers.runs import Run, RunError, save_run
from featstore.trainers.streams import PairSource
from featstore.trainers.sync_feed import packed_nbytes

if TYPE_CHECKING:
    import pandas as pd

    from featstore.store import FeatureStore
    from featstore.trainers.sync import EpochStats, SyncConfig, SyncNet

log = logging.getLogger(__name__)

KIND = "sync"
FRAME_QUANTILE = 0.99
VIDEO_QUANTILE = 0.95

__all__ = ["FRAME_QUANTILE", "KIND", "VIDEO_QUANTILE", "SyncDetector", "SyncRunConfig", "train"]


@dataclass(frozen=True)
class SyncRunConfig:
    """What a sync run is: its two inputs (one rate), hyperparameters, silence trimming."""

    audio: FeatureInput
    visual: FeatureInput
    hyperparameters: SyncConfig
    trim_silence: bool = False

    def __post_init__(self) -> None:
        if (self.audio.role, self.visual.role) != (AUDIO, VISUAL):
            raise RunError(f"a sync run reads an audio and a visual input, got {self.audio.role} "
                           f"and {self.visual.role}")  # fmt: skip
        if not math.isclose(self.audio.frame_hz, self.visual.frame_hz, rel_tol=1e-9):
            raise RunError(
                f"audio ({self.audio.frame_hz:g} Hz) and visual ({self.visual.frame_hz:g} Hz) "
                "inputs must be read at one rate"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "audio": self.audio.to_dict(),
            "visual": self.visual.to_dict(),
            "hyperparameters": self.hyperparameters.to_dict(),
            "trim_silence": self.trim_silence,
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> SyncRunConfig:
        from featstore.trainers.sync import SyncConfig

        strict_fields(cls, doc, "a sync run config")
        return cls(
            audio=FeatureInput.from_dict(doc["audio"]),
            visual=FeatureInput.from_dict(doc["visual"]),
            hyperparameters=SyncConfig.from_dict(dict(doc["hyperparameters"])),
            trim_silence=bool(doc.get("trim_silence", False)),
        )


def _on_timeline(frames: np.ndarray, skip: int) -> np.ndarray:
    """Frame scores ``[T]`` preceded by ``skip`` trimmed rows at the video's lowest score."""
    if skip == 0:
        return frames
    return np.concatenate([np.full(skip, frames.min(), dtype=frames.dtype), frames])


@register
class SyncDetector(Detector):
    """The trained network ``Phi`` and the thresholds learnt on real videos."""

    kind = KIND
    config_type = SyncRunConfig
    calibrated = False
    rerun = (
        "`featstore train sync --store URL --audio FEATURES --visual FEATURES --train NAME:SPLIT`"
    )
    config: SyncRunConfig

    def __init__(
        self,
        config: SyncRunConfig,
        net: SyncNet,
        thresholds: Mapping[str, float],
        *,
        run: Run | None = None,
        device: str = "cpu",
    ) -> None:
        super().__init__(config, run=run, device=device)
        self.net = net.to(device).eval()
        self.frame_threshold = finite(thresholds["frame"], "the frame threshold")
        self.video_threshold = finite(thresholds["video"], "the video threshold")

    @classmethod
    def from_run(cls, run: Run, doc: Mapping[str, Any], *, device: str = "cpu") -> SyncDetector:
        from featstore.trainers.sync import SyncError, net_from_state

        config = SyncRunConfig.from_dict(doc["config"])
        try:
            net = net_from_state(run.tensors())
        except SyncError as exc:
            raise RunError(f"{run.path}: {exc}") from None
        return cls(config, net, doc["learnt"]["thresholds"], run=run, device=device)

    @staticmethod
    def upgrade_v1(doc: Mapping[str, Any]) -> dict[str, Any]:
        """Format 1: ``audio`` / ``visual`` records, ``audio_dim``, ``frame_hz`` = the pair rate."""
        inputs = {}
        for role in (AUDIO, VISUAL):
            side = doc[role]
            feature = v1_feature(
                side, encoder=side["encoder"], layer=side["layer"], dim=doc[f"{role}_dim"]
            )
            inputs[role] = FeatureInput(role, (feature,), float(doc["frame_hz"])).to_dict()
        config = {
            **inputs,
            "hyperparameters": dict(doc["hyperparameters"]),
            "trim_silence": bool(doc.get("trim_silence", False)),
        }
        fit = {k: doc[k] for k in ("best_epoch", "epochs", "stopped_early") if k in doc}
        return upgraded(doc, config=config, fit=fit, learnt={"thresholds": doc["thresholds"]})

    @property
    def inputs(self) -> tuple[FeatureInput, ...]:
        return (self.config.audio, self.config.visual)

    @property
    def needs_silence(self) -> bool:
        return self.config.trim_silence

    @property
    def min_rows(self) -> int:
        return 2 * self.config.hyperparameters.tau + 1

    @property
    def min_rows_reason(self) -> str:
        tau = self.config.hyperparameters.tau
        return (
            f"each frame is scored against the audio {tau} rows either side of it; in a clip "
            f"shorter than {2 * tau + 1} rows no frame has that context inside the clip"
        )

    def score_rows(
        self, rows: Mapping[FeatureKey, np.ndarray], *, leading_silence_s: float | None = None
    ) -> VideoScore:
        from scipy.special import logsumexp

        from featstore.trainers.sync import SyncError, frame_scores

        if self.needs_silence and leading_silence_s is None:
            raise PairingError(
                f"{self.where()} trims each video's leading silence, which was not given"
            )
        pair, skip = pair_rows(
            self.config.audio,
            self.config.visual,
            rows,
            leading_silence_s=leading_silence_s if self.needs_silence else None,
        )
        try:
            f = frame_scores(self.net, pair.audio, pair.visual)  # [T]
        except SyncError as exc:
            raise RunError(f"{self.where()}: {exc}") from exc
        raw = float(logsumexp(f.astype(np.float64)))
        frames = _on_timeline(f - np.float32(self.frame_threshold), skip)
        return VideoScore(raw - self.video_threshold, frames)


def _real_rows(
    store: FeatureStore,
    sel: Selection,
    audio: FeatureInput,
    visual: FeatureInput,
    *,
    allow_missing: bool,
) -> pd.DataFrame:
    """The manifest rows of the real videos of ``sel`` with both inputs."""
    try:
        return select_pairs(store, sel, audio, visual, real_only=True, allow_missing=allow_missing)
    except SelectionError as exc:
        raise SelectionError(f"{exc}; the sync network trains on real videos only") from None


def _source(
    store: FeatureStore,
    dataset: str,
    rows: pd.DataFrame,
    audio: FeatureInput,
    visual: FeatureInput,
    *,
    trim_silence: bool,
) -> tuple[PairSource, int]:
    """The videos of ``rows`` paired (read lazily), and their frame count (recorded in the
    run config)."""
    source = PairSource(store, dataset, audio, visual, rows, trim_silence=trim_silence)
    return source, int(source.lengths.sum())


def _thresholds(net: SyncNet, pairs: PairSource) -> dict[str, float]:
    from featstore.trainers.sync import score_source

    videos, frames = score_source(net, pairs)
    flat = np.concatenate(frames)  # [sum T]
    return {
        "frame": float(np.quantile(flat, FRAME_QUANTILE)),
        "video": float(np.quantile(videos, VIDEO_QUANTILE)),
        "frame_quantile": FRAME_QUANTILE,
        "video_quantile": VIDEO_QUANTILE,
        "n_videos": len(pairs),
        "n_frames": int(flat.size),
    }


def train(
    store: FeatureStore,
    *,
    audio: str | FeatureKey | Sequence[str | FeatureKey],
    visual: str | FeatureKey | Sequence[str | FeatureKey],
    train: Selection | str,
    out: str | os.PathLike[str],
    val: Selection | str | Auto | None = AUTO,
    config: SyncConfig | None = None,
    frame_hz: float | None = None,
    trim_silence: bool = False,
    on_epoch: Callable[[EpochStats], None] | None = None,
    overwrite: bool = False,
    allow_missing: bool = False,
    holdout: Holdout | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
) -> Run:
    """Fit the sync network on the *real* videos of ``train`` and write a run at ``out``.

    ``audio`` / ``visual`` are ``ENCODER[:LAYER]`` keys or feature sets; all
    their features must run at one rate unless ``frame_hz`` names a common
    one. Fakes in ``train`` / ``val`` are ignored. ``val=AUTO`` uses the
    training dataset's ``val`` split when it has one (a warning when it has
    none), ``val=None`` none (no early stopping; thresholds then come from the
    training videos, optimistic as the network has seen them), ``holdout`` a
    seeded part of the training reals. An existing complete run is an error
    unless ``overwrite``. ``checkpoint_every``, ``resume`` and interrupts as in
    :func:`featstore.trainers.kinds.probe.train`.
    """
    from featstore.trainers.sync import SyncConfig, fit_sync, net_to_state

    hyper = config or SyncConfig()
    hyper = dataclasses.replace(hyper, cache_bytes=resolve_cache_bytes(hyper.cache_bytes))
    train_sel, val_sel = training_selections(
        store, train, val, holdout=holdout, max_epochs=hyper.max_epochs
    )
    prepare_run_dir(out, resume=resume, overwrite=overwrite)  # fail before a long fit
    a_in, v_in = pair_inputs(store, train_sel.dataset, audio, visual, frame_hz=frame_hz)

    def check_val(dataset: str) -> None:
        a_in.check_store(store, dataset)
        v_in.check_store(store, dataset)

    rows = training_rows(
        train_sel,
        val_sel,
        holdout,
        lambda sel: _real_rows(store, sel, a_in, v_in, allow_missing=allow_missing),
        check_val=check_val,
    )
    train_pairs, n_frames = _source(
        store, train_sel.dataset, rows.train, a_in, v_in, trim_silence=trim_silence
    )
    train_summary = {**rows.train_summary, "n_frames": n_frames}
    val_pairs, val_summary = None, rows.val_summary
    if rows.val is not None and rows.val_dataset is not None:
        val_pairs, n_frames = _source(
            store, rows.val_dataset, rows.val, a_in, v_in, trim_silence=trim_silence
        )
        val_summary = {**rows.val_summary, "n_frames": n_frames}
    log.info(
        "training a sync network on %s %s + %s (%d real videos)",
        train_sel,
        a_in.label,
        v_in.label,
        len(train_pairs),
    )
    run_config = SyncRunConfig(a_in, v_in, hyper, trim_silence=bool(trim_silence)).to_dict()
    control = run_control(
        out,
        checkpoint_every=checkpoint_every,
        resume=resume,
        fingerprint={
            "kind": KIND,
            "config": run_config,
            "train": train_summary,
            "val": val_summary,
        },
    )
    result = fit_sync(train_pairs, val_pairs, hyper, on_epoch=on_epoch, control=control)
    nothing_to_save(result.interruption)
    reference, learnt_on = (val_pairs, "val") if val_pairs is not None else (train_pairs, "train")
    net = result.net
    thresholds = {**_thresholds(net, reference), "learnt_on": learnt_on}
    card = runcard.record(
        SyncDetector(
            SyncRunConfig(a_in, v_in, hyper, trim_silence=bool(trim_silence)),
            net,
            thresholds,
            device=hyper.device,
        ),
        store,
        lengths_of=(train_sel, rows.train),
        calibrate_on=val_sel or train_sel,
        allow_missing=allow_missing,
    )
    doc = {
        "kind": KIND,
        "config": run_config,
        "learnt": {"thresholds": thresholds},
        "architecture": {
            "type": "AVH-Align: L2-normalised inputs, projections, MLP on [visual; audio]",
            "audio_dim": net.audio_dim,
            "visual_dim": net.visual_dim,
            "proj_dim": hyper.proj_dim,
            "hidden": list(hyper.hidden),
            "tau": hyper.tau,
        },
        "score": {
            "frame": "-Phi(a_t, v_t) - thresholds.frame",
            "video": "logsumexp_t(-Phi(a_t, v_t)) - thresholds.video",
            "probability": "sigmoid(2 s); monotone, not calibrated",
        },
        "fit": {
            "best_epoch": int(result.best_epoch),
            "epochs": len(result.history),
            "stopped_early": bool(result.stopped_early),
            **fit_record(result, control),
        },
        "execution": execution_record(
            hyper.cache_bytes,
            train_bytes=packed_nbytes(train_pairs, hyper.tau),
            val_bytes=None if val_pairs is None else packed_nbytes(val_pairs, hyper.tau),
        ),
        "store": store_location(store),
        "train": train_summary,
        "val": val_summary,
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
    run = save_run(out, config=doc, tensors=net_to_state(net), history=history, overwrite=True)
    return finish(run, result.interruption, control)
