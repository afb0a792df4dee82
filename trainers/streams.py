"""Trainers' videos read lazily from the store, through Dask, a few tasks per batch.

The store's lazy view of a layer, ``FeatureStore.features()``, is one Dask
chunk per part, each chunk a read of the part's winning rows
(``featstore.lazy``). Trainers read the same parts the same way, but only the
videos a batch needs: :class:`StoreReader` turns a batch into a Dask graph
with one task per (feature, part) it touches, each reading its videos' rows
(ranges that lie close together in one read), run on a thread pool. A part
holding more than its share of the batch's rows (``1 / threads``) is cut into
tasks of about that share, in row order, so the pool's threads finish
together (a batch has at most ``threads`` more tasks than parts, never one
per video). Nothing is read up front: lengths come from the commit index. Reads work the same on
local disk and on ``s3://`` (more threads there, and nearby ranges merged
into larger requests).

- :class:`StoreSource` is a ``featstore.trainers.sources.VideoSource`` over one
  detector input (a stored layer or a feature set): what the probe and the
  next-token predictor train on and what their ``score_selection`` reads.
- :class:`PairSource` serves paired audio and visual rows (``featstore.trainers.pairs``
  rules: assembled, leading silence dropped on request, trimmed to the
  shorter) in the stored dtype: what the sync network trains on.

Read-ahead: ``featstore.trainers.sources.prefetch_batches`` reads the next batches on
a background thread while the current one is computed, and the parts of one
batch are read in parallel.

>>> src = StoreSource(store, "av1m", feature_input, rows)  # doctest: +SKIP
>>> [x.shape for x in src.read([0, 5])]  # doctest: +SKIP
[(212, 1024), (250, 1024)]
"""

from __future__ import annotations

import concurrent.futures
import itertools
import logging
import weakref
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from featstore.timebase import silence_trim_counts
from featstore.trainers.data import FeatureKey
from featstore.trainers.inputs import FeatureInput, read_video
from featstore.trainers.pairs import PairingError, silences

if TYPE_CHECKING:
    import pandas as pd

    from featstore.lazy import LayerLayout
    from featstore.store import FeatureStore

log = logging.getLogger(__name__)

LOCAL_THREADS = 4
REMOTE_THREADS = 16  # object stores: requests wait on the network, not the disk

__all__ = ["PairSource", "StoreReader", "StoreSource", "reader_threads"]

_task_ids = itertools.count()


def reader_threads(store: FeatureStore) -> int:
    """Parallel part reads: a few on local disk, more on an object store."""
    return (
        REMOTE_THREADS
        if "://" in store.url and not store.url.startswith("file://")
        else (LOCAL_THREADS)
    )


