"""The interface every run kind implements (DESIGN.md "Run kinds").

A run kind is one module under ``trainers/kinds/`` holding:

- a frozen, typed run config (``<Kind>RunConfig``): the features the detector
  reads (:class:`~featstore.trainers.inputs.FeatureInput`, each possibly a feature set)
  and every hyperparameter and option, serialised whole into ``config.json``;
- ``train(store, ...) -> Run``: fit (or, for training-free kinds, just
  describe) the detector and write its run directory;
- a :class:`Detector` subclass, registered by its ``kind`` name: what
  ``featstore.trainers.kinds.load(run_dir)`` returns. Callers use only this:
  ``required_features`` (which stored features at which rate, in which
  role), ``score_rows(rows) -> VideoScore`` (one video from its stored rows,
  e.g. an upload's encoder output), ``score_selection(store, selection)``
  (many stored videos at once, the fast path; equal to ``score_rows`` video
  by video), ``frame_hz`` and ``calibrated``; ``min_rows`` when the kind
  cannot score shorter inputs (with ``min_rows_reason``);
- ``upgrade_v1(doc)``: how to read the kind's run configs written before the
  config format had a version (format 1), or a :class:`RunFormatError` that
  names the command to re-run.

What every kind shares is written once here: :meth:`Detector.score_video`
(the kind's minimum, windows of the training length: ``featstore.trainers.windows``)
and the run's card (``detector.card``: the calibrated frame threshold and
segment rules, ``featstore.trainers.calibration`` / ``featstore.trainers.localization``, and the
training lengths), attached by ``featstore.trainers.kinds.load`` from the run config.

Scores follow one convention for every kind: the video score ``s`` is a
logit, higher = more fake, the label threshold is 0 and ``sigmoid(2 s)`` is
the kind's P(fake) when ``calibrated`` (the probe's loss makes it one; fused
runs of calibrated members), else only a monotone map into [0, 1] that ranks
videos (anomaly detectors and training-free scores). Per-frame scores are on
the same scale, one per row at ``frame_hz`` from the start of the video.
"""

from __future__ import annotations

import logging
import math
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from scipy.special import expit

from featstore.trainers.data import FeatureKey, Selection, SelectionError
from featstore.trainers.inputs import (
    FeatureInput,
    InputError,
    StoredFeature,
    parse_feature_set,
    select_videos,
    unique_features,
)
from featstore.trainers.runcard import LEGACY, RunCard, input_lengths
from featstore.trainers.runs import Run, RunError, Scored
from featstore.trainers.windows import WindowedScore, WindowRule, slice_rows, window_rule

if TYPE_CHECKING:
    import pandas as pd

    from featstore.spatial import FrameHead
    from featstore.store import FeatureStore
    from featstore.trainers.calibration import LocalizationCard
    from featstore.trainers.windows import LengthProfile

log = logging.getLogger(__name__)

STREAM_CHUNK_VIDEOS = 32  # videos read together when a kind scores one video at a time

__all__ = [
    "Detector",
    "RunFormatError",
    "VideoScore",
    "feature_input",
    "probability",
    "store_location",
    "strict_fields",
]


class RunFormatError(RunError):
    """A run directory's config is of a format this version cannot read."""


@dataclass(frozen=True)
class VideoScore:
    """One video's verdict: the video logit, and per-frame logits ``[T]`` (None: it has none)."""

    score: float
    frame_scores: np.ndarray | None = field(default=None, repr=False)


def probability(score: float | np.ndarray) -> float | np.ndarray:
    """``sigmoid(2 s)``: P(fake) of a calibrated kind, a rank score in [0, 1] of the others."""
    p = expit(2.0 * np.asarray(score, dtype=np.float64))
    return float(p) if np.ndim(p) == 0 else p


