"""The loaded runs and encoders behind the API, and the scoring of uploads and stored videos.

:class:`ScoringService` is built in the app's lifespan: it opens the store
read-only, loads every run, loads each distinct (encoder, checkpoint,
random_init) once, warms it up with one dummy forward, and puts a
:class:`~api.batching.MicroBatcher` in front of it. Upload scoring decodes in a
worker thread, encodes through the batcher and applies the run's head with the
trainers' own functions, so an uploaded clip scores exactly as its stored
features would (the rows are rounded to the stored dtype first).
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from api.batching import MicroBatcher
from api.models import (
    DatasetEncoder,
    DatasetInfo,
    DatasetsResponse,
    ModelInfo,
    ModelsResponse,
    RunScore,
    ScoreResponse,
    StoredScoreResponse,
    Timings,
    UploadRunScore,
)
from api.settings import Settings
from featstore.encoders.base import CheckpointError, Clip, Encoder
from featstore.errors import FeatstoreError, UnknownDatasetError, UnknownVideoError
from featstore.layout import Layer, layer_key, normalize_layer
from trainers.runs import Run, RunError, load_run, parse_segments

if TYPE_CHECKING:
    from featstore.store import FeatureStore
    from trainers.probe import ProbeParams

log = logging.getLogger(__name__)

__all__ = [
    "LoadedRun",
    "NotReadyError",
    "ScoringService",
    "UnknownRunError",
    "UploadNotSupportedError",
]

UPLOAD_KINDS = ("probe",)


class NotReadyError(FeatstoreError):
    """Models are still loading (or failed to load): the service cannot score yet."""


class UnknownRunError(FeatstoreError, KeyError):
    """No run of that name is loaded."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class UploadNotSupportedError(FeatstoreError):
    """The run's kind can score stored features only, not uploads."""


