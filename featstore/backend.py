"""The storage backend: every object read, write, list and delete of a feature store.

``featstore.store``, ``featstore.writer`` and ``featstore.maintenance`` reach
storage only through a :class:`Backend`, and this is the only module that
imports zarr. Keys are ``/``-separated paths relative to the store root.

Two engines behind one interface:

- :class:`LocalBackend`, files under a directory (the embedded default). Reads
  use ``pread`` on cached descriptors. Every write is atomic: the bytes go to a
  temporary name in the same folder (``.<name>.tmp-<ns>-<hex>``, hidden from
  listings, swept by ``gc``) and are renamed over the final name, so a reader,
  or the next process after a crash, sees the old object, the new one or none,
  never a torn one. When ``durable``, the file is fsynced before the rename and
  its folder after it (and every folder the write created), so everything a
  commit record points at is on disk before the record.
- :class:`FsspecBackend`, any fsspec filesystem (``s3://``, ``gs://``,
  ``memory://``): one PUT per object, which object stores make atomic.

The interface:

========== ==================================================================
objects    ``get``, ``get_json``, ``get_range``, ``readinto``, ``prefetch``,
           ``size``, ``exists``, ``list_dir``, ``walk_size``, ``put``,
           ``put_json``, ``create`` (only if absent), ``delete``,
           ``delete_tree``, ``close``
zarr       ``write_group``, ``write_layer``, ``write_column``,
           ``read_column``, ``array_shape``, ``open_array``
upkeep     ``stale_temporaries``, ``check_writable``
========== ==================================================================

Zarr encodes arrays into memory and the backend writes the resulting objects,
so zarr's own (in-place) file writes never touch the store.

Fault injection, for tests: :func:`inject_crash` (or the environment variable
``FEATSTORE_CRASH_AT_WRITE=N``) makes the Nth object write of this process
crash half-way through: a local write leaves half its bytes in the temporary
file, then the process is SIGKILLed (or :class:`SimulatedCrash` is raised and
every later write fails too, as if the process were gone).

>>> backend = open_backend("features.zarr", read_only=False)  # doctest: +SKIP
>>> backend.put_json("ds/_failures/x.json", {"failures": []})  # doctest: +SKIP
"""

from __future__ import annotations

import abc
import collections
import contextlib
import errno
import json
import logging
import os
import secrets
import shutil
import signal
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from featstore.errors import CorruptStoreError, ReadOnlyStoreError, StoreError
from featstore.shards import parse_layout

if TYPE_CHECKING:
    from featstore.shards import ShardBuffer

log = logging.getLogger(__name__)

CRASH_ENV = "FEATSTORE_CRASH_AT_WRITE"
_TEMP_MARK = ".tmp-"


def open_backend(
    url: str,
    *,
    read_only: bool,
    durable: bool = True,
    storage_options: Mapping[str, Any] | None = None,
) -> Backend:
    """The backend for a local path (or ``file://`` URL) or any fsspec URL.

    A read-only local backend needs the directory to exist.
    """
    options = dict(storage_options or {})
    if "://" in url and not url.startswith("file://"):
        import fsspec

        fs, root = fsspec.core.url_to_fs(url, **options)
        return FsspecBackend(url, fs, root, read_only=read_only, storage_options=options)
    root = url[len("file://") :] if url.startswith("file://") else url
    if read_only and not os.path.isdir(root):
        raise StoreError(f"no feature store at {url}: directory does not exist")
    return LocalBackend(url, root, read_only=read_only, durable=durable)


