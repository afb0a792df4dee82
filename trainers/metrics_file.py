"""A run's ``metrics.json``: one entry per (selection, evaluation filter), and its readers.

``featstore eval`` (and ``syncscore``/``fuse`` with ``--out``, and the grid)
write each result under a key naming what it was computed on:

- ``NAME:SPLIT`` for the paper's filter (the default, and the key every
  earlier version used), e.g. ``av1m:test``;
- ``NAME:SPLIT|fakes=all`` when every fake counts,

so evaluating with both filters keeps both results. Each entry records its
filter (``fakes``) and counts (``binary.n_real`` / ``binary.n_fake``), which
readers trust over the key: files written before the key carried the filter
held an ``--all-fakes`` result under the plain key, and read correctly.

Readers (the API's ``/v1/models``, ``featstore report``, the grid) use
:func:`metric_entries` for every entry's headline numbers and
:func:`find_metrics` for one (selection, filter).

>>> metrics_key("av1m:test", "paper"), metrics_key("av1m:test", "all")
('av1m:test', 'av1m:test|fakes=all')
>>> doc = {"x:test": {"selection": "x:test", "fakes": "all", "binary": {"auc": 0.9, "n": 4}}}
>>> [(e.key, e.selection, e.fakes, e.auc) for e in metric_entries(doc)]
[('x:test', 'x:test', 'all', 0.9)]
>>> find_metrics(doc, "x:test", "paper") is None, find_metrics(doc, "x:test", "all")["fakes"]
(True, 'all')
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from featstore.trainers.evaluation_filter import FAKES, PAPER, check_fakes, recorded_fakes
from featstore.trainers.runs import METRICS, Run, RunError, write_metrics

__all__ = [
    "MetricsEntry",
    "find_metrics",
    "metric_entries",
    "metrics_key",
    "read_metrics",
    "save_metrics",
]

_FILTER_TAG = "|fakes="

MetricsSource = Run | Mapping[str, Any] | str | os.PathLike[str]


def metrics_key(selection: str, fakes: str) -> str:
    """The ``metrics.json`` key of a result on ``selection`` under filter ``fakes``."""
    fakes = check_fakes(fakes)
    return str(selection) if fakes == PAPER else f"{selection}{_FILTER_TAG}{fakes}"


def _key_selection(key: str) -> str:
    return key.split(_FILTER_TAG, 1)[0]


@dataclass(frozen=True)
class MetricsEntry:
    """One stored result: where, under which filter, on how many videos, and its headline.

    Numbers an older record lacks are ``None``; ``record`` is the whole entry.
    """

    key: str
    selection: str
    fakes: str  # "paper" or "all"
    kind: str | None
    n: int | None
    n_real: int | None
    n_fake: int | None
    auc: float | None
    ap: float | None
    eer: float | None
    temporal_auc: float | None  # mean per-video frame-level AUC, when defined
    record: Mapping[str, Any] = field(repr=False, compare=False)

    def headline(self) -> dict[str, float]:
        """The numbers of this entry that are set (AUC, AP, EER, temporal AUC, n's)."""
        values = {
            "auc": self.auc,
            "ap": self.ap,
            "eer": self.eer,
            "temporal_auc": self.temporal_auc,
            "n": self.n,
            "n_real": self.n_real,
            "n_fake": self.n_fake,
        }
        return {k: float(v) for k, v in values.items() if v is not None}


def read_metrics(source: MetricsSource) -> dict[str, Any]:
    """The ``metrics.json`` document of a run (a ``Run``, a run directory, or the doc itself)."""
    if isinstance(source, Run):
        return source.metrics()
    if isinstance(source, Mapping):
        return dict(source)
    path = Path(source)
    path = path / METRICS if path.is_dir() else path
    if not path.is_file():
        return {}
    import json

    try:
        doc = json.loads(path.read_text())
    except ValueError as exc:
        raise RunError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise RunError(f"{path} is not a JSON object")
    return doc


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _count(value: Any) -> int | None:
    number = _number(value)
    return None if number is None else int(number)


def _entry(key: str, record: Mapping[str, Any]) -> MetricsEntry:
    binary = record.get("binary") if isinstance(record.get("binary"), Mapping) else record
    temporal = record.get("temporal") if isinstance(record.get("temporal"), Mapping) else {}
    return MetricsEntry(
        key=key,
        selection=str(record.get("selection") or _key_selection(key)),
        fakes=recorded_fakes(record),
        kind=record.get("kind") if isinstance(record.get("kind"), str) else None,
        n=_count(binary.get("n", record.get("n_evaluated"))),
        n_real=_count(binary.get("n_real")),
        n_fake=_count(binary.get("n_fake")),
        auc=_number(binary.get("auc")),
        ap=_number(binary.get("ap")),
        eer=_number(binary.get("eer")),
        temporal_auc=_number(temporal.get("mean")),
        record=record,
    )


def metric_entries(source: MetricsSource) -> list[MetricsEntry]:
    """Every result in a run's ``metrics.json``, in file order (older files included)."""
    return [
        _entry(str(key), record)
        for key, record in read_metrics(source).items()
        if isinstance(record, Mapping)
    ]


def find_metrics(source: MetricsSource, selection: str, fakes: str) -> dict[str, Any] | None:
    """The stored result on ``selection`` under filter ``fakes`` (``None`` if not evaluated).

    The filter an entry records decides, not its key: an older file's plain
    ``NAME:SPLIT`` entry written with ``--all-fakes`` is the ``all`` result.
    """
    fakes = check_fakes(fakes)
    doc = read_metrics(source)
    wanted = metrics_key(selection, fakes)
    found = [
        e
        for e in metric_entries(doc)
        if e.fakes == fakes and _key_selection(e.key) == str(selection)
    ]
    found.sort(key=lambda e: e.key != wanted)  # the canonical key first
    return dict(found[0].record) if found else None


def save_metrics(run: Run | Path, metrics: Mapping[str, Any]) -> str:
    """Merge ``metrics`` (with its ``selection`` and ``fakes``) into ``metrics.json``; the key.

    A result under one filter never replaces the other's: an older file's
    ``--all-fakes`` entry under the plain key moves to its own key first.
    """
    selection = str(metrics["selection"])
    fakes = check_fakes(str(metrics.get("fakes", PAPER)))
    key = metrics_key(selection, fakes)
    doc = read_metrics(run if isinstance(run, Run) else Path(run))
    present = doc.get(key)
    old = recorded_fakes(present) if isinstance(present, Mapping) else fakes
    if old in FAKES and old != fakes and metrics_key(selection, old) not in doc:
        write_metrics(run, metrics_key(selection, old), present)
    write_metrics(run, key, metrics)
    return key
