"""Dataset manifests: one reader per metadata format, shared schema, validation, protocols, views.

>>> from featstore.datasets import add_view, protocol_splits, read_dataset
>>> result = read_dataset("av1m", "/data/av1m")  # doctest: +SKIP
>>> splits = protocol_splits("av1m", result.manifest, seed=43)  # doctest: +SKIP
>>> manifest = add_view(result.manifest, "av1m", splits, {"protocol": "av1m"})  # doctest: +SKIP

The manifest schema is described in ``featstore.datasets.manifest``, views
(one import, many protocols) in ``featstore.datasets.views``.
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
    Protocol,
    ProtocolError,
    all_test_splits,
    apply_protocol,
    av1m_splits,
    both_modified_fakes,
    dfe2024_splits,
    favc_splits,
    get_protocol,
    keep_both_modified_fakes,
    official_splits,
    protocol_splits,
)
from featstore.datasets.splitfiles import SplitFileError, SplitFilesResult, apply_split_files
from featstore.datasets.tabular import read_csv_manifest
from featstore.datasets.views import (
    OFFICIAL,
    ViewError,
    ViewSplits,
    add_view,
    drop_view,
    resolve_view,
    set_default_view,
    view_column,
    view_counts,
    views_of,
)

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
    "OFFICIAL",
    "PROTOCOLS",
    "SPLITS",
    "DatasetFormat",
    "DatasetFormatError",
    "ImportResult",
    "Problem",
    "ProblemKind",
    "Protocol",
    "ProtocolError",
    "SplitFileError",
    "SplitFilesResult",
    "UnknownFormatError",
    "ViewError",
    "ViewSplits",
    "add_view",
    "all_test_splits",
    "apply_protocol",
    "apply_split_files",
    "av1m_splits",
    "both_modified_fakes",
    "coerce_schema",
    "dfe2024_splits",
    "drop_view",
    "favc_splits",
    "get_protocol",
    "keep_both_modified_fakes",
    "manifest_counts",
    "official_splits",
    "protocol_splits",
    "read_dataset",
    "resolve_view",
    "set_default_view",
    "view_column",
    "view_counts",
    "views_of",
]