def strict_fields(cls: type, doc: Mapping[str, Any], where: str) -> None:
    """Unknown keys in a recorded config are an error (a typo must not become a default)."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(doc) - names
    if unknown:
        raise RunError(f"unknown keys {sorted(unknown)} in {where}")


class Detector(ABC):
    """A loaded detector of some run kind, scoring videos from stored (or freshly encoded) rows.

    Subclasses set ``kind``, ``config_type``, ``calibrated`` and implement
    ``from_run``, ``inputs`` and ``score_rows``; they override
    ``score_selection`` when a batched path is faster.
    """

    kind: ClassVar[str]
    config_type: ClassVar[type]
    calibrated: ClassVar[bool] = False
    rerun: ClassVar[str] = ""  # the command that writes a run of this kind (for error messages)
    threshold: float = 0.0  # the label threshold on scores: every kind's logit is 0 at its own
    score_batch_videos: int = 1
    """Videos ``score_selection`` scores together. Consecutive videos of a selection,
    starting at a multiple of this, score the same on their own as within the whole
    selection, to the bit: the cluster runner (``featstore.trainers.cluster``) cuts selections there."""

    def __init__(self, config: Any, *, run: Run | None = None, device: str = "cpu") -> None:
        self.config = config
        self.run = run
        self.device = device
        self.card: RunCard = LEGACY  # ``featstore.trainers.kinds.load`` sets the run's own

    # ------------------------------------------------------------ loading

    @classmethod
    @abstractmethod
    def from_run(cls, run: Run, doc: Mapping[str, Any], *, device: str = "cpu") -> Detector:
        """The detector of a run directory whose config (current format) is ``doc``."""

    @staticmethod
    def upgrade_v1(doc: Mapping[str, Any]) -> dict[str, Any]:
        """A format-1 config (no ``format`` key) in the current format."""
        raise RunFormatError("this kind has no format-1 runs")

    # ------------------------------------------------------------ what it reads

    @property
    @abstractmethod
    def inputs(self) -> tuple[FeatureInput, ...]:
        """The detector's inputs, in the order its maths reads them."""

    @property
    def required_features(self) -> tuple[FeatureInput, ...]:
        """Every input: role, feature set (encoder, layer, rate of each stored feature), rate."""
        return self.inputs

    @property
    def features(self) -> tuple[StoredFeature, ...]:
        """Every stored feature the detector reads, once each."""
        return unique_features(self.inputs)

    @property
    def frame_hz(self) -> float:
        """The rate of the per-frame scores (the rate the inputs are read at)."""
        return self.inputs[0].frame_hz

    @property
    def needs_silence(self) -> bool:
        """Whether ``score_rows`` needs the video's leading silence (silence-trimming runs)."""
        return False

    @property
    def min_rows(self) -> int:
        """The fewest input rows (at ``frame_hz``) the kind scores; kinds that need more
        context override it and ``min_rows_reason``."""
        return 1

    @property
    def min_rows_reason(self) -> str:
        return "there is no row to score"

    # ------------------------------------------------------------ the run's card

    @property
    def localization(self) -> LocalizationCard:
        """The frame threshold and segment rules of the run (``featstore.trainers.calibration``)."""
        return self.card.localization

    @property
    def lengths(self) -> LengthProfile | None:
        """The lengths of the run's training videos (None: not recorded)."""
        return self.card.lengths

    @property
    def window_rule(self) -> WindowRule:
        """How inputs are scored by length: minimums and windows (``featstore.trainers.windows``)."""
        return window_rule(
            self.lengths,
            kind_min_rows=self.min_rows,
            kind_reason=self.min_rows_reason,
            frame_hz=self.frame_hz,
        )

    @property
    def name(self) -> str:
        return self.run.name if self.run is not None else self.kind

    def where(self) -> str:
        return f"run {self.run.path}" if self.run is not None else f"the {self.kind} detector"

    # ------------------------------------------------------------ scoring

    @abstractmethod
    def score_rows(
        self, rows: Mapping[FeatureKey, np.ndarray], *, leading_silence_s: float | None = None
    ) -> VideoScore:
        """One video's score from its rows ``{key: [T_k, D_k]}`` of every required feature.

        Rows are as a store holds them (the encoder's rate and width, the
        stored dtype); the detector assembles its inputs itself.
        """

    def spatial_head(self) -> tuple[StoredFeature, FrameHead]:
        """The stored feature and the linear per-frame head on it that spatial explanations
        decompose (:mod:`featstore.trainers.spatial`); kinds without one raise :class:`RunError`."""
        raise RunError(
            f"{self.where()}: {self.kind} runs have no linear per-frame head on one feature "
            "to explain spatially (probe runs do)"
        )

    def input_rows(self, rows: Mapping[FeatureKey, np.ndarray]) -> int:
        """Rows at ``frame_hz`` of the input these stored rows make (the shortest input)."""
        n = []
        for inp in self.inputs:
            lengths = []
            for f in inp.features:
                x = rows.get(f.key)
                if x is None:
                    raise InputError(
                        f"the {inp.role} input needs {f.key} rows, which were not given"
                    )
                lengths.append(len(x))
            n.append(int(inp.n_rows(lengths) * self.frame_hz / inp.frame_hz + 1e-9))
        return min(n)

    def score_video(
        self,
        rows: Mapping[FeatureKey, np.ndarray],
        *,
        leading_silence_s: float | None = None,
        windowed: bool = True,
        service: bool = False,
    ) -> WindowedScore:
        """One video's score, checked against the minimum and, with ``windowed``, taken
        over windows of the training length when it is longer (``featstore.trainers.windows``).

        ``service``: apply the service's minimum (from the training lengths) as
        well as the kind's. Raises :class:`~featstore.trainers.windows.InputTooShortError`.
        """
        rule = self.window_rule
        n = self.input_rows(rows)
        rule.check(n, service=service, who=f"the {self.kind} run {self.name}")
        whole = self.score_rows(rows, leading_silence_s=leading_silence_s)
        plan = rule.plan(n) if windowed else []
        windows = []
        for first, end in plan:
            silence = leading_silence_s if first == 0 else (0.0 if self.needs_silence else None)
            part = slice_rows(rows, self.features, self.frame_hz, first, end)
            windows.append(
                (first, end, float(self.score_rows(part, leading_silence_s=silence).score))
            )
        score = max(w[2] for w in windows) if windows else float(whole.score)
        return WindowedScore(score, whole.frame_scores, float(whole.score), tuple(windows), n)

    def check_store(self, store: FeatureStore, dataset: str) -> None:
        """``dataset`` holds the features this detector reads as it was trained on them."""
        for inp in self.inputs:
            try:
                inp.check_store(store, dataset)
            except InputError as exc:
                raise RunError(f"{self.where()} cannot score {dataset}: {exc}") from None

    def select(
        self,
        store: FeatureStore,
        selection: Selection | str,
        *,
        allow_missing: bool = False,
        keep_short: bool = False,
    ) -> tuple[Selection, pd.DataFrame]:
        """The selection (bare name = its test split) and its rows with every feature.

        Videos shorter than the kind's ``min_rows`` are left out (logged, and
        listed in the rows' ``attrs["too_short"]``) unless ``keep_short``.
        """
        sel = Selection.parse(selection, default_split="test")
        rows = select_videos(
            store, sel, [f.key for f in self.features], allow_missing=allow_missing
        )
        self.check_store(store, sel.dataset)
        if keep_short or self.min_rows <= 1:
            return sel, rows
        return sel, self._drop_short(store, sel, rows)

    def _drop_short(self, store: FeatureStore, sel: Selection, rows: pd.DataFrame) -> pd.DataFrame:
        lengths = input_lengths(self, store, sel.dataset, rows)  # [N]
        short = lengths < self.min_rows
        if not short.any():
            return rows
        ids = rows["video_id"].astype(str).to_numpy()[short].tolist()
        if short.all():
            raise SelectionError(
                f"every video of {sel} is shorter than the {self.min_rows} rows "
                f"{self.where()} needs ({self.min_rows_reason})"
            )
        log.warning(
            "%s: leaving out %d videos shorter than %d rows (%s), e.g. %s",
            sel, len(ids), self.min_rows, self.min_rows_reason, ids[0],
        )  # fmt: skip
        attrs = dict(rows.attrs)
        out = rows[~short].reset_index(drop=True)
        out.attrs = {**attrs, "too_short": {"min_rows": self.min_rows, "video_ids": ids}}
        return out

    def score_selection(
        self, store: FeatureStore, selection: Selection | str, *, allow_missing: bool = False
    ) -> Scored:
        """Scores of every video of ``selection`` (no evaluation filter; reals and fakes alike).

        This default reads one video at a time and calls ``score_rows``;
        kinds override it with batched paths that give the same numbers.
        """
        sel, rows = self.select(store, selection, allow_missing=allow_missing)
        silences = silence_column(rows) if self.needs_silence else None
        keys = [f.key for f in self.features]
        scores = np.empty(len(rows), dtype=np.float64)  # [N]
        frames: list[np.ndarray] = []
        has_frames = True
        for i, stored in stream_rows(store, sel.dataset, rows, keys):
            result = self.score_rows(
                stored, leading_silence_s=None if silences is None else float(silences[i])
            )
            scores[i] = result.score
            if result.frame_scores is None:
                has_frames = False
            else:
                frames.append(np.asarray(result.frame_scores, dtype=np.float32))
        return self.scored(sel, rows, scores, frames if has_frames else None)

    def score_windows(
        self, store: FeatureStore, selection: Selection | str, *, allow_missing: bool = False
    ) -> tuple[Scored, list[WindowedScore]]:
        """Every video of ``selection`` by :meth:`score_video` (windows of the training
        length when longer), one video at a time (read ahead by :func:`stream_rows`); scores
        are the windowed ones."""
        sel, rows = self.select(store, selection, allow_missing=allow_missing)
        silences = silence_column(rows) if self.needs_silence else None
        keys = [f.key for f in self.features]
        results = [
            self.score_video(
                stored, leading_silence_s=None if silences is None else float(silences[i])
            )
            for i, stored in stream_rows(store, sel.dataset, rows, keys)
        ]
        scores = np.array([r.score for r in results], dtype=np.float64)  # [N]
        frames = None
        if all(r.frame_scores is not None for r in results):
            frames = [np.asarray(r.frame_scores, dtype=np.float32) for r in results]
        return self.scored(sel, rows, scores, frames), results

    def scored(
        self,
        selection: Selection,
        rows: pd.DataFrame,
        scores: np.ndarray,
        frames: list[np.ndarray] | None,
    ) -> Scored:
        """A :class:`Scored` of these rows in the shared convention."""
        scores = np.asarray(scores, dtype=np.float64)
        if not np.all(np.isfinite(scores)):
            bad = rows["video_id"].to_numpy()[~np.isfinite(scores)][0]
            raise RunError(f"{self.where()} gave a non-finite score for {bad!r}")
        return Scored(
            selection=str(selection),
            manifest=rows,
            scores=scores,
            probabilities=np.asarray(probability(scores), dtype=np.float64),
            frame_scores=frames,
            frame_hz=self.frame_hz if frames is not None else None,
        )


