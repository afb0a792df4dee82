"""Formats defined by folder layout only: ``real``, ``folder`` and ``avlips``.

- ``real``: every video under the root (any nesting, VoxCeleb-style
  ``id/clip/00001.mp4``) is real; for anomaly detectors trained on real data.
- ``folder``: ``real/`` and ``fake/`` subfolders, optionally inside
  ``train/``, ``val/``, ``test/``.
- ``avlips``: ``AVLips/0_real/N.mp4`` and ``AVLips/1_fake/N.mp4`` (the root is
  the ``AVLips`` folder or its parent); label from the folder prefix. The fakes
  are lip-synced (visual fake), their audio is of unknown origin.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from featstore.datasets.manifest import (
    SPLITS,
    VIDEO_SUFFIXES,
    DatasetFormatError,
    ImportResult,
    ParsedRows,
    Problem,
    ProblemKind,
    video_id_for,
)
from featstore.datasets.validation import finalize


def iter_videos(folder: Path) -> Iterator[Path]:
    """Video files below ``folder`` in sorted order, skipping hidden files and folders."""
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if path.suffix.lower() in VIDEO_SUFFIXES and path.is_file():
            yield path


def _record(root: Path, file: Path, *, label: int, split: str, **extra: Any) -> dict[str, Any]:
    path = file.relative_to(root).as_posix()
    return {
        "video_id": video_id_for(path),
        "path": path,
        "label": label,
        "split": split,
        "modify_type": "real" if label == 0 else "unknown",
        "audio_fake": False if label == 0 else None,
        "visual_fake": False if label == 0 else None,
        "fake_segments": [],
        "duration_s": float("nan"),
        **extra,
    }


def _require_dir(root: Path, what: str) -> None:
    if not root.is_dir():
        raise DatasetFormatError(
            f"{what}: {root} is not a directory",
            [Problem(ProblemKind.UNREADABLE, "not a directory", source=str(root))],
        )


def _collect(parsed: ParsedRows, folder: Path, source: str, **fields: Any) -> None:
    for i, file in enumerate(iter_videos(folder)):
        record = _record(parsed.root, file, **fields)
        parsed.add(i, source, lambda r=record: r)


def read_real(
    root: Path, *, strict: bool = False, check_files: bool = True, split: str = "train"
) -> ImportResult:
    """Every video below ``root`` as a real video in ``split`` (default train)."""
    root = Path(root)
    _require_dir(root, "real")
    parsed = ParsedRows(root=root)
    _collect(parsed, root, ".", label=0, split=split)
    if not parsed.rows:
        raise DatasetFormatError(f"real: no video files under {root}")
    return finalize(parsed, format="real", strict=strict, check_files=check_files)


def read_folder(root: Path, *, strict: bool = False, check_files: bool = True) -> ImportResult:
    """``real/`` + ``fake/`` below ``root`` or below each of ``train/``, ``val/``, ``test/``."""
    root = Path(root)
    _require_dir(root, "folder")
    split_dirs = [s for s in SPLITS[:3] if (root / s).is_dir()]
    groups = [(root / s, s) for s in split_dirs] or [(root, "unassigned")]
    parsed = ParsedRows(root=root)
    for base, split in groups:
        for name, label in (("real", 0), ("fake", 1)):
            if (base / name).is_dir():
                source = (base / name).relative_to(root).as_posix()
                _collect(parsed, base / name, source, label=label, split=split)
    if not parsed.rows:
        raise DatasetFormatError(
            f"folder: no videos under {root}/real or {root}/fake "
            "(or under train/, val/, test/ of those)"
        )
    return finalize(parsed, format="folder", strict=strict, check_files=check_files)


def read_avlips(root: Path, *, strict: bool = False, check_files: bool = True) -> ImportResult:
    """AVLips: ``0_real`` / ``1_fake`` (root = ``AVLips`` folder or its parent); split unassigned."""
    root = Path(root)
    _require_dir(root, "avlips")
    base = root / "AVLips" if (root / "AVLips").is_dir() else root
    parsed = ParsedRows(root=root)
    for name, label in (("0_real", 0), ("1_fake", 1)):
        if not (base / name).is_dir():
            raise DatasetFormatError(
                f"avlips: missing folder {base / name}",
                [Problem(ProblemKind.UNREADABLE, f"no {name} folder", source=str(base))],
            )
        _collect(parsed, base / name, name, label=label, split="unassigned")
    for record in parsed.rows:
        if record["label"] == 1:
            record["visual_fake"] = True  # lip-synced; audio origin unknown
    return finalize(parsed, format="avlips", strict=strict, check_files=check_files)
