"""The loaded runs and encoders behind the API, and the scoring of uploads and stored videos.

:class:`ScoringService` is built in the app's lifespan: it opens the store
read-only, loads every run through the run-kind registry
(``featstore.trainers.kinds.load``: any kind, any run format it can read), loads each
distinct encoder that the runs' features need once, built as the one that
wrote their stored rows (checkpoint, random init, recorded loader options:
:mod:`featstore.api.encoders`), warms it up with one dummy forward, and puts a
:class:`~featstore.api.batching.MicroBatcher` in front of it.

An upload is decoded once (:mod:`featstore.api.clips`: the streams and crops every
needed encoder takes), each needed encoder runs once on it (shared by all
the requested runs, micro-batched with other requests), its rows are rounded
to the dtype the store held at training time, and each run's detector scores
them with ``score_video`` (``score_rows``, checked against the run's minimum
and over windows of its training length when longer): the same code that
scores stored features, so an uploaded clip scores as its stored features
would. Segments follow the run's card (calibrated frame threshold and
segment rules), each overridable per request (:class:`ScoreOptions`).
Runs that cannot score an upload (a stream, a face missing;
:mod:`featstore.api.eligibility`) are skipped and listed when the client named none,
refused when it named them. Nothing here knows what a run kind is. With
``segment=True`` the upload is first cut into single-speaker segments, each
scored the same way (:mod:`featstore.api.segments`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from featstore import timebase
from featstore.api.batching import MicroBatcher
from featstore.api.encoders import EncoderKey, check_rebuilt, encoder_key, training_feature
from featstore.api.listings import dataset_info, evaluation_summaries
from featstore.api.models import (
    DatasetsResponse,
    FeatureInfo,
    InputInfo,
    LocalizationCardInfo,
    LocalizationInfo,
    ModelInfo,
    ModelsResponse,
    RunScore,
    ScoreResponse,
    SegmentInfo,
    StoredScoreResponse,
    Timings,
    UploadRunScore,
    WindowRuleInfo,
    WindowScore,
    WindowsInfo,
)
from featstore.api.settings import Settings
from featstore.encoders.base import Clip, Encoder, EncoderSpec
from featstore.errors import FeatstoreError, UnknownDatasetError, UnknownVideoError
from featstore.layout import Layer, layer_key
from featstore.trainers.data import FeatureKey
from featstore.trainers.kinds import Detector, load, probability
from featstore.trainers.runs import RunError, parse_segments

if TYPE_CHECKING:
    from featstore.api.clips import PreparedUpload
    from featstore.api.eligibility import Unscorable
    from featstore.asd.detectors import ActiveSpeakerDetector
    from featstore.landmarks import FaceTracks
    from featstore.store import FeatureStore
    from featstore.trainers.inputs import StoredFeature
    from featstore.trainers.localization import SegmentRules
    from featstore.trainers.windows import WindowedScore

log = logging.getLogger(__name__)

__all__ = [
    "EncoderKey",
    "LoadedRun",
    "NotReadyError",
    "RunNotChosenError",
    "ScoreOptions",
    "ScoringService",
    "UnknownRunError",
    "shifted",
]

_Verdict = TypeVar("_Verdict", bound=RunScore)


class NotReadyError(FeatstoreError):
    """Models are still loading (or failed to load): the service cannot score yet."""


class RunNotChosenError(FeatstoreError):
    """A stored video was asked for without ``run`` while several runs are loaded (422)."""


class UnknownRunError(FeatstoreError, KeyError):
    """No run of that name is loaded."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class ScoreOptions:
    """A request's overrides of the runs' cards (None: the run's own) and windowing.

    ``threshold`` is a number or a name of the run's card (``paper``,
    ``real_videos``, ``segment_f1``); ``windows`` false scores every input
    whole, as the paper does (default: windows of the training length).
    """

    threshold: str | None = None
    smooth_s: float | None = None
    min_segment_s: float | None = None
    merge_gap_s: float | None = None
    windows: bool = True


