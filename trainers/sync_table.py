"""Paper Tab. 6: the training-free sync score (Eq. 3) over shifts x pools x test sets.

For each test set, every video's audio and visual features are read once;
``-cos`` is computed once per shift window (``shifted_cosines``), and every
pool is taken from that matrix with ``featstore.trainers.syncfree.best_shift``, the very
function ``featstore syncscore`` uses, so each cell equals
``featstore syncscore --shift D --pool P`` on the same videos. Metrics follow
``featstore eval``: the evaluation filter ``fakes`` (``paper``: reals and
both-modified fakes where the dataset says which; ``all``: every fake), decided
by ``featstore.trainers.evaluation_filter`` as for every other command.

Rows are the paper's pools in its order (average; max, log-sum-exp,
percentile-97; min, percentile-3), columns each test set at ``Delta = 0`` and
``Delta = 15``. Each pool pads as its ``SyncConfig`` default does (the average
counts unpaired positions as cosine 0, as SpeechForensics does; the other
pools leave them out) unless one ``padding`` is given for all.

>>> result = sync_table(store, ["favc", "av1m", "avlips", "dfe2024"],
...                     "avhubert-a", "avhubert-v")  # doctest: +SKIP
>>> print(result.table("auc").to_markdown(bold_best=True))  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from featstore.trainers.data import FeatureKey, Selection, split_hash
from featstore.trainers.evaluation_filter import PAPER, check_fakes, describe
from featstore.trainers.metrics import binary_metrics
from featstore.trainers.pairs import read_pairs, select_pairs
from featstore.trainers.syncfree import SyncConfig, SyncError, best_shift, shifted_cosines
from featstore.trainers.tables import Table

if TYPE_CHECKING:
    from featstore.store import FeatureStore

log = logging.getLogger(__name__)

__all__ = ["POOL_NAMES", "TABLE6_POOLS", "TABLE6_SHIFTS", "SyncCell", "SyncTable", "sync_table"]

TABLE6_POOLS: tuple[str, ...] = ("mean", "max", "logsumexp", "p97", "min", "p3")
TABLE6_SHIFTS: tuple[int, ...] = (0, 15)
POOL_NAMES = {
    "mean": "average",
    "max": "max",
    "logsumexp": "log-sum-exp",
    "p97": "percentile-97",
    "min": "min",
    "p3": "percentile-3",
}


@dataclass(frozen=True)
class SyncCell:
    """Eq. 3 with one (shift, pool, padding) on one test set."""

    selection: str
    shift: int
    pool: str
    padding: str
    auc: float
    ap: float
    n: int
    n_real: int
    n_fake: int


@dataclass(frozen=True)
class SyncTable:
    """Every cell of the sweep and what produced it (enough to tell two tables apart)."""

    audio: str
    visual: str
    selections: tuple[str, ...]
    shifts: tuple[int, ...]
    pools: tuple[str, ...]
    cells: tuple[SyncCell, ...]
    settings: dict[str, Any]  # fakes, frame_hz, paddings, evaluated_hashes, counts

    def cell(self, selection: str, shift: int, pool: str) -> SyncCell:
        for c in self.cells:
            if (c.selection, c.shift, c.pool) == (selection, shift, pool):
                return c
        raise KeyError((selection, shift, pool))

    def _column(self, selection: str, shift: int) -> str:
        sel = Selection.parse(selection)
        name = str(sel).removesuffix(":test")  # "av1m", "av1m@av1m-real", "favc:val"
        return f"{name} Δ={shift}"

    def table(self, metric: str = "auc") -> Table:
        """Tab. 6 for ``metric`` (``"auc"`` or ``"ap"``): pools x (test set, shift)."""
        if metric not in ("auc", "ap"):
            raise SyncError(f"metric must be 'auc' or 'ap', got {metric!r}")
        columns = [(s, d) for s in self.selections for d in self.shifts]
        values = tuple(
            tuple(getattr(self.cell(s, d, pool), metric) for s, d in columns) for pool in self.pools
        )
        return Table(
            title=f"pool ({metric.upper()})",
            rows=tuple(POOL_NAMES.get(p, p) for p in self.pools),
            columns=tuple(self._column(s, d) for s, d in columns),
            values=values,
            caption=self.caption(metric),
            meta={"metric": metric, **self.to_dict()},
        )

    def caption(self, metric: str) -> str:
        counts = "; ".join(
            f"{s}: n = {c['n']} ({c['n_real']} real / {c['n_fake']} fake)"
            for s, c in self.settings["counts"].items()
        )
        which = describe(self.settings["fakes"])
        paddings = self.settings["paddings"]
        zero = [POOL_NAMES.get(p, p) for p in self.pools if paddings[p] == "zero"]
        excluded = [POOL_NAMES.get(p, p) for p in self.pools if paddings[p] == "exclude"]
        padding = "; ".join(
            part
            for part in (
                f"{', '.join(zero)}: unpaired positions count as cosine 0" if zero else "",
                f"{', '.join(excluded)}: unpaired positions left out" if excluded else "",
            )
            if part
        )
        return (
            f"Eq. 3 on {self.audio} vs {self.visual}, {metric.upper()} (%), "
            f"Δ = shift window in frames. {counts}. {which}. Padding: {padding}."
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "audio": self.audio,
            "visual": self.visual,
            "selections": list(self.selections),
            "shifts": list(self.shifts),
            "pools": list(self.pools),
            "settings": self.settings,
            "cells": [asdict(c) for c in self.cells],
        }

    def write(self, out_dir: str | Path, *, stem: str = "table6") -> dict[str, Path]:
        """``<stem>_auc.{md,csv,json}`` and ``<stem>_ap.{md,csv,json}``."""
        files: dict[str, Path] = {}
        for metric in ("auc", "ap"):
            paths = self.table(metric).write(out_dir, f"{stem}_{metric}")
            files.update({f"{metric}_{ext}": path for ext, path in paths.items()})
        return files


def _check(shifts: Sequence[int], pools: Sequence[str], padding: str | None) -> list[SyncConfig]:
    if not shifts or not pools:
        raise SyncError("give at least one shift and one pool")
    if len(set(shifts)) != len(shifts) or len(set(pools)) != len(pools):
        raise SyncError(f"shifts and pools must not repeat, got {list(shifts)} and {list(pools)}")
    return [SyncConfig(shift=d, pool=p, padding=padding) for d in shifts for p in pools]


def sync_table(
    store: FeatureStore,
    on: Sequence[Selection | str],
    audio: FeatureKey | str,
    visual: FeatureKey | str,
    *,
    shifts: Sequence[int] = TABLE6_SHIFTS,
    pools: Sequence[str] = TABLE6_POOLS,
    padding: str | None = None,
    frame_hz: float | None = None,
    fakes: str = PAPER,
    allow_missing: bool = False,
    on_selection: Callable[[str, int], None] | None = None,
) -> SyncTable:
    """Eq. 3's AUC and AP for every (shift, pool) on every selection in ``on``.

    ``padding=None`` lets each pool use its default; ``on_selection(name, n)``
    is called before each test set is scored.
    """
    configs = _check(list(shifts), list(pools), padding)
    fakes = check_fakes(fakes)
    if not on:
        raise SyncError("give at least one test set")
    selections = [Selection.parse(s, default_split="test") for s in on]
    names = [str(s) for s in selections]
    if len(set(names)) != len(names):
        raise SyncError(f"test sets must not repeat, got {names}")
    audio, visual = FeatureKey.parse(audio), FeatureKey.parse(visual)
    cells: list[SyncCell] = []
    counts: dict[str, dict[str, int]] = {}
    hashes: dict[str, str] = {}
    for sel in selections:
        rows = select_pairs(store, sel, audio, visual, fakes=fakes, allow_missing=allow_missing)
        if on_selection is not None:
            on_selection(str(sel), len(rows))
        hashes[str(sel)] = split_hash(rows["video_id"].astype(str))
        labels: list[int] = []
        scores: dict[SyncConfig, list[float]] = {c: [] for c in configs}
        for pair in read_pairs(store, sel.dataset, rows, audio, visual, frame_hz=frame_hz):
            labels.append(pair.label)
            for d in shifts:
                try:
                    fake = -shifted_cosines(pair.audio, pair.visual, d)  # [T, 2D + 1]
                except SyncError as exc:
                    raise SyncError(f"{pair.video_id}: {exc}") from None
                for config in configs:
                    if config.shift == d:
                        scores[config].append(best_shift(fake, config).score)
        y = np.asarray(labels, dtype=np.int8)
        for config in configs:
            m = binary_metrics(y, np.asarray(scores[config], dtype=np.float64))
            cells.append(
                SyncCell(
                    selection=str(sel),
                    shift=config.shift,
                    pool=config.pool,
                    padding=str(config.padding),
                    auc=m.auc,
                    ap=m.ap,
                    n=m.n,
                    n_real=m.n_real,
                    n_fake=m.n_fake,
                )
            )
        counts[str(sel)] = {"n": m.n, "n_real": m.n_real, "n_fake": m.n_fake}
        log.info("table 6: %s scored (%d videos)", sel, m.n)
    return SyncTable(
        audio=str(audio),
        visual=str(visual),
        selections=tuple(names),
        shifts=tuple(int(d) for d in shifts),
        pools=tuple(pools),
        cells=tuple(cells),
        settings={
            "fakes": fakes,
            "frame_hz": frame_hz,
            "paddings": {c.pool: c.padding for c in configs},
            "evaluated_hashes": hashes,  # split_hash of each test set's evaluated videos
            "counts": counts,
        },
    )
