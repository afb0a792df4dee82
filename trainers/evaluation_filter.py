"""Which videos count in a metric: the evaluation filter, decided in one place.

The paper (Sec. 5.2) evaluates on real videos and on the fakes with *both*
modalities manipulated "where this information is available": fakes a
dataset marks ``audio_modified`` or ``visual_modified`` are left out, fakes
of unknown kind stay. Every command that computes a metric (``eval``,
``syncscore``, ``fuse``, ``correlate``, ``layers``, ``grid``, ``report``)
takes the same option, ``--fakes paper|all``, and calls :func:`evaluated`
for its mask, so the same run on the same videos gives the same numbers
whichever command computes them:

- ``paper`` (the default): reals + both-modified fakes where the dataset says
  which. A view whose protocol already composed the evaluation set (the
  authors' AV1M test) or a manifest imported with ``evaluation = "all"``
  keeps every row (``featstore.trainers.data.select`` records that policy in the
  selected frame's attrs).
- ``all``: every fake counts.

Each result records the filter's name and its counts (:class:`FilterRecord`).

>>> import pandas as pd
>>> frame = pd.DataFrame({"label": [0, 1, 1], "modify_type": ["real", "both_modified", "audio_modified"]})
>>> evaluated(frame, "paper").tolist(), evaluated(frame, "all").tolist()
([True, True, False], [True, True, True])
>>> filter_record(frame["label"], evaluated(frame, "paper"), "paper")
FilterRecord(fakes='paper', n_real=1, n_fake=1, n_left_out=1)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from featstore.errors import FeatstoreError

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "ALL",
    "EVALUATION_ATTR",
    "FAKES",
    "PAPER",
    "FilterError",
    "FilterRecord",
    "check_fakes",
    "describe",
    "evaluated",
    "filter_record",
    "paper_mask",
    "recorded_fakes",
]

PAPER: Final = "paper"
ALL: Final = "all"
FAKES: Final = (PAPER, ALL)
"""The filter names, the values of every command's ``--fakes``."""

EVALUATION_ATTR: Final = "evaluation"
"""Manifest / view attr: ``both_modified`` (default: the paper's rule applies) or ``all``."""

# Older spellings, still read: metrics records wrote "evaluation filter", the grid's TOML "filter".
_ALIASES: Final = {"paper": PAPER, "filter": PAPER, "evaluation filter": PAPER, "all": ALL}

_DESCRIPTIONS: Final = {
    PAPER: "evaluation filter paper: reals and the fakes with both modalities manipulated, "
    "where the dataset says which",
    ALL: "evaluation filter all: every fake counted",
}


class FilterError(FeatstoreError, ValueError):
    """An unknown evaluation filter name, or a manifest policy this version does not know."""


def check_fakes(name: str) -> str:
    """The canonical filter name (``paper`` or ``all``); older spellings are accepted."""
    canonical = _ALIASES.get(str(name).strip().lower())
    if canonical is None:
        raise FilterError(f"--fakes must be one of {', '.join(FAKES)}, got {name!r}")
    return canonical


def describe(fakes: str) -> str:
    """What a filter keeps, for captions and printed output."""
    return _DESCRIPTIONS[check_fakes(fakes)]


def paper_mask(manifest: pd.DataFrame, attrs: Mapping[str, Any] | None = None) -> np.ndarray:
    """``[N]`` bool: the paper's rule (reals, and fakes not marked single-modality).

    ``attrs`` (default: the frame's) may carry the policy ``evaluation = "all"``
    (a manifest or view whose rows are already the evaluation set): then every
    row is kept. Without a ``modify_type`` column nothing says which fakes are
    single-modality, so every row is kept.
    """
    attrs = manifest.attrs if attrs is None else attrs
    policy = attrs.get(EVALUATION_ATTR) or "both_modified"
    if policy not in ("both_modified", "all"):
        raise FilterError(
            f"manifest attr {EVALUATION_ATTR!r} must be 'both_modified' or 'all', got {policy!r}"
        )
    n = len(manifest)
    if policy == "all" or "modify_type" not in manifest.columns:
        return np.ones(n, dtype=bool)
    labels = manifest["label"].to_numpy()
    kinds = manifest["modify_type"].astype(str).to_numpy()
    return (labels == 0) | np.isin(kinds, ["both_modified", "unknown"])


def evaluated(
    manifest: pd.DataFrame, fakes: str, attrs: Mapping[str, Any] | None = None
) -> np.ndarray:
    """``[N]`` bool: the rows of ``manifest`` that ``fakes`` counts (the one place that decides)."""
    if check_fakes(fakes) == ALL:
        return np.ones(len(manifest), dtype=bool)
    return paper_mask(manifest, attrs)


@dataclass(frozen=True)
class FilterRecord:
    """What a filter left: recorded with every result (``fakes``, ``n_real``, ``n_fake``)."""

    fakes: str
    n_real: int
    n_fake: int
    n_left_out: int  # videos the filter dropped (fakes marked single-modality)

    @property
    def n(self) -> int:
        return self.n_real + self.n_fake

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def filter_record(labels: Any, mask: np.ndarray, fakes: str) -> FilterRecord:
    """The record of ``mask`` (from :func:`evaluated`) over videos with ``labels`` ``[N]``."""
    y = np.asarray(labels).astype(np.int64)  # [N]
    keep = np.asarray(mask, dtype=bool)  # [N]
    return FilterRecord(
        fakes=check_fakes(fakes),
        n_real=int(np.sum(keep & (y == 0))),
        n_fake=int(np.sum(keep & (y == 1))),
        n_left_out=int(np.sum(~keep)),
    )


def recorded_fakes(record: Mapping[str, Any]) -> str:
    """The filter a stored result used (``paper`` or ``all``), older records included.

    Records written before the filter had a name say ``"evaluation filter"``;
    records from before any filter was recorded used the paper's rule for the
    video-level metrics, so a record without ``fakes`` reads as ``paper``.
    """
    value = record.get("fakes")
    if value is None:
        return PAPER
    try:
        return check_fakes(str(value))
    except FilterError:
        return str(value)
