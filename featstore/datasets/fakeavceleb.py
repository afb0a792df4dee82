"""FakeAVCeleb: ``meta_data.csv`` with a 9-name header but 10-value rows.

Header: ``source,target1,target2,method,category,type,race,gender,path``;
each row carries one more value: the 9th is the file name, the 10th its folder
(e.g. ``FakeAVCeleb/RealVideo-RealAudio/African/men/id00076``). The folder's
first component is the dataset directory itself and is dropped when it names
``FakeAVCeleb`` or the root. Rows with only 9 values fall back to the documented
layout ``{type}/{race}/{gender}/{source}/{file}``.

Categories: A RealVideo-RealAudio (real), B RealVideo-FakeAudio,
C FakeVideo-RealAudio, D FakeVideo-FakeAudio. There is no official split:
``split`` is ``unassigned`` (see ``protocols.split_favc``).
"""

from __future__ import annotations

import csv
from pathlib import Path, PurePosixPath
from typing import Any

from featstore.datasets.manifest import (
    DatasetFormatError,
    ImportResult,
    ParsedRows,
    Problem,
    ProblemKind,
    RowError,
    flags_for,
    locate,
    relative_path,
    video_id_for,
)
from featstore.datasets.validation import finalize

NAME = "favc"
METADATA_FILE = "meta_data.csv"
HEADER = ("source", "target1", "target2", "method", "category", "type", "race", "gender", "path")
CATEGORIES = {
    "A": ("RealVideo-RealAudio", "real"),
    "B": ("RealVideo-FakeAudio", "audio_modified"),
    "C": ("FakeVideo-RealAudio", "visual_modified"),
    "D": ("FakeVideo-FakeAudio", "both_modified"),
}
FIELDS = ("source", "target1", "target2", "method", "category", "type", "race", "gender")


def read_favc(root: Path, *, strict: bool = False, check_files: bool = True) -> ImportResult:
    """Read FakeAVCeleb's ``meta_data.csv`` (``root`` is its directory or the file)."""
    root, file = locate(Path(root), METADATA_FILE)
    try:
        with file.open(newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetFormatError(
            f"cannot read {file}: {exc}",
            [Problem(ProblemKind.UNREADABLE, str(exc), source=file.name)],
        ) from exc
    header = [h.strip() for h in rows[0]] if rows else []
    missing = [h for h in HEADER[:-1] if h not in header]
    if missing:
        raise DatasetFormatError(
            f"{file} lacks column(s) {', '.join(missing)}",
            [Problem(ProblemKind.UNREADABLE, f"missing columns {missing}", source=file.name)],
        )
    index = {name: header.index(name) for name in FIELDS}
    parsed = ParsedRows(root=root)
    for i, values in enumerate(rows[1:]):
        if not any(v.strip() for v in values):
            continue
        parsed.add(i, file.name, lambda v=values: _parse_row(v, index, len(header), root.name))
    return finalize(parsed, format=NAME, strict=strict, check_files=check_files)


def _parse_row(
    values: list[str], index: dict[str, int], n_header: int, root_name: str
) -> dict[str, Any]:
    if len(values) not in (n_header, n_header + 1):
        raise RowError(f"expected {n_header} or {n_header + 1} values, got {len(values)}")
    fields = {name: values[i].strip() for name, i in index.items()}
    file_name = values[n_header - 1].strip()
    if not file_name:
        raise RowError("empty file name")
    if len(values) == n_header + 1:
        folder = PurePosixPath(values[n_header].strip().replace("\\", "/"))
        if folder.parts and folder.parts[0] in ("FakeAVCeleb", "FakeAVCeleb_v1.2", root_name):
            folder = PurePosixPath(*folder.parts[1:])
    else:
        folder = PurePosixPath(fields["type"], fields["race"], fields["gender"], fields["source"])
    path = relative_path((folder / file_name).as_posix())
    vid = video_id_for(path)
    category = fields["category"]
    if category not in CATEGORIES:
        raise RowError(f"unknown category {category!r}", video_id=vid, path=path)
    type_name, modify_type = CATEGORIES[category]
    if fields["type"] != type_name:
        raise RowError(
            f"category {category} means {type_name}, but type is {fields['type']!r}",
            kind=ProblemKind.LABEL_MISMATCH,
            video_id=vid,
            path=path,
        )
    audio_fake, visual_fake = flags_for(modify_type)
    return {
        "video_id": vid,
        "path": path,
        "label": 0 if category == "A" else 1,
        "split": "unassigned",
        "modify_type": modify_type,
        "audio_fake": audio_fake,
        "visual_fake": visual_fake,
        "fake_segments": [],
        "duration_s": float("nan"),
        **fields,
    }