def stream_rows(
    store: FeatureStore,
    dataset: str,
    rows: pd.DataFrame,
    keys: Sequence[FeatureKey],
    *,
    chunk_videos: int = STREAM_CHUNK_VIDEOS,
) -> Iterator[tuple[int, dict[FeatureKey, np.ndarray]]]:
    """``(i, {key: [T_k, D_k]})`` for every manifest row in order, read lazily
    (``featstore.trainers.streams.StoreReader``: a part per task, the next chunk read ahead)."""
    from featstore.trainers.sources import prefetch_reads
    from featstore.trainers.streams import StoreReader

    reader = StoreReader(store, dataset, keys, rows["video_id"].astype(str).tolist())
    n = len(reader)
    chunks = [np.arange(i, min(i + chunk_videos, n)) for i in range(0, n, chunk_videos)]
    try:
        for idx, stored in prefetch_reads(reader.read, chunks):
            yield from zip(idx.tolist(), stored, strict=True)
    finally:
        reader.close()


def silence_column(rows: pd.DataFrame) -> np.ndarray:
    """The manifest's ``leading_silence_s`` of every row, checked (``featstore.trainers.pairs``)."""
    from featstore.trainers.pairs import silences

    return silences(rows)


def finite(value: float, what: str) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise RunError(f"{what} is not a finite number: {value!r}")
    return value


