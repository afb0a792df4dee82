"""AV-Deepfake1M: one JSON list per split (``train_metadata.json``, ``val_metadata.json``, ...).

Videos live under ``<root>/<split>/<file>``. A video is fake iff its
``fake_segments`` is non-empty; ``modify_type`` gives the manipulated
modalities. ``audio_frames`` is kept as published but is wrong for some
fake-audio files: never use it for lengths (decode instead). ``duration_s``
comes from ``video_frames`` at the dataset's 25 fps.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from featstore import timebase
from featstore.datasets.manifest import (
    MAX_SAMPLES,
    DatasetFormatError,
    ImportResult,
    ParsedRows,
    Problem,
    ProblemKind,
    RowError,
    flags_for,
    parse_optional_int,
    parse_segments,
    relative_path,
    video_id_for,
)
from featstore.datasets.validation import finalize

NAME = "av1m"
FRAME_HZ = timebase.FRAME_HZ
METADATA_SUFFIX = "_metadata.json"
MODIFY_TYPES = ("real", "visual_modified", "audio_modified", "both_modified")
EXTRA_DTYPES = {"video_frames": "Int64", "audio_frames": "Int64"}


def read_av1m(root: Path, *, strict: bool = False, check_files: bool = True) -> ImportResult:
    """Read every ``<split>_metadata.json`` under ``root`` into one manifest.

    >>> result = read_av1m(Path("/data/av1m"))  # doctest: +SKIP
    >>> result.manifest.groupby("split").size()  # doctest: +SKIP
    """
    root = Path(root)
    files = sorted(root.glob(f"*{METADATA_SUFFIX}"))
    if not files:
        raise DatasetFormatError(
            f"no *{METADATA_SUFFIX} files in {root}",
            [Problem(ProblemKind.UNREADABLE, "no metadata files", source=str(root))],
        )
    parsed = ParsedRows(root=root)
    for file in files:
        split = file.name.removesuffix(METADATA_SUFFIX)
        entries = _load_list(file)
        for i, entry in enumerate(entries):
            parsed.add(i, file.name, lambda e=entry, s=split: _parse_entry(e, s))
    return finalize(
        parsed, format=NAME, strict=strict, check_files=check_files, extra_dtypes=EXTRA_DTYPES
    )


def _load_list(file: Path) -> list[Any]:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetFormatError(
            f"cannot read {file}: {exc}",
            [Problem(ProblemKind.UNREADABLE, str(exc), source=file.name)],
        ) from exc
    if not isinstance(data, list):
        raise DatasetFormatError(
            f"{file} must hold a JSON list, got {type(data).__name__}",
            [Problem(ProblemKind.UNREADABLE, "not a JSON list", source=file.name)],
        )
    return data


def _parse_entry(entry: Any, split: str) -> dict[str, Any]:
    if not isinstance(entry, dict):
        raise RowError(f"entry must be a JSON object, got {type(entry).__name__}")
    if "file" not in entry:
        raise RowError("entry has no 'file'")
    path = f"{split}/{relative_path(entry['file'])}"
    vid = video_id_for(path)
    try:
        if entry.get("split", split) != split:
            raise RowError(f"entry split {entry.get('split')!r} in {split}{METADATA_SUFFIX}")
        for key in ("modify_type", "fake_segments"):
            if key not in entry:
                raise RowError(f"entry has no {key!r}")
        modify_type = entry["modify_type"]
        if modify_type not in MODIFY_TYPES:
            raise RowError(f"unknown modify_type {modify_type!r}")
        segments = parse_segments(entry["fake_segments"])
        video_frames = parse_optional_int(entry.get("video_frames"), name="video_frames")
        audio_frames = parse_optional_int(
            entry.get("audio_frames"), name="audio_frames", maximum=MAX_SAMPLES
        )
        audio_fake, visual_fake = flags_for(modify_type)
        record = {
            "video_id": vid,
            "path": path,
            "label": int(bool(segments)),
            "split": _manifest_split(split),
            "modify_type": modify_type,
            "audio_fake": audio_fake,
            "visual_fake": visual_fake,
            "fake_segments": segments,
            "duration_s": video_frames / FRAME_HZ if video_frames is not None else float("nan"),
            "original": _optional_str(entry.get("original"), "original"),
            "audio_model": _optional_str(entry.get("audio_model"), "audio_model"),
            "audio_fake_segments": parse_segments(
                entry.get("audio_fake_segments"), name="audio_fake_segments"
            ),
            "visual_fake_segments": parse_segments(
                entry.get("visual_fake_segments"), name="visual_fake_segments"
            ),
            "video_frames": video_frames,
            "audio_frames": audio_frames,  # untrusted: wrong for some fake-audio files
        }
    except RowError as exc:
        exc.video_id, exc.path = vid, path
        raise
    return record


def _manifest_split(split: str) -> str:
    # Official test metadata is not public; anything else is kept unassigned.
    return split if split in ("train", "val", "test") else "unassigned"


def _optional_str(value: Any, name: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise RowError(f"{name} must be a string or null, got {value!r}")
