"""Checks shared by all formats, and the step that turns parsed rows into a manifest.

Readers only parse; ``finalize`` then checks every row the same way (schema,
duration, fake segments against each other and the video's end, label
consistency, missing files, duplicate ids), drops bad rows or raises in strict
mode, and builds the typed DataFrame. The one safe correction, putting a
row's segments in time order, is applied in both modes and reported.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Mapping
from typing import Any

import pandas as pd

from featstore.datasets.manifest import (
    CORE_COLUMNS,
    MAX_DURATION_S,
    MODIFY_TYPES,
    SEGMENT_COLUMNS,
    SPLITS,
    DatasetFormatError,
    ImportResult,
    ParsedRows,
    Problem,
    ProblemKind,
    empty_manifest,
)
from featstore.timebase import FRAME_HZ

log = logging.getLogger(__name__)

# A segment may end up to one 25 fps frame after ``duration_s`` (rounding of the
# frame count); anything later lies outside the video.
END_TOLERANCE_S = 1 / FRAME_HZ


def label_problem(record: Mapping[str, Any]) -> str | None:
    """Why ``label`` contradicts the row's segments, modify_type or modality flags (or None)."""
    label = record["label"]
    modify_type = record["modify_type"]
    audio, visual = record["audio_fake"], record["visual_fake"]
    if label == 0:
        if modify_type not in ("real", "unknown"):
            return f"label real but modify_type {modify_type!r}"
        if record["fake_segments"]:
            return "label real but fake_segments is not empty"
        if audio is True or visual is True:
            return "label real but a modality is marked fake"
        return None
    if modify_type == "real":
        return "label fake but modify_type 'real'"
    if audio is False and visual is False:
        return "label fake but neither modality is marked fake"
    expected = {
        "audio_modified": (True, False),
        "visual_modified": (False, True),
        "both_modified": (True, True),
    }.get(modify_type)
    if expected is not None:
        for name, flag, want in (
            ("audio_fake", audio, expected[0]),
            ("visual_fake", visual, expected[1]),
        ):
            if flag is not None and flag is not want:
                return f"{name}={flag} contradicts modify_type {modify_type!r}"
    return None


def _schema_problem(record: Mapping[str, Any]) -> str | None:
    if record["label"] not in (0, 1):
        return f"label must be 0 or 1, got {record['label']!r}"
    if record["split"] not in SPLITS:
        return f"split must be one of {', '.join(SPLITS)}, got {record['split']!r}"
    if record["modify_type"] not in MODIFY_TYPES:
        return (
            f"modify_type must be one of {', '.join(MODIFY_TYPES)}, got {record['modify_type']!r}"
        )
    return None


def duration_problem(record: Mapping[str, Any]) -> str | None:
    """Why ``duration_s`` is impossible (NaN means unknown and is fine)."""
    duration = record.get("duration_s")
    if duration is None or (isinstance(duration, float) and math.isnan(duration)):
        return None
    if isinstance(duration, bool) or not isinstance(duration, int | float):
        return f"duration_s must be a number, got {duration!r}"
    if not 0.0 < duration <= MAX_DURATION_S:
        return f"duration_s must be positive and finite, got {duration!r}"
    return None


def segment_problem(record: dict[str, Any]) -> tuple[str | None, str | None]:
    """Check (and sort) every segment list of ``record``: (problem, correction).

    Segments listed out of time order are sorted in place (their order carries
    no meaning), which is reported as a correction. Overlapping segments and
    segments past the video's end (``duration_s`` + one frame) are problems:
    no correction of those is unambiguous.
    """
    duration = record.get("duration_s")
    known = isinstance(duration, int | float) and math.isfinite(duration)
    corrected = []
    for column in SEGMENT_COLUMNS:
        segments = record.get(column)
        if not isinstance(segments, list) or not segments:
            continue
        ordered = sorted(segments)
        if ordered != segments:
            record[column] = segments = ordered
            corrected.append(column)
        for before, after in itertools.pairwise(segments):
            if after[0] < before[1]:
                return f"{column} overlap: {before} and {after}", None
        if known and segments[-1][1] > duration + END_TOLERANCE_S:
            return (
                f"{column} {segments[-1]} ends after the video's end at {duration:g} s",
                None,
            )
    if corrected:
        return None, f"{' and '.join(corrected)} were not in time order: sorted"
    return None, None


