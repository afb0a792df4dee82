"""Run extraction tasks on a Dask cluster (the ``distributed`` extra).

The videos are split into chunks; each chunk is one :func:`run_task` call on some
worker, which loads the encoder once per process (:func:`cached_encoder`), writes its
own parts with its own StoreWriter and returns a summary. Nothing else is
coordinated: the store's commits make concurrent writers safe, and a task retried
after a worker was lost skips the videos its first attempt committed. The store must
be reachable from every worker under the same URL (shared disk or object storage).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import Any

from featstore.cluster import TASK_RETRIES, DistributedUnavailableError, connect, run_tasks
from featstore.extract.plan import ExtractTask
from featstore.extract.progress import ExtractProgress, ExtractSummary, ProgressCallback

log = logging.getLogger(__name__)

MAX_TASK_VIDEOS = 256  # bounds the work a lost worker takes with it

__all__ = ["TASK_RETRIES", "DistributedUnavailableError", "run_distributed", "split_task"]


def split_task(task: ExtractTask, n_chunks: int) -> list[ExtractTask]:
    """``task`` cut into about ``n_chunks`` tasks of consecutive videos (at most
    :data:`MAX_TASK_VIDEOS` each)."""
    n = len(task.videos)
    if n == 0:
        return []
    size = max(1, min(MAX_TASK_VIDEOS, math.ceil(n / max(1, n_chunks))))
    return [dataclasses.replace(task, videos=task.videos[i : i + size]) for i in range(0, n, size)]


def run_distributed(
    task: ExtractTask,
    *,
    cluster: Any,
    n_workers: int = 2,
    on_progress: ProgressCallback | None = None,
    tasks_per_worker: int = 4,
) -> list[ExtractSummary]:
    """Run ``task`` as chunks on ``cluster`` ("local", "tcp://host:port" or a Client)."""
    from featstore.extract.worker import run_task

    start = time.perf_counter()
    with connect(cluster, n_workers=n_workers) as client:
        n_threads = max(1, sum(client.nthreads().values()))
        chunks = split_task(task, n_threads * tasks_per_worker)
        log.info(
            "%d videos in %d tasks on %d worker threads", len(task.videos), len(chunks), n_threads
        )
        tasks = {str(i): (run_task, [chunk]) for i, chunk in enumerate(chunks)}
        summaries: list[ExtractSummary] = []
        for _, summary in run_tasks(client, tasks, prefix="featstore-extract"):
            summaries.append(summary)
            if on_progress is not None:
                on_progress(_progress(summaries, len(task.videos), start))
    return summaries


def _progress(done: list[ExtractSummary], total: int, start: float) -> ExtractProgress:
    return ExtractProgress(
        videos_total=total - sum(s.videos_skipped for s in done),
        videos_done=sum(s.videos_done for s in done),
        videos_failed=sum(s.videos_failed for s in done),
        videos_skipped=sum(s.videos_skipped for s in done),
        frames=sum(s.frames for s in done),
        elapsed_s=time.perf_counter() - start,
    )