@dataclass(frozen=True)
class LoadedRun:
    """A run as the service uses it: its detector, and for each stored feature it reads,
    the encoder that computes it from media and the dtype the store rounded it to."""

    name: str
    detector: Detector
    encoders: Mapping[FeatureKey, EncoderKey] = field(repr=False)
    dtypes: Mapping[FeatureKey, str] = field(repr=False)
    # the store's EncoderInfo.extra of each feature (None: recorded nowhere)
    extras: Mapping[FeatureKey, Mapping[str, Any] | None] = field(repr=False, default_factory=dict)

    @property
    def kind(self) -> str:
        return self.detector.kind

    def info(self) -> ModelInfo:
        d = self.detector
        card = d.localization
        rule = d.window_rule
        return ModelInfo(
            name=self.name,
            kind=self.kind,
            calibrated=d.calibrated,
            frame_hz=d.frame_hz,
            inputs=[
                InputInfo(
                    role=i.role,
                    frame_hz=i.frame_hz,
                    features=[_feature_info(f, self.dtypes[f.key]) for f in i.features],
                )
                for i in d.required_features
            ],
            threshold=d.threshold,
            frame_threshold=card.threshold,
            localization=LocalizationCardInfo(**card.to_dict()),
            windows=WindowRuleInfo(
                window_s=rule.window_rows / rule.frame_hz if rule.window_rows else None,
                hop_s=rule.hop_rows / rule.frame_hz if rule.window_rows else None,
                min_duration_s=rule.min_rows / rule.frame_hz,
                reason=rule.reason,
                lengths=None if d.lengths is None else d.lengths.to_dict(),
            ),
            metrics=evaluation_summaries(d.run.metrics() if d.run is not None else {}),
        )

    def verdict(
        self,
        rows: Mapping[FeatureKey, np.ndarray],
        *,
        leading_silence_s: float | None = None,
        options: ScoreOptions = ScoreOptions(),
    ) -> RunScore:
        """Score an upload's encoder rows ``{key: [T, D]}``, rounded as the store rounds them."""
        stored = {k: np.asarray(rows[k]).astype(self.dtypes[k]) for k in self.encoders}
        result = self.detector.score_video(
            stored, leading_silence_s=leading_silence_s, windowed=options.windows, service=True
        )
        return self.result(result, options)

    def rules(self, options: ScoreOptions) -> tuple[SegmentRules, str]:
        """The segment rules a request asks of this run, and its threshold's name."""
        return self.detector.localization.resolve(
            options.threshold,
            smooth_s=options.smooth_s,
            min_segment_s=options.min_segment_s,
            merge_gap_s=options.merge_gap_s,
        )

    def result(self, scored: WindowedScore, options: ScoreOptions) -> RunScore:
        from featstore.trainers.localization import localize

        d = self.detector
        hz = float(d.frame_hz)
        frames = (
            np.zeros(0, dtype=np.float32)
            if scored.frame_scores is None
            else np.asarray(scored.frame_scores, dtype=np.float32)
        )
        score = float(scored.score)
        fake = score > d.threshold
        card = d.localization
        rules, name = self.rules(options)
        found = localize(frames, hz, rules, fake=fake) if len(frames) else None
        segments = [] if found is None else list(found.segments)
        rank = float(probability(score))
        return RunScore(
            run=self.name,
            kind=self.kind,
            features=[str(f.key) for f in d.features],
            score=score,
            calibrated=d.calibrated,
            probability=rank if d.calibrated else None,
            rank_score=rank,
            threshold=d.threshold,
            label="fake" if fake else "real",
            frame_hz=hz,
            frame_scores=[float(v) for v in frames],
            segments=[(s.start_s, s.end_s, s.score) for s in segments],
            localization=LocalizationInfo(
                frame_threshold=rules.threshold,
                threshold_name=name,
                calibrated=card.calibrated,
                description=card.describe(),
                smooth_s=rules.smooth_s,
                min_segment_s=rules.min_segment_s,
                merge_gap_s=rules.merge_gap_s,
                segments=[SegmentInfo(**s.to_dict()) for s in segments],
                proposals=[] if found is None else [tuple(p) for p in found.proposals],
            ),
            windows=_windows_info(d, scored, options),
        )


