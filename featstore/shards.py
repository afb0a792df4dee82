"""Fast reads of the store's own array layout, straight from shard bytes.

Every layer array the store writes has one shape: ``[rows, dim]``, a single
shard holding inner chunks of 512 rows, the ``bytes`` codec (little endian,
no compression: embeddings barely compress) and the shard index at the end
(``bytes`` + ``crc32c``), as the zarr v3 sharding specification defines it.
Going through zarr-python for a 200-row read costs about 2 ms of event-loop
and codec machinery, 30 times the cost of ``np.load`` on a small file; for
this fixed layout a read is one index lookup and one ``pread``. Arrays in any
other layout (a user who rewrote a part with compression, say) are read by
zarr itself: ``parse_layout`` returns None for them.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from featstore.errors import CorruptStoreError

_MISSING = np.uint64(2**64 - 1)
_DTYPES = {"float16": "<f2", "float32": "<f4", "float64": "<f8"}


@dataclass(frozen=True)
class ShardLayout:
    """The facts needed to find rows in a single-shard, uncompressed 2-D array."""

    rows: int
    dim: int
    dtype: np.dtype
    chunk_rows: int
    shard_key: str  # relative to the array, e.g. "c/0/0"
    index_crc: bool
    fill_value: float

    @property
    def n_chunks(self) -> int:
        return math.ceil(self.rows / self.chunk_rows) if self.rows else 0

    @property
    def chunk_nbytes(self) -> int:
        return self.chunk_rows * self.dim * self.dtype.itemsize

    @property
    def index_nbytes(self) -> int:
        return self.n_chunks * 16 + (4 if self.index_crc else 0)


def parse_layout(meta: dict[str, Any]) -> ShardLayout | None:
    """Recognise the store's layout in an array's ``zarr.json``; None for anything else."""
    try:
        if meta.get("zarr_format") != 3 or meta.get("node_type") != "array":
            return None
        shape = meta["shape"]
        dtype = _DTYPES.get(meta["data_type"])
        if len(shape) != 2 or dtype is None or meta.get("storage_transformers"):
            return None
        grid = meta["chunk_grid"]["configuration"]["chunk_shape"]
        if grid[0] < shape[0] or grid[1] != shape[1]:
            return None  # more than one shard
        keys = meta["chunk_key_encoding"]
        if keys["name"] != "default":
            return None
        sep = keys.get("configuration", {}).get("separator", "/")
        (codec,) = meta["codecs"]
        if codec["name"] != "sharding_indexed":
            return None
        conf = codec["configuration"]
        inner = conf["chunk_shape"]
        (inner_codec,) = conf["codecs"]
        if (
            inner_codec["name"] != "bytes"
            or inner_codec.get("configuration", {}).get("endian", "little") != "little"
        ):
            return None
        index_codecs = [c["name"] for c in conf["index_codecs"]]
        if index_codecs not in (["bytes"], ["bytes", "crc32c"]):
            return None
        if conf.get("index_location", "end") != "end" or inner[1] != shape[1]:
            return None
        return ShardLayout(
            rows=int(shape[0]),
            dim=int(shape[1]),
            dtype=np.dtype(dtype),
            chunk_rows=int(inner[0]),
            shard_key=sep.join(["c", "0", "0"]),
            index_crc=index_codecs[-1] == "crc32c",
            fill_value=float(meta.get("fill_value") or 0.0),
        )
    except (KeyError, TypeError, ValueError):
        return None


def parse_index(raw: bytes, layout: ShardLayout, *, where: str) -> np.ndarray:
    """Decode a shard index into ``[n_chunks, 2]`` (offset, nbytes), checking its crc32c."""
    if len(raw) != layout.index_nbytes:
        raise CorruptStoreError(
            f"{where}: shard index has {len(raw)} bytes, expected {layout.index_nbytes}"
        )
    body = raw[: layout.n_chunks * 16]
    if layout.index_crc:
        import crc32c

        stored = int.from_bytes(raw[-4:], "little")
        if crc32c.crc32c(body) != stored:
            raise CorruptStoreError(f"{where}: shard index checksum mismatch")
    return np.frombuffer(body, dtype="<u8").reshape(layout.n_chunks, 2)


class ShardReader:
    """Reads row ranges of one array given its layout, index and a byte source."""

    def __init__(self, objects: Any, array_key: str, layout: ShardLayout) -> None:
        self.objects = objects
        self.layout = layout
        self.key = f"{array_key}/{layout.shard_key}"
        self.where = array_key
        size = objects.size(self.key)
        raw = objects.get_range(self.key, size - layout.index_nbytes, size)
        self.index = parse_index(raw, layout, where=array_key)
        if layout.n_chunks and np.any(
            (self.index[:, 0] != _MISSING) & (self.index[:, 1] != layout.chunk_nbytes)
        ):
            raise CorruptStoreError(f"{array_key}: inner chunk of unexpected size (compressed?)")

    def prefetch(self, start: int, stop: int) -> None:
        """Hint that rows ``[start, stop)`` are about to be read (in pieces)."""
        lay = self.layout
        if stop <= start or not lay.n_chunks:
            return
        first, last = start // lay.chunk_rows, (stop - 1) // lay.chunk_rows
        offsets = self.index[first : last + 1, 0]
        valid = offsets[offsets != _MISSING]
        if len(valid):
            lo = int(valid.min())
            hi = int(valid.max()) + lay.chunk_nbytes
            self.objects.prefetch(self.key, lo, hi)

    def read(self, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """Rows ``[start, stop)`` as ``[stop - start, dim]`` in the array's dtype."""
        lay = self.layout
        if not 0 <= start <= stop <= lay.rows:
            raise CorruptStoreError(f"{self.where}: rows {start}:{stop} outside 0:{lay.rows}")
        n = stop - start
        if out is None:
            out = np.empty((n, lay.dim), dtype=lay.dtype)
        if n == 0:
            return out
        row_bytes = lay.dim * lay.dtype.itemsize
        flat = out.reshape(-1).view(np.uint8)
        first, last = start // lay.chunk_rows, (stop - 1) // lay.chunk_rows
        c = first
        while c <= last:
            # Merge consecutive chunks that sit back to back in the shard into one read.
            c_end = c
            while (
                c_end < last
                and self.index[c, 0] != _MISSING
                and self.index[c_end + 1, 0] == self.index[c_end, 0] + self.index[c_end, 1]
            ):
                c_end += 1
            lo = max(start, c * lay.chunk_rows)
            hi = min(stop, (c_end + 1) * lay.chunk_rows)
            dst = flat[(lo - start) * row_bytes : (hi - start) * row_bytes]
            if self.index[c, 0] == _MISSING:
                out[lo - start : hi - start] = lay.fill_value
            else:
                offset = int(self.index[c, 0]) + (lo - c * lay.chunk_rows) * row_bytes
                _readinto(self.objects, self.key, offset, dst)
            c = c_end + 1
        return out


