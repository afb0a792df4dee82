"""Published split files (e.g. the paper authors' ``{train,val,test}_labels.csv``) as a view.

A split file lists one video per line: ``path,label`` or ``video_id`` (with
or without a header; labels ``0``/``1``/``0.0``/``1.0``). Each line is matched
to a manifest row, in this order, accepting only a unique match:

1. the row's ``path`` or ``video_id`` (the line with or without its extension);
2. a row whose path ends with the line after whole leading folders (the
   authors' AV1M files name ``id0/v/00001/real.mp4`` for the manifest's
   ``train/id0/v/00001/real.mp4``);
3. the line without leading folders it has and the manifest lacks
   (``FakeAVCeleb/RealVideo-RealAudio/...`` for ``RealVideo-RealAudio/...``).

Unmatched and ambiguous lines are reported, not fatal; a label that
contradicts the manifest, a video listed in two splits or an unreadable line is
an error and nothing is applied. The result is a view
(``featstore.datasets.views``): the manifest itself is not changed.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from featstore.datasets.manifest import video_id_for
from featstore.errors import ManifestError

KEY_COLUMNS = ("path", "video_id", "file", "filename", "video", "id")
LABEL_COLUMN = "label"
_SHOWN = 5


class SplitFileError(ManifestError):
    """A split file cannot be read, or contradicts the manifest (nothing is applied)."""


@dataclass(frozen=True)
class SplitLine:
    """One video named by a split file; ``line`` is 1-based in ``file``."""

    file: str
    line: int
    key: str
    label: int | None


@dataclass(frozen=True)
class Unmatched:
    """A split file line that names no (or more than one) manifest video."""

    split: str
    entry: SplitLine
    reason: str

    def __str__(self) -> str:
        return f"{self.entry.file}:{self.entry.line}: {self.entry.key}: {self.reason}"


@dataclass(frozen=True)
class SplitFilesResult:
    """The view the files make: each manifest row's split (``""`` = in no file)."""

    splits: pd.Series = field(repr=False)
    matched: Mapping[str, int]
    unmatched: tuple[Unmatched, ...]
    duplicates: int  # lines naming a video already listed in the same split


def _parse_label(text: str, file: str, line: int) -> int:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if value not in (0.0, 1.0):
        raise SplitFileError(f"{file}:{line}: label must be 0 or 1 (or 0.0/1.0), got {text!r}")
    return int(value)


