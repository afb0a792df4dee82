"""The manifest schema, import results and the typed error of dataset imports.

A manifest is a ``pandas.DataFrame`` with one row per video. Every reader
returns the same core columns (``CORE_COLUMNS``) followed by its
format-specific ones:

=================  ===========  ===============================================
column             dtype        meaning
=================  ===========  ===============================================
``video_id``       str          path relative to the root, POSIX, no extension
``path``           str          file path relative to the dataset root
``label``          int64        0 real, 1 fake
``split``          str          train / val / test / unassigned
``modify_type``    str          real / visual_modified / audio_modified /
                                both_modified / unknown
``audio_fake``     boolean      pandas nullable boolean: ``pd.NA`` = unknown
``visual_fake``    boolean      pandas nullable boolean: ``pd.NA`` = unknown
``fake_segments``  object       list of ``[start_s, end_s]``; ``[]`` means
                                none annotated (a fully fake video too)
``duration_s``     float64      from metadata, else NaN
=================  ===========  ===============================================
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from featstore.errors import ManifestError
from featstore.timebase import FRAME_HZ

if TYPE_CHECKING:
    import pandas as pd

CORE_COLUMNS: tuple[str, ...] = (
    "video_id",
    "path",
    "label",
    "split",
    "modify_type",
    "audio_fake",
    "visual_fake",
    "fake_segments",
    "duration_s",
)
SPLITS: tuple[str, ...] = ("train", "val", "test", "unassigned")
MODIFY_TYPES: tuple[str, ...] = (
    "real",
    "visual_modified",
    "audio_modified",
    "both_modified",
    "unknown",
)
VIDEO_SUFFIXES: frozenset[str] = frozenset(
    {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".flv", ".mpg", ".mpeg"}
)
SEGMENT_COLUMNS: tuple[str, ...] = ("fake_segments", "audio_fake_segments", "visual_fake_segments")
MAX_FRAMES = 2**31 - 1  # the store counts a video's rows in int32
MAX_SAMPLES = 2**53  # audio sample counts: the largest integer a float64 holds exactly
MAX_DURATION_S = MAX_FRAMES / FRAME_HZ  # the longest video the store can hold at 25 fps


class ProblemKind(enum.StrEnum):
    """What is wrong with a metadata row (or a whole metadata file)."""

    MALFORMED = "malformed"  # bad JSON, missing fields, wrong types or values
    MISSING_FILE = "missing_file"  # the media file named by the row does not exist
    DUPLICATE_ID = "duplicate_id"  # a second row with an already seen video_id
    LABEL_MISMATCH = "label_mismatch"  # label contradicts segments / modify_type / flags
    UNREADABLE = "unreadable"  # a metadata file cannot be read at all (always fatal)
    CORRECTED = "corrected"  # an unambiguous fix was applied (e.g. segments sorted); row kept


@dataclass(frozen=True)
class Problem:
    """One problem found while importing; ``row`` is the 0-based record index in ``source``."""

    kind: ProblemKind
    reason: str
    row: int | None = None
    source: str | None = None
    video_id: str | None = None
    path: str | None = None

    def __str__(self) -> str:
        where = self.source or ""
        if self.row is not None:
            where += f"[{self.row}]"
        what = self.video_id or self.path or ""
        located = " ".join(p for p in (where, what) if p)
        return f"{self.kind.value}: {located + ': ' if located else ''}{self.reason}"


class DatasetFormatError(ManifestError):
    """A dataset's metadata is malformed; ``problems`` lists everything found."""

    def __init__(self, message: str, problems: Iterable[Problem] = ()) -> None:
        self.problems: tuple[Problem, ...] = tuple(problems)
        shown = "".join(f"\n  {p}" for p in self.problems[:5])
        more = len(self.problems) - 5
        tail = f"\n  ... and {more} more" if more > 0 else ""
        super().__init__(message + shown + tail)


class UnknownFormatError(ManifestError, KeyError):
    """No dataset reader (or protocol) is registered under that name."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class ImportResult:
    """The validated manifest, every problem found (dropped rows in lenient mode) and the
    corrections applied to rows that were kept (``ProblemKind.CORRECTED``, both modes)."""

    manifest: pd.DataFrame
    problems: tuple[Problem, ...]
    format: str
    root: Path
    corrections: tuple[Problem, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems


class RowError(ValueError):
    """Raised by a reader's row parser: the row is dropped (or fails a strict import)."""

    def __init__(
        self,
        reason: str,
        *,
        kind: ProblemKind = ProblemKind.MALFORMED,
        video_id: str | None = None,
        path: str | None = None,
    ) -> None:
        super().__init__(reason)
        self.kind = kind
        self.video_id = video_id
        self.path = path


@dataclass
class ParsedRows:
    """What a format reader hands to ``finalize``: raw records plus row problems."""

    root: Path
    rows: list[dict[str, Any]] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    def add(self, row: int, source: str, parse: Callable[[], dict[str, Any]]) -> None:
        """Run ``parse`` for one source record, keeping the record or its problem."""
        try:
            record = parse()
        except RowError as exc:
            self.problems.append(Problem(exc.kind, str(exc), row, source, exc.video_id, exc.path))
            return
        record["_row"] = row
        record["_source"] = source
        self.rows.append(record)


# --- field parsers shared by the readers --------------------------------------------------