class Backend(abc.ABC):
    """Objects, zarr nodes and upkeep of one store root (see the module docstring)."""

    url: str
    read_only: bool
    durable: bool
    read_gap_bytes: int = 0
    """Readers fetch two byte ranges of one object in one read when at most this far apart
    (``featstore.lazy``): what one more request costs, in bytes."""

    def __init__(self) -> None:
        self._zarr_lock = threading.Lock()
        self._zarr_store: Any = None

    # ------------------------------------------------------------ objects

    @abc.abstractmethod
    def get(self, key: str) -> bytes:
        """The whole object; ``FileNotFoundError`` when it does not exist."""

    @abc.abstractmethod
    def get_range(self, key: str, start: int, stop: int) -> bytes:
        """Bytes ``[start, stop)`` of an object."""

    @abc.abstractmethod
    def readinto(self, key: str, start: int, buffer: memoryview) -> None:
        """Fill ``buffer`` with the object's bytes from ``start``."""

    def prefetch(self, key: str, start: int, stop: int) -> None:  # noqa: B027 - optional hint
        """Hint that a byte range is about to be read in pieces."""

    @abc.abstractmethod
    def size(self, key: str) -> int: ...

    @abc.abstractmethod
    def exists(self, key: str) -> bool: ...

    @abc.abstractmethod
    def list_dir(self, prefix: str) -> list[str]:
        """Sorted names of the objects and folders directly under ``prefix`` (temporaries
        hidden); empty when ``prefix`` does not exist."""

    @abc.abstractmethod
    def walk_size(self, prefix: str) -> tuple[int, int]:
        """(number of objects, total bytes) under ``prefix``."""

    def get_json(self, key: str) -> dict[str, Any] | None:
        """A JSON object, None when it does not exist; ``CorruptStoreError`` when it does
        not parse (torn by a crash of old code, or damaged)."""
        try:
            raw = self.get(key)
        except FileNotFoundError:
            return None
        try:
            doc = json.loads(raw)
        except ValueError as exc:
            raise CorruptStoreError(f"{self.url}/{key} is not valid JSON: {exc}") from exc
        if not isinstance(doc, dict):
            raise CorruptStoreError(f"{self.url}/{key} is not a JSON object")
        return doc

    def put(self, key: str, data: bytes | memoryview) -> None:
        """Write an object atomically (replacing any previous one)."""
        self.check_writable()
        if _FAULTS.tick():
            self._torn_put(key, data)
            _FAULTS.crash(f"put {key}")
        self._put(key, data)

    def put_json(self, key: str, doc: Mapping[str, Any], *, indent: int | None = None) -> None:
        self.put(key, json.dumps(doc, indent=indent).encode())

    def create(self, key: str, data: bytes) -> bool:
        """Write an object only if none exists; True when this call wrote it.

        Exclusive on local disk (a hard link of the temporary file); on fsspec
        filesystems a check then a PUT, so two writers racing to create it may
        both write (the last one wins, whole).
        """
        self.check_writable()
        if _FAULTS.tick():
            self._torn_put(key, data)
            _FAULTS.crash(f"create {key}")
        return self._create(key, data)

    def delete(self, key: str) -> None:
        """Remove one object; a missing one is not an error."""
        self.check_writable()
        if _FAULTS.tick():
            _FAULTS.crash(f"delete {key}")
        self._delete(key)

    def delete_tree(self, prefix: str) -> None:
        """Remove everything under ``prefix``; a missing one is not an error."""
        self.check_writable()
        if _FAULTS.tick():
            _FAULTS.crash(f"delete {prefix}/")
        self._delete_tree(prefix)

    def close(self) -> None:  # noqa: B027 - engines with nothing to release
        """Release cached descriptors (the backend stays usable)."""

    def check_writable(self) -> None:
        if self.read_only:
            raise ReadOnlyStoreError(f"store {self.url} is open read-only (open it with mode='a')")

    def stale_temporaries(self, prefix: str, older_than_ns: int) -> list[str]:
        """Keys of temporary files directly under ``prefix`` left by writers that died
        mid-write, created more than ``older_than_ns`` ago (none on object stores)."""
        return []

    @abc.abstractmethod
    def _put(self, key: str, data: bytes | memoryview) -> None: ...

    @abc.abstractmethod
    def _create(self, key: str, data: bytes) -> bool: ...

    @abc.abstractmethod
    def _delete(self, key: str) -> None: ...

    @abc.abstractmethod
    def _delete_tree(self, prefix: str) -> None: ...

    def _torn_put(self, key: str, data: bytes | memoryview) -> None:  # noqa: B027 - optional
        """What a crash half-way through ``put`` leaves behind (nothing, on object stores)."""

    # ----------------------------------------------------------- zarr nodes

    def write_group(
        self, path: str, attributes: Mapping[str, Any], *, exclusive: bool = False
    ) -> bool:
        """Write a zarr v3 group's ``zarr.json``. With ``exclusive``, only if the group
        does not exist yet; returns whether this call wrote it."""
        doc = {"zarr_format": 3, "node_type": "group", "attributes": dict(attributes)}
        data = json.dumps(doc, indent=2).encode()
        key = f"{path}/zarr.json" if path else "zarr.json"
        if exclusive:
            return self.create(key, data)
        self.put(key, data)
        return True

    def write_layer(self, path: str, buffer: ShardBuffer, n_rows: int) -> str:
        """Write one layer array of a part: ``[n_rows, dim]``, inner chunks of the buffer's
        rows, one shard holding them all, no compression, shard index at the end with its
        crc32c. The shard bytes come ready-made from the buffer (zarr's per-chunk encoder
        runs at ~85 MB/s on this layout) and the metadata is the document zarr writes for
        this layout (``layer_metadata``). Returns the rows' checksum."""
        meta = layer_metadata(n_rows, buffer.dim, buffer.dtype, buffer.chunk_rows)
        self.put(f"{path}/zarr.json", json.dumps(meta, indent=2).encode())
        checksum = buffer.checksum(n_rows)
        self.put(f"{path}/c/0/0", buffer.finish(n_rows))
        return checksum

    def write_column(self, path: str, values: np.ndarray) -> None:
        """Write a 1-D array (numbers, booleans or strings) as a zarr array at ``path``:
        chunks first, its ``zarr.json`` last."""
        import zarr

        objects: dict[str, Any] = {}
        memory = zarr.storage.MemoryStore(objects)
        if values.dtype.kind in "OUT":
            arr = zarr.create_array(
                memory,
                name="a",
                shape=values.shape,
                dtype=str,
                chunks=(max(1, min(len(values), 65536)),),
            )
            if len(values):
                arr[...] = values.astype(object)
        else:
            zarr.create_array(
                memory, name="a", data=values, chunks=(max(1, min(len(values), 262144)),)
            )
        keys = sorted((k for k in objects if k.startswith("a/")), key=lambda k: k == "a/zarr.json")
        for k in keys:
            self.put(f"{path}/{k[2:]}", objects[k].to_bytes())

    def read_column(self, path: str) -> np.ndarray:
        """A 1-D array written by :meth:`write_column` (strings as an object array);
        ``FileNotFoundError`` when it does not exist."""
        values = self.open_array(path)[...]
        values = np.asarray(values)
        return values.astype(object) if values.dtype.kind == "T" else values

    def open_array(self, path: str) -> Any:
        """A read-only ``zarr.Array`` (for arrays the fast shard reader does not know);
        ``FileNotFoundError`` when there is none at ``path``."""
        import zarr

        try:
            return zarr.open_array(self._zarr(), path=path, mode="r")
        except (zarr.errors.ArrayNotFoundError, zarr.errors.NodeTypeValidationError) as exc:
            raise FileNotFoundError(f"{self.url}/{path}") from exc

    def array_shape(self, path: str) -> tuple[tuple[int, ...], np.dtype] | None:
        """Shape and dtype of the array at ``path``; None when there is none."""
        meta = self.get_json(f"{path}/zarr.json")
        if meta is None:
            return None
        layout = parse_layout(meta)
        if layout is not None:  # the store's own layout: no need to ask zarr
            return (layout.rows, layout.dim), layout.dtype
        arr = self.open_array(path)
        return tuple(arr.shape), np.dtype(arr.dtype)

    def _zarr(self) -> Any:
        with self._zarr_lock:
            if self._zarr_store is None:
                self._zarr_store = self._open_zarr()
            return self._zarr_store

    @abc.abstractmethod
    def _open_zarr(self) -> Any:
        """A read-only zarr store over the same root."""