def shifted(verdict: _Verdict, offset_s: float) -> _Verdict:
    """``verdict`` with its times moved by ``offset_s``: the fake segments, the
    localization's segments and proposals, and the windows (not ``frame_scores``, which
    are indexed by row)."""
    loc, win = verdict.localization, verdict.windows
    return verdict.model_copy(
        update={
            "segments": [(a + offset_s, b + offset_s, v) for a, b, v in verdict.segments],
            "localization": loc.model_copy(
                update={
                    "segments": [
                        s.model_copy(
                            update={"start_s": s.start_s + offset_s, "end_s": s.end_s + offset_s}
                        )
                        for s in loc.segments
                    ],
                    "proposals": [(c, a + offset_s, b + offset_s) for c, a, b in loc.proposals],
                }
            ),
            "windows": win.model_copy(
                update={
                    "scores": [
                        w.model_copy(
                            update={"start_s": w.start_s + offset_s, "end_s": w.end_s + offset_s}
                        )
                        for w in win.scores
                    ]
                }
            ),
        }
    )


def _windows_info(d: Detector, scored: WindowedScore, options: ScoreOptions) -> WindowsInfo:
    rule = d.window_rule
    hz = rule.frame_hz
    if not options.windows:
        reason = "off by request (windows=off): the whole input, as the paper scores clips"
    elif not rule.window_rows:
        reason = (
            "the run records no training lengths (written before they were recorded, or a "
            "fusion of such runs): the whole input"
        )
    elif scored.windowed:
        reason = (
            f"the input ({scored.n_rows / hz:.2f} s) is longer than the run's window: the "
            "maximum over windows"
        )
    else:
        reason = f"the input ({scored.n_rows / hz:.2f} s) fits in one window: the whole input"
    return WindowsInfo(
        applied=scored.windowed,
        reason=reason,
        window_s=rule.window_rows / hz if rule.window_rows else None,
        hop_s=rule.hop_rows / hz if rule.window_rows else None,
        whole_score=float(scored.whole_score),
        scores=[WindowScore(start_s=a / hz, end_s=b / hz, score=v) for a, b, v in scored.windows],
    )


@dataclass
class EncoderSlot:
    """One loaded encoder, its batcher, and the layers its runs read."""

    encoder: Encoder
    batcher: MicroBatcher
    layers: tuple[Layer, ...]


