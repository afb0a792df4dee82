"""The Zarr v3 feature store: immutable parts, commit records written last.

All storage I/O goes through the backend (featstore.backend, the only module
that imports zarr). Layout (DESIGN.md "The store"):

```
<dataset>/manifest/zarr.json             pointer to the current version (featstore.manifest_store)
<dataset>/manifest/<version>/<column>    1-D column arrays (old stores: manifest/<column>)
<dataset>/<encoder>/                     attrs: EncoderInfo (+ package version), written once
  parts/<part_id>/                       group attrs: video_id, row_start, n_frames
  parts/<part_id>/layer_<NN>             [rows, dim] float16, inner chunks of 512 rows, one shard
  _commits/<part_id>.json                written LAST; a part without one does not exist
  _failures/<part_id>.json               videos that failed in that writer task
```

Every metadata object is written atomically (see featstore.backend). The
commit records are the source of truth for which layers exist and their dims;
the encoder's attributes are written once, by the first writer.

>>> store = open_store("features.zarr", mode="a")  # doctest: +SKIP
>>> info = EncoderInfo(name="wav2vec2", frame_hz=25.0, layer_dims={"last": 3840})  # doctest: +SKIP
>>> with store.writer("av1m", info) as w:  # doctest: +SKIP
...     w.add("id0001/clip", {"last": features})  # [T, 3840]
>>> store.video("av1m", "wav2vec2", "id0001/clip", "last").shape  # doctest: +SKIP
(225, 3840)
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from featstore import __version__, layout, manifest_store
from featstore.backend import Backend, open_backend
from featstore.commits import CommitRecord, LayerIndex, Location, sort_commits
from featstore.encoder_info import EncoderInfo
from featstore.errors import (
    CorruptStoreError,
    EncoderMismatchError,
    StoreError,
    UnknownDatasetError,
    UnknownEncoderError,
    UnknownLayerError,
    UnknownVideoError,
)
from featstore.layout import (
    CHUNK_ROWS,
    DEFAULT_BUFFER_BYTES,
    DEFAULT_PART_BYTES,
    Layer,
    format_layers,
    layer_array_name,
    layer_key,
    layer_sort_key,
    normalize_layer,
)
from featstore.lazy import LayerLayout, load_part_rows
from featstore.shards import ShardReader, load_layout
from featstore.writer import StoreWriter

if TYPE_CHECKING:
    import pandas as pd
    import xarray as xr

log = logging.getLogger(__name__)

STORE_FORMAT = 1
SCAN_BLOCK_BYTES = 8 * 2**20  # iter_videos reads consecutive videos in blocks of this size
_LISTING_ATTEMPTS = 5  # listings of _commits/ while records vanish under a reader


def open_store(
    url: str | os.PathLike[str], mode: str = "r", *, durable: bool = True, **storage_options: Any
) -> FeatureStore:
    """Open a store at a local path or an fsspec URL (``s3://bucket/features.zarr``).

    ``mode="r"`` opens read-only (the store must exist); ``mode="a"`` creates it if missing.
    On local disk every object is fsynced (and its folder) before its commit record
    is written, so a power loss cannot leave a commit pointing at unwritten data;
    ``durable=False`` skips that (scratch stores, tests). Object stores are
    durable per PUT either way.
    """
    if mode not in ("r", "a"):
        raise StoreError(f"mode must be 'r' or 'a', got {mode!r}")
    return FeatureStore(str(url), mode=mode, durable=durable, storage_options=storage_options)


class FeatureStore:
    """Readers, the manifest and writers of one feature store. Safe to share between threads.

    ``backend`` (:class:`featstore.backend.Backend`) does the storage I/O.
    """

    def __init__(
        self, url: str, *, mode: str, durable: bool = True, storage_options: Mapping[str, Any]
    ) -> None:
        self.url = url
        self.mode = mode
        self.read_only = mode == "r"
        self.durable = durable
        self._storage_options = dict(storage_options)
        self.backend: Backend = open_backend(
            url, read_only=self.read_only, durable=durable, storage_options=self._storage_options
        )
        self._lock = threading.RLock()
        self._encoders: dict[tuple[str, str], EncoderSnapshot] = {}
        self._readers: OrderedDict[tuple[str, str, str, str], ShardReader | Any] = OrderedDict()
        self._open_root()

    @property
    def objects(self) -> Backend:
        """The storage backend (the name it had before it also wrote zarr nodes)."""
        return self.backend

    def __repr__(self) -> str:
        return f"FeatureStore({self.url!r}, mode={self.mode!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled into Dask tasks: workers reopen the store from its URL.
        return (_reopen, (self.url, self.mode, self.durable, self._storage_options))

    def _open_root(self) -> None:
        attrs = {"featstore": {"format": STORE_FORMAT}}
        try:
            raw = self.backend.get_json("zarr.json")
        except CorruptStoreError as exc:
            # Torn by a crash of older featstore code (it wrote in place). The root's only
            # fact is the format, which the rest of the store describes too.
            log.warning("%s; %s", exc, "rewriting it" if not self.read_only else "ignoring it")
            if not self.read_only:
                self.backend.write_group("", attrs)
            return
        if raw is None:
            if self.read_only:
                raise StoreError(f"no feature store at {self.url}: zarr.json missing")
            self.backend.write_group("", attrs, exclusive=True)
            return
        fs_attrs = raw.get("attributes", {}).get("featstore")
        if raw.get("zarr_format") != 3 or not fs_attrs:
            raise StoreError(f"{self.url} is a zarr hierarchy but not a featstore store")
        if int(fs_attrs.get("format", 0)) > STORE_FORMAT:
            raise StoreError(
                f"{self.url} has store format {fs_attrs['format']}, newer than this featstore "
                f"({__version__}) understands; upgrade featstore"
            )

    # --------------------------------------------------------------- listing

    def datasets(self) -> list[str]:
        """Names of the datasets in the store."""
        return [
            name
            for name in self.backend.list_dir("")
            if not name.startswith((".", "_"))
            and name != "zarr.json"
            and self.backend.exists(f"{name}/zarr.json")
        ]

    def encoders(self, dataset: str) -> list[str]:
        """Encoders with stored features (committed or not) for ``dataset``."""
        self._check_dataset(dataset)
        out = []
        for name in self.backend.list_dir(layout.dataset_path(dataset)):
            if name in layout.RESERVED or name.startswith((".", "_")) or name == "zarr.json":
                continue
            if self.backend.exists(f"{dataset}/{name}/zarr.json") and not self.backend.exists(
                f"{dataset}/{name}/{layout.REMOVING}"
            ):
                out.append(name)
        return out

    def encoder_info(self, dataset: str, encoder: str) -> EncoderInfo:
        """The encoder's declared facts; layer dims include every committed layer."""
        return self._state(dataset, encoder).info

    def layers(self, dataset: str, encoder: str) -> list[Layer]:
        """Layers with at least one committed video."""
        return self._state(dataset, encoder).layers()

    def video_ids(self, dataset: str, encoder: str, layer: Layer) -> list[str]:
        """Videos with committed features for ``layer``."""
        return self._index(dataset, encoder, layer).video_ids()

    def commits(self, dataset: str, encoder: str) -> list[CommitRecord]:
        """Commit records, oldest first."""
        return list(self._state(dataset, encoder).commits)

    def snapshot(self, dataset: str, encoder: str) -> EncoderSnapshot:
        """The encoder's commits as this store last listed them, with their layer indexes.

        Cached until :meth:`refresh` (or a commit by a writer of this store object), so
        consecutive reads agree with each other.
        """
        return self._state(dataset, encoder)

    def refresh(self) -> None:
        """Forget cached commit listings: the next read sees parts committed since."""
        with self._lock:
            self._encoders.clear()

    # ---------------------------------------------------------------- reads

    def has(
        self, dataset: str, encoder: str, video_id: str, layers: Iterable[Layer] | None = None
    ) -> bool:
        """True when ``video_id`` is committed for every one of ``layers`` (default: all stored)."""
        try:
            state = self._state(dataset, encoder)
        except (UnknownDatasetError, UnknownEncoderError):
            return False
        wanted = state.layers() if layers is None else [normalize_layer(x) for x in layers]
        try:
            return bool(wanted) and all(video_id in state.index(x) for x in wanted)
        except UnknownLayerError:  # a layer nobody has committed yet
            return False

    def committed_videos(self, dataset: str, encoder: str, layers: Iterable[Layer]) -> set[str]:
        """Videos committed for all of ``layers`` (what an extraction can skip on resume)."""
        try:
            state = self._state(dataset, encoder)
        except (UnknownDatasetError, UnknownEncoderError):
            return set()
        try:
            sets = [set(state.index(normalize_layer(x)).video_ids()) for x in layers]
        except UnknownLayerError:  # a layer nobody has committed yet: nothing to skip
            return set()
        return set.intersection(*sets) if sets else set()

    def locate(self, dataset: str, encoder: str, video_id: str, layer: Layer) -> Location:
        """Where a video's rows are: part, first row, number of rows, version."""
        loc = self._index(dataset, encoder, layer).locate(video_id)
        if loc is None:
            raise UnknownVideoError(
                f"no committed features for video {video_id!r} in {dataset}/{encoder} "
                f"layer {layer_key(layer)}"
            )
        return loc

    def video(self, dataset: str, encoder: str, video_id: str, layer: Layer) -> np.ndarray:
        """A video's features of one layer: ``[T, D]`` in the stored dtype."""
        loc = self.locate(dataset, encoder, video_id, layer)
        try:
            return self.read_rows(dataset, encoder, loc.part_id, layer, loc.row_start, loc.n_frames)
        except FileNotFoundError:
            # The part was compacted away after our listing: the rows live elsewhere now.
            self.refresh()
            loc = self.locate(dataset, encoder, video_id, layer)
            return self.read_rows(dataset, encoder, loc.part_id, layer, loc.row_start, loc.n_frames)

    def iter_videos(
        self,
        dataset: str,
        encoder: str,
        layer: Layer,
        video_ids: Iterable[str] | None = None,
    ) -> Iterator[tuple[str, np.ndarray]]:
        """Yield ``(video_id, [T, D])`` for all (or the given) videos, in storage order.

        A full scan is a sequence of large contiguous reads (blocks of about
        8 MiB); the arrays yielded are views into those blocks, so keeping one
        keeps its block alive.
        """
        index = self._index(dataset, encoder, layer)
        wanted = None
        if video_ids is not None:
            wanted = set(video_ids)
            missing = wanted - set(index.video_ids())
            if missing:
                raise UnknownVideoError(
                    f"{len(missing)} videos have no features in {dataset}/{encoder} layer "
                    f"{layer_key(layer)}, e.g. {sorted(missing)[:3]}"
                )
        for part_id, ids, starts, ns in index.by_part():
            if wanted is not None:
                keep = np.fromiter((v in wanted for v in ids), dtype=bool, count=len(ids))
                if not keep.any():
                    continue
                ids, starts, ns = ids[keep], starts[keep], ns[keep]
            # Consecutive videos are read in blocks of about 8 MiB and handed out as
            # views: large sequential reads keep a cold disk streaming, and blocks of
            # this size are recycled by the allocator, so a warm scan pays no page
            # faults (a part-sized buffer would, at 2-4x the cost).
            reader = self._reader(dataset, encoder, part_id, layer)
            if isinstance(reader, ShardReader):
                reader.prefetch(int(starts.min()), int((starts + ns).max()))
                row_bytes = reader.layout.dim * reader.layout.dtype.itemsize
            else:
                row_bytes = 1 << 30  # zarr's reader: one read per video
            block_rows = max(1, SCAN_BLOCK_BYTES // row_bytes)
            ids_l, starts_l, ns_l = ids.tolist(), starts.tolist(), ns.tolist()
            i = 0
            while i < len(ids_l):
                lo, j = starts_l[i], i + 1
                while j < len(ids_l) and starts_l[j] + ns_l[j] - lo <= block_rows:
                    j += 1
                hi = starts_l[j - 1] + ns_l[j - 1]
                block = self.read_rows(dataset, encoder, part_id, layer, lo, hi - lo)
                for k in range(i, j):
                    yield ids_l[k], block[starts_l[k] - lo : starts_l[k] - lo + ns_l[k]]
                i = j

    def features(self, dataset: str, encoder: str, layer: Layer) -> xr.DataArray:
        """All committed frames of one layer as a lazy ``xarray.DataArray`` ``(frame, dim)``.

        One Dask chunk per part (never one task per inner chunk). Per-frame
        coordinates: ``video`` (id), ``time_s`` (row start time) and
        ``frame_index`` (row within its video).

        >>> da = store.features("av1m", "wav2vec2", "last")  # doctest: +SKIP
        >>> da.groupby("video").mean().compute()  # doctest: +SKIP
        """
        import dask.array as dsa
        import xarray as xr
        from dask.highlevelgraph import HighLevelGraph

        lay = self.layout(dataset, encoder, layer)
        name = f"featstore-{dataset}-{encoder}-{layer_key(layer)}-{lay.token}"
        graph: dict[tuple[str, int, int], Any] = {}
        for i, (part_id, (a, b)) in enumerate(zip(lay.part_ids, lay.part_spans(), strict=True)):
            graph[(name, i, 0)] = (
                load_part_rows, self, dataset, encoder, part_id, layer,
                lay.row_start[a:b], lay.n_frames[a:b],
            )  # fmt: skip
        data = dsa.Array(
            HighLevelGraph.from_collections(name, graph, dependencies=[]),
            name,
            chunks=(lay.chunk_rows(), (lay.dim,)),
            dtype=lay.dtype,
            meta=np.empty((0, 0), dtype=lay.dtype),
        )
        ns_all = lay.n_frames
        video = np.repeat(lay.video_ids, ns_all)
        frame_index = np.arange(int(ns_all.sum()), dtype=np.int64) - np.repeat(
            np.cumsum(ns_all) - ns_all, ns_all
        )
        return xr.DataArray(
            data,
            dims=("frame", "dim"),
            coords={
                "video": ("frame", video),
                "frame_index": ("frame", frame_index.astype(np.int32)),
                "time_s": ("frame", frame_index / lay.frame_hz),
            },
            name=f"{encoder}/{layer_key(layer)}",
            attrs={
                "dataset": dataset,
                "encoder": encoder,
                "layer": layer_key(layer),
                "frame_hz": lay.frame_hz,
            },
        )

    def layout(self, dataset: str, encoder: str, layer: Layer) -> LayerLayout:
        """Where every committed video of ``layer`` lies (:class:`featstore.lazy.LayerLayout`):
        the parts behind :meth:`features`' chunks and each video's rows in them. Built
        from the commit listing (cached like it, until :meth:`refresh`), nothing read."""
        return self._state(dataset, encoder).layout(layer)

    def row_bytes(self, dataset: str, encoder: str, layer: Layer) -> int:
        """Bytes of one stored row of ``layer``."""
        info = self.encoder_info(dataset, encoder)
        return int(info.dim(layer)) * np.dtype(info.dtype).itemsize

    def failures(self, dataset: str, encoder: str) -> pd.DataFrame:
        """Recorded failures: video_id, error_type, message, part_id, time_ns, resolved.

        A record that does not parse (torn by a crash of older featstore code) is
        skipped with a warning; ``featstore store verify`` reports it.
        """
        import pandas as pd

        state = self._state(dataset, encoder)
        base = layout.failures_path(dataset, encoder)
        rows = []
        for name in self.backend.list_dir(base):
            if not name.endswith(".json"):
                continue
            try:
                doc = self.backend.get_json(f"{base}/{name}")
                items = [] if doc is None else list(doc.get("failures", []))
                if not all(isinstance(item, dict) for item in items):
                    raise CorruptStoreError(f"{self.url}/{base}/{name}: malformed failures")
            except (CorruptStoreError, TypeError) as exc:
                log.warning("skipping unreadable failure record %s/%s: %s", base, name, exc)
                continue
            for item in items:
                rows.append({**item, "part_id": doc.get("part_id", name[:-5])})
        frame = pd.DataFrame(
            rows, columns=["video_id", "error_type", "message", "time_ns", "part_id"]
        )
        committed = set().union(*(set(state.index(x).video_ids()) for x in state.layers()))
        frame["resolved"] = frame["video_id"].isin(committed)
        return frame

    # ------------------------------------------------------------- manifest

    def write_manifest(
        self, dataset: str, table: pd.DataFrame, attrs: Mapping[str, Any] | None = None
    ) -> None:
        """Store a dataset's manifest as 1-D column arrays (replacing any previous one).

        ``table`` needs a unique, non-empty string column ``video_id``. List and
        dict cells (e.g. ``fake_segments``) are stored as JSON text and decoded
        on read; columns with missing values in non-float columns likewise.
        The switch from the old manifest to the new one is atomic
        (featstore.manifest_store).
        """
        self.check_writable()
        manifest_store.validate(dataset, table)
        self._ensure_dataset(dataset)
        manifest_store.write(self.backend, dataset, table, attrs)

    def manifest(self, dataset: str) -> pd.DataFrame:
        """The dataset's manifest as a DataFrame (one row per video)."""
        self._check_dataset(dataset)
        return manifest_store.read(self.backend, dataset)

    def manifest_attrs(self, dataset: str) -> dict[str, Any]:
        """The attrs stored with the dataset's manifest (format, root, views...)."""
        self._check_dataset(dataset)
        meta = manifest_store.pointer(self.backend, dataset)
        return {} if meta is None else dict(meta.get("attrs", {}))

    def manifest_rows(self, dataset: str) -> int | None:
        """Rows of the dataset's manifest; None when it has none."""
        self._check_dataset(dataset)
        meta = manifest_store.pointer(self.backend, dataset)
        return None if meta is None else int(meta["n_rows"])

    def prune_manifest(
        self, dataset: str, *, older_than_s: float, dry_run: bool = False
    ) -> list[str]:
        """Remove manifest versions the pointer does not name, older than
        ``older_than_s`` (left by a crashed or concurrent import), and an old store's
        unversioned columns. Returns the names removed (under ``manifest/``)."""
        self.check_writable()
        return manifest_store.prune(self.backend, dataset, older_than_s, dry_run=dry_run)

    # --------------------------------------------------------------- writes

    def writer(
        self,
        dataset: str,
        info: EncoderInfo,
        *,
        layers: Iterable[Layer] | None = None,
        target_part_bytes: int = DEFAULT_PART_BYTES,
        max_buffer_bytes: int = DEFAULT_BUFFER_BYTES,
        compacted_from: Sequence[str] = (),
    ) -> StoreWriter:
        """A writer of ``info``'s features for ``dataset`` (layers default to all declared).

        ``compacted_from``: the parts a compaction copies (recorded in its commits).
        """
        self.check_writable()
        self._ensure_dataset(dataset)
        self._ensure_encoder(dataset, info)
        chosen = list(info.layer_dims) if layers is None else [normalize_layer(x) for x in layers]
        for x in chosen:
            info.dim(x)
        return StoreWriter(
            self.backend,
            dataset,
            info,
            layers=chosen,
            target_part_bytes=target_part_bytes,
            max_buffer_bytes=max_buffer_bytes,
            compacted_from=compacted_from,
            on_commit=lambda _record: self._forget(dataset, info.name),
        )

    def read_rows(
        self, dataset: str, encoder: str, part_id: str, layer: Layer, start: int, n: int
    ) -> np.ndarray:
        """Rows ``[start, start + n)`` of one layer of one part, committed or not
        (``compact`` and ``verify``; readers want :meth:`video`)."""
        reader = self._reader(dataset, encoder, part_id, layer)
        if isinstance(reader, ShardReader):
            return reader.read(start, start + n)
        return np.asarray(reader[start : start + n])

    def check_writable(self) -> None:
        """Raise ``ReadOnlyStoreError`` on a store opened with ``mode="r"``."""
        self.backend.check_writable()

    # ------------------------------------------------------------ internals

    def _check_dataset(self, dataset: str) -> None:
        layout.check_name("dataset", dataset)
        if not self.backend.exists(f"{dataset}/zarr.json"):
            known = ", ".join(self.datasets()) or "none"
            raise UnknownDatasetError(f"no dataset {dataset!r} in {self.url} (datasets: {known})")

    def _state(self, dataset: str, encoder: str) -> EncoderSnapshot:
        with self._lock:
            state = self._encoders.get((dataset, encoder))
        if state is not None:
            return state
        self._check_dataset(dataset)
        layout.check_name("encoder", encoder)
        key = f"{layout.encoder_path(dataset, encoder)}/zarr.json"
        if not self.backend.exists(key):
            known = ", ".join(self.encoders(dataset)) or "none"
            raise UnknownEncoderError(
                f"no encoder {encoder!r} in dataset {dataset} (encoders: {known})"
            )
        commits = self._load_commits(dataset, encoder)
        # After the listing: `store rm` marks the encoder before it removes any commit,
        # so a listing made before the mark is complete, and one made after is refused
        # (featstore.removal).
        # The group is removed after the commits and before the mark: read it after both.
        self._check_not_removed(dataset, encoder)
        try:
            doc = self.backend.get_json(key)
        except CorruptStoreError as exc:
            log.warning("%s; describing %s/%s from its commit records", exc, dataset, encoder)
            attrs = None
        else:
            if doc is None:
                raise UnknownEncoderError(f"encoder {encoder!r} of dataset {dataset} was removed")
            attrs = doc.get("attributes", {}).get("featstore")
        state = EncoderSnapshot(dataset, encoder, commits, attrs)
        with self._lock:
            return self._encoders.setdefault((dataset, encoder), state)

    def _check_not_removed(self, dataset: str, encoder: str) -> None:
        if self.backend.exists(layout.removal_key(dataset, encoder)):
            raise UnknownEncoderError(
                f"encoder {encoder!r} of dataset {dataset} is being removed (featstore store "
                f"rm); run `featstore store rm {self.url} {dataset} {encoder} --yes` to finish"
            )

    def _forget(self, dataset: str, encoder: str) -> None:
        with self._lock:
            self._encoders.pop((dataset, encoder), None)

    def _index(self, dataset: str, encoder: str, layer: Layer) -> LayerIndex:
        return self._state(dataset, encoder).index(layer)

    def _load_commits(self, dataset: str, encoder: str) -> list[CommitRecord]:
        """Every readable commit record of the encoder.

        A record listed but gone when read was removed by ``compact`` (or ``gc``)
        meanwhile, and its replacement may have been committed after the listing:
        then the folder is listed again (records already read are kept), so a reader
        never sees a gap.
        """
        base = layout.commits_path(dataset, encoder)
        loaded: dict[str, CommitRecord | None] = {}

        def load(name: str) -> tuple[str, CommitRecord | None, bool]:
            try:
                return name, CommitRecord.from_json(self.backend.get(f"{base}/{name}")), False
            except FileNotFoundError:
                return name, None, True
            except CorruptStoreError:
                # Torn (by older featstore code, which wrote in place): not committed.
                log.warning("ignoring unreadable commit record %s/%s", base, name)
                return name, None, False

        for _ in range(_LISTING_ATTEMPTS):
            names = [n for n in self.backend.list_dir(base) if n.endswith(".json")]
            listed = set(names)
            loaded = {n: r for n, r in loaded.items() if n in listed}
            todo = [n for n in names if n not in loaded]
            if len(todo) > 32:
                with concurrent.futures.ThreadPoolExecutor(16) as pool:
                    results = list(pool.map(load, todo))
            else:
                results = [load(n) for n in todo]
            vanished = False
            for name, record, gone in results:
                vanished |= gone
                if not gone:
                    loaded[name] = record
            if not vanished:
                break
        return sort_commits(r for r in loaded.values() if r is not None)

    def _reader(self, dataset: str, encoder: str, part_id: str, layer: Layer) -> ShardReader | Any:
        key = (dataset, encoder, part_id, layer_key(layer))
        with self._lock:
            reader = self._readers.get(key)
            if reader is not None:
                self._readers.move_to_end(key)
                return reader
        array_key = f"{layout.part_path(dataset, encoder, part_id)}/{layer_array_name(layer)}"
        lay = load_layout(self.backend, array_key)
        if lay is not None:
            reader = ShardReader(self.backend, array_key, lay)
        else:
            reader = self.backend.open_array(array_key)  # FileNotFoundError when gone
        with self._lock:
            self._readers[key] = reader
            while len(self._readers) > 1024:
                self._readers.popitem(last=False)
        return reader

    def _ensure_dataset(self, dataset: str) -> None:
        layout.check_name("dataset", dataset)
        attrs = {"featstore": {"kind": "dataset"}}
        try:
            if self.backend.get_json(f"{dataset}/zarr.json") is not None:
                return
        except CorruptStoreError as exc:  # torn by older featstore code
            log.warning("%s; rewriting it", exc)
            self.backend.write_group(dataset, attrs)
            return
        self.backend.write_group(dataset, attrs, exclusive=True)

    def _ensure_encoder(self, dataset: str, info: EncoderInfo) -> None:
        """Create the encoder's group if missing (once: its attributes are never
        rewritten, so concurrent writers cannot lose each other's facts) and check
        ``info`` against the stored facts and every committed layer's dim."""
        path = layout.encoder_path(dataset, info.name)
        self._check_not_removed(dataset, info.name)
        try:
            existing = self.backend.get_json(f"{path}/zarr.json")
        except CorruptStoreError as exc:  # torn by older featstore code: repair it
            commits = self._load_commits(dataset, info.name)
            attrs = dict(commits[-1].encoder) if commits else info.to_attrs()
            log.warning("%s; rewriting it from %s", exc, "its commits" if commits else "the writer")
            self.backend.write_group(path, {"featstore": attrs})
            self._forget(dataset, info.name)
        else:
            if existing is None:
                self.backend.write_group(layout.parts_path(dataset, info.name), {}, exclusive=True)
                if not self.backend.write_group(
                    path, {"featstore": info.to_attrs()}, exclusive=True
                ):
                    self._forget(dataset, info.name)  # another writer created it just now
        stored = self._state(dataset, info.name).info
        problems = info.conflicts(stored)
        if problems:
            raise EncoderMismatchError(
                f"{dataset}/{info.name} already holds features that differ from this "
                f"writer's: {'; '.join(problems)}. Use another encoder name "
                "(e.g. 'clip-rand' for a random init) or another store."
            )


def _reopen(url: str, mode: str, durable: bool, storage_options: Mapping[str, Any]) -> FeatureStore:
    return open_store(url, mode, durable=durable, **storage_options)


class EncoderSnapshot:
    """One encoder's commits as listed at one moment, and its lazily built layer indexes.

    ``info`` holds the encoder's declared facts (its group attributes, or the newest
    commit's copy of them when those are unreadable) with the dim of every committed
    layer: the commit records, not the attributes, say which layers exist.
    ``token`` changes whenever the commits do.
    """

    def __init__(
        self,
        dataset: str,
        encoder: str,
        commits: Sequence[CommitRecord],
        attrs: Mapping[str, Any] | None,
    ) -> None:
        self.dataset, self.encoder = dataset, encoder
        self.commits: tuple[CommitRecord, ...] = tuple(commits)
        self.token = f"{len(self.commits)}-{self.commits[-1].part_id if self.commits else 0}"
        if not attrs and self.commits:
            attrs = self.commits[-1].encoder
        if not attrs:
            raise CorruptStoreError(f"{dataset}/{encoder} has no readable encoder metadata")
        declared = EncoderInfo.from_attrs(attrs)
        dims: dict[Layer, int] = dict(declared.layer_dims)
        for c in self.commits:
            for k, rec in c.layers.items():
                dims.setdefault(normalize_layer(k), rec.dim)
        self.info = dataclasses.replace(declared, layer_dims=dims)
        self._indexes: dict[str, LayerIndex] = {}
        self._layouts: dict[str, LayerLayout] = {}
        self._lock = threading.Lock()

    def layers(self) -> list[Layer]:
        """Layers with at least one committed video."""
        keys = {k for c in self.commits for k in c.layers}
        return sorted((normalize_layer(k) for k in keys), key=layer_sort_key)

    def index(self, layer: Layer) -> LayerIndex:
        """``video -> (part, row_start, n_frames)`` of one layer (``UnknownLayerError``
        when nothing of it is committed)."""
        key = layer_key(layer)
        with self._lock:
            idx = self._indexes.get(key)
            if idx is None:
                if not any(key in c.layers for c in self.commits):
                    raise UnknownLayerError(
                        f"no committed features for layer {key} of {self.dataset}/{self.encoder} "
                        f"(layers: {format_layers(self.layers()) or 'none'})"
                    )
                idx = self._indexes[key] = LayerIndex(self.commits, layer)
        return idx

    def layout(self, layer: Layer) -> LayerLayout:
        """The layer's :class:`~featstore.lazy.LayerLayout` (built once per snapshot)."""
        key = layer_key(layer)
        index = self.index(layer)
        with self._lock:
            lay = self._layouts.get(key)
        if lay is not None:
            return lay
        if len(index.dims) != 1:
            raise CorruptStoreError(
                f"{self.dataset}/{self.encoder} layer {key} has dims {sorted(index.dims)}"
            )
        (dim,) = index.dims
        lay = LayerLayout.of_index(
            index,
            dataset=self.dataset,
            encoder=self.encoder,
            dim=dim,
            dtype=np.dtype(self.info.dtype),
            frame_hz=float(self.info.frame_hz),
            token=self.token,
        )
        with self._lock:
            return self._layouts.setdefault(key, lay)


__all__ = [
    "CHUNK_ROWS",
    "DEFAULT_BUFFER_BYTES",
    "DEFAULT_PART_BYTES",
    "EncoderInfo",
    "EncoderSnapshot",
    "FeatureStore",
    "StoreWriter",
    "open_store",
]
