"""ExDDV: ``ExDDV.csv`` with human explanations and click locations of deepfake artifacts.

Columns: ``id, username, movie_name, text, dataset, manipulation,
click_locations, difficulty, split``. ``click_locations`` is JSON
``{"<frame_index>": {"x": rel, "y": rel}}`` with coordinates relative to the
frame; annotators clicked slightly outside it at times, so values up to
``1 + CLICK_TOLERANCE`` (and down to ``-CLICK_TOLERANCE``) are kept unclipped,
anything further is malformed. ``manipulation`` names the method (``real`` /
``original`` / ``pristine`` mean a real video) and ``dataset`` the source
dataset in its own spelling (kept as ``source_dataset``).

Video paths: ``path_template`` formatted with the row's columns (default
``{movie_name}``, ``.mp4`` added when there is no extension). Several
annotations of the same video are merged into one row: ``text``, ``clicks``,
``username`` and ``difficulty`` are the first annotation's, ``annotations``
lists all of them.
"""

from __future__ import annotations

import math
from pathlib import Path, PurePosixPath
from typing import Any

from featstore.datasets.manifest import (
    ImportResult,
    ParsedRows,
    RowError,
    locate,
    normalise_split,
    relative_path,
    video_id_for,
)
from featstore.datasets.tabular import parse_json, read_table
from featstore.datasets.validation import finalize

NAME = "exddv"
METADATA_FILE = "ExDDV.csv"
COLUMNS = (
    "id",
    "username",
    "movie_name",
    "text",
    "dataset",
    "manipulation",
    "click_locations",
    "difficulty",
    "split",
)
REAL_MANIPULATIONS = frozenset({"real", "original", "pristine"})
CLICK_TOLERANCE = 0.25


def read_exddv(
    root: Path,
    *,
    strict: bool = False,
    check_files: bool = True,
    path_template: str = "{movie_name}",
) -> ImportResult:
    """Read ``ExDDV.csv`` (``root`` is its directory or the file)."""
    root, file = locate(Path(root), METADATA_FILE)
    table = read_table(file, COLUMNS)
    parsed = ParsedRows(root=root)
    for i, row in enumerate(table.to_dict("records")):
        parsed.add(i, file.name, lambda r=row: _parse_row(r, path_template))
    parsed.rows = _merge_annotations(parsed.rows)
    return finalize(parsed, format=NAME, strict=strict, check_files=check_files)


def parse_clicks(text: str) -> list[dict[str, float | int]]:
    """``{"12": {"x": 0.4, "y": 0.5}}`` -> ``[{"frame": 12, "x": 0.4, "y": 0.5}]`` sorted by frame."""
    if not text.strip():
        return []
    data = parse_json(text, name="click_locations")
    if not isinstance(data, dict):
        raise RowError(f"click_locations must be a JSON object, got {type(data).__name__}")
    clicks = []
    for key, point in data.items():
        try:
            frame = int(key)
        except ValueError:
            raise RowError(f"click frame index must be an integer, got {key!r}") from None
        if frame < 0:
            raise RowError(f"click frame index must be >= 0, got {frame}")
        if not isinstance(point, dict) or not {"x", "y"} <= point.keys():
            raise RowError(f"click at frame {frame} must be {{'x': ..., 'y': ...}}, got {point!r}")
        xy = []
        for axis in ("x", "y"):
            v = point[axis]
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise RowError(f"click {axis} at frame {frame} must be a number, got {v!r}")
            if not -CLICK_TOLERANCE <= v <= 1 + CLICK_TOLERANCE:
                raise RowError(f"click {axis}={v} at frame {frame} is not a relative coordinate")
            xy.append(float(v))
        clicks.append({"frame": frame, "x": xy[0], "y": xy[1]})
    return sorted(clicks, key=lambda c: c["frame"])


def _parse_row(row: dict[str, str], path_template: str) -> dict[str, Any]:
    try:
        name = path_template.format(**row)
    except (KeyError, IndexError, ValueError) as exc:
        raise RowError(f"path_template {path_template!r} does not fit the row: {exc}") from None
    if not PurePosixPath(name).suffix:
        name += ".mp4"
    path = relative_path(name)
    vid = video_id_for(path)
    try:
        manipulation = row["manipulation"].strip()
        label = int(manipulation.lower() not in REAL_MANIPULATIONS)
        clicks = parse_clicks(row["click_locations"])
        split = normalise_split(row["split"])
    except RowError as exc:
        exc.video_id, exc.path = vid, path
        raise
    annotation = {
        "username": row["username"],
        "text": row["text"],
        "difficulty": row["difficulty"],
        "clicks": clicks,
    }
    return {
        "video_id": vid,
        "path": path,
        "label": label,
        "split": split,
        "modify_type": "unknown" if label else "real",
        "audio_fake": None if label else False,
        "visual_fake": bool(label),
        "fake_segments": [],
        "duration_s": float("nan"),
        "exddv_id": row["id"],
        "movie_name": row["movie_name"],
        "source_dataset": row["dataset"],
        "manipulation": manipulation,
        **annotation,
        "annotations": [annotation],
    }


def _merge_annotations(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Fold rows of the same video (same label, split, source) into the first one."""
    first: dict[str, dict[str, Any]] = {}
    merged = []
    for row in rows:
        key = (row["label"], row["split"], row["source_dataset"], row["manipulation"])
        head = first.get(row["video_id"])
        if (
            head is not None
            and (head["label"], head["split"], head["source_dataset"], head["manipulation"]) == key
        ):
            head["annotations"].extend(row["annotations"])
            continue
        first.setdefault(row["video_id"], row)
        merged.append(row)  # a conflicting repeat stays and is reported as a duplicate id
    return merged
