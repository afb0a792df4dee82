"""How the sync network's frames reach it: packed in memory, or streamed batch by batch.

The loss of a batch of frames (``featstore.trainers.sync``) needs each frame's visual
row and the ``2 tau + 1`` audio rows around it in its own video (zero vectors
past either end). Frames are numbered end to end over the videos (frame ``r``
is row ``r - offsets[v]`` of video ``v``) and audio rows in a *packed*
numbering: ``tau`` zero rows, video 0's audio, ``tau`` zero rows, video 1's,
..., ``tau`` zero rows. Frame ``r``'s own audio is then at ``r + tau (v + 1)``
and its candidates within ``tau`` of it, so no candidate reaches another
video: a batch is fully described by its frame numbers (:class:`Numbering`).

- :class:`PackedPairs` holds every row in memory (packed audio, visual rows;
  the source's dtype, so float16 features cost their own size) and gathers a
  batch's distinct candidate rows by position.
- :class:`StreamedPairs` computes the same positions from the lengths alone,
  reads only the videos a batch touches (a background thread reads the next
  batches; a video split between two batches is read once) and gathers the
  same rows, in the same order, from them.

Both yield a :class:`RowsBatch` holding the same values, so the network
computes the same numbers either way (``tests/test_sync_streaming.py``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from featstore.timebase import reconcile
from featstore.trainers.sources import prefetch_reads

__all__ = [
    "Numbering",
    "PackedPairs",
    "PairList",
    "PairSourceLike",
    "RowsBatch",
    "StreamedPairs",
    "packed_nbytes",
]

CHUNK_VIDEOS = 64  # videos per read when filling the packed set


class PairSourceLike(Protocol):
    """Paired videos read by index: ``(audio [T_i, Da], visual [T_i, Dv])``, trimmed alike."""

    lengths: np.ndarray  # [N] int64, paired rows per video
    audio_dim: int
    visual_dim: int
    dtype: np.dtype

    def __len__(self) -> int: ...

    def read(self, indices: Sequence[int] | np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]: ...


class PairList:
    """In-memory paired videos (anything with ``.audio`` / ``.visual`` rows) as a pair source.

    Each video is trimmed to its shorter stream; ``error`` is raised for an
    empty set, a video without rows or mixed widths. The dtype is float16
    when every audio stream is (as the packed set always was), else float32.
    """

    def __init__(self, pairs: Sequence[object], what: str, *, error: type[Exception]) -> None:
        if len(pairs) == 0:
            raise error(f"the {what} set holds no videos")
        videos = []
        for i, p in enumerate(pairs):
            a, v = np.asarray(p.audio), np.asarray(p.visual)  # type: ignore[attr-defined]
            if a.ndim != 2 or v.ndim != 2:
                raise error(f"{what} video {i}: expected [T, D] rows, got {a.shape} and {v.shape}")
            r = reconcile(a, v)
            if r.n_rows == 0:
                raise error(f"{what} video {i} has no frames with both audio and visual rows")
            videos.append((r.audio, r.visual))
        da, dv = {a.shape[1] for a, _ in videos}, {v.shape[1] for _, v in videos}
        if len(da) > 1 or len(dv) > 1:
            raise error(
                f"{what} videos mix feature widths: audio {sorted(da)}, visual {sorted(dv)}"
            )
        self._videos = videos
        self.audio_dim, self.visual_dim = da.pop(), dv.pop()
        f16 = all(a.dtype == np.float16 for a, _ in videos)
        self.dtype = np.dtype(np.float16 if f16 else np.float32)
        self.lengths = np.array([a.shape[0] for a, _ in videos], dtype=np.int64)  # [N]

    def __len__(self) -> int:
        return len(self._videos)

    def read(self, indices: Sequence[int] | np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        out = []
        for i in np.asarray(indices, dtype=np.int64).ravel().tolist():
            a, v = self._videos[i]
            out.append((a.astype(self.dtype, copy=False), v.astype(self.dtype, copy=False)))
        return out


class Numbering:
    """Frame and packed-audio positions of a set of videos of ``lengths`` rows."""

    def __init__(self, lengths: np.ndarray, tau: int) -> None:
        self.lengths = np.asarray(lengths, dtype=np.int64)  # [N]
        self.tau = int(tau)
        n = len(self.lengths)
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)  # [N + 1]
        # packed position of each video's audio row 0
        self.starts = tau + self.offsets[:-1] + tau * np.arange(n, dtype=np.int64)  # [N]
        self.shifts = np.arange(-tau, tau + 1, dtype=np.int64)  # [K]

    @property
    def n_frames(self) -> int:
        return int(self.offsets[-1])

    @property
    def n_audio_rows(self) -> int:
        return self.tau + int((self.lengths + self.tau).sum())

    def video_of(self, rows: np.ndarray) -> np.ndarray:
        """The video of each frame ``[N]``."""
        return np.searchsorted(self.offsets, rows, side="right") - 1

    def audio_positions(self, rows: np.ndarray) -> np.ndarray:
        """Packed position of each frame's own audio row ``[N]``."""
        return rows + self.tau * (self.video_of(rows) + 1)


def packed_nbytes(source: PairSourceLike, tau: int) -> int:
    """Bytes of ``source`` packed in memory (audio with its zero rows, visual)."""
    num = Numbering(source.lengths, tau)
    itemsize = np.dtype(source.dtype).itemsize
    return (num.n_audio_rows * source.audio_dim + num.n_frames * source.visual_dim) * itemsize


