"""The extraction worker: one task's videos -> decode -> batch -> forward -> write -> commit.

Three stages overlap:

- decode + crop in ``num_workers`` background **threads**: PyAV (FFmpeg), OpenCV and
  dlib release the GIL while they work, and threads hand decoded frames to the forward
  pass without pickling tens of megabytes per clip, as processes would;
- the forward pass in the calling thread, on length-bucketed batches under
  ``torch.inference_mode()`` (the encoder applies autocast on CUDA), halving a batch
  that runs out of device (or host) memory down to one video, which then fails alone;
- writing in one background thread that owns the :class:`StoreWriter` (writers are not
  thread-safe), so flushing a part to disk or S3 never stalls the forward pass.

:func:`run_task` is the task function of local and distributed runs alike.
"""

from __future__ import annotations

import gc
import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from featstore.encoders.base import ClipError, Encoder
from featstore.errors import EncoderMismatchError, InvalidFeaturesError
from featstore.extract.batching import length_batches, prefetch
from featstore.extract.decode import VIDEO_ERRORS, PreparedClip, prepare_clip
from featstore.extract.plan import (
    ExtractError,
    ExtractTask,
    VideoRef,
    check_stored_info,
    compute_dtype,
    pending_videos,
    stored_info,
)
from featstore.extract.progress import ExtractProgress, ExtractSummary, ProgressCallback
from featstore.layout import Layer

if TYPE_CHECKING:
    from featstore.encoder_info import EncoderInfo
    from featstore.landmarks import FaceTracks
    from featstore.store import FeatureStore
    from featstore.writer import StoreWriter

log = logging.getLogger(__name__)

_ENCODERS: OrderedDict[tuple[Any, ...], Encoder] = OrderedDict()
_ENCODERS_LOCK = threading.Lock()
_MAX_CACHED_ENCODERS = 2


def cached_encoder(task: ExtractTask) -> Encoder:
    """The task's encoder, loaded once per process (a Dask worker keeps it between tasks).

    The cache key includes the loader options, so tasks that differ only in them
    (e.g. ``pooling``) never share a model.
    """
    from featstore.encoders import load_encoder

    key = task.encoder_key
    with _ENCODERS_LOCK:
        if key in _ENCODERS:
            _ENCODERS.move_to_end(key)
            return _ENCODERS[key]
        encoder = load_encoder(
            task.encoder,
            task.checkpoint,
            device=task.device,
            dtype=compute_dtype(task.dtype, task.device),
            random_init=task.random_init,
            **dict(task.options),
        )
        _ENCODERS[key] = encoder
        while len(_ENCODERS) > _MAX_CACHED_ENCODERS:
            _ENCODERS.popitem(last=False)
        return encoder


def run_task(
    task: ExtractTask,
    *,
    encoder: Encoder | None = None,
    on_progress: ProgressCallback | None = None,
) -> ExtractSummary:
    """Extract ``task.videos`` into the store; returns what was done.

    Videos already committed under the task's stored name (``store_as`` or the
    encoder's) for its layers are skipped (resume, retried tasks). Features that
    differ from those stored under that name raise :class:`EncoderMismatchError`.
    Per-video failures are recorded in the store and counted; anything else raises
    after the rows buffered so far are committed.
    """
    start = time.perf_counter()
    encoder = encoder if encoder is not None else cached_encoder(task)
    layers = encoder.resolve_layers("all" if task.layers == "all" else list(task.layers))
    info = stored_info(
        encoder.info(dtype=task.dtype, layers=layers), encoder=encoder.name, store_as=task.store_as
    )
    check_stored_info(task.store, task.dataset, info)
    todo = pending_videos(task.store, task.dataset, info.name, layers, task.videos)
    skipped = len(task.videos) - len(todo)
    if not todo:
        return ExtractSummary(0, skipped, 0, 0, 0, time.perf_counter() - start, 0, 0)
    pipeline = _Pipeline(task, encoder, info, len(todo), skipped, on_progress, start)
    return pipeline.run(todo)