# ------------------------------------------------------------------ what train() shares


def store_location(store: FeatureStore) -> str:
    """What a run records as its store: the URL, or the absolute path of a local store."""
    return store.url if "://" in store.url else os.path.abspath(store.url)


def feature_input(
    store: FeatureStore,
    dataset: str,
    role: str,
    features: str | FeatureKey | Sequence[str | FeatureKey],
    *,
    frame_hz: float | None = None,
) -> FeatureInput:
    """A detector input from a user's feature set, resolved against ``dataset``."""
    return FeatureInput.of_store(
        store, dataset, role, parse_feature_set(features), frame_hz=frame_hz
    )


def upgraded(
    doc: Mapping[str, Any],
    *,
    config: Mapping[str, Any],
    fit: Mapping[str, Any] | None = None,
    learnt: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A format-1 config in the current layout (what each kind's ``upgrade_v1`` ends with)."""
    from featstore.trainers.runs import FORMAT

    out: dict[str, Any] = {"format": FORMAT, "kind": doc["kind"], "config": dict(config)}
    if learnt is not None:
        out["learnt"] = dict(learnt)
    if fit is not None:
        out["fit"] = dict(fit)
    for key in ("store", "train", "val", "package_version", "created"):
        if key in doc:
            out[key] = doc[key]
    out["upgraded_from"] = 1
    return out


def v1_feature(doc: Mapping[str, Any], *, encoder: str, layer: Any, dim: Any) -> StoredFeature:
    """A stored feature of a format-1 probe / ntp / sync config (which did not record the dtype)."""
    info = doc.get("encoder_info") or doc
    return StoredFeature(
        encoder=encoder,
        layer=layer,
        frame_hz=float(doc["frame_hz"]),
        dim=int(dim),
        dtype=None,
        checkpoint=info.get("checkpoint"),
        checkpoint_sha256=info.get("checkpoint_sha256"),
        random_init=bool(info.get("random_init", False)),
        preprocessing_version=info.get("preprocessing_version"),
        extra=info.get("extra") if isinstance(info.get("extra"), Mapping) else None,
    )