def read_split_file(path: str | Path) -> list[SplitLine]:
    """The videos a split file names, with their labels where it gives them."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise SplitFileError(f"cannot read split file {path}: {exc}") from exc
    try:
        rows = [
            (i, [c.strip() for c in row])
            for i, row in enumerate(csv.reader(io.StringIO(text)), start=1)
            if any(c.strip() for c in row)
        ]
    except csv.Error as exc:
        raise SplitFileError(f"cannot read split file {path}: {exc}") from exc
    if not rows:
        raise SplitFileError(f"split file {path} lists no videos")
    key_at, label_at = 0, 1
    header = [c.lower() for c in rows[0][1]]
    if header[0] in KEY_COLUMNS or (LABEL_COLUMN in header and len(header) > 1):
        key_at = next((header.index(k) for k in KEY_COLUMNS if k in header), None)
        if key_at is None:
            raise SplitFileError(f"{path}: header names no video column ({', '.join(KEY_COLUMNS)})")
        label_at = header.index(LABEL_COLUMN) if LABEL_COLUMN in header else None
        rows = rows[1:]
    elif len(header) == 1:
        label_at = None
    lines = []
    for number, cells in rows:
        if label_at is not None and len(cells) <= max(key_at, label_at):
            raise SplitFileError(f"{path}:{number}: expected a video and a label, got {cells}")
        if not cells[key_at]:
            raise SplitFileError(f"{path}:{number}: empty video name")
        label = None if label_at is None else _parse_label(cells[label_at], path.name, number)
        lines.append(SplitLine(path.name, number, cells[key_at], label))
    return lines


def _normal(key: str) -> str:
    text = key.strip().replace("\\", "/")
    while text.startswith("./"):
        text = text[2:]
    return text.strip("/")


class _Matcher:
    """Finds the manifest row a split-file line names (see the module docstring)."""

    def __init__(self, manifest: pd.DataFrame) -> None:
        self._exact: dict[str, int] = {}
        for column in ("video_id", "path"):
            for pos, value in enumerate(manifest[column].astype(str)):
                self._exact.setdefault(value, pos)
        self._ids = manifest["video_id"].astype(str).tolist()
        self._depth = max((v.count("/") for v in self._ids), default=0)
        self._tails: dict[int, dict[str, int]] = {}

    def _tail_index(self, k: int) -> dict[str, int]:
        """video_id without its first ``k`` folders -> row (-1 when several rows share it)."""
        index = self._tails.get(k)
        if index is None:
            index = {}
            for pos, vid in enumerate(self._ids):
                parts = vid.split("/", k)
                if len(parts) > k:
                    index[parts[k]] = -1 if parts[k] in index else pos
            self._tails[k] = index
        return index

    def _forms(self, key: str) -> Iterator[str]:
        yield key
        stem = video_id_for(key)
        if stem != key:
            yield stem

    def find(self, key: str) -> tuple[int | None, str]:
        key = _normal(key)
        for form in self._forms(key):
            if form in self._exact:
                return self._exact[form], ""
        ambiguous = False
        for k in range(1, self._depth + 1):
            index = self._tail_index(k)
            for form in self._forms(key):
                pos = index.get(form)
                if pos == -1:
                    ambiguous = True
                elif pos is not None:
                    return pos, ""
        if ambiguous:
            return None, "ambiguous: the end of several manifest paths"
        parts = key.split("/")
        for k in range(1, len(parts)):
            for form in self._forms("/".join(parts[k:])):
                if form in self._exact:
                    return self._exact[form], ""
        return None, "no such video in the manifest"


def apply_split_files(manifest: pd.DataFrame, files: Mapping[str, str | Path]) -> SplitFilesResult:
    """Match ``files`` (split -> file) to ``manifest``; raises ``SplitFileError`` on conflicts.

    >>> result = apply_split_files(manifest, {"train": "train_labels.csv"})  # doctest: +SKIP
    >>> result.splits.value_counts(), len(result.unmatched)  # doctest: +SKIP
    """
    if not files:
        raise SplitFileError("give at least one split file (--train, --val or --test)")
    matcher = _Matcher(manifest)
    labels = manifest["label"].to_numpy()
    ids = manifest["video_id"].astype(str).to_numpy()
    assigned = np.full(len(manifest), "", dtype=object)
    where: dict[int, SplitLine] = {}
    unmatched: list[Unmatched] = []
    conflicts: list[str] = []
    matched = dict.fromkeys(files, 0)
    duplicates = 0
    for split, file in files.items():
        for entry in read_split_file(file):
            pos, reason = matcher.find(entry.key)
            if pos is None:
                unmatched.append(Unmatched(split, entry, reason))
                continue
            if entry.label is not None and entry.label != int(labels[pos]):
                conflicts.append(
                    f"{entry.file}:{entry.line}: {entry.key} has label {entry.label}, "
                    f"the manifest says {int(labels[pos])} ({ids[pos]})"
                )
                continue
            if assigned[pos] == split:
                duplicates += 1
                continue
            if assigned[pos]:
                first = where[pos]
                conflicts.append(
                    f"{ids[pos]} is in {assigned[pos]} ({first.file}:{first.line}) "
                    f"and {split} ({entry.file}:{entry.line})"
                )
                continue
            assigned[pos] = split
            where[pos] = entry
            matched[split] += 1
    if conflicts:
        shown = "".join(f"\n  {c}" for c in conflicts[:_SHOWN])
        more = f"\n  ... and {len(conflicts) - _SHOWN} more" if len(conflicts) > _SHOWN else ""
        raise SplitFileError(
            f"{len(conflicts)} line(s) of the split files contradict the manifest; "
            f"nothing was applied:{shown}{more}"
        )
    if not any(matched.values()):
        raise SplitFileError(
            f"no line of the split files names a video of the manifest "
            f"({len(unmatched)} unmatched, e.g. {unmatched[0].entry.key!r})"
        )
    return SplitFilesResult(
        splits=pd.Series(assigned, index=manifest.index, dtype=object),
        matched=matched,
        unmatched=tuple(unmatched),
        duplicates=duplicates,
    )
