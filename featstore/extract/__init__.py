"""The extraction worker: manifest -> decode + crop -> batched forward -> the store.

>>> from featstore.extract import extract, plan_extraction
>>> plan = plan_extraction("features.zarr", dataset="av1m", encoder="clip")  # doctest: +SKIP
>>> plan.videos_to_run, plan.bytes_total  # doctest: +SKIP
(1200, 1474560000)
>>> summary = extract("features.zarr", dataset="av1m", encoder="clip", device="cuda")  # doctest: +SKIP

Modules: :mod:`~featstore.extract.plan` (selection, resume, the task unit, dry-run
estimates), :mod:`~featstore.extract.decode` (one file -> one encoder input),
:mod:`~featstore.extract.batching` (prefetching and length-bucketed batches),
:mod:`~featstore.extract.worker` (the task function), :mod:`~featstore.extract.distributed`
(Dask), :mod:`~featstore.extract.progress` (progress snapshots and summaries).
Importing this package does not import torch.
"""

from __future__ import annotations

from featstore.extract.decode import VIDEO_ERRORS, ClipTooShortError
from featstore.extract.plan import (
    DEFAULT_BATCH_FRAMES,
    DEFAULT_NUM_WORKERS,
    ExtractError,
    ExtractPlan,
    ExtractTask,
    LayerEstimate,
    VideoRef,
)
from featstore.extract.progress import ExtractProgress, ExtractSummary, ProgressCallback
from featstore.extract.run import extract, plan_extraction
from featstore.extract.worker import run_task

__all__ = [
    "DEFAULT_BATCH_FRAMES",
    "DEFAULT_NUM_WORKERS",
    "VIDEO_ERRORS",
    "ClipTooShortError",
    "ExtractError",
    "ExtractPlan",
    "ExtractProgress",
    "ExtractSummary",
    "ExtractTask",
    "LayerEstimate",
    "ProgressCallback",
    "VideoRef",
    "extract",
    "plan_extraction",
    "run_task",
]
