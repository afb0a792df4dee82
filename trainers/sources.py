"""Where a trainer's videos come from, and how they become batches.

A ``VideoSource`` is anything with per-video labels and lengths that can
``read`` videos by index (``ArraySource`` here, ``featstore.trainers.streams.StoreSource``
over the store, read lazily through Dask). Trainers either cache a whole source in memory
(``FeatureCache``: one flat buffer plus offsets, in the source's dtype) or
stream it batch by batch (``prefetch_batches``: a background thread reads
the next batches while the current one is computed; ``prefetch_reads`` for
any reader).

Batches are ragged: the videos of a batch are concatenated into one
``[n, D]`` float32 buffer with their lengths beside it, so no compute is
spent on padding; ``pad_batch`` / ``lengths_mask`` give the padded
``[B, T, D]`` / ``[B, T]`` view when a model needs one.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol, TypeVar, runtime_checkable

import numpy as np
import torch

from featstore.errors import FeatstoreError

__all__ = [
    "ArraySource",
    "FeatureCache",
    "SourceError",
    "VideoSource",
    "batch_order",
    "concat_into",
    "lengths_mask",
    "pad_batch",
    "prefetch_batches",
    "prefetch_reads",
    "row_norms",
]

T = TypeVar("T")
_FLOAT_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


class SourceError(FeatstoreError, ValueError):
    """A video source is malformed (bad shapes, dims, labels or indices)."""


@runtime_checkable
class VideoSource(Protocol):
    """Labelled videos of per-frame features ``[T_i, D]``, read by index."""

    video_ids: list[str]
    labels: np.ndarray  # [N] int8, 1 = fake
    lengths: np.ndarray  # [N] int64, frames per video
    dim: int
    dtype: np.dtype
    nbytes: int  # total feature bytes

    def __len__(self) -> int: ...

    def read(self, indices: Sequence[int]) -> list[np.ndarray]: ...


class ArraySource:
    """A ``VideoSource`` over in-memory arrays ``[T_i, D]`` (tests, benchmarks, notebooks).

    >>> src = ArraySource([np.zeros((3, 4), np.float16)], [1])
    >>> src.dim, int(src.lengths[0]), src.nbytes
    (4, 3, 24)
    """

    def __init__(
        self,
        arrays: Sequence[np.ndarray],
        labels: Sequence[int] | np.ndarray,
        video_ids: Sequence[str] | None = None,
        *,
        dim: int | None = None,
    ) -> None:
        arrays = list(arrays)
        labels_arr = np.asarray(labels)
        if labels_arr.ndim != 1 or len(labels_arr) != len(arrays):
            raise SourceError(
                f"need one label per video: {len(arrays)} videos, labels of shape {labels_arr.shape}"
            )
        if len(labels_arr) and not np.isin(labels_arr, (0, 1)).all():
            raise SourceError(f"labels must be 0 (real) or 1 (fake), got {np.unique(labels_arr)}")
        if dim is None:
            if not arrays:
                raise SourceError("an empty ArraySource needs dim=")
            dim = int(np.shape(arrays[0])[-1]) if np.ndim(arrays[0]) == 2 else -1
        dtypes = set()
        for i, a in enumerate(arrays):
            if not isinstance(a, np.ndarray) or a.ndim != 2:
                raise SourceError(f"video {i}: expected a 2-D array [T, D], got {np.shape(a)}")
            if a.shape[1] != dim:
                raise SourceError(f"video {i} is {a.shape[1]}-wide, expected dim {dim}")
            if a.shape[0] == 0:
                raise SourceError(f"video {i} has no frames")
            if a.dtype not in _FLOAT_DTYPES:
                raise SourceError(f"video {i} has dtype {a.dtype}; expected float16/32/64")
            dtypes.add(a.dtype)
        if len(dtypes) > 1:
            raise SourceError(f"videos mix dtypes {sorted(str(d) for d in dtypes)}")
        if video_ids is None:
            video_ids = [str(i) for i in range(len(arrays))]
        video_ids = [str(v) for v in video_ids]
        if len(video_ids) != len(arrays):
            raise SourceError(f"{len(video_ids)} video ids for {len(arrays)} videos")
        if len(set(video_ids)) != len(video_ids):
            raise SourceError("video ids are not unique")
        self._arrays = arrays
        self.video_ids: list[str] = video_ids
        self.labels = labels_arr.astype(np.int8)  # [N]
        self.lengths = np.array([a.shape[0] for a in arrays], dtype=np.int64)  # [N]
        self.dim = int(dim)
        self.dtype = dtypes.pop() if dtypes else np.dtype(np.float32)
        self.nbytes = int(self.lengths.sum()) * self.dim * self.dtype.itemsize

    def __len__(self) -> int:
        return len(self._arrays)

    def read(self, indices: Sequence[int] | np.ndarray) -> list[np.ndarray]:
        """The arrays at ``indices`` (not copied), in that order."""
        out = []
        for i in np.asarray(indices, dtype=np.int64).ravel():
            if not 0 <= i < len(self._arrays):
                raise SourceError(f"video index {i} out of range for {len(self._arrays)} videos")
            out.append(self._arrays[i])
        return out


def row_norms(x: torch.Tensor) -> torch.Tensor:
    """L2 norm of each row of a float32 ``[n, D]`` tensor -> ``[n]``.

    The one function both the cache and the streamed path use, so cached and
    streamed training see bit-identical norms.
    """
    return torch.linalg.vector_norm(x, dim=1)


def concat_into(arrays: Sequence[np.ndarray], out: torch.Tensor) -> torch.Tensor:
    """Copy videos ``[T_i, D]`` end to end into ``out`` (upcast to its dtype) -> ``out[:n]``."""
    n = sum(a.shape[0] for a in arrays)
    if n > out.shape[0]:
        raise SourceError(f"batch of {n} frames does not fit a {out.shape[0]}-row buffer")
    start = 0
    for a in arrays:
        stop = start + a.shape[0]
        out[start:stop].copy_(torch.from_numpy(np.ascontiguousarray(a)))
        start = stop
    return out[:n]  # [n, D]


def lengths_mask(lengths: torch.Tensor | np.ndarray, max_len: int | None = None) -> torch.Tensor:
    """``[B, T]`` bool mask, True on the first ``lengths[b]`` frames of row ``b``."""
    lengths = torch.as_tensor(lengths)
    max_len = int(lengths.max()) if max_len is None else int(max_len)
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def pad_batch(
    arrays: Sequence[np.ndarray], *, dtype: np.dtype | type = np.float32
) -> tuple[np.ndarray, np.ndarray]:
    """Stack videos ``[T_i, D]`` into ``x [B, T_max, D]`` (zero padded) and ``mask [B, T_max]``."""
    if not arrays:
        raise SourceError("cannot pad an empty batch")
    lengths = np.array([a.shape[0] for a in arrays], dtype=np.int64)
    x = np.zeros((len(arrays), int(lengths.max()), arrays[0].shape[1]), dtype=dtype)
    for i, a in enumerate(arrays):
        x[i, : a.shape[0]] = a
    mask = np.arange(x.shape[1])[None, :] < lengths[:, None]  # [B, T]
    return x, mask


def batch_order(n: int, batch_videos: int, rng: np.random.Generator) -> list[np.ndarray]:
    """One epoch: a random permutation of ``range(n)`` cut into batches of ``batch_videos``."""
    if batch_videos < 1:
        raise SourceError(f"batch_videos must be >= 1, got {batch_videos}")
    perm = rng.permutation(n)
    return [perm[i : i + batch_videos] for i in range(0, n, batch_videos)]


class FeatureCache:
    """A whole source in memory: one flat ``[R, D]`` buffer, ``offsets [N+1]`` and row norms.

    float16 and float32 sources keep their dtype (float64 becomes float32), so
    a float16 store costs its own size; batches are upcast to float32 when
    gathered. Row norms (float32, computed from the upcast rows) are kept so
    per-frame L2 normalisation costs nothing per epoch.
    """

    def __init__(self, source: VideoSource, *, chunk_videos: int = 64) -> None:
        n = len(source)
        dtype = np.float16 if np.dtype(source.dtype) == np.float16 else np.float32
        lengths = np.asarray(source.lengths, dtype=np.int64)
        self.offsets = np.zeros(n + 1, dtype=np.int64)  # [N+1]
        np.cumsum(lengths, out=self.offsets[1:])
        self.lengths = lengths  # [N]
        self.data = torch.from_numpy(np.empty((int(self.offsets[-1]), source.dim), dtype=dtype))
        self.norms = torch.empty(int(self.offsets[-1]), dtype=torch.float32)  # [R]
        scratch = torch.empty(int(lengths.max(initial=0)), source.dim, dtype=torch.float32)
        for lo in range(0, n, chunk_videos):
            idx = np.arange(lo, min(lo + chunk_videos, n))
            arrays = source.read(idx)
            _check_read(source, idx, arrays)
            for i, a in zip(idx, arrays, strict=True):
                r0, r1 = int(self.offsets[i]), int(self.offsets[i + 1])
                rows = concat_into([a], scratch)  # [T, D] float32
                self.data[r0:r1].copy_(torch.from_numpy(np.ascontiguousarray(a, dtype=dtype)))
                self.norms[r0:r1] = row_norms(rows)  # per video, as the streamed path does
            del arrays
        self.nbytes = self.data.numel() * self.data.element_size()

    def gather_into(
        self, indices: Sequence[int] | np.ndarray, out: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Videos at ``indices`` concatenated into ``out`` (float32): ``x [n, D]``, ``norms [n]``."""
        spans = [(int(self.offsets[i]), int(self.offsets[i + 1])) for i in indices]
        n = sum(b - a for a, b in spans)
        if n > out.shape[0]:
            raise SourceError(f"batch of {n} frames does not fit a {out.shape[0]}-row buffer")
        start = 0
        for a, b in spans:
            out[start : start + b - a].copy_(self.data[a:b])
            start += b - a
        norms = torch.cat([self.norms[a:b] for a, b in spans])  # [n]
        return out[:n], norms


