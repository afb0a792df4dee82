"""Raw object access under a store root: whole objects, byte ranges, listings.

Commit and failure records, and the fast shard reader, go through this
interface; zarr arrays go through zarr's own stores (featstore.store). Two
engines share it: local disk (``os.pread`` on cached file descriptors, the
embedded default) and any fsspec filesystem (``s3://``, ``gs://``, ``memory://``).
Nothing relies on renames or locks, so both behave the same under concurrent
writers.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import os
import shutil
import threading
from typing import Any, Protocol

from featstore.errors import StoreError


class ObjectStore(Protocol):
    """What the store needs from a storage engine. Keys are ``/``-separated, relative."""

    read_only: bool

    def get(self, key: str) -> bytes: ...
    def get_range(self, key: str, start: int, stop: int) -> bytes: ...
    def readinto(self, key: str, start: int, buffer: memoryview) -> None: ...
    def prefetch(self, key: str, start: int, stop: int) -> None: ...
    def size(self, key: str) -> int: ...
    def exists(self, key: str) -> bool: ...
    def put(self, key: str, data: bytes) -> None: ...
    def list_dir(self, prefix: str) -> list[str]: ...
    def walk_size(self, prefix: str) -> tuple[int, int]: ...
    def delete_tree(self, prefix: str) -> None: ...
    def delete(self, key: str) -> None: ...


class LocalObjects:
    """Objects as files under a local directory, read with ``pread`` on cached descriptors.

    Parts are immutable, so a cached descriptor can never see changed bytes;
    a descriptor of a file removed by ``compact`` still reads the old bytes.
    """

    def __init__(
        self, root: str, *, read_only: bool, durable: bool = True, max_open: int = 128
    ) -> None:
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
        with open(self._path(key), "rb") as f:
            return f.read()

    def get_range(self, key: str, start: int, stop: int) -> bytes:
        fd = self._fd(key)
        out = os.pread(fd, stop - start, start)
        if len(out) != stop - start:
            raise StoreError(f"short read of {key!r}: wanted {stop - start} bytes, got {len(out)}")
        return out

    def readinto(self, key: str, start: int, buffer: memoryview) -> None:
        """Fill ``buffer`` with the bytes at ``start``: one syscall, no extra copy."""
        fd = self._fd(key)
        n = os.preadv(fd, [buffer], start)
        if n != len(buffer):
            raise StoreError(f"short read of {key!r}: wanted {len(buffer)} bytes, got {n}")

    def prefetch(self, key: str, start: int, stop: int) -> None:
        """Ask the kernel to read a range ahead (a scan about to read it in pieces)."""
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(self._fd(key), start, stop - start, os.POSIX_FADV_WILLNEED)

    def size(self, key: str) -> int:
        return os.stat(self._path(key)).st_size

    def exists(self, key: str) -> bool:
        return os.path.exists(self._path(key))

    def put(self, key: str, data: bytes | memoryview) -> None:
        """Write an object and fsync it: data must be durable before its commit record."""
        self._check_writable()
        path = self._path(key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
            if self.durable:
                f.flush()
                os.fsync(f.fileno())

    def list_dir(self, prefix: str) -> list[str]:
        try:
            return sorted(os.listdir(self._path(prefix)))
        except FileNotFoundError:
            return []
        except NotADirectoryError:
            return []

    def walk_size(self, prefix: str) -> tuple[int, int]:
        """(number of files, total bytes) under ``prefix``."""
        n_files = n_bytes = 0
        for dirpath, _, files in os.walk(self._path(prefix)):
            for name in files:
                try:
                    n_bytes += os.stat(os.path.join(dirpath, name)).st_size
                    n_files += 1
                except FileNotFoundError:  # removed while walking
                    continue
        return n_files, n_bytes

    def delete_tree(self, prefix: str) -> None:
        self._check_writable()
        self._forget(prefix)
        shutil.rmtree(self._path(prefix), ignore_errors=True)

    def delete(self, key: str) -> None:
        self._check_writable()
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

    def _check_writable(self) -> None:
        if self.read_only:
            from featstore.errors import ReadOnlyStoreError

            raise ReadOnlyStoreError(f"store at {self.root} is open read-only")


class FsspecObjects:
    """Objects on any fsspec filesystem (object stores: one PUT per object, atomic)."""

    def __init__(self, fs: Any, root: str, *, read_only: bool) -> None:
        self.fs = fs
        self.root = root.rstrip("/")
        self.read_only = read_only

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

    def prefetch(self, key: str, start: int, stop: int) -> None:
        pass

    def size(self, key: str) -> int:
        return int(self.fs.size(self._path(key)))

    def exists(self, key: str) -> bool:
        return bool(self.fs.exists(self._path(key)))

    def put(self, key: str, data: bytes | memoryview) -> None:
        if self.read_only:
            from featstore.errors import ReadOnlyStoreError

            raise ReadOnlyStoreError(f"store at {self.root} is open read-only")
        self.fs.pipe_file(self._path(key), bytes(data))

    def list_dir(self, prefix: str) -> list[str]:
        path = self._path(prefix)
        try:
            entries = self.fs.ls(path, detail=False, refresh=True)
        except FileNotFoundError:
            return []
        own = self.fs._strip_protocol(path).rstrip("/")
        names = {e.rstrip("/").rsplit("/", 1)[-1] for e in entries if e.rstrip("/") != own}
        return sorted(n for n in names if n)

    def walk_size(self, prefix: str) -> tuple[int, int]:
        try:
            sizes = self.fs.du(self._path(prefix), total=False)
        except FileNotFoundError:
            return 0, 0
        return len(sizes), int(sum(sizes.values()))

    def delete_tree(self, prefix: str) -> None:
        if self.read_only:
            from featstore.errors import ReadOnlyStoreError

            raise ReadOnlyStoreError(f"store at {self.root} is open read-only")
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(self._path(prefix), recursive=True)

    def delete(self, key: str) -> None:
        self.delete_tree(key)

    def close(self) -> None:
        pass
