"""Store maintenance: ``info``, ``verify``, ``gc`` and ``compact``.

All four work through the store's public reader and writer and the storage
backend's public interface, so they follow the same rules: a part is visible
only through its commit record, records are written last and removed first,
and nothing younger than gc's floor (``layout.GC_FLOOR_S``) is ever removed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from featstore import layout
from featstore.commits import CommitRecord
from featstore.errors import CorruptStoreError, ManifestError, StoreError
from featstore.layout import Layer, layer_array_name, layer_key, normalize_layer
from featstore.store import (
    CHUNK_ROWS,
    DEFAULT_PART_BYTES,
    EncoderInfo,
    EncoderSnapshot,
    FeatureStore,
)

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
    """Datasets, encoders, layers, videos, rows, bytes and failures of a store.

    Unreadable metadata (torn by older featstore code) is skipped with a warning;
    ``verify`` reports it.
    """
    store.refresh()
    datasets = []
    for ds in [dataset] if dataset else store.datasets():
        try:
            manifest_rows = store.manifest_rows(ds)
        except CorruptStoreError as exc:
            log.warning("%s", exc)
            manifest_rows = None
        encoders = []
        for enc in store.encoders(ds):
            try:
                encoders.append(_summarize_encoder(store, ds, enc))
            except CorruptStoreError as exc:
                log.warning("skipping %s/%s: %s", ds, enc, exc)
        datasets.append(DatasetSummary(ds, manifest_rows, tuple(encoders)))
    files, nbytes = store.backend.walk_size(dataset or "")
    return StoreSummary(store.url, tuple(datasets), files, nbytes)


def _summarize_encoder(store: FeatureStore, dataset: str, encoder: str) -> EncoderSummary:
    on_disk = _part_dirs(store, dataset, encoder)  # before the commits: see gc
    state = store.snapshot(dataset, encoder)
    layers = []
    videos: set[str] = set()
    for x in state.layers():
        idx = state.index(x)
        videos.update(idx.video_ids())
        layers.append(LayerSummary(layer_key(x), state.info.dim(x), len(idx), idx.rows()))
    committed = {c.part_id for c in state.commits}
    failures = store.failures(dataset, encoder)
    files, nbytes = store.backend.walk_size(layout.encoder_path(dataset, encoder))
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
        for n in store.backend.list_dir(layout.parts_path(dataset, encoder))
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
    """Check every committed part against its commit record (shapes, index, checksums),
    and that every metadata object of the store parses."""
    import crc32c

    store.refresh()
    problems = _metadata_problems(store, dataset, encoder)
    parts = rows = 0
    todo = []
    for ds, enc in _encoder_pairs(store, dataset, encoder):
        try:
            todo += [(ds, enc, c) for c in store.commits(ds, enc)]
        except CorruptStoreError as exc:
            problems.append(f"{ds}/{enc}: {exc}")
    backend = store.backend
    for i, (ds, enc, commit) in enumerate(todo):
        where = f"{ds}/{enc}/parts/{commit.part_id}"
        base = layout.part_path(ds, enc, commit.part_id)
        parts += 1
        rows += commit.rows
        try:
            group = backend.get_json(f"{base}/zarr.json")
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
                found = backend.array_shape(f"{base}/{name}")
            except (CorruptStoreError, ValueError) as exc:
                problems.append(f"{where}/{name}: unreadable metadata ({exc})")
                continue
            if found is None:
                problems.append(f"{where}/{name}: missing")
                continue
            shape, dtype = found
            if shape != (commit.rows, rec.dim) or str(dtype) != commit.dtype:
                problems.append(
                    f"{where}/{name}: shape {shape} {dtype}, record says "
                    f"({commit.rows}, {rec.dim}) {commit.dtype}"
                )
                continue
            if checksums:
                try:
                    data = store.read_rows(ds, enc, commit.part_id, key, 0, commit.rows)
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


def _metadata_problems(store: FeatureStore, dataset: str | None, encoder: str | None) -> list[str]:
    """Metadata objects that do not parse (torn by older featstore code, or damaged),
    manifests whose columns are missing, and commits written by a conflicting encoder."""
    backend = store.backend
    problems = []

    def check(key: str, what: str) -> dict | None:
        try:
            return backend.get_json(key)
        except CorruptStoreError as exc:
            problems.append(f"{what}: {exc}")
            return None

    if dataset is None:
        check("zarr.json", "store root")
    for ds in [dataset] if dataset else store.datasets():
        check(f"{ds}/zarr.json", f"dataset {ds}")
        if encoder is None:
            try:
                store.manifest(ds)
            except CorruptStoreError as exc:
                problems.append(f"{ds}/manifest: {exc}")
            except ManifestError:
                pass  # no manifest imported: nothing to check
        for enc in [encoder] if encoder else store.encoders(ds):
            check(f"{layout.encoder_path(ds, enc)}/zarr.json", f"{ds}/{enc} encoder attributes")
            for kind, base in (
                ("commit", layout.commits_path(ds, enc)),
                ("failure", layout.failures_path(ds, enc)),
            ):
                for name in backend.list_dir(base):
                    if not name.endswith(".json"):
                        continue
                    try:
                        raw = backend.get(f"{base}/{name}")
                    except FileNotFoundError:
                        continue  # removed since the listing
                    try:
                        if kind == "commit":
                            CommitRecord.from_json(raw)
                        else:
                            json.loads(raw)["failures"]
                    except (CorruptStoreError, ValueError, KeyError, TypeError) as exc:
                        problems.append(
                            f"{base}/{name}: unreadable {kind} record ({exc}); "
                            "gc removes it once it is older than its floor"
                        )
            try:
                state = store.snapshot(ds, enc)
            except CorruptStoreError:
                continue  # reported by verify's caller
            problems += _encoder_conflicts(state)
    return problems


def _encoder_conflicts(state: EncoderSnapshot) -> list[str]:
    out = []
    for c in state.commits:
        if not c.encoder:
            continue
        try:
            theirs = EncoderInfo.from_attrs(c.encoder)
        except (StoreError, TypeError, ValueError) as exc:
            out.append(f"{state.dataset}/{state.encoder} commit {c.part_id}: encoder ({exc})")
            continue
        problems = theirs.conflicts(state.info)
        if problems:
            out.append(
                f"{state.dataset}/{state.encoder} commit {c.part_id} was written by an encoder "
                f"that differs from the stored one: {'; '.join(problems)}"
            )
    return out


# -------------------------------------------------------------------- gc


@dataclass(frozen=True)
class GcReport:
    removed_uncommitted: tuple[str, ...] = ()
    removed_superseded: tuple[str, ...] = ()
    removed_broken_commits: tuple[str, ...] = ()
    kept_recent: int = 0  # uncommitted parts younger than the limit (or gc's floor)
    bytes_freed: int = 0
    dry_run: bool = False
    removed_broken_failures: tuple[str, ...] = ()
    removed_temporaries: tuple[str, ...] = ()
    removed_manifest_versions: tuple[str, ...] = ()
    # commits that landed while gc removed their part (a writer stalled past the floor):
    # withdrawn, so their rows, which are gone, do not look committed
    withdrawn_commits: tuple[str, ...] = ()


def gc(
    store: FeatureStore,
    dataset: str | None = None,
    encoder: str | None = None,
    *,
    older_than_s: float = 3600.0,
    dry_run: bool = False,
) -> GcReport:
    """Remove what no reader can see: uncommitted parts, fully superseded parts,
    unreadable records, temporary files of crashed writers, old manifest versions.

    Only objects older than ``older_than_s`` (default one hour) and older than
    gc's floor (``layout.gc_floor_s()``, 10 minutes) are removed: a part without
    a commit record may belong to a writer still at work. Part folders are listed
    before the commit records are read, so a part committed meanwhile is seen as
    committed; a part with a commit record is never debris. A superseded part
    (every row of it replaced by a newer commit) loses its commit record first,
    then its data.
    """
    store.check_writable()
    limit_ns = int(max(older_than_s, layout.gc_floor_s()) * 1e9)
    out: dict[str, list[str]] = {k: [] for k in _GC_LISTS}
    totals = {"kept": 0, "freed": 0}
    backend = store.backend
    if dataset is None:
        out["temporaries"] += _sweep(backend, "", limit_ns, dry_run)
    for ds in [dataset] if dataset else store.datasets():
        for name in store.prune_manifest(ds, older_than_s=limit_ns / 1e9, dry_run=dry_run):
            out["manifest"].append(f"{ds}/manifest/{name}")
        if encoder is None:
            for prefix in (ds, layout.manifest_path(ds)):
                out["temporaries"] += _sweep(backend, prefix, limit_ns, dry_run)
        for enc in [encoder] if encoder else store.encoders(ds):
            _gc_encoder(store, ds, enc, limit_ns, dry_run, out, totals)
    store.refresh()
    return GcReport(
        removed_uncommitted=tuple(out["uncommitted"]),
        removed_superseded=tuple(out["superseded"]),
        removed_broken_commits=tuple(out["broken"]),
        kept_recent=totals["kept"],
        bytes_freed=totals["freed"],
        dry_run=dry_run,
        removed_broken_failures=tuple(out["failures"]),
        removed_temporaries=tuple(out["temporaries"]),
        removed_manifest_versions=tuple(out["manifest"]),
        withdrawn_commits=tuple(out["withdrawn"]),
    )


_GC_LISTS = (
    "uncommitted",
    "superseded",
    "broken",
    "failures",
    "temporaries",
    "manifest",
    "withdrawn",
)


def _gc_encoder(
    store: FeatureStore,
    ds: str,
    enc: str,
    limit_ns: int,
    dry_run: bool,
    out: dict[str, list[str]],
    totals: dict[str, int],
) -> None:
    backend = store.backend
    commits_base = layout.commits_path(ds, enc)

    def old(created_ns: int) -> bool:
        return time.time_ns() - created_ns >= limit_ns

    # 1. Part folders first, then the commit records: a part committed in between is
    #    seen as committed (the other order deleted committed parts: issue 13.4).
    on_disk = _part_dirs(store, ds, enc)
    with_record = {
        n[:-5]
        for n in backend.list_dir(commits_base)
        if n.endswith(".json") and layout.is_part_id(n[:-5])
    }
    store.refresh()
    try:
        state = store.snapshot(ds, enc)
    except CorruptStoreError as exc:
        log.warning("gc skips %s/%s: %s", ds, enc, exc)
        return
    readable = {c.part_id for c in state.commits}

    # 2. Records that do not parse (torn by older featstore code): once old enough,
    #    the record goes and its part becomes debris.
    for pid in sorted(with_record - readable):
        key = layout.commit_key(ds, enc, pid)
        if not old(layout.part_created_ns(pid)):
            continue
        try:
            CommitRecord.from_json(backend.get(key))
            continue  # readable now: it was being written
        except FileNotFoundError:
            with_record.discard(pid)
            continue
        except CorruptStoreError:
            pass
        out["broken"].append(f"{ds}/{enc}/{pid}")
        with_record.discard(pid)
        if not dry_run:
            backend.delete(key)

    # 3. Debris: part folders without a commit record, older than the limit.
    for pid in on_disk:
        if pid in with_record:
            continue  # a part with a commit record is never debris
        if not old(layout.part_created_ns(pid)):
            totals["kept"] += 1
            continue
        key = layout.commit_key(ds, enc, pid)
        if backend.exists(key):
            continue  # committed since the listing
        path = layout.part_path(ds, enc, pid)
        totals["freed"] += backend.walk_size(path)[1]
        out["uncommitted"].append(f"{ds}/{enc}/{pid}")
        if dry_run:
            continue
        backend.delete_tree(path)
        if backend.exists(key):
            # Its writer committed while we deleted (it outlived the floor). The rows
            # are gone, so the commit must go too: resume then extracts them again.
            log.error("withdrawing commit %s/%s/%s: gc removed its part meanwhile", ds, enc, pid)
            backend.delete(key)
            out["withdrawn"].append(f"{ds}/{enc}/{pid}")

    # 4. Superseded parts: every row replaced by a newer commit.
    winners: set[str] = set()
    for x in state.layers():
        winners |= state.index(x).winning_parts()
    for c in state.commits:
        if c.part_id in winners or not old(c.committed_ns):
            continue
        path = layout.part_path(ds, enc, c.part_id)
        totals["freed"] += backend.walk_size(path)[1]
        out["superseded"].append(f"{ds}/{enc}/{c.part_id}")
        if not dry_run:
            backend.delete(layout.commit_key(ds, enc, c.part_id))
            backend.delete_tree(path)

    # 5. Failure records that do not parse, and temporary files of crashed writers.
    failures_base = layout.failures_path(ds, enc)
    for name in backend.list_dir(failures_base):
        pid = name[:-5]
        if not name.endswith(".json") or not layout.is_part_id(pid):
            continue
        if not old(layout.part_created_ns(pid)):
            continue
        try:
            doc = backend.get_json(f"{failures_base}/{name}")
            if doc is None or isinstance(doc.get("failures"), list):
                continue
        except CorruptStoreError:
            pass
        out["failures"].append(f"{ds}/{enc}/{pid}")
        if not dry_run:
            backend.delete(f"{failures_base}/{name}")
    for prefix in (
        layout.encoder_path(ds, enc),
        layout.parts_path(ds, enc),
        commits_base,
        failures_base,
    ):
        out["temporaries"] += _sweep(backend, prefix, limit_ns, dry_run)


def _sweep(backend: Any, prefix: str, limit_ns: int, dry_run: bool) -> list[str]:
    keys = backend.stale_temporaries(prefix, limit_ns)
    if not dry_run:
        for key in keys:
            backend.delete(key)
    return keys


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
    store.check_writable()
    store.refresh()
    state = store.snapshot(dataset, encoder)
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
        writer = store.writer(
            dataset,
            info,
            layers=layers,
            target_part_bytes=target_part_bytes,
            compacted_from=[c.part_id for c, _ in candidates],
        )
        for i, (c, live) in enumerate(candidates):
            blocks = {x: store.read_rows(dataset, encoder, c.part_id, x, 0, c.rows) for x in layers}
            for j in np.flatnonzero(live).tolist():
                s, n = int(c.row_start[j]), int(c.n_frames[j])
                writer.add(
                    c.video_ids[j],
                    {x: blocks[x][s : s + n] for x in layers},
                    version=int(c.versions[j]),  # a copy never beats a newer extraction
                )
                rows_copied += n
            if progress is not None:
                progress(i + 1, len(candidates))
        writer.close()
        written.extend(writer.committed_parts)
        # The copies are committed: now the originals can go, record first.
        for c, _ in candidates:
            store.backend.delete(layout.commit_key(dataset, encoder, c.part_id))
        for c, _ in candidates:
            store.backend.delete_tree(layout.part_path(dataset, encoder, c.part_id))
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