class _Pipeline:
    """The state of one task's run: counters, the writer thread, the forward pass."""

    def __init__(
        self,
        task: ExtractTask,
        encoder: Encoder,
        info: EncoderInfo,
        n_todo: int,
        skipped: int,
        on_progress: ProgressCallback | None,
        start: float,
    ) -> None:
        self.task, self.encoder, self.layers = task, encoder, list(info.layer_dims)
        self.n_todo, self.skipped = n_todo, skipped
        self.on_progress, self.start = on_progress, start
        self.oom_splits = 0
        self.row_bytes = sum(info.layer_dims.values()) * (2 if task.dtype == "float16" else 4)
        # created here, not in the thread, so that a mismatch with stored features raises
        # now (another writer may have created the encoder since check_stored_info)
        try:
            store_writer = task.store.writer(task.dataset, info)
        except EncoderMismatchError:
            task.store.refresh()
            check_stored_info(task.store, task.dataset, info)  # raises with the --store-as hint
            raise
        self.writer = _WriterThread(task.store, task.dataset, store_writer)
        self.cached_tracks = _tracks_lookup(task) if encoder.spec.crop != "none" else None
        # a segment dataset's rows are cropped from their own stored track, never re-tracked
        self.require_tracks = _is_segment_dataset(task.store, task.dataset)

    def run(self, todo: Sequence[VideoRef]) -> ExtractSummary:
        import torch

        self.writer.start()
        try:
            with torch.inference_mode():
                batches = length_batches(
                    self._prepared(todo),
                    length=lambda p: p.n_frames,
                    batch_frames=self.task.batch_frames,
                )
                for batch in batches:
                    self._encode(batch)
                    self.writer.check()
                    self._report()
        except BaseException as exc:
            self.writer.close(in_flight=exc)  # commit what is buffered: a resumed run skips it
            raise
        self.writer.close()
        self._report()
        w = self.writer
        return ExtractSummary(
            videos_done=w.done,
            videos_skipped=self.skipped,
            videos_failed=w.failed,
            frames=w.frames,
            rows=w.rows,
            seconds=time.perf_counter() - self.start,
            bytes_written=w.store_writer.rows_written * self.row_bytes,
            parts_written=w.store_writer.parts_written,
            oom_splits=self.oom_splits,
        )

    def _prepared(self, todo: Sequence[VideoRef]) -> Iterator[PreparedClip]:
        """Decoded clips in manifest order; failures go straight to the writer."""
        spec, workers = self.encoder.spec, self.task.num_workers

        def prepare(ref: VideoRef) -> PreparedClip:
            return prepare_clip(
                ref.video_id,
                ref.path,
                spec=spec,
                n_rows=self.encoder.n_rows,
                cached_tracks=self.cached_tracks,
                limits=self.task.limits,
                start_s=ref.start_s,
                until_s=ref.end_s,
                require_tracks=self.require_tracks,
            )

        for ref, result in prefetch(prepare, todo, num_workers=workers, max_pending=4 * workers):
            if isinstance(result, PreparedClip):
                if result.new_tracks is not None:
                    self.writer.tracks(ref.video_id, result.new_tracks)
                yield result
            elif isinstance(result, VIDEO_ERRORS):
                log.info("video %s failed: %s", ref.video_id, result)
                self.writer.fail(ref.video_id, result)
                self._report()
            else:
                raise result

    def _encode(self, batch: list[PreparedClip]) -> None:
        """Forward one batch; on OOM (device or host, or a ClipError) halve it until the
        culprit is alone, which then fails with that error."""
        error: BaseException | None = None
        try:
            outputs = self.encoder.encode([p.clip for p in batch], self.layers)
        except Exception as exc:
            if not (_is_oom(exc) or isinstance(exc, ClipError)):
                raise
            error = exc.with_traceback(None)  # drop frames that hold device tensors
        if error is None:
            if len(outputs) != len(batch):
                raise ExtractError(
                    f"encoder {self.encoder.name} returned {len(outputs)} outputs "
                    f"for {len(batch)} clips"
                )
            for prepared, rows in zip(batch, outputs, strict=True):
                self.writer.add(prepared.clip.video_id, rows, prepared.n_frames)
            return
        oom = _is_oom(error)
        if oom:
            _free_device_memory()
        if len(batch) == 1:
            log.info("video %s failed: %s", batch[0].clip.video_id, error)
            self.writer.fail(batch[0].clip.video_id, error)
            return
        if oom:
            self.oom_splits += 1
            log.warning(
                "out of memory on a batch of %d videos (%d frames); halving it",
                len(batch),
                sum(p.n_frames for p in batch),
            )
        half = len(batch) // 2
        self._encode(batch[:half])
        self._encode(batch[half:])

    def _report(self) -> None:
        if self.on_progress is None:
            return
        w = self.writer
        self.on_progress(
            ExtractProgress(
                videos_total=self.n_todo,
                videos_done=w.done,
                videos_failed=w.failed,
                videos_skipped=self.skipped,
                frames=w.frames,
                elapsed_s=time.perf_counter() - self.start,
            )
        )


