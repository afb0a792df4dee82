"""Commit records and the reader's index built from them.

A part exists for readers only once its commit record is written (last).
The record holds everything a reader needs to find rows without opening the
part: layers with their dims and checksums, and per video its ``row_start``,
``n_frames`` and ``version``. The version is the time the video's features
were produced (the committing writer's clock); ``compact`` copies rows into
new parts but keeps their versions, so a concurrent re-extraction still wins
over a compacted copy of older rows.

Pure: JSON in, numpy/pandas out. No I/O.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from featstore.errors import CorruptStoreError
from featstore.layout import Layer, layer_key, layer_sort_key, normalize_layer

FORMAT_VERSION = 1


@dataclass(frozen=True)
class LayerRecord:
    """One stored layer of a part: its width and the checksum of its rows."""

    dim: int
    checksum: str  # "crc32c:<8 hex digits>" of the C-ordered row bytes


@dataclass(frozen=True, eq=False)
class CommitRecord:
    """The commit record of one immutable part (``_commits/<part_id>.json``)."""

    part_id: str
    committed_ns: int
    dtype: str
    layers: Mapping[str, LayerRecord]  # layer_key -> record
    video_ids: tuple[str, ...]
    row_start: np.ndarray  # [V] int64
    n_frames: np.ndarray  # [V] int32
    versions: np.ndarray  # [V] int64, ns
    encoder: Mapping[str, Any] = field(default_factory=dict)
    writer: Mapping[str, Any] = field(default_factory=dict)
    compacted_from: tuple[str, ...] = ()

    @property
    def rows(self) -> int:
        return int(self.n_frames.sum()) if len(self.n_frames) else 0

    def layer_list(self) -> list[Layer]:
        return sorted((normalize_layer(k) for k in self.layers), key=layer_sort_key)

    def to_json(self) -> bytes:
        doc = {
            "format": FORMAT_VERSION,
            "part_id": self.part_id,
            "committed_ns": self.committed_ns,
            "dtype": self.dtype,
            "rows": self.rows,
            "layers": {k: {"dim": v.dim, "checksum": v.checksum} for k, v in self.layers.items()},
            "videos": {
                "video_id": list(self.video_ids),
                "row_start": self.row_start.astype(np.int64).tolist(),
                "n_frames": self.n_frames.astype(np.int64).tolist(),
                "version": self.versions.astype(np.int64).tolist(),
            },
            "encoder": dict(self.encoder),
            "writer": dict(self.writer),
            "compacted_from": list(self.compacted_from),
        }
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> CommitRecord:
        """Parse a record; a truncated or malformed one raises ``CorruptStoreError``."""
        try:
            doc = json.loads(data)
            videos = doc["videos"]
            record = cls(
                part_id=str(doc["part_id"]),
                committed_ns=int(doc["committed_ns"]),
                dtype=str(doc["dtype"]),
                layers={
                    str(k): LayerRecord(dim=int(v["dim"]), checksum=str(v["checksum"]))
                    for k, v in doc["layers"].items()
                },
                video_ids=tuple(str(v) for v in videos["video_id"]),
                row_start=np.asarray(videos["row_start"], dtype=np.int64),
                n_frames=np.asarray(videos["n_frames"], dtype=np.int32),
                versions=np.asarray(videos["version"], dtype=np.int64),
                encoder=doc.get("encoder", {}),
                writer=doc.get("writer", {}),
                compacted_from=tuple(doc.get("compacted_from", ())),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CorruptStoreError(f"unreadable commit record: {exc}") from exc
        n = len(record.video_ids)
        if not (len(record.row_start) == len(record.n_frames) == len(record.versions) == n):
            raise CorruptStoreError(
                f"commit record {record.part_id}: video columns differ in length"
            )
        return record


@dataclass(frozen=True)
class Location:
    """Where a video's rows of one layer live."""

    part_id: str
    row_start: int
    n_frames: int
    version: int


class LayerIndex:
    """``video_id -> (part, row_start, n_frames)`` for one layer; newest version wins.

    Built with vectorised numpy over all commits holding the layer, so a
    million videos index in about a second.
    """

    def __init__(self, commits: Sequence[CommitRecord], layer: Layer) -> None:
        key = layer_key(layer)
        holding = [c for c in commits if key in c.layers]
        self.layer = normalize_layer(layer)
        self.part_ids: tuple[str, ...] = tuple(c.part_id for c in holding)
        self.dims = {c.layers[key].dim for c in holding}
        if not holding:
            self._ids = np.array([], dtype=object)
            self._part = np.array([], dtype=np.int32)
            self._start = np.array([], dtype=np.int64)
            self._n = np.array([], dtype=np.int32)
            self._version = np.array([], dtype=np.int64)
            self._pos: dict[str, int] = {}
            return
        ids = np.concatenate([np.asarray(c.video_ids, dtype=object) for c in holding])
        part = np.concatenate(
            [np.full(len(c.video_ids), i, dtype=np.int32) for i, c in enumerate(holding)]
        )
        start = np.concatenate([c.row_start for c in holding])
        n = np.concatenate([c.n_frames for c in holding])
        version = np.concatenate([c.versions for c in holding])
        committed = np.concatenate(
            [np.full(len(c.video_ids), c.committed_ns, dtype=np.int64) for c in holding]
        )
        # Sort by (version, commit time, part order); the last row of each video wins.
        order = np.lexsort((part, committed, version))
        ids, part, start, n, version = (
            ids[order],
            part[order],
            start[order],
            n[order],
            version[order],
        )
        import pandas as pd

        keep = ~pd.Index(ids).duplicated(keep="last")  # the newest copy of each video
        self._ids, self._part, self._start = ids[keep], part[keep], start[keep]
        self._n, self._version = n[keep], version[keep]
        self._pos = {vid: i for i, vid in enumerate(self._ids.tolist())}

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, video_id: object) -> bool:
        return video_id in self._pos

    def locate(self, video_id: str) -> Location | None:
        i = self._pos.get(video_id)
        if i is None:
            return None
        return Location(
            part_id=self.part_ids[self._part[i]],
            row_start=int(self._start[i]),
            n_frames=int(self._n[i]),
            version=int(self._version[i]),
        )

    def video_ids(self) -> list[str]:
        return list(self._pos)

    def rows(self) -> int:
        return int(self._n.sum())

    def by_part(self) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
        """Winning rows grouped by part, in commit order then row order.

        Each item: ``(part_id, video_ids [V] object, row_start [V], n_frames [V])``.
        """
        out = []
        order = np.lexsort((self._start, self._part))
        part_sorted = self._part[order]
        bounds = np.flatnonzero(np.diff(part_sorted)) + 1
        for chunk in np.split(order, bounds):
            if len(chunk) == 0:
                continue
            out.append(
                (
                    self.part_ids[self._part[chunk[0]]],
                    self._ids[chunk],
                    self._start[chunk],
                    self._n[chunk],
                )
            )
        return out

    def winning_parts(self) -> set[str]:
        return {self.part_ids[i] for i in np.unique(self._part).tolist()}


def sort_commits(commits: Iterable[CommitRecord]) -> list[CommitRecord]:
    """Oldest first by commit time, then part id."""
    return sorted(commits, key=lambda c: (c.committed_ns, c.part_id))
