"""Names and paths inside a feature store (DESIGN.md "The store").

```
<dataset>/manifest/zarr.json                       the pointer: attrs name the current version
<dataset>/manifest/<version_id>/<column>           (old stores: <dataset>/manifest/<column>)
<dataset>/<encoder>/parts/<part_id>/layer_<NN>
<dataset>/<encoder>/_commits/<part_id>.json
<dataset>/<encoder>/_failures/<part_id>.json
```

Pure string work: no I/O, no zarr.
"""

from __future__ import annotations

import os
import re
import secrets
import time
from collections.abc import Iterable

from featstore.errors import StoreError

LAST = "last"
"""The model's final output as the paper uses it (e.g. CLIP's projected embedding)."""

Layer = int | str
"""A layer: a Hugging Face ``hidden_states`` index (0 = input of block 1), ``"last"``,
or a short lowercase name for auxiliary per-frame data (e.g. ``"landmarks"``)."""

CHUNK_ROWS = 512
"""Rows per inner chunk of a layer array (one shard holds the whole part)."""
DEFAULT_PART_BYTES = 128 * 2**20
"""Target size of one layer of a part (README "Store layout" says why not 64 MiB)."""
DEFAULT_BUFFER_BYTES = 512 * 2**20
"""Cap on what one writer buffers across all its layers."""

GC_FLOOR_S = 600.0
"""``gc`` never removes a part, record or temporary file younger than this, whatever
``--older-than`` says: a writer may still be at work on it. A writer that finds its
part older than half of this when it commits checks that ``gc`` left it whole."""
GC_FLOOR_ENV = "FEATSTORE_GC_FLOOR_S"


def gc_floor_s() -> float:
    """:data:`GC_FLOOR_S`, or the ``FEATSTORE_GC_FLOOR_S`` environment variable (tests)."""
    text = os.environ.get(GC_FLOOR_ENV, "").strip()
    if not text:
        return GC_FLOOR_S
    try:
        value = float(text)
    except ValueError:
        raise StoreError(f"{GC_FLOOR_ENV} must be a number of seconds, got {text!r}") from None
    if not value >= 0:
        raise StoreError(f"{GC_FLOOR_ENV} must be >= 0, got {text!r}")
    return value


MANIFEST = "manifest"
PARTS = "parts"
COMMITS = "_commits"
FAILURES = "_failures"
REMOVING = "_removing.json"  # written first by `featstore store rm`: the encoder is going
RESERVED = frozenset({MANIFEST, PARTS, COMMITS, FAILURES})

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
_LAYER_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_PART_RE = re.compile(r"^(\d{19})-([0-9a-f]{12})$")


def check_name(kind: str, name: str) -> str:
    """Validate a dataset or encoder name: it becomes a path component of the store."""
    if not isinstance(name, str) or not _NAME_RE.match(name) or name in RESERVED:
        raise StoreError(
            f"invalid {kind} name {name!r}: use letters, digits, '.', '_', '+' or '-' "
            f"(not starting with a symbol, at most 128 characters, not one of {sorted(RESERVED)})"
        )
    return name


def normalize_layer(layer: Layer) -> Layer:
    """Return the canonical form of a layer: an int >= 0, ``"last"`` or a short name.

    >>> normalize_layer("12"), normalize_layer(3), normalize_layer("last")
    (12, 3, 'last')
    """
    if isinstance(layer, bool):
        raise StoreError(f"invalid layer {layer!r}")
    if isinstance(layer, int):
        if layer < 0:
            raise StoreError(f"invalid layer {layer}: layer indices start at 0 (never 'last n')")
        return layer
    if isinstance(layer, str):
        text = layer.strip()
        if text.isdigit():
            return int(text)
        if text.startswith("layer_"):
            return normalize_layer(text[len("layer_") :])
        if _LAYER_NAME_RE.match(text):
            return text
    raise StoreError(
        f"invalid layer {layer!r}: expected an index >= 0, 'last' or a short lowercase name"
    )


def layer_array_name(layer: Layer) -> str:
    """The array name of a layer inside a part: ``layer_07``, ``layer_last``."""
    layer = normalize_layer(layer)
    return f"layer_{layer:02d}" if isinstance(layer, int) else f"layer_{layer}"


def layer_key(layer: Layer) -> str:
    """The layer as text in commit records and attributes: ``"7"``, ``"last"``."""
    return str(normalize_layer(layer))


def layer_sort_key(layer: Layer) -> tuple[int, int, str]:
    """Numeric layers first in order, then ``last``, then named layers."""
    layer = normalize_layer(layer)
    if isinstance(layer, int):
        return (0, layer, "")
    return (1, 0, "") if layer == LAST else (2, 0, layer)


def new_part_id() -> str:
    """A unique, time-sortable part id: ``<unix time in ns>-<12 random hex digits>``."""
    return f"{time.time_ns():019d}-{secrets.token_hex(6)}"


def part_created_ns(part_id: str) -> int:
    """The creation time embedded in a part id (ns since the epoch)."""
    match = _PART_RE.match(part_id)
    if not match:
        raise StoreError(f"not a part id: {part_id!r}")
    return int(match.group(1))


def is_part_id(name: str) -> bool:
    return bool(_PART_RE.match(name))


def dataset_path(dataset: str) -> str:
    return check_name("dataset", dataset)


def manifest_path(dataset: str) -> str:
    return f"{dataset_path(dataset)}/{MANIFEST}"


def manifest_version_path(dataset: str, version_id: str) -> str:
    """Where one written version of a manifest keeps its columns."""
    return f"{manifest_path(dataset)}/{version_id}"


def encoder_path(dataset: str, encoder: str) -> str:
    return f"{dataset_path(dataset)}/{check_name('encoder', encoder)}"


def parts_path(dataset: str, encoder: str) -> str:
    return f"{encoder_path(dataset, encoder)}/{PARTS}"


def part_path(dataset: str, encoder: str, part_id: str) -> str:
    return f"{parts_path(dataset, encoder)}/{part_id}"


def commits_path(dataset: str, encoder: str) -> str:
    return f"{encoder_path(dataset, encoder)}/{COMMITS}"


def commit_key(dataset: str, encoder: str, part_id: str) -> str:
    return f"{commits_path(dataset, encoder)}/{part_id}.json"


def failures_path(dataset: str, encoder: str) -> str:
    return f"{encoder_path(dataset, encoder)}/{FAILURES}"


def failure_key(dataset: str, encoder: str, part_id: str) -> str:
    return f"{failures_path(dataset, encoder)}/{part_id}.json"


def removal_key(dataset: str, encoder: str) -> str:
    """The marker of an encoder being removed (``featstore.removal``): readers and
    writers treat the encoder as gone from the moment it exists."""
    return f"{encoder_path(dataset, encoder)}/{REMOVING}"


def format_layers(layers: Iterable[Layer]) -> str:
    """``"0, 12, last"``: layers in order, for messages."""
    return ", ".join(layer_key(x) for x in sorted(layers, key=layer_sort_key))