def relative_path(value: Any) -> str:
    """A normalised POSIX path relative to the root; rejects absolute or escaping paths."""
    # Plain string work: pathlib costs ~10x more and this runs per row of million-row datasets.
    if (
        type(value) is str
        and value
        and value[0] not in "/. "
        and value[-1] not in "/ "
        and "\\" not in value
        and "//" not in value
        and "/." not in value
        and ":" not in value[:2]
    ):
        return value  # already normal: no empty, ".", ".." or hidden components
    if not isinstance(value, str) or not value.strip():
        raise RowError(f"path must be a non-empty string, got {value!r}")
    text = value.strip().replace("\\", "/")
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if text.startswith("/") or (len(text) > 1 and text[1] == ":") or ".." in parts or not parts:
        raise RowError(f"path must stay inside the dataset root: {value!r}")
    return "/".join(parts)


def video_id_for(path: str) -> str:
    """The stable id of a video: its root-relative path without the extension."""
    head, _, name = path.rpartition("/")
    dot = name.rfind(".")
    if dot > 0:
        name = name[:dot]
    return f"{head}/{name}" if head else name


def _is_number(x: Any) -> bool:
    return type(x) in (int, float) or (isinstance(x, int | float) and not isinstance(x, bool))


def parse_segments(value: Any, *, name: str = "fake_segments") -> list[list[float]]:
    """``[[start_s, end_s], ...]`` with finite, non-negative, ordered bounds.

    Only each segment is checked here; their order, overlaps and the video's
    end are checked by ``validation.finalize`` for every format.
    """
    if value is None:
        return []
    if not isinstance(value, list | tuple):
        raise RowError(f"{name} must be a list of [start, end], got {type(value).__name__}")
    segments = []
    for seg in value:
        if not isinstance(seg, list | tuple) or len(seg) != 2:
            raise RowError(f"{name} entry must be [start, end], got {seg!r}")
        if not (_is_number(seg[0]) and _is_number(seg[1])):
            raise RowError(f"{name} bounds must be numbers, got {seg!r}")
        start, end = float(seg[0]), float(seg[1])
        if not 0.0 <= start <= end <= MAX_DURATION_S:  # NaN fails every comparison
            raise RowError(
                f"{name} entry must satisfy 0 <= start <= end <= {MAX_DURATION_S:.0f} s, "
                f"got {seg!r}"
            )
        segments.append([start, end])
    return segments


def parse_optional_int(value: Any, *, name: str, maximum: int = MAX_FRAMES) -> int | None:
    """A whole number in ``[0, maximum]`` (an integral float such as ``100.0`` too), or None.

    NaN, infinities, fractions, negative and absurdly large counts (JSON ``NaN``,
    ``Infinity``, ``1e20``) are row problems, never exceptions further down.
    """
    if value is None:
        return None
    ok = (
        not isinstance(value, bool)
        and isinstance(value, int | float)
        and math.isfinite(value)
        and value == int(value)
        and 0 <= value <= maximum
    )
    if not ok:
        raise RowError(f"{name} must be a whole number from 0 to {maximum}, got {value!r}")
    return int(value)


_SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
    "testing": "test",
    "": "unassigned",
    "unassigned": "unassigned",
}


def normalise_split(value: Any) -> str:
    """Map a split name as datasets spell it (``validation``, ``Test``) onto ``SPLITS``."""
    key = "" if value is None else str(value).strip().lower()
    if key not in _SPLIT_ALIASES:
        raise RowError(f"unknown split {value!r}")
    return _SPLIT_ALIASES[key]


def flags_for(modify_type: str) -> tuple[bool | None, bool | None]:
    """(audio_fake, visual_fake) implied by ``modify_type``; None = unknown."""
    return {
        "real": (False, False),
        "audio_modified": (True, False),
        "visual_modified": (False, True),
        "both_modified": (True, True),
    }.get(modify_type, (None, None))


def locate(root: Path, filename: str) -> tuple[Path, Path]:
    """Accept either the dataset directory or its metadata file: (directory, file)."""
    root = Path(root)
    if root.is_file():
        return root.parent, root
    file = root / filename
    if not file.is_file():
        raise DatasetFormatError(
            f"metadata file not found: {file}",
            [Problem(ProblemKind.UNREADABLE, f"no {filename} in {root}", source=filename)],
        )
    return root, file


def empty_manifest(extra: Mapping[str, str] | None = None) -> pd.DataFrame:
    """A zero-row manifest with the core columns (and ``extra`` name -> dtype)."""
    import pandas as pd

    dtypes = {
        "video_id": "object",
        "path": "object",
        "label": "int64",
        "split": "object",
        "modify_type": "object",
        "audio_fake": "boolean",
        "visual_fake": "boolean",
        "fake_segments": "object",
        "duration_s": "float64",
        **(extra or {}),
    }
    return pd.DataFrame({c: pd.Series([], dtype=t) for c, t in dtypes.items()})


def manifest_counts(df: pd.DataFrame) -> pd.DataFrame:
    """Video counts by split, label and modify_type (for summaries)."""
    if df.empty:
        return df.reindex(columns=["split", "label", "modify_type"]).assign(videos=[])
    return (
        df.groupby(["split", "label", "modify_type"], dropna=False)
        .size()
        .rename("videos")
        .reset_index()
    )


def coerce_schema(df: pd.DataFrame) -> pd.DataFrame:
    """Restore the schema dtypes of a manifest read back from a store.

    The store keeps nullable booleans with missing values as JSON (object
    columns of True/False/None); this turns them back into ``boolean`` and
    ``label`` into int64. Unknown columns are left as they are.
    """
    import pandas as pd

    out = df.copy()
    for flag in ("audio_fake", "visual_fake"):
        if flag in out.columns:
            out[flag] = pd.array(
                [pd.NA if v is None or v is pd.NA else bool(v) for v in out[flag]], dtype="boolean"
            )
    if "label" in out.columns:
        out["label"] = out["label"].astype("int64")
    if "duration_s" in out.columns:
        out["duration_s"] = pd.to_numeric(out["duration_s"], errors="coerce").astype("float64")
    return out
