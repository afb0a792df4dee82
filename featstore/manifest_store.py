"""A dataset's manifest in the store: versioned column arrays behind one pointer.

```
<dataset>/manifest/zarr.json            the pointer: attrs name the current version, its
                                        columns, JSON columns, rows and import attrs
<dataset>/manifest/<version>/<column>   1-D column arrays; list/dict cells as JSON text
```

``write`` puts every column under a new version folder and switches the
pointer last (one small object, written atomically by the backend), so a
crash at any point leaves the old manifest or the new one, never a mix.
Stores written before versions keep their columns at
``<dataset>/manifest/<column>`` with a pointer that names no version; they
read unchanged and are converted by their next ``write``.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from featstore import layout
from featstore.errors import CorruptStoreError, ManifestError

if TYPE_CHECKING:
    import pandas as pd

    from featstore.backend import Backend

_COLUMN_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_READ_ATTEMPTS = 3  # pointers followed while imports replace the manifest under a reader


def validate(dataset: str, table: pd.DataFrame) -> None:
    """A unique, non-empty string ``video_id`` column and storable column names."""
    if "video_id" not in table.columns:
        raise ManifestError(f"manifest of {dataset} has no 'video_id' column")
    ids = table["video_id"]
    if ids.isna().any() or not all(isinstance(v, str) and v for v in ids):
        raise ManifestError(f"manifest of {dataset}: every video_id must be a non-empty string")
    dupes = ids[ids.duplicated()].unique().tolist()
    if dupes:
        raise ManifestError(f"manifest of {dataset}: duplicate video_id values, e.g. {dupes[:3]}")
    for col in table.columns:
        if not isinstance(col, str) or not _COLUMN_RE.match(col):
            raise ManifestError(f"manifest of {dataset}: invalid column name {col!r}")


def write(
    backend: Backend, dataset: str, table: pd.DataFrame, attrs: Mapping[str, Any] | None
) -> None:
    """Write ``table`` (already validated) as a new version and switch the pointer to it."""
    base = layout.manifest_path(dataset)
    try:
        previous = pointer(backend, dataset)
    except CorruptStoreError:
        previous = None  # torn by older featstore code: replaced below
    version = layout.new_part_id()
    version_base = layout.manifest_version_path(dataset, version)
    json_columns = []
    for col in table.columns:
        values, is_json = _encode_column(table[col])
        if is_json:
            json_columns.append(col)
        backend.write_column(f"{version_base}/{col}", values)
    backend.write_group(version_base, {"featstore": {"kind": "manifest-version"}})
    backend.write_group(
        base,
        {
            "featstore": {
                "kind": "manifest",
                "version": version,
                "columns": list(table.columns),
                "json_columns": json_columns,
                "n_rows": len(table),
                "written_ns": time.time_ns(),
                "attrs": dict(attrs or {}),
            }
        },
    )
    # Switched. Remove the version it replaced and an old store's unversioned columns;
    # leave young versions of other writers alone (they may be in flight).
    replaced = (previous or {}).get("version")
    prune(backend, dataset, layout.gc_floor_s(), replaced=replaced)


def read(backend: Backend, dataset: str) -> pd.DataFrame:
    """The manifest as a DataFrame; ``ManifestError`` when there is none."""
    import pandas as pd

    for attempt in range(_READ_ATTEMPTS):
        meta = pointer(backend, dataset)
        if meta is None:
            raise ManifestError(
                f"dataset {dataset} has no manifest (import one with 'featstore datasets import')"
            )
        version = meta.get("version")
        base = (
            layout.manifest_version_path(dataset, version)
            if version
            else layout.manifest_path(dataset)
        )
        try:
            columns = {}
            for col in meta["columns"]:
                values = backend.read_column(f"{base}/{col}")
                if col in meta["json_columns"]:
                    decoded = [json.loads(v) for v in values]
                    values = np.array([*decoded, None], dtype=object)[:-1]  # keeps lists whole
                columns[col] = values
            frame = pd.DataFrame(columns, columns=meta["columns"])
        except FileNotFoundError as exc:
            if attempt + 1 < _READ_ATTEMPTS:
                continue  # replaced while we read it: follow the new pointer
            raise CorruptStoreError(
                f"the manifest of {dataset} is incomplete ({exc}); import it again"
            ) from exc
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptStoreError(
                f"the manifest of {dataset} is unreadable ({exc}); import it again"
            ) from exc
        frame.attrs.update(meta.get("attrs", {}))
        return frame
    raise AssertionError("unreachable")  # pragma: no cover


def pointer(backend: Backend, dataset: str) -> dict[str, Any] | None:
    """The pointer's attributes (``version``, ``columns``, ``n_rows``, ``attrs``...);
    None when the dataset has no manifest, ``CorruptStoreError`` when it is torn."""
    try:
        group = backend.get_json(f"{layout.manifest_path(dataset)}/zarr.json")
    except CorruptStoreError as exc:
        raise CorruptStoreError(
            f"the manifest of {dataset} is unreadable ({exc}); import it again"
        ) from exc
    if group is None:
        return None
    meta = group.get("attributes", {}).get("featstore")
    if not isinstance(meta, dict) or "columns" not in meta:
        raise CorruptStoreError(f"the manifest of {dataset} has no column list")
    return meta


def prune(
    backend: Backend,
    dataset: str,
    older_than_s: float,
    *,
    replaced: str | None = None,
    dry_run: bool = False,
) -> list[str]:
    """Remove what the pointer does not name: versions older than ``older_than_s``
    (and ``replaced``, whatever its age) and, once the pointer names a version, an old
    store's unversioned columns. Returns the names removed (under ``manifest/``)."""
    base = layout.manifest_path(dataset)
    try:
        meta = pointer(backend, dataset)
    except CorruptStoreError:
        return []  # cannot tell what it names: the next write replaces it
    current = (meta or {}).get("version")
    limit_ns = int(older_than_s * 1e9)
    removed = []
    for name in backend.list_dir(base):
        if name in ("zarr.json", current):
            continue
        if layout.is_part_id(name):
            young = time.time_ns() - layout.part_created_ns(name) < limit_ns
            if young and name != replaced:
                continue  # another writer's, maybe still in flight
        elif not current:
            continue  # an old store's columns: still the manifest (or no pointer yet)
        removed.append(name)
        if not dry_run:
            backend.delete_tree(f"{base}/{name}")
    return removed


def _encode_column(column: pd.Series) -> tuple[np.ndarray, bool]:
    """A manifest column as a storable 1-D array, and whether it is JSON text.

    Numbers and booleans keep their type (floats keep NaN); string columns are
    stored as strings; anything else (lists, dicts, missing values in a
    non-float column) becomes JSON text, decoded again on read.
    """
    from pandas.api import types

    dtype = column.dtype
    if types.is_float_dtype(dtype):
        return column.to_numpy(dtype=np.float64, na_value=np.nan), False
    if not column.isna().any():
        if types.is_bool_dtype(dtype):
            return column.to_numpy(dtype=bool), False
        if types.is_integer_dtype(dtype):
            return column.to_numpy(dtype=np.int64), False
        values = column.to_numpy(dtype=object)
        if all(isinstance(v, str) for v in values):
            return values, False
    values = column.to_numpy(dtype=object)
    out = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        out[i] = json.dumps(_jsonable(v), default=str)
    return out, True


def _jsonable(value: Any) -> Any:
    import pandas as pd

    if isinstance(value, np.ndarray):
        return [_jsonable(v) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return None
    return value