class ScoringService:
    """Runs, encoders and the store, loaded once; thread-safe reads after :meth:`load`."""

    def __init__(
        self,
        settings: Settings,
        *,
        on_batch: Callable[[str, int], None] | None = None,
    ) -> None:
        self.settings = settings
        self.on_batch = on_batch
        self.store: FeatureStore | None = None
        self.runs: dict[str, LoadedRun] = {}
        self.encoders: dict[EncoderKey, EncoderSlot] = {}
        self.ready = False
        self.error: str | None = None
        self._manifests: dict[str, Any] = {}
        self._lock = threading.Lock()
        self.asd: ActiveSpeakerDetector | None = None  # segments uploads (segment=true)
        self.asd_error: str | None = None

    # ------------------------------------------------------------------ loading

    def load(self) -> None:
        """Open the store, load runs and encoders, warm up (blocking; call in a thread)."""
        from featstore.store import open_store

        self.store = open_store(self.settings.store_url, mode="r")
        for spec in self.settings.runs:
            self.runs[spec.name] = self._load_run(spec.name, load(spec.path))
        for loaded in self.runs.values():
            for feature in loaded.detector.features:
                key = loaded.encoders[feature.key]
                if key not in self.encoders:
                    self.encoders[key] = self._load_encoder(key)
                slot = self.encoders[key]
                check_rebuilt(
                    loaded.name,
                    feature,
                    loaded.extras.get(feature.key),
                    loaded.dtypes[feature.key],
                    slot.encoder,
                )
                if feature.layer not in slot.layers:
                    slot.layers = (*slot.layers, feature.layer)
        self._load_asd()
        if self.settings.warmup:
            for key, slot in self.encoders.items():
                t0 = time.perf_counter()
                (out,) = slot.batcher.run_now([_dummy_clip(slot.encoder)], slot.layers)
                if isinstance(out, BaseException):
                    raise RunError(f"warm-up of encoder {key[0]} failed: {out}") from out
                log.info("warmed up %s in %.0f ms", key[0], 1e3 * (time.perf_counter() - t0))
        self.ready = True

    def _load_asd(self) -> None:
        """The active speaker detector that segments uploads. One that was asked for by name
        must load; the default (TalkNet if found, else sync) may be missing (no ``faces``
        extra): then only ``segment=true`` is refused, with the reason."""
        from featstore.api.segments import load_asd

        try:
            self.asd = load_asd(self.settings)
        except (ImportError, FeatstoreError) as exc:
            if self.settings.asd is not None or self.settings.asd_checkpoint is not None:
                raise
            self.asd_error = f"{type(exc).__name__}: {exc}"
            log.warning("uploads cannot be scored in segments: %s", self.asd_error)
        else:
            log.info("segmenting uploads with %s", self.asd.describe())

    def asd_detector(self) -> ActiveSpeakerDetector:
        """The detector that segments uploads, or :class:`SegmentationUnavailableError`."""
        from featstore.api.segments import SegmentationUnavailableError

        self.check_ready()
        if self.asd is None:
            raise SegmentationUnavailableError(
                f"this server cannot score uploads in segments ({self.asd_error}); install "
                "the faces extra"
            )
        return self.asd

    def _load_run(self, name: str, detector: Detector) -> LoadedRun:
        """The run with, for each feature, the encoder that made its rows (built with the
        loader options recorded with them) and their dtype. What the run did not record
        (runs written before dtypes or ``extra`` were) comes from its training dataset in
        the store when that holds the same features; a missing dtype is then float16."""
        encoders, dtypes, extras = {}, {}, {}
        for f in detector.features:
            held = None
            if f.dtype is None or f.extra is None:
                held = training_feature(self.store, detector, f)
            extras[f.key] = f.extra if f.extra is not None else (held.extra if held else None)
            encoders[f.key] = encoder_key(name, f, extras[f.key], self.settings)
            dtypes[f.key] = f.dtype or (held.dtype if held else None) or "float16"
        return LoadedRun(
            name=name, detector=detector, encoders=encoders, dtypes=dtypes, extras=extras
        )

    def _load_encoder(self, key: EncoderKey) -> EncoderSlot:
        from featstore.encoders import load_encoder

        name, checkpoint, random_init, options = key
        log.info(
            "loading encoder %s (%s, random_init=%s, options %s)",
            name,
            checkpoint,
            random_init,
            dict(options),
        )
        encoder = load_encoder(
            name, checkpoint, device=self.settings.device, random_init=random_init, **dict(options)
        )
        batcher = MicroBatcher(
            encoder.encode,
            name=name,
            max_batch=self.settings.max_batch_clips,
            max_wait_s=self.settings.max_wait_ms / 1e3,
            on_batch=(lambda n, name=name: self.on_batch(name, n)) if self.on_batch else None,
        )
        return EncoderSlot(encoder=encoder, batcher=batcher, layers=())

    async def close(self) -> None:
        for slot in self.encoders.values():
            await slot.batcher.close()

    # ------------------------------------------------------------------ lookups

    def check_ready(self) -> None:
        if not self.ready:
            raise NotReadyError(
                f"models failed to load: {self.error}" if self.error else "models are loading"
            )

    def run(self, name: str) -> LoadedRun:
        self.check_ready()
        try:
            return self.runs[name]
        except KeyError:
            raise UnknownRunError(
                f"no run named {name!r}; loaded: {', '.join(sorted(self.runs))}"
            ) from None

    def stored_run(self, name: str | None) -> LoadedRun:
        """The run that scores a stored video: ``name``, else the only loaded run
        (:class:`RunNotChosenError` when several are loaded)."""
        if name is not None:
            return self.run(name)
        self.check_ready()
        if len(self.runs) == 1:
            return next(iter(self.runs.values()))
        raise RunNotChosenError(
            f"{len(self.runs)} runs are loaded ({', '.join(self.runs)}): name the one to score "
            f"with, e.g. ?run={next(iter(self.runs))}"
        )

    def upload_runs(self, names: Sequence[str] | None) -> list[LoadedRun]:
        """The runs an upload is scored with: ``names``, or every loaded run."""
        self.check_ready()
        if not names:
            return list(self.runs.values())
        return [self.run(n) for n in dict.fromkeys(names)]

    # ------------------------------------------------------------------ scoring

    async def score_upload(
        self,
        path: str,
        runs: Sequence[str] | None = None,
        *,
        filename: str | None = None,
        explain_frames: int | None = None,
        segment: bool = False,
        options: ScoreOptions = ScoreOptions(),
    ) -> ScoreResponse:
        """Score the media file at ``path`` with ``runs`` (default: every loaded run);
        ``explain_frames``: add spatial explanations of that many frames (:mod:`featstore.api.spatial`);
        ``segment``: in single-speaker segments, the video's verdict their maximum."""
        import os

        from featstore.api.eligibility import by_streams, refusal
        from featstore.media import probe

        chosen = self.upload_runs(runs)
        for r in chosen:
            r.rules(options)  # a bad threshold or rule fails before decoding
        named = bool(runs)
        if segment:
            from featstore.api.segments import SegmentOptionsError, score_in_segments

            if explain_frames:
                raise SegmentOptionsError(
                    "spatial explanations cannot be combined with scoring in segments yet"
                )
            return await score_in_segments(self, path, chosen, filename=filename, options=options)
        info = await asyncio.to_thread(probe, path)
        streams = {"has_audio": info.audio is not None, "has_video": info.video is not None}
        skipped = by_streams(chosen, self._spec, **streams)
        if skipped and (named or len(skipped) == len(chosen)):
            able = [
                r.name for r in self.runs.values() if not by_streams([r], self._spec, **streams)
            ]
            raise refusal(skipped, able, named=named)
        lacking = {u.run.name for u in skipped}
        chosen = [r for r in chosen if r.name not in lacking]
        results, prepared = await self._score(
            path,
            chosen,
            explain_frames=explain_frames,
            options=options,
            skipped=skipped,
            named=named,
        )
        return ScoreResponse(
            filename=filename,
            size_bytes=os.path.getsize(path),
            duration_s=prepared.duration_s,
            results=results,
            skipped=[u.skipped() for u in skipped],
        )

    def _spec(self, key: EncoderKey) -> EncoderSpec:
        return self.encoders[key].encoder.spec

    async def score_span(
        self,
        path: str,
        chosen: Sequence[LoadedRun],
        *,
        start_s: float,
        until_s: float,
        tracks: FaceTracks,
        options: ScoreOptions = ScoreOptions(),
    ) -> list[UploadRunScore]:
        """Each run's verdict on the span ``[start_s, until_s)`` of the file at ``path``,
        cropped from ``tracks`` (one per frame of the span), under ``options`` (the span is
        checked against each run's minimum and windowed as an upload of its length).
        Frame scores start at ``start_s``; every other time (fake segments, the
        localization's segments and proposals, the windows) is in the file's seconds."""
        results, _ = await self._score(
            path, chosen, options=options, start_s=start_s, until_s=until_s, tracks=tracks
        )
        return [shifted(r, start_s) for r in results]

    async def _score(
        self,
        path: str,
        chosen: Sequence[LoadedRun],
        *,
        explain_frames: int | None = None,
        options: ScoreOptions = ScoreOptions(),
        skipped: list[Unscorable] | None = None,
        named: bool = False,
        **span: Any,
    ) -> tuple[list[UploadRunScore], PreparedUpload]:
        """Decode (``span``: :func:`~featstore.api.clips.prepare_upload`'s span and tracks) once,
        run each needed encoder once, score every run under ``options`` (``explain_frames``:
        and explain it).

        ``skipped``: runs whose encoder's clip cannot be made (no face, too short) or
        whose minimum length the upload is under are added to it and the others score;
        unless every run fails or the runs were ``named``, then
        :class:`~featstore.api.eligibility.UnscorableUploadError`. Without it the decode stage's
        and the runs' errors are raised as they are."""
        from featstore.api.clips import prepare_upload
        from featstore.api.eligibility import Unscorable, by_clip, refusal
        from featstore.trainers.windows import InputTooShortError

        t0 = time.perf_counter()
        prepared = await asyncio.to_thread(
            prepare_upload,
            path,
            {k: (s.encoder.spec, s.encoder.n_rows) for k, s in self._slots(chosen).items()},
            silence=any(r.detector.needs_silence for r in chosen),
            max_duration_s=self.settings.max_duration_s,
            keep_going=skipped is not None,
            **span,
        )
        if prepared.failed and skipped is not None:
            unable = by_clip(chosen, prepared.failed, self._spec)
            failed = {u.run.name for u in unable}
            able = [r for r in chosen if r.name not in failed]
            if named or not able:
                raise refusal(unable, [r.name for r in able], named=named)
            skipped.extend(unable)
            chosen = able
        layers = self._layers(chosen)
        slots = {k: self.encoders[k] for k in layers}
        t1 = time.perf_counter()
        encoded = await asyncio.gather(
            *(slots[k].batcher.encode(prepared.clips[k], layers[k]) for k in slots)
        )
        rows_by_slot = dict(zip(slots, encoded, strict=True))
        t2 = time.perf_counter()
        results = []
        short: list[Unscorable] = []
        for r in chosen:
            rows = {key: rows_by_slot[r.encoders[key]][key.layer] for key in r.encoders}
            t3 = time.perf_counter()
            try:
                verdict = await asyncio.to_thread(
                    r.verdict, rows, leading_silence_s=prepared.leading_silence_s, options=options
                )
            except InputTooShortError as exc:  # under the run's minimum length
                if skipped is None:
                    raise
                short.append(Unscorable(r, "too_short", str(exc)))
                continue
            timings = Timings(
                decode_ms=1e3 * (t1 - t0),
                encode_ms=1e3 * (t2 - t1),
                score_ms=1e3 * (time.perf_counter() - t3),
            )
            if explain_frames:
                from featstore.api.spatial import explain_upload

                verdict = await asyncio.to_thread(
                    explain_upload, r, self.encoders, path, prepared, verdict, explain_frames
                )
            results.append(UploadRunScore(**verdict.model_dump(), timings=timings))
        if short and skipped is not None:
            if named or not results:
                raise refusal(short, [x.run for x in results], named=named)
            skipped.extend(short)
        return results, prepared

    @staticmethod
    def _layers(chosen: Sequence[LoadedRun]) -> dict[EncoderKey, list[Layer]]:
        """The layers each encoder must output for ``chosen``."""
        layers: dict[EncoderKey, list[Layer]] = {}
        for r in chosen:
            for f in r.detector.features:
                wanted = layers.setdefault(r.encoders[f.key], [])
                if f.layer not in wanted:
                    wanted.append(f.layer)
        return layers

    def _slots(self, chosen: Sequence[LoadedRun]) -> dict[EncoderKey, EncoderSlot]:
        return {k: self.encoders[k] for k in self._layers(chosen)}

    def score_stored(
        self,
        dataset: str,
        video_id: str,
        run_name: str | None = None,
        *,
        options: ScoreOptions = ScoreOptions(),
        explain_frames: int | None = None,
    ) -> StoredScoreResponse:
        """A stored video's verdict from its stored features (no encoder runs), any run kind,
        scored as an upload of the same video is, with run ``run_name`` (None: the only
        loaded run); ``explain_frames``: add spatial
        explanations from its media (:mod:`featstore.api.spatial`)."""
        from featstore.trainers.data import Selection, SelectionError
        from featstore.trainers.inputs import read_video
        from featstore.trainers.kinds.base import silence_column

        loaded = self.stored_run(run_name)
        detector = loaded.detector
        store = self._store()
        if dataset not in store.datasets():
            raise UnknownDatasetError(f"no dataset {dataset!r} in the store")
        try:
            _, rows = detector.select(
                store, Selection.of_videos(dataset, [video_id]), keep_short=True
            )
        except SelectionError as exc:  # not in the manifest, or no features for this run
            raise UnknownVideoError(str(exc)) from None
        silence = float(silence_column(rows)[0]) if detector.needs_silence else None
        scored = detector.score_video(
            read_video(store, dataset, video_id, [f.key for f in detector.features]),
            leading_silence_s=silence,
            windowed=options.windows,
            service=True,
        )
        verdict = loaded.result(scored, options)
        if explain_frames:
            from featstore.api.spatial import explain_stored

            verdict = explain_stored(
                loaded, self.encoders, store, dataset, video_id, verdict, explain_frames
            )
        label, segments = self._annotation(dataset, video_id)
        return StoredScoreResponse(
            **verdict.model_dump(),
            dataset=dataset,
            video_id=video_id,
            duration_s=float(
                timebase.frames_to_seconds(len(verdict.frame_scores), verdict.frame_hz)
            ),
            annotated_label=label,
            annotated_segments=segments,
        )

    def _annotation(self, dataset: str, video_id: str) -> tuple[int | None, list[Any]]:
        with self._lock:
            if dataset not in self._manifests:
                self._manifests[dataset] = self._store().manifest(dataset).set_index("video_id")
            manifest = self._manifests[dataset]
        if video_id not in manifest.index:
            return None, []
        row = manifest.loc[video_id]
        label = row.get("label")
        label = None if label is None or _is_nan(label) else int(label)
        return label, parse_segments(row.get("fake_segments"))

    # ------------------------------------------------------------------ listings

    def models(self) -> ModelsResponse:
        self.check_ready()
        return ModelsResponse(models=[r.info() for r in self.runs.values()])

    def datasets(self) -> DatasetsResponse:
        store = self._store()
        return DatasetsResponse(datasets=[dataset_info(store, n) for n in store.datasets()])

    def _store(self) -> FeatureStore:
        self.check_ready()
        assert self.store is not None
        return self.store


def _dummy_clip(encoder: Encoder) -> Clip:
    """Two seconds of noise in the shape the encoder's decode stage produces."""
    rng = np.random.default_rng(0)
    spec = encoder.spec
    n = int(timebase.seconds_to_frames(2.0))
    frames = audio = None
    if spec.needs_video:
        shape = (n, 96, 96) if spec.crop == "mouth" else (n, 224, 224, 3)
        frames = rng.integers(0, 256, size=shape, dtype=np.uint8)
    if spec.needs_audio:
        audio = (0.1 * rng.standard_normal(timebase.frames_to_samples(n))).astype(np.float32)
    return Clip(video_id="warmup", frames=frames, audio=audio)


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _feature_info(f: StoredFeature, dtype: str) -> FeatureInfo:
    return FeatureInfo(
        encoder=f.encoder,
        layer=layer_key(f.layer),
        frame_hz=f.frame_hz,
        dim=f.dim,
        dtype=dtype,
        source_encoder=f.encoder_name,
        checkpoint=f.checkpoint,
        checkpoint_sha256=f.checkpoint_sha256,
        random_init=f.random_init,
    )