def _is_oom(exc: BaseException) -> bool:
    """Device or host memory ran out: CUDA, torch's CPU allocator, or Python itself."""
    import torch

    if isinstance(exc, torch.cuda.OutOfMemoryError | MemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text
    )


def _free_device_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _is_segment_dataset(store: FeatureStore, dataset: str) -> bool:
    from featstore.datasets.segments import FORMAT

    return store.manifest_attrs(dataset).get("format") == FORMAT


def _tracks_lookup(task: ExtractTask) -> Any:
    """Cached landmark tracks of the task's dataset, read on demand by the decode threads."""
    from featstore.crops import TRACKS_ENCODER, load_tracks

    store, dataset = task.store, task.dataset
    cached = store.committed_videos(dataset, TRACKS_ENCODER, ["landmarks", "boxes"])

    def lookup(video_id: str) -> FaceTracks | None:
        return load_tracks(store, dataset, video_id) if video_id in cached else None

    return lookup


_STOP = object()


class _WriterThread(threading.Thread):
    """Owns the StoreWriter(s): adds rows, records failures, caches new face tracks.

    Counters are updated here, after a video is in the writer's buffer, so progress
    counts what will be committed. An error while writing is kept and re-raised in the
    calling thread by :meth:`check` / :meth:`close`.
    """

    def __init__(self, store: FeatureStore, dataset: str, store_writer: StoreWriter) -> None:
        super().__init__(name="featstore-writer", daemon=True)
        self.store, self.dataset, self.store_writer = store, dataset, store_writer
        self._tracks_writer: StoreWriter | None = None
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=64)
        self._lock = threading.Lock()
        self.error: BaseException | None = None
        self.done = self.failed = self.frames = self.rows = 0

    # -- called from the pipeline thread

    def add(self, video_id: str, rows: dict[Layer, Any], n_frames: int) -> None:
        self._put(("add", video_id, rows, n_frames))

    def fail(self, video_id: str, error: BaseException) -> None:
        self._put(("fail", video_id, error, 0))

    def tracks(self, video_id: str, tracks: FaceTracks) -> None:
        self._put(("tracks", video_id, tracks, 0))

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    def close(self, *, in_flight: BaseException | None = None) -> None:
        """Commit what is buffered and stop; re-raise a write error, or only log it while
        another exception (``in_flight``) is on its way up."""
        if self.is_alive():
            self._queue.put(_STOP)
            self.join()
        if in_flight is None:
            self.check()
        elif self.error is not None and self.error is not in_flight:
            log.error("could not commit buffered rows while handling %r: %s", in_flight, self.error)

    def _put(self, item: tuple[str, str, Any, int]) -> None:
        while True:
            self.check()
            try:
                self._queue.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    # -- the thread

    def run(self) -> None:
        try:
            while True:
                item = self._queue.get()
                if item is _STOP:
                    break
                if self.error is None:
                    try:
                        self._handle(*item)
                    except BaseException as exc:
                        self.error = exc
        finally:
            for writer in (self.store_writer, self._tracks_writer):
                if writer is None:
                    continue
                try:
                    writer.close()
                except BaseException as exc:
                    self.error = self.error or exc

    def _handle(self, kind: str, video_id: str, payload: Any, n_frames: int) -> None:
        if kind == "add":
            try:
                self.store_writer.add(video_id, payload)
            except InvalidFeaturesError as exc:  # NaN rows, float16 overflow: this video only
                log.info("video %s failed: %s", video_id, exc)
                self.store_writer.fail(video_id, exc)
                with self._lock:
                    self.failed += 1
                return
            n_rows = len(next(iter(payload.values())))
            with self._lock:
                self.done += 1
                self.frames += n_frames
                self.rows += n_rows
        elif kind == "fail":
            self.store_writer.fail(video_id, payload)
            with self._lock:
                self.failed += 1
        else:
            from featstore.crops import tracks_encoder_info, tracks_to_layers

            if self._tracks_writer is None:
                self._tracks_writer = self.store.writer(self.dataset, tracks_encoder_info())
            self._tracks_writer.add(video_id, tracks_to_layers(payload))