def _check_read(source: VideoSource, indices: np.ndarray, arrays: list[np.ndarray]) -> None:
    if len(arrays) != len(indices):
        raise SourceError(f"source returned {len(arrays)} videos for {len(indices)} indices")
    for i, a in zip(indices, arrays, strict=True):
        if a.ndim != 2 or a.shape[1] != source.dim or a.shape[0] != source.lengths[i]:
            raise SourceError(
                f"video {source.video_ids[i]!r}: read shape {a.shape}, "
                f"expected ({int(source.lengths[i])}, {source.dim})"
            )


class _Prefetcher:
    """Calls ``read`` on each of ``batches`` on a background thread, ``depth`` batches ahead."""

    _DONE = object()

    def __init__(
        self, read: Callable[[np.ndarray], object], batches: Sequence[np.ndarray], depth: int
    ) -> None:
        self._read, self._batches = read, list(batches)
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, name="featstore-prefetch", daemon=True)
        self._thread.start()

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _work(self) -> None:
        try:
            for idx in self._batches:
                if self._stop.is_set():
                    return
                if not self._put((idx, self._read(idx))):
                    return
        except BaseException as exc:  # handed to the consumer, re-raised there
            self._put(exc)
            return
        self._put(self._DONE)

    def __iter__(self) -> Iterator[tuple[np.ndarray, object]]:
        while True:
            item = self._queue.get()
            if item is self._DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]

    def close(self) -> None:
        self._stop.set()
        while True:  # unblock a producer waiting on a full queue
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join()


def prefetch_reads(
    read: Callable[[np.ndarray], T], batches: Sequence[np.ndarray], *, depth: int = 2
) -> Iterator[tuple[np.ndarray, T]]:
    """Yield ``(batch, read(batch))`` for each batch, reading ahead on a background thread.

    Errors raised by ``read`` surface in the consumer; closing the generator
    early (``break``, an exception) stops and joins the thread.
    """
    fetcher = _Prefetcher(read, batches, depth)
    try:
        yield from fetcher  # type: ignore[misc]
    finally:
        fetcher.close()


def prefetch_batches(
    source: VideoSource, batches: Sequence[np.ndarray], *, depth: int = 2
) -> Iterator[tuple[np.ndarray, list[np.ndarray]]]:
    """Yield ``(indices, arrays)`` per batch of ``source``, reading ahead (``prefetch_reads``),
    each batch's shapes checked against the source's lengths and dim."""

    def read(idx: np.ndarray) -> list[np.ndarray]:
        arrays = source.read(idx)
        _check_read(source, idx, arrays)
        return arrays

    return prefetch_reads(read, batches, depth=depth)
