"""Dataset manifests: one reader per metadata format, shared schema, validation and protocols.

>>> from featstore.datasets import read_dataset, apply_protocol
>>> result = read_dataset("av1m", "/data/av1m")  # doctest: +SKIP
>>> manifest = apply_protocol("av1m", result.manifest, seed=43)  # doctest: +SKIP

The manifest schema is described in ``featstore.datasets.manifest``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from featstore.datasets.av1m import read_av1m
from featstore.datasets.dfe2024 import read_dfe2024
from featstore.datasets.exddv import read_exddv
from featstore.datasets.fakeavceleb import read_favc
from featstore.datasets.folders import read_avlips, read_folder, read_real
from featstore.datasets.manifest import (
    CORE_COLUMNS,
    MODIFY_TYPES,
    SPLITS,
    DatasetFormatError,
    ImportResult,
    Problem,
    ProblemKind,
    UnknownFormatError,
    coerce_schema,
    manifest_counts,
)
from featstore.datasets.protocols import (
    PROTOCOLS,
    apply_protocol,
    keep_both_modified_fakes,
    split_all_test,
    split_av1m,
    split_favc,
)
from featstore.datasets.tabular import read_csv_manifest

Reader = Callable[..., ImportResult]


@dataclass(frozen=True)
class DatasetFormat:
    """A registered metadata format: its CLI name, reader and a one-line description."""

    name: str
    read: Reader
    description: str


FORMATS: dict[str, DatasetFormat] = {
    f.name: f
    for f in (
        DatasetFormat("av1m", read_av1m, "AV-Deepfake1M: <split>_metadata.json + <split>/ folders"),
        DatasetFormat(
            "favc", read_favc, "FakeAVCeleb: meta_data.csv (9-name header, 10-value rows)"
        ),
        DatasetFormat("avlips", read_avlips, "AVLips: AVLips/0_real, AVLips/1_fake"),
        DatasetFormat("dfe2024", read_dfe2024, "Deepfake-Eval-2024: video-metadata-publish.csv"),
        DatasetFormat("exddv", read_exddv, "ExDDV: ExDDV.csv with click_locations JSON"),
        DatasetFormat("real", read_real, "real-only folder of videos (any nesting)"),
        DatasetFormat("folder", read_folder, "real/ + fake/ subfolders (optionally per split)"),
        DatasetFormat("csv", read_csv_manifest, "generic CSV: path,label[,split]"),
    )
}


def read_dataset(
    format: str, root: str | Path, *, strict: bool = False, check_files: bool = True
) -> ImportResult:
    """Read and validate a dataset's metadata into a manifest.

    ``strict`` raises ``DatasetFormatError`` listing every problem; otherwise bad
    rows are dropped and listed in ``ImportResult.problems``. Unreadable metadata
    files (bad JSON, missing columns) raise in both modes.
    """
    if format not in FORMATS:
        raise UnknownFormatError(
            f"unknown dataset format {format!r}; choose from {', '.join(FORMATS)}"
        )
    root = Path(root).expanduser().resolve()
    if not root.exists():
        raise DatasetFormatError(f"{format}: {root} does not exist")
    return FORMATS[format].read(root, strict=strict, check_files=check_files)


__all__ = [
    "CORE_COLUMNS",
    "FORMATS",
    "MODIFY_TYPES",
    "PROTOCOLS",
    "SPLITS",
    "DatasetFormat",
    "DatasetFormatError",
    "ImportResult",
    "Problem",
    "ProblemKind",
    "UnknownFormatError",
    "apply_protocol",
    "coerce_schema",
    "keep_both_modified_fakes",
    "manifest_counts",
    "read_dataset",
    "split_all_test",
    "split_av1m",
    "split_favc",
]
