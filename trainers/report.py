"""The train-on-one, test-on-every grid (paper Tab. 2 AUC, Tab. 4 AP) as tables.

``GridTable``: one row per (feature, train dataset); for every test dataset
an AUC and an AP column; an explicit in-domain column (test == train) and a
mean OOD column (mean over the test datasets other than that row's training
one). Missing results show as "–" (Markdown), empty (CSV) or null (JSON);
they never crash the table.

``paper_grid``: the paper's own layout, one metric per table: one row per
feature, one column per (train, test) pair that was evaluated, grouped by test
set with the in-domain pair first (A..I in Tab. 2), and column J, the mean
over *every* out-of-domain cell of the row, each cell counted once. That is
how the paper averages: Tab. 2's AV-HuBERT (V) row has B, D, E, F, H, I =
95.5, 64.1, 98.3, 90.5, 63.7, 67.7, whose mean is J = 80.0 (a mean per test
set first would give 79.9, and 53.0 instead of FSFM's 55.0).

A mean OOD is only given when every out-of-domain cell of its row is present:
a mean over a subset would not be comparable with complete rows.

Pure formatting of results; collecting them from run directories is the
caller's job.
"""

from __future__ import annotations

import csv
import io
import json
import math
import numbers
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from featstore.errors import FeatstoreError
from featstore.trainers.tables import Table

__all__ = [
    "GridCell",
    "GridResult",
    "GridRow",
    "GridTable",
    "ReportError",
    "grid_table",
    "paper_columns",
    "paper_grid",
    "write_paper_grids",
]

MISSING = "–"
_METRICS = ("auc", "ap")
_GROUP_TITLES = {"in_domain": "in-domain", "mean_ood": "mean OOD"}


class ReportError(FeatstoreError, ValueError):
    """Grid results are malformed (bad values, duplicates)."""


def _check_unit(name: str, value: float) -> None:
    if not (math.isnan(value) or 0.0 <= value <= 1.0):
        raise ReportError(f"{name} must lie in [0, 1] (or be NaN when undefined), got {value!r}")


