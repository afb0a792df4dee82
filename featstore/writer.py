"""The store's writer: buffers rows of many videos, writes whole parts, commits last.

All I/O goes through the storage backend (featstore.backend); this module
decides what goes into a part and when it becomes visible.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from featstore import __version__, layout
from featstore.commits import CommitRecord, LayerRecord
from featstore.encoder_info import EncoderInfo
from featstore.errors import InvalidFeaturesError, StoreError
from featstore.layout import (
    CHUNK_ROWS,
    Layer,
    format_layers,
    layer_array_name,
    layer_key,
    normalize_layer,
)
from featstore.shards import ShardBuffer, nonfinite_rows

if TYPE_CHECKING:
    from featstore.backend import Backend

log = logging.getLogger(__name__)


class StoreWriter:
    """Buffers rows of many videos for several layers; writes whole parts; commits last.

    A part is flushed when its per-layer size reaches ``target_part_bytes`` or
    the buffer across all layers reaches ``max_buffer_bytes``, whichever comes
    first, so writing 49 layers of a 3840-wide model never buffers gigabytes.
    A video is never split across parts. Used as a context manager, the
    writer commits what it holds on exit, also when the block raises (every
    buffered video is complete, so nothing partial is ever committed).

    Made by ``FeatureStore.writer``. ``compacted_from`` names the parts a
    compaction copies (recorded in each commit); ``on_commit`` is called with
    every commit record once it is written.
    """

    def __init__(
        self,
        backend: Backend,
        dataset: str,
        info: EncoderInfo,
        *,
        layers: Sequence[Layer],
        target_part_bytes: int,
        max_buffer_bytes: int,
        compacted_from: Iterable[str] = (),
        on_commit: Callable[[CommitRecord], None] | None = None,
    ) -> None:
        if not layers:
            raise StoreError("a writer needs at least one layer")
        if len(set(layers)) != len(layers):
            raise StoreError(f"duplicate layers: {list(layers)}")
        self.backend, self.dataset, self.info = backend, dataset, info
        self.layers = list(layers)
        self.dtype = np.dtype(info.dtype)
        self.dims = {x: info.dim(x) for x in self.layers}
        row_bytes = {x: d * self.dtype.itemsize for x, d in self.dims.items()}
        by_target = target_part_bytes // max(row_bytes.values())
        by_buffer = max_buffer_bytes // sum(row_bytes.values())
        self.part_rows = max(CHUNK_ROWS, min(by_target, by_buffer) // CHUNK_ROWS * CHUNK_ROWS)
        self._buffers: dict[Layer, ShardBuffer] = {}  # allocated at the first video
        self._videos: list[tuple[str, int, int | None]] = []  # id, rows, version
        self._ids: set[str] = set()
        self._rows = 0
        self._failures: list[dict[str, Any]] = []
        self._closed = False
        self.parts_written = 0
        self.videos_written = 0
        self.rows_written = 0
        self.failures_written = 0
        self.committed_parts: list[str] = []
        self._oversized: dict[Layer, ShardBuffer] | None = None
        self._compacted_from = tuple(compacted_from)
        self._on_commit = on_commit

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
            return
        try:
            self.close()
        except Exception:  # keep the original error; say what was lost
            log.exception("could not commit buffered rows while handling %s", exc_type.__name__)

    @property
    def buffered_rows(self) -> int:
        return self._rows

    def add(
        self, video_id: str, features: Mapping[Layer, np.ndarray], *, version: int | None = None
    ) -> None:
        """Buffer one video's features: ``{layer: [T, D]}`` for exactly the writer's layers.

        ``version`` (ns) is when the rows were produced; by default the commit time.
        ``compact`` passes the original version of the rows it copies, so a copy never
        beats a newer extraction of the same video.
        """
        if self._closed:
            raise StoreError("writer is closed")
        if not isinstance(video_id, str) or not video_id:
            raise InvalidFeaturesError(f"video_id must be a non-empty string, got {video_id!r}")
        if video_id in self._ids:
            raise InvalidFeaturesError(f"video {video_id!r} added twice to one part")
        given = {normalize_layer(k): v for k, v in features.items()}
        if set(given) != set(self.layers):
            raise InvalidFeaturesError(
                f"video {video_id!r}: layers {format_layers(given)} given, "
                f"writer expects {format_layers(self.layers)}"
            )
        arrays = {x: self._check(video_id, x, given[x]) for x in self.layers}
        lengths = {len(a) for a in arrays.values()}
        if len(lengths) != 1:
            raise InvalidFeaturesError(
                f"video {video_id!r}: layers have different frame counts {sorted(lengths)}"
            )
        n = lengths.pop()
        if self._rows and self._rows + n > self.part_rows:
            self.flush()
        buffers = self._buffers_for(self._rows + n)
        for x in self.layers:
            dst = buffers[x].rows(self._rows, self._rows + n)
            with np.errstate(over="ignore"):
                np.copyto(dst, arrays[x], casting="unsafe")
            if arrays[x].dtype != self.dtype and len(nonfinite_rows(dst)):
                raise InvalidFeaturesError(
                    f"video {video_id!r} layer {layer_key(x)}: values overflow {self.dtype} "
                    f"(max |x| = {float(np.abs(arrays[x]).max()):.4g}); store as float32"
                )
        self._videos.append((video_id, n, version))
        self._ids.add(video_id)
        self._rows += n
        if self._rows >= self.part_rows:
            self.flush()

    def _buffers_for(self, n_rows: int) -> dict[Layer, ShardBuffer]:
        """Shard buffers able to hold ``n_rows``: the reusable ones, or one-off ones for
        a single video longer than a whole part."""
        if n_rows <= self.part_rows:
            if not self._buffers:
                self._buffers = {
                    x: ShardBuffer(
                        capacity_rows=self.part_rows, dim=d, dtype=self.dtype, chunk_rows=CHUNK_ROWS
                    )
                    for x, d in self.dims.items()
                }
            return self._buffers
        self._oversized = {
            x: ShardBuffer(capacity_rows=n_rows, dim=d, dtype=self.dtype, chunk_rows=CHUNK_ROWS)
            for x, d in self.dims.items()
        }
        return self._oversized

    def fail(
        self, video_id: str, error: BaseException | str, *, error_type: str | None = None
    ) -> None:
        """Record that ``video_id`` failed; written with the next part (or on close)."""
        if isinstance(error, BaseException):
            error_type = error_type or type(error).__name__
            message = str(error) or repr(error)
        else:
            error_type = error_type or "Error"
            message = str(error)
        self._failures.append(
            {
                "video_id": str(video_id),
                "error_type": error_type,
                "message": message[:4000],
                "time_ns": time.time_ns(),
            }
        )

    def flush(self) -> str | None:
        """Write buffered rows as one part, then its commit record. Returns the part id."""
        part_id = None
        if self._rows:
            part_id = self._write_part()
        if self._failures:
            self._write_failures(part_id or layout.new_part_id())
        return part_id

    def close(self) -> None:
        if self._closed:
            return
        self.flush()
        self._closed = True

    def _check(self, video_id: str, layer: Layer, values: Any) -> np.ndarray:
        arr = np.asarray(values)
        if arr.dtype.kind != "f":
            raise InvalidFeaturesError(
                f"video {video_id!r} layer {layer_key(layer)}: features must be floating point, "
                f"got dtype {arr.dtype}"
            )
        dim = self.dims[layer]
        if arr.ndim != 2 or arr.shape[1] != dim:
            raise InvalidFeaturesError(
                f"video {video_id!r} layer {layer_key(layer)}: expected shape [T, {dim}], "
                f"got {list(arr.shape)}"
            )
        if arr.shape[0] == 0:
            raise InvalidFeaturesError(f"video {video_id!r} layer {layer_key(layer)}: zero frames")
        bad = nonfinite_rows(arr)
        if len(bad):
            raise InvalidFeaturesError(
                f"video {video_id!r} layer {layer_key(layer)}: NaN or inf in {len(bad)} rows "
                f"(first: row {bad[0]})"
            )
        return arr

    def _write_part(self) -> str:
        ids = [v for v, _, _ in self._videos]
        n_frames = np.array([n for _, n, _ in self._videos], dtype=np.int32)
        row_start = np.concatenate([[0], np.cumsum(n_frames, dtype=np.int64)[:-1]]).astype(np.int64)
        buffers = self._oversized if self._oversized is not None else self._buffers
        for _ in range(_MAX_ATTEMPTS):
            part_id = layout.new_part_id()
            try:
                layer_records = self._write_data(part_id, ids, row_start, n_frames, buffers)
            except FileNotFoundError as exc:  # gc removed the folder as we wrote into it
                log.warning(
                    "part %s vanished while it was written (%s); writing it again", part_id, exc
                )
                continue
            committed_ns = time.time_ns()
            versions = np.array(
                [committed_ns if v is None else v for _, _, v in self._videos], dtype=np.int64
            )
            record = CommitRecord(
                part_id=part_id,
                committed_ns=committed_ns,
                dtype=self.dtype.name,
                layers=layer_records,
                video_ids=tuple(ids),
                row_start=row_start,
                n_frames=n_frames,
                versions=versions,
                encoder=self.info.to_attrs(),
                writer={"host": socket.gethostname(), "pid": os.getpid(), "featstore": __version__},
                compacted_from=self._compacted_from,
            )
            _write_commit(self.backend, self.dataset, self.info.name, record)
            if self._survived_gc(part_id):
                break
            # The part outlived gc's floor while it was written and gc took its data:
            # withdraw the commit and write the rows (still buffered) again.
            log.warning(
                "part %s of %s/%s was removed by gc while it was written; writing it again",
                part_id,
                self.dataset,
                self.info.name,
            )
            self.backend.delete(layout.commit_key(self.dataset, self.info.name, part_id))
        else:
            raise StoreError(
                f"{self.dataset}/{self.info.name}: a part was removed {_MAX_ATTEMPTS} times while "
                f"it was written (by gc, whose floor is {layout.gc_floor_s():g} s, or by hand)"
            )
        self._oversized = None  # a one-off buffer for a single long video is not kept
        if self._on_commit is not None:
            self._on_commit(record)
        self.parts_written += 1
        self.videos_written += len(ids)
        self.rows_written += self._rows
        self.committed_parts.append(part_id)
        self._videos, self._ids, self._rows = [], set(), 0
        return part_id

    def _write_data(
        self,
        part_id: str,
        ids: list[str],
        row_start: np.ndarray,
        n_frames: np.ndarray,
        buffers: Mapping[Layer, ShardBuffer],
    ) -> dict[str, LayerRecord]:
        """Write a part's group and layer arrays; returns the layers' records."""
        base = layout.part_path(self.dataset, self.info.name, part_id)
        # The part's own video index, in its group attributes: one object instead of
        # three arrays (six objects); the commit record repeats it for readers.
        self.backend.write_group(
            base,
            {
                "featstore": {
                    "kind": "part",
                    "video_id": ids,
                    "row_start": row_start.tolist(),
                    "n_frames": n_frames.tolist(),
                }
            },
        )
        records = {}
        for x in self.layers:
            path = f"{base}/{layer_array_name(x)}"
            checksum = self.backend.write_layer(path, buffers[x], self._rows)
            records[layer_key(x)] = LayerRecord(dim=self.dims[x], checksum=checksum)
        return records

    def _survived_gc(self, part_id: str) -> bool:
        """Whether the part's data is still whole now that its commit is written.

        gc removes only parts older than its floor, so a part younger than half of it
        (a margin for clocks of different machines) cannot have been touched."""
        age_s = (time.time_ns() - layout.part_created_ns(part_id)) / 1e9
        if age_s < layout.gc_floor_s() / 2:
            return True
        base = layout.part_path(self.dataset, self.info.name, part_id)
        keys = [f"{base}/zarr.json"]
        for x in self.layers:
            keys += [
                f"{base}/{layer_array_name(x)}/zarr.json",
                f"{base}/{layer_array_name(x)}/c/0/0",
            ]
        return all(self.backend.exists(k) for k in keys)

    def _write_failures(self, part_id: str) -> None:
        doc = {
            "part_id": part_id,
            "written_ns": time.time_ns(),
            "writer": {"host": socket.gethostname(), "pid": os.getpid()},
            "failures": self._failures,
        }
        self.backend.put_json(layout.failure_key(self.dataset, self.info.name, part_id), doc)
        self.failures_written += len(self._failures)
        self._failures = []


_MAX_ATTEMPTS = 3


def _write_commit(backend: Backend, dataset: str, encoder: str, record: CommitRecord) -> None:
    """Write a commit record: the moment the part becomes visible. Kept separate so
    tests can interrupt a writer exactly between its data and its commit."""
    backend.put(layout.commit_key(dataset, encoder, record.part_id), record.to_json())
