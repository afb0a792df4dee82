"""Generic ``csv`` format (``path,label[,split]``) and the CSV table loader other formats share.

The generic CSV may also carry ``modify_type``, ``fake_segments`` (JSON),
``duration_s``, ``audio_fake`` and ``visual_fake`` (true/false/empty = unknown);
any other column is kept as text. Paths are relative to the CSV's folder.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from featstore.datasets.manifest import (
    DatasetFormatError,
    ImportResult,
    ParsedRows,
    Problem,
    ProblemKind,
    RowError,
    normalise_split,
    parse_segments,
    relative_path,
    video_id_for,
)
from featstore.datasets.validation import finalize

NAME = "csv"
KNOWN = (
    "path",
    "label",
    "split",
    "modify_type",
    "fake_segments",
    "duration_s",
    "audio_fake",
    "visual_fake",
)
_TRUE = {"1", "true", "yes", "fake"}
_FALSE = {"0", "false", "no", "real"}
_UNKNOWN = {"", "unknown", "na", "nan", "none", "null"}


def read_table(file: Path, required: Sequence[str]) -> pd.DataFrame:
    """All cells as text (empty cells as ""); raises ``DatasetFormatError`` if unreadable."""
    try:
        df = pd.read_csv(file, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (OSError, UnicodeDecodeError, ValueError, pd.errors.ParserError) as exc:
        raise DatasetFormatError(
            f"cannot read {file}: {exc}",
            [Problem(ProblemKind.UNREADABLE, str(exc), source=file.name)],
        ) from exc
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DatasetFormatError(
            f"{file} lacks column(s) {', '.join(missing)}",
            [Problem(ProblemKind.UNREADABLE, f"missing columns {missing}", source=file.name)],
        )
    return df


def column_name(name: str) -> str:
    """An extra column's name made storable: letters, digits, ``_ . -`` (others become ``_``)."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "_", name.strip())[:128]
    return cleaned if cleaned and cleaned[0] not in ".-" else f"_{cleaned}"


def parse_flag(value: Any, *, name: str) -> bool | None:
    """true/false/1/0/fake/real -> bool; empty/unknown -> None (unknown)."""
    key = str(value).strip().lower()
    if key in _TRUE:
        return True
    if key in _FALSE:
        return False
    if key in _UNKNOWN:
        return None
    raise RowError(f"{name} must be true/false/unknown, got {value!r}")


def parse_json(text: str, *, name: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise RowError(f"{name} is not valid JSON: {exc.msg}") from exc


def read_csv_manifest(
    root: Path, *, strict: bool = False, check_files: bool = True
) -> ImportResult:
    """A CSV file with ``path,label[,split]`` (``root`` is the file, or a folder holding one CSV)."""
    root = Path(root)
    if root.is_dir():
        candidates = sorted(root.glob("*.csv"))
        if len(candidates) != 1:
            raise DatasetFormatError(
                f"csv: expected exactly one .csv file in {root}, found {len(candidates)}; "
                "pass the file itself"
            )
        root = candidates[0]
    if not root.is_file():
        raise DatasetFormatError(f"csv: no such file {root}")
    table = read_table(root, ["path", "label"])
    parsed = ParsedRows(root=root.parent)
    for i, row in enumerate(table.to_dict("records")):
        parsed.add(i, root.name, lambda r=row: _parse_row(r))
    return finalize(parsed, format=NAME, strict=strict, check_files=check_files)


def _parse_row(row: dict[str, str]) -> dict[str, Any]:
    path = relative_path(row["path"])
    vid = video_id_for(path)
    try:
        label = parse_flag(row["label"], name="label")
        if label is None:
            raise RowError(f"label must be 0/1 or real/fake, got {row['label']!r}")
        default_type = "unknown" if label else "real"
        modify_type = row.get("modify_type", "").strip() or default_type
        segments = parse_segments(
            parse_json(row["fake_segments"], name="fake_segments")
            if row.get("fake_segments", "").strip()
            else []
        )
        duration = row.get("duration_s", "").strip()
        try:
            duration_s = float(duration) if duration else math.nan
        except ValueError:
            raise RowError(f"duration_s must be a number, got {duration!r}") from None
        extras = {column_name(k): v for k, v in row.items() if k not in KNOWN}
        # A real video with no flags given has neither modality fake; stated flags are checked.
        audio = parse_flag(row.get("audio_fake", ""), name="audio_fake")
        visual = parse_flag(row.get("visual_fake", ""), name="visual_fake")
        return {
            "video_id": vid,
            "path": path,
            "label": int(label),
            "split": normalise_split(row.get("split", "")),
            "modify_type": modify_type,
            "audio_fake": False if audio is None and not label else audio,
            "visual_fake": False if visual is None and not label else visual,
            "fake_segments": segments,
            "duration_s": duration_s,
            **extras,
        }
    except RowError as exc:
        exc.video_id, exc.path = vid, path
        raise
