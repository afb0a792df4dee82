"""How much of a training set a trainer may hold in memory (``--cache-gb``).

The probe, the next-token predictor and the sync network hold their training
videos in memory (then validation) when they fit in the budget and stream
them batch by batch from the store otherwise (``featstore.trainers.streams``). Either
way the batches, their order and the arithmetic are the same, so the budget
changes speed and peak memory, never the model: a run records it as an
execution detail (``execution`` in ``config.json``), not a hyperparameter.

The default budget is :data:`DEFAULT_FRACTION` of the machine's memory (the
cgroup limit when a container sets a lower one).

>>> plan_cache(2**30, train_bytes=700 * 2**20, val_bytes=400 * 2**20)
(True, False)
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from featstore.errors import FeatstoreError

DEFAULT_FRACTION = 0.5
_CGROUP_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")

__all__ = [
    "DEFAULT_FRACTION",
    "CacheBudgetError",
    "cache_bytes_of_gb",
    "default_cache_bytes",
    "execution_record",
    "plan_cache",
    "resolve_cache_bytes",
    "total_memory_bytes",
]


class CacheBudgetError(FeatstoreError, ValueError):
    """A memory budget that is not a number of bytes >= 0."""


def total_memory_bytes() -> int:
    """Physical memory, or the container's memory limit when lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in _CGROUP_LIMITS:
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return int(total)


def default_cache_bytes() -> int:
    """:data:`DEFAULT_FRACTION` of :func:`total_memory_bytes`."""
    return int(DEFAULT_FRACTION * total_memory_bytes())


def cache_bytes_of_gb(gb: float | None) -> int | None:
    """``--cache-gb`` in bytes (GiB, 2**30); ``None`` stays ``None`` (the default budget)."""
    if gb is None:
        return None
    if not (isinstance(gb, int | float) and math.isfinite(gb) and gb >= 0):
        raise CacheBudgetError(f"the cache budget must be a number of GiB >= 0, got {gb!r}")
    return int(gb * 2**30)


def resolve_cache_bytes(cache_bytes: int | None) -> int:
    """A budget in bytes: ``None`` is :func:`default_cache_bytes`."""
    if cache_bytes is None:
        return default_cache_bytes()
    if isinstance(cache_bytes, bool) or not isinstance(cache_bytes, int) or cache_bytes < 0:
        raise CacheBudgetError(f"cache_bytes must be an integer >= 0, got {cache_bytes!r}")
    return cache_bytes


def plan_cache(
    budget: int | None, *, train_bytes: int, val_bytes: int | None = None
) -> tuple[bool, bool]:
    """``(train cached, val cached)``: training first, validation with what is left."""
    budget = resolve_cache_bytes(budget)
    train = int(train_bytes) <= budget
    val = val_bytes is not None and int(train_bytes) * train + int(val_bytes) <= budget
    return train, val


def execution_record(
    budget: int | None, *, train_bytes: int, val_bytes: int | None = None
) -> dict[str, object]:
    """What a run config records under ``execution``: the budget and what it held in memory."""
    budget = resolve_cache_bytes(budget)
    train, val = plan_cache(budget, train_bytes=train_bytes, val_bytes=val_bytes)
    return {
        "cache_bytes": budget,
        "train_bytes": int(train_bytes),
        "val_bytes": None if val_bytes is None else int(val_bytes),
        "train": "cached" if train else "streamed",
        "val": None if val_bytes is None else ("cached" if val else "streamed"),
    }