class StoreReader:
    """The rows of several stored features of some videos, read by batch through Dask.

    ``video_ids`` fixes the videos (index ``i`` is ``video_ids[i]``); every
    feature must be committed for all of them. ``read(indices)`` returns one
    ``{key: [T_k, D_k]}`` per index, in the stored dtype.
    """

    def __init__(
        self,
        store: FeatureStore,
        dataset: str,
        keys: Sequence[FeatureKey],
        video_ids: Sequence[str],
        *,
        threads: int | None = None,
    ) -> None:
        self.store, self.dataset = store, dataset
        self.keys = tuple(dict.fromkeys(keys))
        self.video_ids = [str(v) for v in video_ids]
        self.threads = max(1, int(threads or reader_threads(store)))
        self._locate()
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None

    def _locate(self) -> None:
        self._layouts: dict[FeatureKey, LayerLayout] = {}
        self._where: dict[FeatureKey, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        for k in self.keys:
            lay = self.store.layout(self.dataset, k.encoder, k.layer)
            self._layouts[k] = lay
            self._where[k] = lay.where(self.video_ids)  # part [N], row_start [N], n_frames [N]

    def __len__(self) -> int:
        return len(self.video_ids)

    def lengths(self, key: FeatureKey) -> np.ndarray:
        """Stored rows of ``key`` for every video ``[N]``."""
        return self._where[key][2].copy()

    def dtype(self, key: FeatureKey) -> np.dtype:
        return self._layouts[key].dtype

    def _pool_(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(
                self.threads, thread_name_prefix="featstore-read"
            )
            weakref.finalize(self, self._pool.shutdown, wait=False)
        return self._pool

    def graph(self, indices: np.ndarray) -> tuple[dict, list[tuple[FeatureKey, tuple, np.ndarray]]]:
        """The Dask graph reading ``indices`` and what each task returns.

        One task per (feature, part), a part with more than ``1 / threads`` of
        the batch's bytes cut into tasks of about that share (its videos in
        row order, so neighbours stay in one read).
        """
        from featstore.lazy import read_part_videos

        graph: dict[tuple, tuple] = {}
        plan: list[tuple[FeatureKey, tuple, np.ndarray]] = []
        token = f"featstore-read-{next(_task_ids)}"
        where = {k: tuple(a[indices] for a in self._where[k]) for k in self.keys}
        row_bytes = {k: self._layouts[k].dim * self._layouts[k].dtype.itemsize for k in self.keys}
        total = sum(int(where[k][2].sum()) * row_bytes[k] for k in self.keys)
        share = max(1, -(-total // self.threads))  # bytes a task may hold
        for k_i, k in enumerate(self.keys):
            lay = self._layouts[k]
            part, start, n = where[k]
            for p in np.unique(part).tolist():
                members = np.flatnonzero(part == p)
                members = members[np.argsort(start[members], kind="stable")]  # row order
                for g, group in enumerate(_balanced(n[members] * row_bytes[k], share)):
                    mine = members[group]
                    key = (token, k_i, p, g)
                    graph[key] = (
                        read_part_videos, self.store, self.dataset, k.encoder, lay.part_ids[p],
                        k.layer, start[mine], n[mine],
                    )  # fmt: skip
                    plan.append((k, key, mine))
        return graph, plan

    def read(self, indices: Sequence[int] | np.ndarray) -> list[dict[FeatureKey, np.ndarray]]:
        """Every feature's rows of the videos at ``indices``, in that order."""
        import dask.threaded

        idx = np.asarray(indices, dtype=np.int64).ravel()
        if idx.size and (idx.min() < 0 or idx.max() >= len(self.video_ids)):
            bad = int(idx[(idx < 0) | (idx >= len(self.video_ids))][0])
            raise IndexError(f"video index {bad} out of range for {len(self.video_ids)} videos")
        out: list[dict[FeatureKey, np.ndarray]] = [{} for _ in range(len(idx))]
        if not idx.size:
            return out
        graph, plan = self.graph(idx)
        try:
            results = dask.threaded.get(graph, [key for _, key, _ in plan], pool=self._pool_())
        except FileNotFoundError:
            # A part was compacted away since the layout was taken: the rows live in its
            # replacement now, which store.video() finds after a fresh listing.
            self.store.refresh()
            self._locate()
            return [
                read_video(self.store, self.dataset, self.video_ids[i], self.keys)
                for i in idx.tolist()
            ]
        for (k, _, members), arrays in zip(plan, results, strict=True):
            for j, a in zip(members.tolist(), arrays, strict=True):
                out[j][k] = a
        return out

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


def _balanced(sizes: np.ndarray, share: int) -> list[slice]:
    """Consecutive groups of ``sizes`` ``[M]``: ``ceil(sum / share)`` of them, about equal."""
    pieces = max(1, min(len(sizes), -(-int(sizes.sum()) // share)))
    if pieces == 1:
        return [slice(0, len(sizes))]
    ends = np.cumsum(sizes)  # [M]
    cuts = np.searchsorted(ends, ends[-1] * np.arange(1, pieces) / pieces, side="left") + 1
    bounds = np.unique(np.concatenate([[0], np.clip(cuts, 1, len(sizes) - 1), [len(sizes)]]))
    return [slice(int(a), int(b)) for a, b in itertools.pairwise(bounds)]


def _dtype(dtypes: Iterable[np.dtype]) -> np.dtype:
    found = {np.dtype(d) for d in dtypes}
    return found.pop() if len(found) == 1 else np.dtype(np.float32)


class StoreSource:
    """A ``VideoSource`` of one detector input over selected manifest rows, read lazily.

    Drop-in for ``featstore.trainers.inputs.InputSource`` (which reads video by video):
    the same arrays, read a batch at a time through :class:`StoreReader`.
    """

    def __init__(
        self,
        store: FeatureStore,
        dataset: str,
        feature_input: FeatureInput,
        rows: pd.DataFrame,
        *,
        threads: int | None = None,
    ) -> None:
        self.input = feature_input
        self.video_ids: list[str] = rows["video_id"].astype(str).tolist()
        self.labels = rows["label"].to_numpy().astype(np.int8)  # [N], 1 = fake
        self.frame_hz = feature_input.frame_hz
        self.dim = feature_input.dim
        self.reader = StoreReader(
            store, dataset, feature_input.keys, self.video_ids, threads=threads
        )
        self.dtype = _dtype(self.reader.dtype(k) for k in feature_input.keys)
        per_feature = [self.reader.lengths(k) for k in feature_input.keys]
        self.lengths = np.array(
            [feature_input.n_rows(ns) for ns in zip(*per_feature, strict=True)], dtype=np.int64
        )  # [N]

    def __len__(self) -> int:
        return len(self.video_ids)

    @property
    def nbytes(self) -> int:
        return int(self.lengths.sum()) * self.dim * self.dtype.itemsize

    def read(self, indices: Sequence[int] | np.ndarray) -> list[np.ndarray]:
        """Inputs of the videos at ``indices``, in that order: ``[T_i, D]`` each."""
        return [self.input.assemble(rows) for rows in self.reader.read(indices)]


class PairSource:
    """Paired audio and visual rows of selected videos, read lazily, in the stored dtype.

    Each video is paired as ``featstore.trainers.pairs.pair_rows`` pairs it (both
    inputs assembled at their common rate, ``trim_silence`` dropping the
    manifest's ``leading_silence_s``, both trimmed to the shorter), but the
    rows keep the store's dtype (float16 stays float16; it is upcast when a
    batch is computed). ``lengths`` are the paired rows, known without
    reading; a video left without rows is a ``PairingError`` here, before
    any training.
    """

    def __init__(
        self,
        store: FeatureStore,
        dataset: str,
        audio: FeatureInput,
        visual: FeatureInput,
        rows: pd.DataFrame,
        *,
        trim_silence: bool = False,
        threads: int | None = None,
    ) -> None:
        self.audio, self.visual = audio, visual
        self.video_ids: list[str] = rows["video_id"].astype(str).tolist()
        self.labels = rows["label"].to_numpy().astype(np.int8)  # [N]
        self.frame_hz = audio.frame_hz
        self.audio_dim, self.visual_dim = audio.dim, visual.dim
        keys = list(dict.fromkeys([*audio.keys, *visual.keys]))
        self.reader = StoreReader(store, dataset, keys, self.video_ids, threads=threads)
        self.dtype = _dtype(self.reader.dtype(k) for k in keys)
        n = len(self.video_ids)
        self.skip = np.zeros(n, dtype=np.int64)  # [N] leading rows dropped as silence
        if trim_silence:
            rate = audio.frame_hz
            self.skip[:] = [silence_trim_counts(float(s), frame_hz=rate)[0] for s in silences(rows)]
        n_a = self._input_rows(audio)
        n_v = self._input_rows(visual)
        self.n_audio = np.maximum(n_a - self.skip, 0)  # [N]
        self.n_visual = np.maximum(n_v - self.skip, 0)  # [N]
        self.lengths = np.minimum(self.n_audio, self.n_visual)  # [N]
        empty = np.flatnonzero(self.lengths == 0)
        if empty.size:
            i = int(empty[0])
            raise PairingError(
                f"{self.video_ids[i]}: no rows left to pair (audio {int(self.n_audio[i])}, "
                f"visual {int(self.n_visual[i])} rows"
                + (f" after skipping {int(self.skip[i])} silent rows" if self.skip[i] else "")
                + (f"; {empty.size - 1} more videos alike" if empty.size > 1 else "")
                + ")"
            )

    def _input_rows(self, inp: FeatureInput) -> np.ndarray:
        per_feature = [self.reader.lengths(k) for k in inp.keys]
        return np.array([inp.n_rows(ns) for ns in zip(*per_feature, strict=True)], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.video_ids)

    @property
    def nbytes(self) -> int:
        return int(self.lengths.sum()) * (self.audio_dim + self.visual_dim) * self.dtype.itemsize

    def pair(
        self, index: int, rows: Mapping[FeatureKey, np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Video ``index``'s paired ``(audio [T, Da], visual [T, Dv])`` from its stored rows."""
        skip, n = int(self.skip[index]), int(self.lengths[index])
        a = self.audio.assemble(rows)[skip : skip + n]
        v = self.visual.assemble(rows)[skip : skip + n]
        return a.astype(self.dtype, copy=False), v.astype(self.dtype, copy=False)

    def read(self, indices: Sequence[int] | np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """Paired rows of the videos at ``indices``, in that order."""
        idx = np.asarray(indices, dtype=np.int64).ravel()
        return [self.pair(int(i), rows) for i, rows in zip(idx, self.reader.read(idx), strict=True)]
