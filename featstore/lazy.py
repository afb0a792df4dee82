"""The part layout behind ``FeatureStore.features()``, and the reads that follow it.

A :class:`LayerLayout` says where every committed video of one layer lies: the
parts that hold the layer's winning rows (one Dask chunk each, in commit order)
and, per video, its part, first row and length. It is built from the commit
index alone (nothing is read), so knowing every video's length costs no I/O.

Reads follow the layout part by part: :func:`read_part_videos` fetches the
rows of some videos of one part, merging rows that lie close together into
one read (``Backend.read_gap_bytes``: back-to-back rows on local disk, a few
MiB apart on object storage, where a request costs more than the bytes). A
chunk of ``features()`` is the same read over every winning video of its part
(:func:`load_part_rows`); a reader that wants some videos (a trainer's batch)
makes one task per part they touch, so a scan costs a few large reads per
part and a random batch one read per video.

>>> layout = store.layout("av1m", "wav2vec2", "last")  # doctest: +SKIP
>>> part, start, n = layout.where(["id0001/clip"])  # doctest: +SKIP
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from featstore.errors import UnknownVideoError
from featstore.layout import Layer, layer_key

if TYPE_CHECKING:
    from featstore.commits import LayerIndex
    from featstore.store import FeatureStore

__all__ = ["LayerLayout", "load_part_rows", "read_part_videos"]

_SHOWN = 3


@dataclass(frozen=True)
class LayerLayout:
    """Every winning video of one layer: its part, first row in the part, length.

    Videos are in chunk order (parts in commit order, rows in order within a
    part), the order of ``features()``'s frames. ``token`` changes whenever
    the encoder's commits do.
    """

    dataset: str
    encoder: str
    layer: Layer
    dim: int
    dtype: np.dtype
    frame_hz: float
    token: str
    part_ids: tuple[str, ...]  # one per chunk
    video_ids: np.ndarray = field(repr=False)  # [V] object
    part: np.ndarray = field(repr=False)  # [V] int32, index into part_ids
    row_start: np.ndarray = field(repr=False)  # [V] int64, first row in its part
    n_frames: np.ndarray = field(repr=False)  # [V] int64
    _pos: dict[str, int] = field(repr=False, compare=False, default_factory=dict)

    @classmethod
    def of_index(
        cls,
        index: LayerIndex,
        *,
        dataset: str,
        encoder: str,
        dim: int,
        dtype: np.dtype,
        frame_hz: float,
        token: str,
    ) -> LayerLayout:
        groups = index.by_part()
        part_ids = tuple(g[0] for g in groups)
        if groups:
            ids = np.concatenate([g[1] for g in groups])
            part = np.concatenate(
                [np.full(len(g[1]), i, dtype=np.int32) for i, g in enumerate(groups)]
            )
            start = np.concatenate([g[2] for g in groups]).astype(np.int64)
            n = np.concatenate([g[3] for g in groups]).astype(np.int64)
        else:
            ids = np.array([], dtype=object)
            part = np.array([], dtype=np.int32)
            start = n = np.array([], dtype=np.int64)
        return cls(
            dataset=dataset,
            encoder=encoder,
            layer=index.layer,
            dim=int(dim),
            dtype=np.dtype(dtype),
            frame_hz=float(frame_hz),
            token=token,
            part_ids=part_ids,
            video_ids=ids,
            part=part,
            row_start=start,
            n_frames=n,
            _pos={v: i for i, v in enumerate(ids.tolist())},
        )

    def __len__(self) -> int:
        return len(self.video_ids)

    def __contains__(self, video_id: object) -> bool:
        return video_id in self._pos

    @property
    def n_rows(self) -> int:
        return int(self.n_frames.sum())

    def chunk_rows(self) -> tuple[int, ...]:
        """Winning rows of each part: the row chunks of ``features()``."""
        return tuple(int(self.n_frames[a:b].sum()) for a, b in self.part_spans())

    def part_spans(self) -> list[tuple[int, int]]:
        """``[(first, stop), ...]``: the positions of each part's videos in this layout."""
        bounds = np.searchsorted(self.part, np.arange(len(self.part_ids) + 1))
        return [(int(a), int(b)) for a, b in itertools.pairwise(bounds)]

    def positions(self, video_ids: Iterable[str]) -> np.ndarray:
        """Each video's position in this layout ``[N]`` (``UnknownVideoError`` naming the absent)."""
        ids = list(video_ids)
        pos = np.fromiter((self._pos.get(v, -1) for v in ids), dtype=np.int64, count=len(ids))
        if (pos < 0).any():
            missing = [v for v, p in zip(ids, pos, strict=True) if p < 0]
            shown = ", ".join(repr(v) for v in missing[:_SHOWN])
            raise UnknownVideoError(
                f"{len(missing)} videos have no committed features in {self.dataset}/"
                f"{self.encoder} layer {layer_key(self.layer)}, e.g. {shown}"
            )
        return pos

    def where(self, video_ids: Iterable[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(part [N], row_start [N], n_frames [N])`` of the given videos."""
        pos = self.positions(video_ids)
        return self.part[pos], self.row_start[pos], self.n_frames[pos]


def _runs(starts: np.ndarray, ns: np.ndarray, gap_rows: int) -> list[tuple[int, int, np.ndarray]]:
    """Row ranges sorted and merged where they lie at most ``gap_rows`` apart:
    ``[(lo, hi, members), ...]`` with the members' positions in the input."""
    order = np.argsort(starts, kind="stable")
    out: list[tuple[int, int, np.ndarray]] = []
    lo = hi = None
    members: list[int] = []
    for i in order.tolist():
        s, e = int(starts[i]), int(starts[i] + ns[i])
        if lo is not None and s - hi <= gap_rows:
            hi = max(hi, e)
            members.append(i)
            continue
        if lo is not None:
            out.append((lo, hi, np.array(members, dtype=np.int64)))
        lo, hi, members = s, e, [i]
    if lo is not None:
        out.append((lo, hi, np.array(members, dtype=np.int64)))
    return out


def read_part_videos(
    store: FeatureStore,
    dataset: str,
    encoder: str,
    part_id: str,
    layer: Layer,
    starts: Sequence[int] | np.ndarray,
    ns: Sequence[int] | np.ndarray,
) -> list[np.ndarray]:
    """Rows of some videos of one part (``[n_i, D]`` each, in the order given).

    Ranges that lie within the backend's ``read_gap_bytes`` of each other are
    read together; the arrays returned may be views into those reads.
    """
    starts = np.asarray(starts, dtype=np.int64)
    ns = np.asarray(ns, dtype=np.int64)
    out: list[np.ndarray | None] = [None] * len(starts)
    if not len(starts):
        return []
    row_bytes = max(1, store.row_bytes(dataset, encoder, layer))
    gap_rows = store.backend.read_gap_bytes // row_bytes
    for lo, hi, members in _runs(starts, ns, gap_rows):
        block = store.read_rows(dataset, encoder, part_id, layer, lo, hi - lo)
        for i in members.tolist():
            s = int(starts[i]) - lo
            out[i] = block[s : s + int(ns[i])]
    return out  # type: ignore[return-value]


def load_part_rows(
    store: FeatureStore,
    dataset: str,
    encoder: str,
    part_id: str,
    layer: Layer,
    starts: np.ndarray,
    ns: np.ndarray,
) -> np.ndarray:
    """One chunk of ``features()``: the winning rows of one part, concatenated in row order."""
    lo, hi = int(starts.min()), int((starts + ns).max())
    if hi - lo == int(ns.sum()):  # no superseded rows inside: one read is the chunk
        return store.read_rows(dataset, encoder, part_id, layer, lo, hi - lo)
    return np.concatenate(read_part_videos(store, dataset, encoder, part_id, layer, starts, ns))
