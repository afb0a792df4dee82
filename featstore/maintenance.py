"""Store maintenance: ``info``, ``verify``, ``gc`` and ``compact``.

All four work through the store's own reader and writer, so they follow the
same rules: a part is visible only through its commit record, records are
written last and removed first.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from featstore import layout
from featstore.commits import CommitRecord
from featstore.errors import CorruptStoreError
from featstore.layout import Layer, layer_array_name, layer_key, normalize_layer
from featstore.store import CHUNK_ROWS, DEFAULT_PART_BYTES, EncoderInfo, FeatureStore

log = logging.getLogger(__name__)


# ------------------------------------------------------------------ info


@dataclass(frozen=True)
class LayerSummary:
    layer: str
    dim: int
    videos: int
    rows: int


@dataclass(frozen=True)
class EncoderSummary:
    name: str
    info: EncoderInfo
    layers: tuple[LayerSummary, ...]
    videos: int  # committed for at least one layer
    parts: int
    uncommitted_parts: int
    files: int
    bytes: int
    failures: int
    unresolved_failures: int


@dataclass(frozen=True)
class DatasetSummary:
    name: str
    manifest_rows: int | None
    encoders: tuple[EncoderSummary, ...]


@dataclass(frozen=True)
class StoreSummary:
    url: str
    datasets: tuple[DatasetSummary, ...]
    files: int
    bytes: int


def summarize(store: FeatureStore, dataset: str | None = None) -> StoreSummary:
    """Datasets, encoders, layers, videos, rows, bytes and failures of a store."""
    store.refresh()
    datasets = []
    for ds in [dataset] if dataset else store.datasets():
        manifest_rows = None
        group = store._get_json(f"{layout.manifest_path(ds)}/zarr.json")
        if group is not None:
            manifest_rows = int(group["attributes"]["featstore"]["n_rows"])
        encoders = [_summarize_encoder(store, ds, enc) for enc in store.encoders(ds)]
        datasets.append(DatasetSummary(ds, manifest_rows, tuple(encoders)))
    files, nbytes = store.objects.walk_size(dataset or "")
    return StoreSummary(store.url, tuple(datasets), files, nbytes)


def _summarize_encoder(store: FeatureStore, dataset: str, encoder: str) -> EncoderSummary:
    state = store._state(dataset, encoder)
    layers = []
    videos: set[str] = set()
    for x in state.layers():
        idx = state.index(x)
        videos.update(idx.video_ids())
        layers.append(LayerSummary(layer_key(x), state.info.dim(x), len(idx), idx.rows()))
    committed = {c.part_id for c in state.commits}
    on_disk = _part_dirs(store, dataset, encoder)
    failures = store.failures(dataset, encoder)
    files, nbytes = store.objects.walk_size(layout.encoder_path(dataset, encoder))
    return EncoderSummary(
        name=encoder,
        info=state.info,
        layers=tuple(layers),
        videos=len(videos),
        parts=len(committed),
        uncommitted_parts=len(set(on_disk) - committed),
        files=files,
        bytes=nbytes,
        failures=int(failures["video_id"].nunique()),
        unresolved_failures=int(failures.loc[~failures["resolved"], "video_id"].nunique()),
    )


def _part_dirs(store: FeatureStore, dataset: str, encoder: str) -> list[str]:
    return [
        n
        for n in store.objects.list_dir(layout.parts_path(dataset, encoder))
        if layout.is_part_id(n)
    ]


def _encoder_pairs(
    store: FeatureStore, dataset: str | None, encoder: str | None
) -> Iterator[tuple[str, str]]:
    for ds in [dataset] if dataset else store.datasets():
        for enc in [encoder] if encoder else store.encoders(ds):
            yield ds, enc


# ---------------------------------------------------------------- verify


@dataclass(frozen=True)
class VerifyReport:
    parts: int
    rows: int
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(
    store: FeatureStore,
    dataset: str | None = None,
    encoder: str | None = None,
    *,
    checksums: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> VerifyReport:
    """Check every committed part against its commit record (shapes, index, checksums)."""
    import crc32c
    import zarr

    store.refresh()
    problems: list[str] = []
    parts = rows = 0
    todo = [
        (ds, enc, c)
        for ds, enc in _encoder_pairs(store, dataset, encoder)
        for c in store.commits(ds, enc)
    ]
    for i, (ds, enc, commit) in enumerate(todo):
        where = f"{ds}/{enc}/parts/{commit.part_id}"
        base = layout.part_path(ds, enc, commit.part_id)
        parts += 1
        rows += commit.rows
        try:
            group = store._get_json(f"{base}/zarr.json")
        except CorruptStoreError as exc:
            problems.append(f"{where}: {exc}")
            continue
        if group is None:
            problems.append(f"{where}: committed but its data is missing")
            continue
        meta = group.get("attributes", {}).get("featstore", {})
        ids = list(meta.get("video_id", []))
        starts = np.asarray(meta.get("row_start", []), dtype=np.int64)
        ns = np.asarray(meta.get("n_frames", []), dtype=np.int64)
        if (
            ids != list(commit.video_ids)
            or not np.array_equal(starts, commit.row_start)
            or not np.array_equal(ns, commit.n_frames)
        ):
            problems.append(f"{where}: video index differs from the commit record")
        if len(ns) and (starts[0] != 0 or not np.array_equal(starts[1:], np.cumsum(ns)[:-1])):
            problems.append(f"{where}: video rows are not contiguous")
        for key, rec in commit.layers.items():
            name = layer_array_name(normalize_layer(key))
            try:
                arr = zarr.open_array(store._zstore, path=f"{base}/{name}", mode="r")
            except (FileNotFoundError, zarr.errors.ArrayNotFoundError):
                problems.append(f"{where}/{name}: missing")
                continue
            if arr.shape != (commit.rows, rec.dim) or str(arr.dtype) != commit.dtype:
                problems.append(
                    f"{where}/{name}: shape {arr.shape} {arr.dtype}, record says "
                    f"({commit.rows}, {rec.dim}) {commit.dtype}"
                )
                continue
            if checksums:
                try:
                    data = store._read_rows(ds, enc, commit.part_id, key, 0, commit.rows)
                except (CorruptStoreError, OSError) as exc:
                    problems.append(f"{where}/{name}: unreadable ({exc})")
                    continue
                got = (
                    f"crc32c:{crc32c.crc32c(memoryview(np.ascontiguousarray(data)).cast('B')):08x}"
                )
                if got != rec.checksum:
                    problems.append(f"{where}/{name}: checksum {got}, record says {rec.checksum}")
        if progress is not None:
            progress(i + 1, len(todo))
    return VerifyReport(parts, rows, tuple(problems))


# -------------------------------------------------------------------- gc


@dataclass(frozen=True)
class GcReport:
    removed_uncommitted: tuple[str, ...] = ()
    removed_superseded: tuple[str, ...] = ()
    removed_broken_commits: tuple[str, ...] = ()
    kept_recent: int = 0  # uncommitted parts younger than the grace period
    bytes_freed: int = 0
    dry_run: bool = False


def gc(
    store: FeatureStore,
    dataset: str | None = None,
    encoder: str | None = None,
    *,
    older_than_s: float = 3600.0,
    dry_run: bool = False,
) -> GcReport:
    """Remove parts no reader can see: uncommitted debris and fully superseded parts.

    A part without a commit record may belong to a writer still at work, so
    only parts created more than ``older_than_s`` seconds ago are removed
    (default one hour; use 0 only when no writer is running). A superseded
    part (every row of it replaced by a newer commit) loses its commit record
    first, then its data.
    """
    store._check_writable()
    store.refresh()
    now = time.time_ns()
    limit_ns = int(older_than_s * 1e9)
    uncommitted, superseded, broken = [], [], []
    kept = 0
    freed = 0
    for ds, enc in _encoder_pairs(store, dataset, encoder):
        commits = store.commits(ds, enc)
        committed = {c.part_id for c in commits}
        # Commit records that do not parse were cut by a crash (or are being written now).
        base = layout.commits_path(ds, enc)
        for name in store.objects.list_dir(base):
            pid = name[:-5]
            if not layout.is_part_id(pid) or pid in committed:
                continue
            if now - layout.part_created_ns(pid) >= limit_ns:
                broken.append(f"{ds}/{enc}/{pid}")
                if not dry_run:
                    store.objects.delete(f"{base}/{name}")
        for pid in _part_dirs(store, ds, enc):
            if pid in committed:
                continue
            if now - layout.part_created_ns(pid) < limit_ns:
                kept += 1
                continue
            path = layout.part_path(ds, enc, pid)
            freed += store.objects.walk_size(path)[1]
            uncommitted.append(f"{ds}/{enc}/{pid}")
            if not dry_run:
                store.objects.delete_tree(path)
        state = store._state(ds, enc)
        winners: set[str] = set()
        for x in state.layers():
            winners |= state.index(x).winning_parts()
        for c in commits:
            if c.part_id in winners or now - c.committed_ns < limit_ns:
                continue
            path = layout.part_path(ds, enc, c.part_id)
            freed += store.objects.walk_size(path)[1]
            superseded.append(f"{ds}/{enc}/{c.part_id}")
            if not dry_run:
                store.objects.delete(layout.commit_key(ds, enc, c.part_id))
                store.objects.delete_tree(path)
    store.refresh()
    return GcReport(tuple(uncommitted), tuple(superseded), tuple(broken), kept, freed, dry_run)


# --------------------------------------------------------------- compact


@dataclass(frozen=True)
class CompactReport:
    parts_before: int
    parts_after: int
    merged: tuple[str, ...] = field(default_factory=tuple)
    written: tuple[str, ...] = field(default_factory=tuple)
    rows: int = 0


def compact(
    store: FeatureStore,
    dataset: str,
    encoder: str,
    *,
    target_part_bytes: int = DEFAULT_PART_BYTES,
    small_fraction: float = 0.5,
    progress: Callable[[int, int], None] | None = None,
) -> CompactReport:
    """Merge small parts (and parts mostly superseded) into few large ones.

    New parts are committed before the old commit records are removed, and
    rows keep their original versions, so readers never see a gap and a
    concurrent re-extraction still wins over compacted copies of older rows.
    """
    store._check_writable()
    store.refresh()
    state = store._state(dataset, encoder)
    commits = list(state.commits)
    winners = {layer_key(x): state.index(x) for x in state.layers()}
    groups: dict[tuple[str, ...], list[CommitRecord]] = {}
    for c in commits:
        groups.setdefault(tuple(sorted(c.layers)), []).append(c)
    merged: list[str] = []
    written: list[str] = []
    rows_copied = 0
    itemsize = np.dtype(state.info.dtype).itemsize
    for keys, group in groups.items():
        row_bytes = max(group[0].layers[k].dim for k in keys) * itemsize
        candidates = []
        for c in group:
            live = _live_mask(c, winners, keys)
            small = c.rows * row_bytes < small_fraction * target_part_bytes
            if small or live.mean() < 0.5:
                candidates.append((c, live))
        if len(candidates) < 2:
            continue
        layers = [normalize_layer(k) for k in keys]
        info = dataclasses.replace(
            state.info, layer_dims={x: group[0].layers[layer_key(x)].dim for x in layers}
        )
        writer = store.writer(dataset, info, layers=layers, target_part_bytes=target_part_bytes)
        writer._compacted_from = tuple(c.part_id for c, _ in candidates)
        for i, (c, live) in enumerate(candidates):
            blocks = {
                x: store._read_rows(dataset, encoder, c.part_id, x, 0, c.rows) for x in layers
            }
            for j in np.flatnonzero(live).tolist():
                vid = c.video_ids[j]
                s, n = int(c.row_start[j]), int(c.n_frames[j])
                writer._version_override[vid] = int(c.versions[j])
                writer.add(vid, {x: blocks[x][s : s + n] for x in layers})
                rows_copied += n
            if progress is not None:
                progress(i + 1, len(candidates))
        writer.close()
        written.extend(writer.committed_parts)
        # The copies are committed: now the originals can go, record first.
        for c, _ in candidates:
            store.objects.delete(layout.commit_key(dataset, encoder, c.part_id))
        for c, _ in candidates:
            store.objects.delete_tree(layout.part_path(dataset, encoder, c.part_id))
            merged.append(c.part_id)
    store.refresh()
    after = len(store.commits(dataset, encoder))
    return CompactReport(len(commits), after, tuple(merged), tuple(written), rows_copied)


def _live_mask(
    commit: CommitRecord, winners: dict[str, object], keys: tuple[str, ...]
) -> np.ndarray:
    """Which videos of ``commit`` are the winning copy in at least one of its layers."""
    live = np.zeros(len(commit.video_ids), dtype=bool)
    for k in keys:
        index = winners[k]
        for j, vid in enumerate(commit.video_ids):
            if not live[j]:
                loc = index.locate(vid)  # type: ignore[attr-defined]
                live[j] = loc is not None and loc.part_id == commit.part_id
    return live


def estimate_bytes(n_rows: int, dims: dict[Layer, int], dtype: str = "float16") -> int:
    """Bytes a set of layers takes for ``n_rows`` frames (padding to inner chunks ignored)."""
    return int(n_rows * sum(dims.values()) * np.dtype(dtype).itemsize)


__all__ = [
    "CHUNK_ROWS",
    "CompactReport",
    "GcReport",
    "StoreSummary",
    "VerifyReport",
    "compact",
    "estimate_bytes",
    "gc",
    "summarize",
    "verify",
]
