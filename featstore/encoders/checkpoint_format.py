"""What kind of file a checkpoint is, read from its bytes before anything is loaded.

``torch.load`` picks its reader from the file itself, and one of them runs code no
unpickler can stop: a zip holding ``constants.pkl`` (a TorchScript archive) goes to
``torch.jit.load``, which compiles the archive's ``code/`` and runs its
``__setstate__`` methods, whatever ``pickle_module`` was passed. So featstore looks
first (zip directory, tar header, magic bytes; nothing is unpickled or compiled) and
loads only what it recognises (:func:`inspect_checkpoint`):

=================  =====================================================  ===========================
kind               what it is                                             featstore loads it
=================  =====================================================  ===========================
``torch-zip``      ``torch.save`` (zip: ``data.pkl``, ``data/<key>``,     restricted unpickler
                   ``version``, ``byteorder``, ``.data/...``)
``torch-legacy``   ``torch.save(_use_new_zipfile_serialization=False)``   restricted unpickler
                   (pickles after torch's magic number)
``safetensors``    a safetensors file, whatever its name                  safetensors (never pickle)
``torch-tar``      torch < 0.4's tar format                               only with --trust-checkpoint
``zip-other``      a zip with other entries than ``torch.save`` writes    only with --trust-checkpoint
``torchscript``    ``torch.jit.save`` (``constants.pkl``, ``code/``)      never: refused even trusted
``unknown``        anything else                                          never
=================  =====================================================  ===========================
"""

from __future__ import annotations

import json
import os
import re
import struct
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "LEGACY",
    "RESTRICTED",
    "SAFETENSORS",
    "TORCHSCRIPT",
    "TRUSTED_ONLY",
    "UNKNOWN",
    "ZIP",
    "CheckpointFormat",
    "inspect_checkpoint",
]

ZIP = "torch-zip"
LEGACY = "torch-legacy"
SAFETENSORS = "safetensors"
TAR = "torch-tar"
ZIP_OTHER = "zip-other"
TORCHSCRIPT = "torchscript"
UNKNOWN = "unknown"

RESTRICTED = frozenset({ZIP, LEGACY})
"""Kinds the restricted unpickler reads without running code."""
TRUSTED_ONLY = frozenset({TAR, ZIP_OTHER})
"""Kinds read only with consent (``--trust-checkpoint``): full ``torch.load``."""

ZIP_MAGIC = b"PK\x03\x04"  # torch.serialization._is_zipfile looks at the first 4 bytes only
TORCH_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER
# records torch.save writes under the archive's one top-level folder (torch 1.6 - 2.x)
TORCH_SAVE_RECORD = re.compile(
    r"(data\.pkl|version|byteorder|\.format_version|\.storage_alignment"
    r"|\.data/version|\.data/serialization_id|data/[A-Za-z0-9_]+)"
)
MAX_SAFETENSORS_HEADER = 100_000_000  # safetensors' own limit on the JSON header


@dataclass(frozen=True)
class CheckpointFormat:
    """A checkpoint file's kind (see the module table) and what gave it away."""

    kind: str
    detail: str


def inspect_checkpoint(path: str | os.PathLike[str]) -> CheckpointFormat:
    """The kind of checkpoint ``path`` is, from its bytes (it never unpickles or compiles).

    >>> inspect_checkpoint("model.pt").kind  # doctest: +SKIP
    'torch-zip'
    """
    file = Path(path)
    with open(file, "rb") as fh:
        head = fh.read(16)
    if head.startswith(ZIP_MAGIC):
        return _inspect_zip(file)
    if _is_safetensors(file, head):
        return CheckpointFormat(SAFETENSORS, "safetensors header")
    if _is_tar(file):
        return CheckpointFormat(TAR, "a tar archive (torch < 0.4's legacy format)")
    if _starts_with_torch_magic(file):
        return CheckpointFormat(LEGACY, "torch's legacy pickle format (magic number)")
    return CheckpointFormat(
        UNKNOWN,
        f"starts with {head[:8]!r}: not a torch.save zip or legacy pickle, nor safetensors",
    )


def _inspect_zip(file: Path) -> CheckpointFormat:
    """Classify a zip by its entries, as both Python's reader and torch's see them."""
    try:
        with zipfile.ZipFile(file) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        return CheckpointFormat(UNKNOWN, f"a damaged zip archive ({exc})")
    records = _relative_records(names)
    torch_records = _torch_zip_records(file)
    if torch_records is None:
        return CheckpointFormat(UNKNOWN, "a zip archive torch's reader cannot open")
    if records is None:
        return CheckpointFormat(ZIP_OTHER, "zip entries are not under one top-level folder")
    all_records = set(records) | set(torch_records)
    # torch.load's own test (serialization._is_torchscript_zip) plus TorchScript's code folder
    if "constants.pkl" in all_records or any(r.startswith("code/") for r in all_records):
        return CheckpointFormat(TORCHSCRIPT, "a TorchScript archive (constants.pkl, code/)")
    odd = sorted(r for r in all_records if not TORCH_SAVE_RECORD.fullmatch(r))
    if odd or "data.pkl" not in all_records:
        shown = ", ".join(odd[:5]) if odd else "no data.pkl"
        return CheckpointFormat(ZIP_OTHER, f"zip entries torch.save does not write: {shown}")
    return CheckpointFormat(ZIP, "torch.save zip archive")


def _relative_records(names: list[str]) -> list[str] | None:
    """Entry names without their common top-level folder; None when there is none."""
    prefixes = {name.split("/", 1)[0] for name in names}
    if len(prefixes) != 1 or any("/" not in name for name in names):
        return None
    return [name.split("/", 1)[1] for name in names]


def _torch_zip_records(file: Path) -> list[str] | None:
    """The records torch's own zip reader lists (what ``torch.load`` decides on); None
    when it cannot open the file. Listing reads the zip directory only."""
    import torch

    reader_cls = getattr(torch._C, "PyTorchFileReader", None)
    if reader_cls is None:  # a torch without it: Python's listing decides alone
        return []
    try:
        return list(reader_cls(str(file)).get_all_records())
    except Exception:  # a C++ reader error for anything it cannot parse
        return None


def _is_safetensors(file: Path, head: bytes) -> bool:
    """An 8-byte little-endian header length, then that many bytes of JSON object."""
    if len(head) < 9 or head[8:9] != b"{":
        return False
    (size,) = struct.unpack("<Q", head[:8])
    if not 2 <= size <= min(MAX_SAFETENSORS_HEADER, file.stat().st_size - 8):
        return False
    with open(file, "rb") as fh:
        fh.seek(8)
        try:
            header = json.loads(fh.read(size))
        except (UnicodeDecodeError, ValueError):
            return False
    return isinstance(header, dict)


def _is_tar(file: Path) -> bool:
    """What torch's legacy loader tries first for a file at offset 0 (headers only)."""
    try:
        with tarfile.open(file, mode="r:"):
            return True
    except (tarfile.TarError, OSError, ValueError):
        return False


def _starts_with_torch_magic(file: Path) -> bool:
    """The first pickle in the file is torch's magic number (read by the restricted
    unpickler, which rebuilds only plain data)."""
    from featstore.encoders.checkpoints import RestrictedUnpickler

    with open(file, "rb") as fh:
        try:
            first = RestrictedUnpickler(fh).load()
        except Exception:  # any unpickling failure: not a legacy torch file
            return False
    return isinstance(first, int) and first == TORCH_MAGIC_NUMBER