@dataclass(frozen=True)
class GridResult:
    """One trained-on/tested-on result; AUC and AP as fractions in [0, 1]."""

    feature: str
    train: str
    test: str
    auc: float
    ap: float
    n: int
    fakes: str = (
        "paper"  # the evaluation filter of the test set (featstore.trainers.evaluation_filter)
    )
    n_real: int | None = None
    n_fake: int | None = None

    def __post_init__(self) -> None:
        for field in ("feature", "train", "test"):
            value = getattr(self, field)
            if not isinstance(value, str) or not value:
                raise ReportError(f"GridResult.{field} must be a non-empty string, got {value!r}")
        for field in ("auc", "ap"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise ReportError(f"GridResult.{field} must be a number, got {value!r}")
            _check_unit(field, float(value))
            object.__setattr__(self, field, float(value))  # numpy scalars -> float
        if isinstance(self.n, bool) or not isinstance(self.n, numbers.Integral) or self.n < 0:
            raise ReportError(f"GridResult.n must be a non-negative int, got {self.n!r}")
        object.__setattr__(self, "n", int(self.n))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class GridCell:
    """AUC and AP of one cell (None where missing or undefined)."""

    auc: float | None
    ap: float | None
    n: int | None = None

    def get(self, metric: str) -> float | None:
        return self.auc if metric == "auc" else self.ap


@dataclass(frozen=True)
class GridRow:
    """One (feature, train) row: a cell per test dataset (None = not run)."""

    feature: str
    train: str
    tests: tuple[tuple[str, GridCell | None], ...]
    in_domain: GridCell | None
    mean_ood: GridCell

    def cell(self, test: str) -> GridCell | None:
        return dict(self.tests).get(test)

    @property
    def out_of_domain(self) -> tuple[tuple[str, GridCell | None], ...]:
        """The test columns other than the training dataset, in column order."""
        return tuple((test, cell) for test, cell in self.tests if test != self.train)


def _value(cell: GridCell | None, metric: str) -> float | None:
    return None if cell is None else cell.get(metric)


def _cell_dict(cell: GridCell | None) -> dict[str, Any] | None:
    return None if cell is None else asdict(cell)


@dataclass(frozen=True)
class GridTable:
    """The grid in the paper's layout; render with ``to_markdown/to_csv/to_json``."""

    rows: tuple[GridRow, ...]
    features: tuple[str, ...]
    trains: tuple[str, ...]
    tests: tuple[str, ...]
    filters: tuple[tuple[str, str], ...] = ()  # (test, evaluation filter) of every test set

    def filter_caption(self) -> str:
        """Which videos each test set counted (the evaluation filter of its results)."""
        by_filter: dict[str, list[str]] = {}
        for test, fakes in self.filters:
            by_filter.setdefault(fakes, []).append(test)
        parts = [
            f"{_describe(fakes)} (test set{'s' if len(tests) > 1 else ''} {', '.join(tests)})"
            for fakes, tests in by_filter.items()
        ]
        return ("Videos counted: " + "; ".join(parts) + ".") if parts else ""

    def columns(self) -> list[tuple[str, str]]:
        """The value columns as (group, metric): in-domain, each test, mean OOD."""
        groups = ["in_domain", *self.tests, "mean_ood"]
        return [(group, metric) for group in groups for metric in _METRICS]

    def _row_values(self, row: GridRow) -> list[float | None]:
        out = []
        for group, metric in self.columns():
            if group == "in_domain":
                out.append(_value(row.in_domain, metric))
            elif group == "mean_ood":
                out.append(_value(row.mean_ood, metric))
            else:
                out.append(_value(row.cell(group), metric))
        return out

    def to_markdown(self, *, bold_best: bool = False) -> str:
        """Markdown table, values ×100 with one decimal as in the paper; optional bold best."""
        columns = self.columns()
        titles = [f"{_GROUP_TITLES.get(g, _escape(g))} {m.upper()}" for g, m in columns]
        table = [[_percent(v) for v in self._row_values(row)] for row in self.rows]
        if bold_best:
            for j in range(len(columns)):
                shown = [float(r[j]) for r in table if r[j] != MISSING]
                if shown:
                    best = f"{max(shown):.1f}"
                    for r in table:
                        if r[j] == best:
                            r[j] = f"**{best}**"
        lines = [
            "| " + " | ".join(["feature", "train", *titles]) + " |",
            "|" + "---|" * 2 + "---:|" * len(titles),
        ]
        for row, cells in zip(self.rows, table, strict=True):
            names = [_escape(row.feature), _escape(row.train)]
            lines.append("| " + " | ".join([*names, *cells]) + " |")
        return "\n".join(lines) + "\n"

    def to_csv(self) -> str:
        """CSV at full precision (fractions in [0, 1]); missing cells are empty."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["feature", "train", *(f"{g}_{m}" for g, m in self.columns())])
        for row in self.rows:
            writer.writerow(
                [
                    row.feature,
                    row.train,
                    *("" if v is None else repr(v) for v in self._row_values(row)),
                ]
            )
        return buffer.getvalue()

    def to_json(self) -> str:
        """JSON at full precision; missing cells are null."""
        payload = {
            "features": list(self.features),
            "trains": list(self.trains),
            "tests": list(self.tests),
            "filters": dict(self.filters),
            "rows": [
                {
                    "feature": row.feature,
                    "train": row.train,
                    "in_domain": _cell_dict(row.in_domain),
                    "tests": {test: _cell_dict(cell) for test, cell in row.tests},
                    "out_of_domain": [test for test, _ in row.out_of_domain],
                    "mean_ood": _cell_dict(row.mean_ood),
                }
                for row in self.rows
            ],
        }
        return json.dumps(payload, indent=2, allow_nan=False) + "\n"

    def write(self, out_dir: str | Path, *, stem: str = "grid") -> dict[str, Path]:
        """Write ``<stem>.md``, ``<stem>.csv`` and ``<stem>.json``; returns their paths."""
        if not stem or "/" in stem or "\\" in stem:
            raise ReportError(f"stem must be a plain file name, got {stem!r}")
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"md": out / f"{stem}.md", "csv": out / f"{stem}.csv", "json": out / f"{stem}.json"}
        paths["md"].write_text(self.to_markdown(), encoding="utf-8")
        paths["csv"].write_text(self.to_csv(), encoding="utf-8")
        paths["json"].write_text(self.to_json(), encoding="utf-8")
        return paths


def _describe(fakes: str) -> str:
    from featstore.trainers.evaluation_filter import FilterError, describe

    try:
        return describe(fakes)
    except FilterError:
        return fakes


def _escape(name: str) -> str:
    return name.replace("|", "\\|")


def _percent(value: float | None) -> str:
    return MISSING if value is None else f"{100.0 * value:.1f}"


def _order(given: Sequence[str] | None, seen: Iterable[str]) -> tuple[str, ...]:
    if given is None:
        return tuple(dict.fromkeys(seen))
    if len(set(given)) != len(given):
        raise ReportError(f"order lists must not repeat names, got {list(given)}")
    return tuple(given)


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def _mean_ood(cells: Sequence[GridCell | None]) -> GridCell:
    means: dict[str, float | None] = {}
    for metric in _METRICS:
        values = [v for v in (_value(c, metric) for c in cells) if v is not None]
        complete = bool(cells) and len(values) == len(cells)
        means[metric] = sum(values) / len(values) if complete else None
    return GridCell(auc=means["auc"], ap=means["ap"])


def grid_table(
    results: Sequence[GridResult],
    *,
    features_order: Sequence[str] | None = None,
    train_order: Sequence[str] | None = None,
    test_order: Sequence[str] | None = None,
) -> GridTable:
    """Lay results out as the paper's Tab. 2/4 grid.

    Orders default to first appearance in ``results``; when given they select
    and order the rows/columns (results outside them are left out; names with
    no result give "–" cells). A repeated (feature, train, test) is an error.

    >>> r = [GridResult("clip", "A", t, auc, auc, 10) for t, auc in [("A", 1.0), ("B", 0.6), ("C", 0.7)]]
    >>> row = grid_table(r).rows[0]
    >>> row.in_domain.auc, round(row.mean_ood.auc, 3)
    (1.0, 0.65)
    """
    cells: dict[tuple[str, str, str], GridCell] = {}
    for result in results:
        if not isinstance(result, GridResult):
            raise ReportError(f"expected GridResult items, got {type(result).__name__}")
        key = (result.feature, result.train, result.test)
        if key in cells:
            raise ReportError(
                f"duplicate result for feature {key[0]!r}, train {key[1]!r}, test {key[2]!r}"
            )
        cells[key] = GridCell(auc=_finite(result.auc), ap=_finite(result.ap), n=result.n)

    features = _order(features_order, (r.feature for r in results))
    trains = _order(train_order, (r.train for r in results))
    tests = _order(test_order, (r.test for r in results))
    reserved = sorted(set(tests) & set(_GROUP_TITLES))
    if reserved:
        raise ReportError(
            f"test dataset names {reserved} clash with the summary columns; rename them"
        )

    filters: dict[str, str] = {}
    for result in results:
        if filters.setdefault(result.test, result.fakes) != result.fakes:
            raise ReportError(
                f"test set {result.test!r} has results under two evaluation filters "
                f"({filters[result.test]}, {result.fakes})"
            )
    seen_pairs = {(f, t) for f, t, _ in cells}
    rows = []
    for feature in features:
        for train in trains:
            # Rows for pairs never trained are dropped unless both names were asked for.
            if (feature, train) not in seen_pairs and (
                features_order is None or train_order is None
            ):
                continue
            row_cells = tuple((test, cells.get((feature, train, test))) for test in tests)
            ood = [cell for test, cell in row_cells if test != train]
            rows.append(
                GridRow(
                    feature=feature,
                    train=train,
                    tests=row_cells,
                    in_domain=cells.get((feature, train, train)),
                    mean_ood=_mean_ood(ood),
                )
            )
    return GridTable(
        rows=tuple(rows),
        features=features,
        trains=trains,
        tests=tests,
        filters=tuple((t, filters[t]) for t in tests if t in filters),
    )


# ------------------------------------------------------------ paper layout


def paper_columns(table: GridTable) -> tuple[tuple[str, str], ...]:
    """The evaluated ``(train, test)`` pairs in the paper's column order.

    Grouped by test set (``table.tests`` order); within a group the in-domain
    pair first, then the other training sets in ``table.trains`` order.
    """
    evaluated = {
        (row.train, test) for row in table.rows for test, cell in row.tests if cell is not None
    }
    columns = []
    for test in table.tests:
        trains = [t for t in table.trains if t == test] + [t for t in table.trains if t != test]
        columns += [(train, test) for train in trains if (train, test) in evaluated]
    return tuple(columns)


def _letter(i: int) -> str:
    return chr(ord("A") + i) if i < 26 else f"A{i}"


def paper_grid(table: GridTable, metric: str = "auc") -> Table:
    """The grid as the paper prints it: Tab. 2 for ``"auc"``, Tab. 4 for ``"ap"``.

    One row per feature; a column per evaluated (train, test) pair (lettered A,
    B, ... as in the paper); J = the mean over the row's out-of-domain cells,
    each counted once, given only when all of them are present.
    """
    if metric not in _METRICS:
        raise ReportError(f"metric must be one of {', '.join(_METRICS)}, got {metric!r}")
    columns = paper_columns(table)
    by_key = {(row.feature, row.train): row for row in table.rows}
    names, values, counts = [], [], {}
    for feature in table.features:
        cells = []
        for train, test in columns:
            row = by_key.get((feature, train))
            cells.append(None if row is None else row.cell(test))
        ood = [c for c, (train, test) in zip(cells, columns, strict=True) if train != test]
        mean = _mean_ood(ood).get(metric)
        names.append(feature)
        values.append((*(_value(c, metric) for c in cells), mean))
        counts[feature] = [None if c is None else c.n for c in cells]
    letters = [_letter(i) for i in range(len(columns))]
    titles = [f"{x} {train}→{test}" for x, (train, test) in zip(letters, columns, strict=True)]
    j = _letter(len(columns))
    ood_letters = [x for x, (a, b) in zip(letters, columns, strict=True) if a != b]
    mean_text = (
        f"{j}: mean over each row's out-of-domain columns ({', '.join(ood_letters)}), "
        "given only when all are present."
        if ood_letters
        else f"{j}: no out-of-domain column to average."
    )
    return Table(
        title=f"feature ({metric.upper()})",
        rows=tuple(names),
        columns=(*titles, f"{j} mean OOD"),
        values=tuple(values),
        caption=(
            f"{metric.upper()} (%) of probes trained on one dataset and tested on another "
            f"(train→test), grouped by test set, in-domain first. {mean_text}"
            + (f" {table.filter_caption()}" if table.filters else "")
        ),
        meta={
            "metric": metric,
            "pairs": [
                {"column": x, "train": train, "test": test, "in_domain": train == test}
                for x, (train, test) in zip(letters, columns, strict=True)
            ],
            "n": counts,
            "filters": dict(table.filters),
        },
    )


def write_paper_grids(
    table: GridTable, out_dir: str | Path, *, stem: str = "grid"
) -> dict[str, Path]:
    """``<stem>_paper_auc.*`` (Tab. 2) and ``<stem>_paper_ap.*`` (Tab. 4): md, csv, json."""
    files: dict[str, Path] = {}
    for metric in _METRICS:
        paths = paper_grid(table, metric).write(out_dir, f"{stem}_paper_{metric}")
        files.update({f"paper_{metric}_{ext}": path for ext, path in paths.items()})
    return files