@dataclass(frozen=True)
class RowsBatch:
    """What the loss of a batch of frames reads.

    ``audio [U, Da]``: the distinct candidate audio rows of the batch in
    packed-position order (zero rows included); ``inverse [N, K]``: each
    frame's candidates as rows of ``audio``; ``visual [N, Dv]``: the frames'
    visual rows. Rows are in the source's dtype.
    """

    audio: torch.Tensor
    inverse: torch.Tensor
    visual: torch.Tensor


def _split(rows: np.ndarray, size: int) -> list[np.ndarray]:
    return [rows[i : i + size] for i in range(0, len(rows), size)]


class PackedPairs:
    """Every video of a pair source in memory on ``device``, batches gathered by position."""

    def __init__(self, source: PairSourceLike, tau: int, device: torch.device) -> None:
        num = Numbering(source.lengths, tau)
        self.numbering, self.device = num, device
        dtype = np.dtype(source.dtype)
        audio = np.zeros((num.n_audio_rows, source.audio_dim), dtype=dtype)
        visual = np.empty((num.n_frames, source.visual_dim), dtype=dtype)
        chunks = _split(np.arange(len(source), dtype=np.int64), CHUNK_VIDEOS)
        for idx, pairs in prefetch_reads(source.read, chunks):
            for i, (a, v) in zip(idx.tolist(), pairs, strict=True):
                s, o, n = int(num.starts[i]), int(num.offsets[i]), int(num.lengths[i])
                audio[s : s + n] = a
                visual[o : o + n] = v
        rows = np.arange(num.n_frames, dtype=np.int64)
        self.audio = torch.from_numpy(audio).to(device)  # [A, Da]
        self.visual = torch.from_numpy(visual).to(device)  # [R, Dv]
        self.audio_pos = torch.from_numpy(num.audio_positions(rows)).to(device)  # [R]
        self.shifts = torch.from_numpy(num.shifts).to(device)  # [K]

    @property
    def offsets(self) -> np.ndarray:
        return self.numbering.offsets

    @property
    def n_frames(self) -> int:
        return self.numbering.n_frames

    def batches(self, row_batches: Sequence[np.ndarray]) -> Iterator[RowsBatch]:
        for rows in row_batches:
            r = torch.from_numpy(np.ascontiguousarray(rows)).to(self.device)
            cand_idx = self.audio_pos[r][:, None] + self.shifts  # [N, K]
            uniq, inv = torch.unique(cand_idx, return_inverse=True)  # [U], [N, K]
            yield RowsBatch(self.audio[uniq], inv, self.visual[r])


class StreamedPairs:
    """A pair source read batch by batch: the rows :class:`PackedPairs` would gather, read lazily."""

    def __init__(
        self, source: PairSourceLike, tau: int, device: torch.device, *, depth: int = 2
    ) -> None:
        self.source, self.device, self.depth = source, device, depth
        self.numbering = Numbering(source.lengths, tau)
        self.dtype = np.dtype(source.dtype)

    @property
    def offsets(self) -> np.ndarray:
        return self.numbering.offsets

    @property
    def n_frames(self) -> int:
        return self.numbering.n_frames

    def batches(self, row_batches: Sequence[np.ndarray]) -> Iterator[RowsBatch]:
        num = self.numbering
        wanted = [np.unique(num.video_of(rows)) for rows in row_batches]
        # A batch reads only the videos its predecessor did not hold (consecutive
        # batches share at most the video split between them).
        fresh = [w if i == 0 else np.setdiff1d(w, wanted[i - 1]) for i, w in enumerate(wanted)]
        held: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        reads = prefetch_reads(self.source.read, fresh, depth=self.depth)
        try:
            for rows, videos, (new, pairs) in zip(row_batches, wanted, reads, strict=True):
                held = {v: held[v] for v in videos.tolist() if v in held}
                held.update(zip(new.tolist(), pairs, strict=True))
                yield self._batch(rows, held)
        finally:
            reads.close()

    def _batch(self, rows: np.ndarray, held: dict[int, tuple[np.ndarray, np.ndarray]]) -> RowsBatch:
        num = self.numbering
        video = num.video_of(rows)  # [N]
        cand_idx = torch.from_numpy(num.audio_positions(rows)[:, None] + num.shifts)  # [N, K]
        uniq, inv = torch.unique(cand_idx, return_inverse=True)  # [U], [N, K]
        pos = uniq.numpy()
        owner = np.searchsorted(num.starts, pos, side="right") - 1  # [U]; -1 before video 0
        local = pos - num.starts[np.maximum(owner, 0)]
        real = (owner >= 0) & (local < num.lengths[np.maximum(owner, 0)])  # else a zero row
        first = next(iter(held.values()))
        audio = np.zeros((len(pos), first[0].shape[1]), dtype=self.dtype)  # [U, Da]
        visual = np.empty((len(rows), first[1].shape[1]), dtype=self.dtype)  # [N, Dv]
        for v in np.unique(owner[real]).tolist():
            m = real & (owner == v)
            audio[m] = held[v][0][local[m]]
        for v in np.unique(video).tolist():
            m = video == v
            visual[m] = held[v][1][rows[m] - num.offsets[v]]
        return RowsBatch(
            torch.from_numpy(audio).to(self.device),
            inv.to(self.device),
            torch.from_numpy(visual).to(self.device),
        )