@dataclass(frozen=True)
class LoadedRun:
    """A run as the service uses it; ``params`` is set for kinds that score uploads."""

    name: str
    run: Run
    encoder: str | None
    layer: Layer | None
    frame_hz: float | None
    threshold: float
    checkpoint: str | None
    checkpoint_sha256: str | None
    random_init: bool
    params: ProbeParams | None = None
    feature_dtype: str = "float16"

    @property
    def kind(self) -> str:
        return self.run.kind

    @property
    def encoder_key(self) -> tuple[str, str | None, bool] | None:
        if self.encoder is None:
            return None
        return (self.encoder, self.checkpoint, self.random_init)

    @property
    def uploads(self) -> bool:
        return self.params is not None

    def info(self) -> ModelInfo:
        return ModelInfo(
            name=self.name,
            kind=self.kind,
            encoder=self.encoder,
            layer=None if self.layer is None else layer_key(self.layer),
            frame_hz=self.frame_hz,
            checkpoint=self.checkpoint,
            checkpoint_sha256=self.checkpoint_sha256,
            random_init=self.random_init,
            threshold=self.threshold,
            uploads=self.uploads,
            metrics=_metric_summary(self.run.metrics()),
        )

    def verdict(self, x: np.ndarray) -> RunScore:
        """Score features ``x [T, D]`` with a probe run's head (as the trainers score them)."""
        from trainers.probe import frame_logits, probability, video_logit

        if self.params is None or self.layer is None or self.frame_hz is None:
            raise UploadNotSupportedError(f"run {self.name} ({self.kind}) cannot score features")
        x = np.asarray(x).astype(self.feature_dtype)  # [T, D] as the store holds it
        frames = np.asarray(frame_logits(self.params, x), dtype=np.float32)  # [T]
        s = float(video_logit(self.params, x))
        return self.result(s, float(probability(s)), frames)

    def result(
        self,
        score: float,
        probability: float,
        frames: np.ndarray,
        *,
        frame_hz: float | None = None,
    ) -> RunScore:
        from trainers.temporal import scores_to_segments

        hz = float(frame_hz or self.frame_hz or 0.0)
        segments = scores_to_segments(frames, hz, threshold=self.threshold) if hz else []
        return RunScore(
            run=self.name,
            kind=self.kind,
            encoder=self.encoder or "",
            layer="" if self.layer is None else layer_key(self.layer),
            checkpoint_sha256=self.checkpoint_sha256,
            score=score,
            probability=probability,
            threshold=self.threshold,
            label="fake" if score > self.threshold else "real",
            frame_hz=hz,
            frame_scores=[float(v) for v in frames],
            segments=[s.to_list() for s in segments],
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
        self.encoders: dict[tuple[str, str | None, bool], EncoderSlot] = {}
        self.ready = False
        self.error: str | None = None
        self._manifests: dict[str, Any] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ loading

    def load(self) -> None:
        """Open the store, load runs and encoders, warm up (blocking; call in a thread)."""
        from featstore.store import open_store

        self.store = open_store(self.settings.store_url, mode="r")
        for spec in self.settings.runs:
            self.runs[spec.name] = self._load_run(spec.name, load_run(spec.path))
        for loaded in self.runs.values():
            key = loaded.encoder_key
            if not loaded.uploads or key is None:
                continue
            if key not in self.encoders:
                self.encoders[key] = self._load_encoder(key)
            slot = self.encoders[key]
            self._check_fits(loaded, slot.encoder)
            if loaded.layer not in slot.layers:
                slot.layers = (*slot.layers, loaded.layer)
        if self.settings.warmup:
            for key, slot in self.encoders.items():
                t0 = time.perf_counter()
                (out,) = slot.batcher.run_now([_dummy_clip(slot.encoder)], slot.layers)
                if isinstance(out, BaseException):
                    raise RunError(f"warm-up of encoder {key[0]} failed: {out}") from out
                log.info("warmed up %s in %.0f ms", key[0], 1e3 * (time.perf_counter() - t0))
        self.ready = True

    def _load_run(self, name: str, run: Run) -> LoadedRun:
        cfg = run.config
        ei = cfg.get("encoder_info") or {}
        encoder = cfg.get("encoder")
        threshold = float(cfg.get("threshold", 0.0))
        common: dict[str, Any] = {
            "name": name,
            "run": run,
            "threshold": threshold,
            "random_init": bool(ei.get("random_init", False)),
            "checkpoint_sha256": ei.get("checkpoint_sha256"),
        }
        if run.kind not in UPLOAD_KINDS or not isinstance(encoder, str):
            return LoadedRun(
                encoder=encoder if isinstance(encoder, str) else None,
                layer=normalize_layer(cfg["layer"]) if "layer" in cfg else None,
                frame_hz=float(cfg["frame_hz"]) if "frame_hz" in cfg else None,
                checkpoint=ei.get("checkpoint"),
                **common,
            )
        from trainers.probe import ProbeParams

        return LoadedRun(
            encoder=encoder,
            layer=normalize_layer(cfg["layer"]),
            frame_hz=float(cfg["frame_hz"]),
            checkpoint=self.settings.checkpoints.get(encoder, ei.get("checkpoint")),
            params=ProbeParams.from_state(run.tensors()),
            feature_dtype=self._stored_dtype(cfg, encoder),
            **common,
        )

    def _stored_dtype(self, cfg: dict[str, Any] | Any, encoder: str) -> str:
        """The dtype the run was trained on (its training dataset's), float16 by default."""
        dataset = (cfg.get("train") or {}).get("dataset")
        if self.store is not None and dataset:
            try:
                return self.store.encoder_info(dataset, encoder).dtype
            except FeatstoreError:
                pass  # the run was trained on another store: assume the default
        return "float16"

    def _load_encoder(self, key: tuple[str, str | None, bool]) -> EncoderSlot:
        from featstore.encoders import load_encoder

        name, checkpoint, random_init = key
        log.info("loading encoder %s (%s, random_init=%s)", name, checkpoint, random_init)
        encoder = load_encoder(
            name, checkpoint, device=self.settings.device, random_init=random_init
        )
        batcher = MicroBatcher(
            encoder.encode,
            name=name,
            max_batch=self.settings.max_batch_clips,
            max_wait_s=self.settings.max_wait_ms / 1e3,
            on_batch=(lambda n, name=name: self.on_batch(name, n)) if self.on_batch else None,
        )
        return EncoderSlot(encoder=encoder, batcher=batcher, layers=())

    def _check_fits(self, run: LoadedRun, encoder: Encoder) -> None:
        recorded, loaded = run.checkpoint_sha256, encoder.checkpoint_sha256
        if recorded and loaded and recorded != loaded:
            raise CheckpointError(
                f"run {run.name} was trained on {run.encoder} features of checkpoint sha256 "
                f"{recorded[:12]}..., but {encoder.checkpoint} has sha256 {loaded[:12]}...; "
                f"pass --checkpoint {run.encoder}=PATH to the checkpoint it was trained with"
            )
        assert run.params is not None and run.layer is not None
        if run.layer not in encoder.layer_dims:
            raise RunError(f"run {run.name} reads layer {run.layer} that {encoder.name} lacks")
        if encoder.layer_dims[run.layer] != run.params.dim:
            raise RunError(
                f"run {run.name} expects {run.params.dim}-wide features; {encoder.name} layer "
                f"{layer_key(run.layer)} gives {encoder.layer_dims[run.layer]}"
            )
        if abs(encoder.spec.frame_hz - (run.frame_hz or 0.0)) > 1e-9:
            raise RunError(
                f"run {run.name} was trained at {run.frame_hz} Hz; {encoder.name} gives "
                f"{encoder.spec.frame_hz} Hz"
            )

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

    def upload_runs(self, names: Sequence[str] | None) -> list[LoadedRun]:
        """The runs an upload is scored with: ``names``, or every run that scores uploads."""
        self.check_ready()
        if not names:
            runs = [r for r in self.runs.values() if r.uploads]
            if not runs:
                raise UploadNotSupportedError("no loaded run can score uploads (all stored-only)")
            return runs
        runs = [self.run(n) for n in dict.fromkeys(names)]
        for r in runs:
            if not r.uploads:
                raise UploadNotSupportedError(
                    f"run {r.name} is a {r.kind!r} run: it scores stored videos only "
                    f"(uploads: {', '.join(UPLOAD_KINDS)} runs)"
                )
        return runs

    # ------------------------------------------------------------------ scoring

    async def score_upload(
        self, path: str, runs: Sequence[str] | None = None, *, filename: str | None = None
    ) -> ScoreResponse:
        """Score the media file at ``path`` with ``runs`` (default: every upload run)."""
        import os

        from featstore.decode_limits import DecodeLimits
        from featstore.extract.decode import prepare_clip

        chosen = self.upload_runs(runs)
        by_key: dict[Any, list[LoadedRun]] = {}
        for r in chosen:
            by_key.setdefault(r.encoder_key, []).append(r)

        async def one(key: Any, group: list[LoadedRun]) -> tuple[float, list[UploadRunScore]]:
            slot = self.encoders[key]
            t0 = time.perf_counter()
            prepared = await asyncio.to_thread(
                prepare_clip,
                "upload",
                path,
                spec=slot.encoder.spec,
                n_rows=slot.encoder.n_rows,
                # decoding stops at the limit even when the header lies about the duration
                limits=DecodeLimits(max_duration_s=self.settings.max_duration_s),
            )
            t1 = time.perf_counter()
            limit_s = self.settings.max_duration_s
            if prepared.n_frames / 25.0 > limit_s + 1 / 25.0:  # containers that declare none
                from api.uploads import MediaTooLongError

                raise MediaTooLongError(
                    f"media lasts {prepared.n_frames / 25.0:.1f} s, above the limit of "
                    f"{limit_s:g} s (--max-duration-s)"
                )
            layers = tuple(dict.fromkeys(r.layer for r in group if r.layer is not None))
            rows = await slot.batcher.encode(prepared.clip, layers)
            t2 = time.perf_counter()
            out = []
            for r in group:
                t3 = time.perf_counter()
                verdict = await asyncio.to_thread(r.verdict, rows[r.layer])
                timings = Timings(
                    decode_ms=1e3 * (t1 - t0),
                    encode_ms=1e3 * (t2 - t1),
                    score_ms=1e3 * (time.perf_counter() - t3),
                )
                out.append(UploadRunScore(**verdict.model_dump(), timings=timings))
            return prepared.n_frames / 25.0, out

        done = await asyncio.gather(*(one(k, g) for k, g in by_key.items()))
        order = {r.name: i for i, r in enumerate(chosen)}
        results = sorted((x for _, xs in done for x in xs), key=lambda x: order[x.run])
        return ScoreResponse(
            filename=filename,
            size_bytes=os.path.getsize(path),
            duration_s=max(d for d, _ in done),
            results=results,
        )

    def score_stored(self, dataset: str, video_id: str, run_name: str) -> StoredScoreResponse:
        """A stored video's verdict from its stored features (no encoder runs).

        Probe runs score the video's rows directly; every other kind (fusion, ntp,
        sync, syncfree) goes through its registered scorer on a one-video selection.
        """
        from trainers.probe import probability

        loaded = self.run(run_name)
        store = self._store()
        if dataset not in store.datasets():
            raise UnknownDatasetError(f"no dataset {dataset!r} in the store")
        hz = loaded.frame_hz
        if loaded.kind == "probe":
            from trainers.probe_run import score_video

            score, frames = score_video(loaded.run, store, dataset, video_id)
            verdict = loaded.result(score, float(probability(score)), frames)
        else:
            from trainers.data import Selection, SelectionError
            from trainers.runs import RunError, scorer
            from trainers.runs import score as score_selection

            try:
                scorer(loaded.kind)
            except RunError:
                raise UploadNotSupportedError(
                    f"run {loaded.name} is a {loaded.kind!r} run, for which no scorer is "
                    "registered: it cannot score stored videos"
                ) from None

            try:
                scored = score_selection(
                    loaded.run, store, Selection.of_videos(dataset, [video_id])
                )
            except SelectionError as exc:  # not in the manifest, or no features for this run
                raise UnknownVideoError(str(exc)) from None
            frames = (
                np.asarray(scored.frame_scores[0], dtype=np.float32)
                if scored.frame_scores is not None
                else np.zeros(0, dtype=np.float32)
            )
            hz = scored.frame_hz or hz
            verdict = loaded.result(
                float(scored.scores[0]), float(scored.probabilities[0]), frames, frame_hz=hz
            )
        label, segments = self._annotation(dataset, video_id)
        return StoredScoreResponse(
            **verdict.model_dump(),
            dataset=dataset,
            video_id=video_id,
            duration_s=len(frames) / float(hz or 1.0),
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
        out = []
        for name in store.datasets():
            manifest = store.manifest(name)
            labels = manifest["label"] if "label" in manifest.columns else None
            splits = (
                {str(k): int(v) for k, v in manifest["split"].value_counts().items()}
                if "split" in manifest.columns
                else {}
            )
            encoders = []
            for enc in store.encoders(name):
                info = store.encoder_info(name, enc)
                layers = store.layers(name, enc)
                encoders.append(
                    DatasetEncoder(
                        name=enc,
                        frame_hz=float(info.frame_hz),
                        layers=[layer_key(x) for x in layers],
                        checkpoint=info.checkpoint,
                        n_videos=len(store.video_ids(name, enc, layers[0])) if layers else 0,
                    )
                )
            out.append(
                DatasetInfo(
                    name=name,
                    n_videos=len(manifest),
                    n_real=int((labels == 0).sum()) if labels is not None else 0,
                    n_fake=int((labels == 1).sum()) if labels is not None else 0,
                    splits=splits,
                    encoders=encoders,
                )
            )
        return DatasetsResponse(datasets=out)

    def _store(self) -> FeatureStore:
        self.check_ready()
        assert self.store is not None
        return self.store


def _dummy_clip(encoder: Encoder) -> Clip:
    """Two seconds of noise in the shape the encoder's decode stage produces."""
    rng = np.random.default_rng(0)
    spec, n = encoder.spec, 50
    frames = audio = None
    if spec.needs_video:
        shape = (n, 96, 96) if spec.crop == "mouth" else (n, 224, 224, 3)
        frames = rng.integers(0, 256, size=shape, dtype=np.uint8)
    if spec.needs_audio:
        audio = (0.1 * rng.standard_normal(n * 640)).astype(np.float32)
    return Clip(video_id="warmup", frames=frames, audio=audio)


def _metric_summary(metrics: dict[str, Any]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for key, values in metrics.items():
        if isinstance(values, dict):
            nums = {
                str(k): float(v)
                for k, v in values.items()
                if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            }
            if nums:
                out[str(key)] = nums
    return out


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)