def _readinto(objects: Any, key: str, offset: int, dst: np.ndarray) -> None:
    reader = getattr(objects, "readinto", None)
    if reader is not None:
        reader(key, offset, memoryview(dst))
    else:  # pragma: no cover - every engine here has readinto
        dst[:] = np.frombuffer(objects.get_range(key, offset, offset + len(dst)), dtype=np.uint8)


def load_layout(objects: Any, array_key: str) -> ShardLayout | None:
    """Read an array's ``zarr.json`` and recognise the layout."""
    try:
        meta = json.loads(objects.get(f"{array_key}/zarr.json"))
    except FileNotFoundError:
        return None
    return parse_layout(meta)


class ShardBuffer:
    """Rows of one layer of a part, laid out in memory as the shard they become.

    Rows are copied (and cast) straight into place as videos arrive; ``finish``
    pads the last inner chunk with zeros (the fill value) and appends the index
    of ``(offset, nbytes)`` pairs and its crc32c, as ``parse_layout`` expects.
    One copy of the data, no per-chunk codec calls, and the buffer is reused
    for the writer's next part (no page faults after the first).
    """

    def __init__(self, *, capacity_rows: int, dim: int, dtype: np.dtype, chunk_rows: int) -> None:
        self.dim, self.dtype, self.chunk_rows = dim, np.dtype(dtype), chunk_rows
        self.capacity_chunks = max(1, math.ceil(capacity_rows / chunk_rows))
        self.chunk_nbytes = chunk_rows * dim * self.dtype.itemsize
        data_bytes = self.capacity_chunks * self.chunk_nbytes
        self._bytes = np.empty(data_bytes + self.capacity_chunks * 16 + 4, dtype=np.uint8)
        self._rows = self._bytes[:data_bytes].view(self.dtype).reshape(-1, dim)

    @property
    def capacity_rows(self) -> int:
        return len(self._rows)

    def rows(self, start: int, stop: int) -> np.ndarray:
        """The writable ``[stop - start, dim]`` view of rows ``[start, stop)``."""
        return self._rows[start:stop]

    def finish(self, n_rows: int) -> memoryview:
        """The shard's bytes for the first ``n_rows`` rows (valid until the next fill)."""
        import crc32c

        n_chunks = math.ceil(n_rows / self.chunk_rows)
        self._rows[n_rows : n_chunks * self.chunk_rows] = 0
        data_bytes = n_chunks * self.chunk_nbytes
        index = (
            self._bytes[data_bytes : data_bytes + n_chunks * 16].view("<u8").reshape(n_chunks, 2)
        )
        index[:, 0] = np.arange(n_chunks, dtype=np.uint64) * np.uint64(self.chunk_nbytes)
        index[:, 1] = self.chunk_nbytes
        crc = crc32c.crc32c(memoryview(index).cast("B"))
        end = data_bytes + n_chunks * 16
        self._bytes[end : end + 4] = np.frombuffer(crc.to_bytes(4, "little"), dtype=np.uint8)
        return memoryview(self._bytes[: end + 4])

    def checksum(self, n_rows: int) -> str:
        """crc32c of the C-ordered bytes of the first ``n_rows`` rows."""
        import crc32c

        return f"crc32c:{crc32c.crc32c(memoryview(self._rows[:n_rows]).cast('B')):08x}"


def nonfinite_rows(rows: np.ndarray) -> np.ndarray:
    """Indices of rows holding NaN or inf. float16 is tested on its exponent bits:
    numpy's float16 ``isfinite`` is emulated and ten times slower."""
    if rows.dtype == np.float16:
        bad = (rows.view(np.uint16) & 0x7C00) == 0x7C00
    else:
        bad = ~np.isfinite(rows)
    if not bad.any():
        return np.empty(0, dtype=np.int64)
    return np.flatnonzero(bad.any(axis=1))