class LocalBackend(Backend):
    """Files under a local directory, written atomically, read with ``pread``.

    Parts are immutable, so a cached descriptor can never see changed bytes;
    a descriptor of a file removed by ``compact`` still reads the old bytes.
    """

    read_gap_bytes = 0  # back-to-back ranges only: the kernel's read-ahead covers near ones

    def __init__(
        self, url: str, root: str, *, read_only: bool, durable: bool = True, max_open: int = 128
    ) -> None:
        super().__init__()
        self.url = url
        self.root = os.path.abspath(root)
        self.read_only = read_only
        self.durable = durable
        self._fds: collections.OrderedDict[str, int] = collections.OrderedDict()
        self._max_open = max_open
        self._lock = threading.Lock()

    def _path(self, key: str) -> str:
        return os.path.join(self.root, *key.split("/")) if key else self.root

    def _fd(self, key: str) -> int:
        with self._lock:
            fd = self._fds.get(key)
            if fd is not None:
                self._fds.move_to_end(key)
                return fd
            fd = os.open(self._path(key), os.O_RDONLY)
            self._fds[key] = fd
            while len(self._fds) > self._max_open:
                _, old = self._fds.popitem(last=False)
                os.close(old)
            return fd

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()

    def __del__(self) -> None:  # pragma: no cover - interpreter shutdown order varies
        with contextlib.suppress(Exception):
            self.close()

    def get(self, key: str) -> bytes:
        try:
            with open(self._path(key), "rb") as f:
                return f.read()
        except IsADirectoryError as exc:
            raise FileNotFoundError(key) from exc

    def get_range(self, key: str, start: int, stop: int) -> bytes:
        out = os.pread(self._fd(key), stop - start, start)
        if len(out) != stop - start:
            raise StoreError(f"short read of {key!r}: wanted {stop - start} bytes, got {len(out)}")
        return out

    def readinto(self, key: str, start: int, buffer: memoryview) -> None:
        """One syscall, no extra copy."""
        n = os.preadv(self._fd(key), [buffer], start)
        if n != len(buffer):
            raise StoreError(f"short read of {key!r}: wanted {len(buffer)} bytes, got {n}")

    def prefetch(self, key: str, start: int, stop: int) -> None:
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(self._fd(key), start, stop - start, os.POSIX_FADV_WILLNEED)

    def size(self, key: str) -> int:
        return os.stat(self._path(key)).st_size

    def exists(self, key: str) -> bool:
        return os.path.exists(self._path(key))

    def list_dir(self, prefix: str) -> list[str]:
        try:
            return sorted(n for n in os.listdir(self._path(prefix)) if not _is_temporary(n))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def walk_size(self, prefix: str) -> tuple[int, int]:
        n_files = n_bytes = 0
        for dirpath, _, files in os.walk(self._path(prefix)):
            for name in files:
                try:
                    n_bytes += os.stat(os.path.join(dirpath, name)).st_size
                    n_files += 1
                except FileNotFoundError:  # removed while walking
                    continue
        return n_files, n_bytes

    def stale_temporaries(self, prefix: str, older_than_ns: int) -> list[str]:
        try:
            names = os.listdir(self._path(prefix))
        except (FileNotFoundError, NotADirectoryError):
            return []
        now = time.time_ns()
        out = []
        for name in sorted(names):
            created = _temporary_created_ns(name)
            if created is not None and now - created >= older_than_ns:
                out.append(f"{prefix}/{name}" if prefix else name)
        return out

    def _put(self, key: str, data: bytes | memoryview) -> None:
        path = self._path(key)
        directory = os.path.dirname(path)
        tmp = self._write_temporary(path, data)
        try:
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(tmp)
            raise
        with self._lock:  # a cached descriptor would read the replaced file
            fd = self._fds.pop(key, None)
            if fd is not None:
                os.close(fd)
        if self.durable:
            _fsync_dir(directory)

    def _create(self, key: str, data: bytes) -> bool:
        path = self._path(key)
        if os.path.exists(path):
            return False
        tmp = self._write_temporary(path, data)
        try:
            os.link(tmp, path)  # atomic, and fails when the name exists
        except FileExistsError:
            return False
        except OSError as exc:  # a filesystem without hard links: check, then rename
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                raise
            if os.path.exists(path):
                return False
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
        if self.durable:
            _fsync_dir(os.path.dirname(path))
        return True

    def _write_temporary(self, path: str, data: bytes | memoryview) -> str:
        directory = os.path.dirname(path)
        self._makedirs(directory)
        tmp = os.path.join(directory, _temporary_name(os.path.basename(path)))
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                if self.durable:
                    f.flush()
                    os.fsync(f.fileno())
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(tmp)
            raise
        return tmp

    def _torn_put(self, key: str, data: bytes | memoryview) -> None:
        path = self._path(key)
        self._makedirs(os.path.dirname(path))
        tmp = os.path.join(os.path.dirname(path), _temporary_name(os.path.basename(path)))
        with open(tmp, "wb") as f:
            f.write(memoryview(data)[: len(data) // 2])

    def _makedirs(self, directory: str) -> None:
        """Create missing folders; when durable, fsync each new folder's parent so the
        folder itself survives a power loss."""
        if os.path.isdir(directory):
            return
        missing = []
        while not os.path.isdir(directory):
            missing.append(directory)
            directory = os.path.dirname(directory)
        for d in reversed(missing):
            with contextlib.suppress(FileExistsError):
                os.mkdir(d)
            if self.durable:
                _fsync_dir(os.path.dirname(d))

    def _delete_tree(self, prefix: str) -> None:
        self._forget(prefix)
        shutil.rmtree(self._path(prefix), ignore_errors=True)

    def _delete(self, key: str) -> None:
        self._forget(key)
        try:
            os.remove(self._path(key))
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise

    def _forget(self, prefix: str) -> None:
        with self._lock:
            for key in [k for k in self._fds if k == prefix or k.startswith(prefix + "/")]:
                os.close(self._fds.pop(key))

    def _open_zarr(self) -> Any:
        import zarr

        return zarr.storage.LocalStore(self.root, read_only=True)


class FsspecBackend(Backend):
    """Objects on any fsspec filesystem (object stores: one PUT per object, atomic)."""

    read_gap_bytes = 4 * 2**20  # a request's latency, at object-store throughput

    def __init__(
        self,
        url: str,
        fs: Any,
        root: str,
        *,
        read_only: bool,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.url = url
        self.fs = fs
        self.root = root.rstrip("/")
        self.read_only = read_only
        self.durable = True  # a PUT is durable when it returns
        self._storage_options = dict(storage_options or {})

    def _path(self, key: str) -> str:
        return f"{self.root}/{key}" if key else self.root

    def get(self, key: str) -> bytes:
        return self.fs.cat_file(self._path(key))

    def get_range(self, key: str, start: int, stop: int) -> bytes:
        out = self.fs.cat_file(self._path(key), start=start, end=stop)
        if len(out) != stop - start:
            raise StoreError(f"short read of {key!r}: wanted {stop - start} bytes, got {len(out)}")
        return out

    def readinto(self, key: str, start: int, buffer: memoryview) -> None:
        buffer[:] = self.get_range(key, start, start + len(buffer))

    def size(self, key: str) -> int:
        return int(self.fs.size(self._path(key)))

    def exists(self, key: str) -> bool:
        return bool(self.fs.exists(self._path(key)))

    def list_dir(self, prefix: str) -> list[str]:
        path = self._path(prefix)
        try:
            entries = self.fs.ls(path, detail=False, refresh=True)
        except FileNotFoundError:
            return []
        own = self.fs._strip_protocol(path).rstrip("/")
        names = {e.rstrip("/").rsplit("/", 1)[-1] for e in entries if e.rstrip("/") != own}
        return sorted(n for n in names if n and not _is_temporary(n))

    def walk_size(self, prefix: str) -> tuple[int, int]:
        try:
            sizes = self.fs.du(self._path(prefix), total=False)
        except FileNotFoundError:
            return 0, 0
        return len(sizes), int(sum(sizes.values()))

    def _put(self, key: str, data: bytes | memoryview) -> None:
        self.fs.pipe_file(self._path(key), bytes(data))

    def _create(self, key: str, data: bytes) -> bool:
        if self.exists(key):
            return False
        self._put(key, data)
        return True

    def _delete_tree(self, prefix: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(self._path(prefix), recursive=True)

    def _delete(self, key: str) -> None:
        self._delete_tree(key)

    def _open_zarr(self) -> Any:
        import zarr

        return zarr.storage.FsspecStore.from_url(
            self.url, storage_options=self._storage_options or None, read_only=True
        )


# ------------------------------------------------------------------ helpers


def layer_metadata(n_rows: int, dim: int, dtype: np.dtype, chunk_rows: int) -> dict[str, Any]:
    """The zarr v3 ``zarr.json`` of a layer array, as ``zarr.create_array`` writes it for
    ``shape=(n_rows, dim)``, ``chunks=(chunk_rows, dim)``, one shard, no compressors or
    filters, fill value 0 (tests compare it with zarr's own). Built here, not by zarr:
    zarr takes milliseconds per array for the same document."""
    shard_rows = -(-n_rows // chunk_rows) * chunk_rows
    little = {"name": "bytes", "configuration": {"endian": "little"}}
    return {
        "shape": [n_rows, dim],
        "data_type": np.dtype(dtype).name,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [shard_rows, dim]}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": 0.0,
        "codecs": [
            {
                "name": "sharding_indexed",
                "configuration": {
                    "chunk_shape": [chunk_rows, dim],
                    "codecs": [little],
                    "index_codecs": [little, {"name": "crc32c"}],
                    "index_location": "end",
                },
            }
        ],
        "attributes": {},
        "zarr_format": 3,
        "node_type": "array",
        "storage_transformers": [],
    }


def _temporary_name(name: str) -> str:
    return f".{name}{_TEMP_MARK}{time.time_ns():019d}-{secrets.token_hex(4)}"


def _is_temporary(name: str) -> bool:
    return name.startswith(".") and _TEMP_MARK in name


def _temporary_created_ns(name: str) -> int | None:
    if not _is_temporary(name):
        return None
    stamp = name.rsplit(_TEMP_MARK, 1)[1].split("-", 1)[0]
    return int(stamp) if stamp.isdigit() else None


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------- fault injection


class SimulatedCrash(BaseException):
    """Raised by :func:`inject_crash`'s hook: the store is gone for this process.

    A ``BaseException``, so ``except Exception`` clean-up code cannot swallow it
    and write on, which a killed process could not do either."""


class _Faults:
    """Counts object writes (put, create, delete) and crashes at the chosen one."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.writes = 0
        self.at: int | None = None
        self.kill = False
        self.crashed = False
        spec = os.environ.get(CRASH_ENV, "").strip()
        if spec:
            self.at, self.kill = int(spec), True

    def tick(self) -> bool:
        """Count one write; True when this is the write to crash in."""
        with self.lock:
            if self.crashed:
                raise SimulatedCrash("the store crashed earlier in this process")
            self.writes += 1
            if self.at is not None and self.writes == self.at:
                self.crashed = True
                return True
            return False

    def crash(self, what: str) -> None:
        if self.kill:
            os.kill(os.getpid(), signal.SIGKILL)
        raise SimulatedCrash(f"simulated crash at write {self.writes} ({what})")


_FAULTS = _Faults()


def inject_crash(at_write: int | None, *, kill: bool = False) -> None:
    """Test hook: crash at the ``at_write``-th object write from now (1-based; None
    disarms and clears an earlier crash). ``kill`` SIGKILLs the process there;
    otherwise :class:`SimulatedCrash` is raised, and again on every later write."""
    with _FAULTS.lock:
        _FAULTS.writes = 0
        _FAULTS.at, _FAULTS.kill, _FAULTS.crashed = at_write, kill, False


def writes_so_far() -> int:
    """Object writes (put, create, delete) counted since the last :func:`inject_crash`."""
    with _FAULTS.lock:
        return _FAULTS.writes


__all__ = [
    "CRASH_ENV",
    "Backend",
    "FsspecBackend",
    "LocalBackend",
    "SimulatedCrash",
    "inject_crash",
    "open_backend",
    "writes_so_far",
]
