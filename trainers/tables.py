"""Tables of fractions rendered as the paper prints them (Markdown ×100, one decimal).

A ``Table`` is a titled grid of values in ``[0, 1]`` (``None`` where missing)
with named rows and columns; the paper's tables (Tab. 2/4 in the paper's
layout, Tab. 6) are built as ``Table`` objects by ``featstore.trainers.report`` and
``featstore.trainers.sync_table``. Markdown shows percentages with one decimal ("–" when
missing) and can bold the best value of each column as the paper does; CSV
and JSON keep full precision (empty / null when missing).

>>> t = Table("demo", ("a", "b"), ("x",), ((0.5,), (None,)))
>>> print(t.to_markdown(), end="")
| demo | x |
|---|---:|
| a | 50.0 |
| b | – |
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from featstore.errors import FeatstoreError

__all__ = ["MISSING", "Table", "TableError"]

MISSING = "–"


class TableError(FeatstoreError, ValueError):
    """A table whose shape or values are inconsistent."""


@dataclass(frozen=True)
class Table:
    """``values[i][j]``: row ``rows[i]``, column ``columns[j]``; fractions or None."""

    title: str
    rows: tuple[str, ...]
    columns: tuple[str, ...]
    values: tuple[tuple[float | None, ...], ...]
    caption: str = ""
    meta: dict[str, Any] = field(default_factory=dict)  # JSON-ready extras (n, filter, ...)

    def __post_init__(self) -> None:
        if len(self.values) != len(self.rows):
            raise TableError(f"{len(self.rows)} row names but {len(self.values)} rows of values")
        for name, row in zip(self.rows, self.values, strict=True):
            if len(row) != len(self.columns):
                raise TableError(
                    f"row {name!r} has {len(row)} values for {len(self.columns)} columns"
                )
            for v in row:
                if v is not None and not (math.isfinite(v) and 0.0 <= v <= 1.0):
                    raise TableError(f"row {name!r}: values must be fractions in [0, 1], got {v}")

    def column(self, name: str) -> list[float | None]:
        j = self.columns.index(name)
        return [row[j] for row in self.values]

    def to_markdown(self, *, bold_best: bool = False) -> str:
        """Values ×100 with one decimal; ``bold_best`` bolds each column's best (ties too)."""
        shown = [[_percent(v) for v in row] for row in self.values]
        if bold_best:
            for j in range(len(self.columns)):
                candidates = [float(r[j]) for r in shown if r[j] != MISSING]
                if not candidates:
                    continue
                best = f"{max(candidates):.1f}"
                for r in shown:
                    if r[j] == best:
                        r[j] = f"**{best}**"
        lines = [
            "| " + " | ".join([_escape(self.title), *map(_escape, self.columns)]) + " |",
            "|---|" + "---:|" * len(self.columns),
        ]
        for name, cells in zip(self.rows, shown, strict=True):
            lines.append("| " + " | ".join([_escape(name), *cells]) + " |")
        if self.caption:
            lines += ["", self.caption]
        return "\n".join(lines) + "\n"

    def to_csv(self) -> str:
        """Full-precision CSV (first column: the row name); missing cells are empty."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow([self.title, *self.columns])
        for name, row in zip(self.rows, self.values, strict=True):
            writer.writerow([name, *("" if v is None else repr(float(v)) for v in row)])
        return buffer.getvalue()

    def to_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "columns": list(self.columns),
            "rows": [
                {"name": name, "values": dict(zip(self.columns, row, strict=True))}
                for name, row in zip(self.rows, self.values, strict=True)
            ],
            "caption": self.caption,
            **self.meta,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"

    def write(self, out_dir: str | Path, stem: str, *, bold_best: bool = True) -> dict[str, Path]:
        """``<stem>.md`` (best bolded), ``<stem>.csv`` and ``<stem>.json``; returns the paths."""
        if not stem or "/" in stem or "\\" in stem:
            raise TableError(f"stem must be a plain file name, got {stem!r}")
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {ext: out / f"{stem}.{ext}" for ext in ("md", "csv", "json")}
        paths["md"].write_text(self.to_markdown(bold_best=bold_best), encoding="utf-8")
        paths["csv"].write_text(self.to_csv(), encoding="utf-8")
        paths["json"].write_text(self.to_json(), encoding="utf-8")
        return paths


def _escape(name: str) -> str:
    return name.replace("|", "\\|")


def _percent(value: float | None) -> str:
    return MISSING if value is None else f"{100.0 * value:.1f}"
