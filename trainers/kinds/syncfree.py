"""Run kind ``syncfree``: the training-free synchronisation score (paper Eq. 3).

The numeric core is :mod:`featstore.trainers.syncfree`:
``s = min over delta in [-D, D] of pool_t(-cos(a_t, v_{t+delta}))``, higher
= more fake, frame scores ``-cos(a_t, v_{t+delta*})``. Nothing is fitted: a
run records what it reads (an ``audio`` and a ``visual`` input, each a stored
layer or a feature set, both at one rate, recorded with the rates of their
features, so that uploads and stored videos are read alike) and the shift
window and pool. ``featstore syncscore`` scores a selection with it and, with
``--out``, writes the run (:func:`run_syncscore`). ``sigmoid(2 s)`` ranks
videos; it is not calibrated.

>>> metrics = run_syncscore(store, "av1m:test", "avhubert-a", "avhubert-v",
...                         config=PRESETS["speechforensics"], out="runs/sf")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from featstore.trainers import runcard
from featstore.trainers.cluster import PARTITIONS, clear_partitions, score_on_cluster
from featstore.trainers.data import AUTO, Auto, FeatureKey, Selection, SelectionError, default_val
from featstore.trainers.inputs import AUDIO, VISUAL, FeatureInput, StoredFeature
from featstore.trainers.kinds import register
from featstore.trainers.kinds.base import (
    Detector,
    RunFormatError,
    VideoScore,
    silence_column,
    store_location,
    stream_rows,
    strict_fields,
    upgraded,
)
from featstore.trainers.pairs import PairingError, pair_inputs, pair_rows
from featstore.trainers.runcard import RunCard
from featstore.trainers.runs import Run, RunError, Scored, check_writable, save_run
from featstore.trainers.syncfree import SyncConfig, SyncError, VideoSync, pad_skipped, sync_video

if TYPE_CHECKING:
    import pandas as pd

    from featstore.store import FeatureStore
    from featstore.trainers.cluster import TaskProgress

log = logging.getLogger(__name__)

KIND = "syncfree"

__all__ = ["KIND", "SyncFreeDetector", "SyncFreeRunConfig", "run_syncscore", "train"]


@dataclass(frozen=True)
class SyncFreeRunConfig:
    """What a syncfree run is: its two inputs (one rate), Eq. 3's settings, silence trimming."""

    audio: FeatureInput
    visual: FeatureInput
    sync: SyncConfig
    trim_silence: bool = False

    def __post_init__(self) -> None:
        if (self.audio.role, self.visual.role) != (AUDIO, VISUAL):
            raise RunError(f"a syncfree run reads an audio and a visual input, got "
                           f"{self.audio.role} and {self.visual.role}")  # fmt: skip
        if not math.isclose(self.audio.frame_hz, self.visual.frame_hz, rel_tol=1e-9):
            raise RunError(
                f"audio ({self.audio.frame_hz:g} Hz) and visual ({self.visual.frame_hz:g} Hz) "
                "inputs must be read at one rate"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "audio": self.audio.to_dict(),
            "visual": self.visual.to_dict(),
            "sync": self.sync.to_dict(),
            "trim_silence": self.trim_silence,
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> SyncFreeRunConfig:
        strict_fields(cls, doc, "a syncfree run config")
        sync = dict(doc["sync"])
        if not {"shift", "pool"} <= set(sync) <= {"shift", "pool", "padding"}:
            raise RunError(
                f"a syncfree run's sync settings are shift, pool and padding, got {sorted(sync)}"
            )
        return cls(
            audio=FeatureInput.from_dict(doc["audio"]),
            visual=FeatureInput.from_dict(doc["visual"]),
            # computed with zero padding before the rule was recorded
            sync=SyncConfig(
                shift=int(sync["shift"]),
                pool=str(sync["pool"]),
                padding=str(sync.get("padding", "zero")),
            ),
            trim_silence=bool(doc.get("trim_silence", False)),
        )


def _v1_side(doc: Mapping[str, Any], role: str) -> StoredFeature:
    """A format-1 syncfree feature (``"ENCODER:LAYER"``, no rate or width recorded).

    Its rate is the encoder's declared rate (the registry's), which the store
    holds it at; features stored under another name cannot be upgraded.
    """
    from featstore.encoders import UnknownEncoderNameError, get_spec

    key = FeatureKey.parse(doc[role])
    try:
        rate = float(get_spec(key.encoder).frame_hz)
    except UnknownEncoderNameError:
        raise RunFormatError(
            f"a syncfree run of featstore {doc.get('package_version', '0.1')}, which did not "
            f"record the rate of its {role} features {key}, and {key.encoder!r} is not a "
            f"registered encoder to take it from; re-run {SyncFreeDetector.rerun} --out PATH "
            "--overwrite to record it"
        ) from None
    return StoredFeature(encoder=key.encoder, layer=key.layer, frame_hz=rate, dim=None, dtype=None)


@register
class SyncFreeDetector(Detector):
    """Eq. 3 on one video's paired audio and visual rows."""

    kind = KIND
    config_type = SyncFreeRunConfig
    calibrated = False
    rerun = (
        "`featstore syncscore --store URL --audio FEATURES --visual FEATURES --on NAME:SPLIT "
        "(--preset P | --shift D --pool POOL)`"
    )
    config: SyncFreeRunConfig

    @classmethod
    def from_run(cls, run: Run, doc: Mapping[str, Any], *, device: str = "cpu") -> SyncFreeDetector:
        return cls(SyncFreeRunConfig.from_dict(doc["config"]), run=run, device=device)

    @staticmethod
    def upgrade_v1(doc: Mapping[str, Any]) -> dict[str, Any]:
        """Format 1: ``"audio": "ENC:LAYER"``, ``shift``, ``pool``, ``padding`` (absent:
        zeros, the only rule then), and ``frame_hz`` = the resampling rate asked for
        (``null``: none, the features' own rate)."""
        from featstore import timebase

        audio, visual = _v1_side(doc, AUDIO), _v1_side(doc, VISUAL)
        resample = doc.get("frame_hz")
        rate = timebase.common_rate(
            [audio.frame_hz, visual.frame_hz],
            frame_hz=None if resample is None else float(resample),
        )
        config = {
            "audio": FeatureInput(AUDIO, (audio,), rate).to_dict(),
            "visual": FeatureInput(VISUAL, (visual,), rate).to_dict(),
            "sync": {
                "shift": int(doc["shift"]),
                "pool": str(doc["pool"]),
                "padding": str(doc.get("padding", "zero")),
            },
            "trim_silence": bool(doc.get("trim_silence", False)),
        }
        return upgraded(doc, config=config)

    @property
    def inputs(self) -> tuple[FeatureInput, ...]:
        return (self.config.audio, self.config.visual)

    @property
    def needs_silence(self) -> bool:
        return self.config.trim_silence

    @property
    def min_rows(self) -> int:
        return 2 * self.config.sync.shift + 1

    @property
    def min_rows_reason(self) -> str:
        d = self.config.sync.shift
        return (
            f"Eq. 3 compares the streams at shifts -{d}..{d}; a clip shorter than {2 * d + 1} "
            "rows has shifts under which the streams barely overlap"
        )

    def sync_rows(
        self, rows: Mapping[FeatureKey, np.ndarray], *, leading_silence_s: float | None = None
    ) -> tuple[VideoSync, int]:
        """Eq. 3 on one video (with the chosen shift) and the leading rows it dropped."""
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
            return sync_video(pair.audio, pair.visual, self.config.sync), skip
        except SyncError as exc:
            raise RunError(f"{self.where()}: {exc}") from None

    def score_rows(
        self, rows: Mapping[FeatureKey, np.ndarray], *, leading_silence_s: float | None = None
    ) -> VideoScore:
        result, skip = self.sync_rows(rows, leading_silence_s=leading_silence_s)
        return VideoScore(result.score, pad_skipped(result.frame_scores, skip))

    def sync_selection(
        self, store: FeatureStore, selection: Selection | str, *, allow_missing: bool = False
    ) -> tuple[Scored, np.ndarray]:
        """Every video of ``selection`` (one in memory at a time) and its best shift ``[N]``."""
        sel, rows = self.select(store, selection, allow_missing=allow_missing)
        silences = silence_column(rows) if self.needs_silence else None
        keys = [f.key for f in self.features]
        ids = rows["video_id"].astype(str).tolist()
        scores = np.empty(len(rows), dtype=np.float64)  # [N]
        shifts = np.empty(len(rows), dtype=np.int64)  # [N]
        frames = []
        for i, stored in stream_rows(store, sel.dataset, rows, keys):
            try:
                result, skip = self.sync_rows(
                    stored, leading_silence_s=None if silences is None else float(silences[i])
                )
            except (RunError, PairingError) as exc:
                raise type(exc)(f"{ids[i]}: {exc}") from None
            scores[i], shifts[i] = result.score, result.best_shift
            frames.append(pad_skipped(result.frame_scores, skip))
        return self.scored(sel, rows, scores, frames), shifts

    def score_selection(
        self, store: FeatureStore, selection: Selection | str, *, allow_missing: bool = False
    ) -> Scored:
        return self.sync_selection(store, selection, allow_missing=allow_missing)[0]


def detector(
    store: FeatureStore,
    dataset: str,
    audio: str | FeatureKey | Sequence[str | FeatureKey],
    visual: str | FeatureKey | Sequence[str | FeatureKey],
    *,
    config: SyncConfig,
    frame_hz: float | None = None,
    trim_silence: bool = False,
) -> SyncFreeDetector:
    """The detector for these features as ``dataset`` stores them (no run directory)."""
    a_in, v_in = pair_inputs(store, dataset, audio, visual, frame_hz=frame_hz)
    return SyncFreeDetector(SyncFreeRunConfig(a_in, v_in, config, trim_silence=trim_silence))


def train(
    store: FeatureStore,
    *,
    audio: str | FeatureKey | Sequence[str | FeatureKey],
    visual: str | FeatureKey | Sequence[str | FeatureKey],
    on: Selection | str,
    out: str | os.PathLike[str],
    config: SyncConfig,
    frame_hz: float | None = None,
    trim_silence: bool = False,
    calibrate_on: Selection | str | Auto | None = AUTO,
    allow_missing: bool = False,
    overwrite: bool = False,
) -> Run:
    """Write a syncfree run at ``out``; nothing is fitted but the frame threshold.

    The features are resolved (rates, widths, checkpoints) as the dataset of
    ``on`` stores them; ``frame_hz`` is needed when their rates differ. The
    run records the lengths of the videos of ``on`` and calibrates its frame
    threshold on ``calibrate_on`` (``AUTO``: the ``val`` split of ``on``'s
    dataset when it has one and ``on`` is another split; ``None``: the paper's 0).
    """
    sel = Selection.parse(on, default_split="test")
    check_writable(out, overwrite=overwrite)
    det = detector(
        store, sel.dataset, audio, visual, config=config, frame_hz=frame_hz,
        trim_silence=trim_silence,
    )  # fmt: skip
    _, rows = det.select(store, sel, allow_missing=allow_missing)
    card = _card(det, store, sel, rows, calibrate_on, allow_missing=allow_missing)
    return _save(det, store, out, card, overwrite=overwrite)


def _card(
    det: SyncFreeDetector,
    store: FeatureStore,
    on: Selection,
    rows: pd.DataFrame,
    calibrate_on: Selection | str | Auto | None,
    *,
    allow_missing: bool,
) -> dict[str, Any]:
    """The run's card: lengths of ``on``'s videos, the threshold learnt on ``calibrate_on``."""
    note = "no selection to calibrate on (syncscore --calibrate-on NAME:SPLIT)"
    if isinstance(calibrate_on, Auto):
        calib = default_val(store, on)
        if calib is not None:
            try:
                det.select(store, calib, allow_missing=allow_missing)
            except SelectionError as exc:
                log.warning("not calibrating on %s: %s", calib, exc)
                note, calib = f"{calib} cannot be scored: {exc}", None
    else:
        calib = None if calibrate_on is None else Selection.parse(calibrate_on, default_split="val")
    if calib is not None and calib == on:
        log.warning("calibrating the frame threshold on %s, the selection scored", on)
    return runcard.record(
        det,
        store,
        lengths_of=(on, rows),
        calibrate_on=calib,
        allow_missing=allow_missing,
        no_calibration=note,
    )


def _save(
    det: SyncFreeDetector,
    store: FeatureStore,
    out: str | os.PathLike[str],
    card: dict[str, Any],
    *,
    overwrite: bool,
) -> Run:
    doc = {"kind": KIND, "config": det.config.to_dict(), "store": store_location(store), **card}
    return save_run(out, config=doc, overwrite=overwrite)


def run_syncscore(
    store: FeatureStore,
    on: Selection | str,
    audio: str | FeatureKey | Sequence[str | FeatureKey],
    visual: str | FeatureKey | Sequence[str | FeatureKey],
    *,
    config: SyncConfig,
    out: str | os.PathLike[str] | None = None,
    ci: bool = False,
    threshold: str | float | None = None,
    allow_missing: bool = False,
    fakes: str = "paper",
    segment_metrics: str = "official",
    trim_silence: bool = False,
    frame_hz: float | None = None,
    calibrate_on: Selection | str | Auto | None = AUTO,
    overwrite: bool = False,
    cluster: Any = None,
    n_workers: int = 2,
    on_progress: Callable[[TaskProgress], None] | None = None,
) -> dict[str, Any]:
    """Score ``on`` training-free and compute eval's metrics (plus the best-shift histogram).

    ``fakes`` is the evaluation filter (``paper`` or ``all``) of AUC/AP, the
    temporal AUC and AP/AR; ``segment_metrics`` picks AV-Deepfake1M's AP/AR
    semantics (``"official"`` or ``"corrected"``).
    With ``out`` the result is also a run directory of kind ``syncfree``
    (``config.json``, ``metrics.json``, ``predictions/NAME_SPLIT.*``) that
    ``eval``, ``fuse``, ``correlate``, ``explain`` and ``serve`` take like any run.

    ``cluster`` (``"local"``, ``"tcp://HOST:PORT"`` or a ``distributed.Client``)
    scores a partition of videos per Dask task (``featstore.trainers.cluster``), to the
    same numbers; with ``out`` an interrupted run resumes from the partitions
    it finished (kept under ``out`` until the run is written).
    """
    from featstore.trainers.evaluate import record_evaluation, scored_metrics

    sel = Selection.parse(on, default_split="test")
    if out is not None:
        check_writable(out, overwrite=overwrite)
    det = detector(
        store, sel.dataset, audio, visual, config=config, frame_hz=frame_hz,
        trim_silence=trim_silence,
    )  # fmt: skip
    resume = None if out is None else Path(out) / PARTITIONS
    if cluster is None:
        scored, best_shifts = det.sync_selection(store, sel, allow_missing=allow_missing)
    else:
        scored, extras = score_on_cluster(
            det,
            store,
            sel,
            cluster=cluster,
            n_workers=n_workers,
            allow_missing=allow_missing,
            scorer=sync_scores,
            resume_dir=resume,
            on_progress=on_progress,
        )
        best_shifts = extras["best_shift"]
    det.card = RunCard.from_doc(
        _card(det, store, sel, scored.manifest, calibrate_on, allow_missing=allow_missing)
    )
    rules, name = det.localization.resolve(threshold)
    metrics, _, segments = scored_metrics(
        scored,
        kind=KIND,
        ci=ci,
        rules=rules,
        threshold_name=name,
        fakes=fakes,
        segment_metrics=segment_metrics,
        card=det.card,
    )
    values, counts = np.unique(best_shifts, return_counts=True)
    metrics["best_shift_counts"] = {
        str(int(v)): int(c) for v, c in zip(values, counts, strict=True)
    }
    metrics["sync"] = config.to_dict()
    if out is not None:
        run = _save(det, store, out, det.card.to_doc(), overwrite=overwrite)
        record_evaluation(run, scored, metrics, segments, slug=sel.slug)
        clear_partitions(resume, sel)
        metrics["out"] = str(run.path)
    return metrics


def sync_scores(
    detector: SyncFreeDetector, store: FeatureStore, selection: Selection
) -> tuple[Scored, dict[str, np.ndarray]]:
    """A cluster task's scoring (``featstore.trainers.cluster``): scores and each video's best shift."""
    scored, shifts = detector.sync_selection(store, selection)
    return scored, {"best_shift": shifts}