def finalize(
    parsed: ParsedRows,
    *,
    format: str,
    strict: bool,
    check_files: bool = True,
    extra_dtypes: Mapping[str, str] | None = None,
) -> ImportResult:
    """Validate parsed rows and build the manifest (see ``featstore.datasets.manifest``).

    Problems are collected for every row; in strict mode any problem raises
    ``DatasetFormatError`` carrying all of them, otherwise bad rows are dropped
    and returned in ``ImportResult.problems``. Of rows sharing a ``video_id``
    the first is kept.
    """
    problems = list(parsed.problems)
    corrections: list[Problem] = []
    kept: list[dict[str, Any]] = []
    seen: dict[str, int | None] = {}
    for record in parsed.rows:
        where = {
            "row": record.get("_row"),
            "source": record.get("_source"),
            "video_id": record["video_id"],
            "path": record["path"],
        }
        correction = None
        reason = _schema_problem(record) or duration_problem(record)
        if reason is None:
            reason, correction = segment_problem(record)
        if reason is not None:
            problems.append(Problem(ProblemKind.MALFORMED, reason, **where))
            continue
        reason = label_problem(record)
        if reason is not None:
            problems.append(Problem(ProblemKind.LABEL_MISMATCH, reason, **where))
            continue
        if check_files and not (parsed.root / record["path"]).is_file():
            problems.append(Problem(ProblemKind.MISSING_FILE, "media file does not exist", **where))
            continue
        first = seen.get(record["video_id"], -1)
        if first != -1:
            problems.append(
                Problem(
                    ProblemKind.DUPLICATE_ID,
                    f"video_id already used by row {first}",
                    **where,
                )
            )
            continue
        seen[record["video_id"]] = record.get("_row")
        kept.append(record)
        if correction is not None:
            corrections.append(Problem(ProblemKind.CORRECTED, correction, **where))

    problems.sort(key=lambda p: (p.source or "", -1 if p.row is None else p.row))
    if strict and problems:
        raise DatasetFormatError(
            f"{len(problems)} problem(s) in {format} dataset at {parsed.root}", problems
        )
    if problems:
        log.warning("%s: dropped %d row(s) with problems", format, len(problems))
    if corrections:
        log.info("%s: corrected %d row(s)", format, len(corrections))
    return ImportResult(
        manifest=_frame(kept, extra_dtypes or {}),
        problems=tuple(problems),
        format=format,
        root=parsed.root.resolve(),
        corrections=tuple(corrections),
    )


def _frame(records: list[dict[str, Any]], extra_dtypes: Mapping[str, str]) -> pd.DataFrame:
    if not records:
        return empty_manifest(extra_dtypes)
    df = pd.DataFrame.from_records(records)
    df = df.drop(columns=[c for c in ("_row", "_source") if c in df.columns])
    extras = [c for c in df.columns if c not in CORE_COLUMNS]
    df = df[list(CORE_COLUMNS) + extras]
    df["label"] = df["label"].astype("int64")
    for flag in ("audio_fake", "visual_fake"):
        df[flag] = pd.array([pd.NA if v is None else bool(v) for v in df[flag]], dtype="boolean")
    df["duration_s"] = pd.to_numeric(df["duration_s"], errors="coerce").astype("float64")
    for column, dtype in extra_dtypes.items():
        if column in df.columns:
            df[column] = df[column].astype(dtype)
    return df.reset_index(drop=True)
