"""Deepfake-Eval-2024, video subset: ``video-metadata-publish.csv`` + ``video-data/``.

Columns used: ``Filename``, ``Video Ground Truth`` (Real/Fake, the video's
label), ``Audio Ground Truth`` (Real/Fake/Unknown, -> ``audio_fake``) and
``Finetuning Set`` (train/test, -> ``split``). Which modality of a fake video
was manipulated is not published, so fakes get ``modify_type`` ``unknown`` and
``visual_fake`` unknown. A video labelled Real whose audio is labelled Fake is
reported as a label mismatch. (The paper further cuts single-speaker 3-60 s
segments; that is a preprocessing step, not part of the manifest.)
"""

from __future__ import annotations

from pathlib import Path
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
from featstore.datasets.tabular import read_table
from featstore.datasets.validation import finalize

NAME = "dfe2024"
METADATA_FILE = "video-metadata-publish.csv"
VIDEO_DIR = "video-data"
COLUMNS = ("Filename", "Video Ground Truth", "Audio Ground Truth", "Finetuning Set")


def read_dfe2024(root: Path, *, strict: bool = False, check_files: bool = True) -> ImportResult:
    """Read the DFE-2024 video metadata (``root`` is its directory or the CSV)."""
    root, file = locate(Path(root), METADATA_FILE)
    table = read_table(file, COLUMNS)
    parsed = ParsedRows(root=root)
    for i, row in enumerate(table.to_dict("records")):
        parsed.add(i, file.name, lambda r=row: _parse_row(r))
    return finalize(parsed, format=NAME, strict=strict, check_files=check_files)


def _parse_row(row: dict[str, str]) -> dict[str, Any]:
    name = relative_path(row["Filename"])
    path = name if name.startswith(f"{VIDEO_DIR}/") else f"{VIDEO_DIR}/{name}"
    vid = video_id_for(path)
    video_truth = row["Video Ground Truth"].strip().lower()
    audio_truth = row["Audio Ground Truth"].strip().lower()
    if video_truth not in ("real", "fake"):
        raise RowError(
            f"Video Ground Truth must be Real or Fake, got {row['Video Ground Truth']!r}",
            video_id=vid,
            path=path,
        )
    if audio_truth not in ("real", "fake", "unknown", ""):
        raise RowError(
            f"Audio Ground Truth must be Real, Fake or Unknown, got {row['Audio Ground Truth']!r}",
            video_id=vid,
            path=path,
        )
    try:
        split = normalise_split(row["Finetuning Set"])
    except RowError as exc:
        exc.video_id, exc.path = vid, path
        raise
    label = int(video_truth == "fake")
    audio_fake = {"real": False, "fake": True}.get(audio_truth)
    return {
        "video_id": vid,
        "path": path,
        "label": label,
        "split": split,
        "modify_type": "unknown" if label else "real",
        "audio_fake": audio_fake,
        "visual_fake": None if label else False,
        "fake_segments": [],
        "duration_s": float("nan"),
        "audio_truth": row["Audio Ground Truth"].strip() or "Unknown",
    }
