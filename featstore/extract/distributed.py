"""Run extraction tasks on a Dask cluster (the ``distributed`` extra).

The videos are split into chunks; each chunk is one :func:`run_task` call on some
worker, which loads the encoder once per process (:func:`cached_encoder`), writes its
own parts with its own StoreWriter and returns a summary. Nothing else is
coordinated: the store's commits make concurrent writers safe, and a task retried
after a worker was lost skips the videos its first attempt committed. The store must
be reachable from every worker under the same URL (shared disk or object storage).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
import uuid
from collections.abc import Iterator
from typing import Any

from featstore.extract.plan import ExtractError, ExtractTask
from featstore.extract.progress import ExtractProgress, ExtractSummary, ProgressCallback

log = logging.getLogger(__name__)

TASK_RETRIES = 3  # attempts after a worker dies mid-task
MAX_TASK_VIDEOS = 256  # bounds the work a lost worker takes with it
INSTALL_HINT = "pip install 'featstore[distributed]'"


class DistributedUnavailableError(ExtractError, ImportError):
    """``--cluster`` was asked for but dask.distributed is not installed."""


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
    try:
        from distributed import as_completed
    except ImportError:
        raise DistributedUnavailableError(
            f"--cluster needs dask.distributed: {INSTALL_HINT}"
        ) from None
    from featstore.extract.worker import run_task

    start = time.perf_counter()
    with _client(cluster, n_workers) as client:
        n_threads = max(1, sum(client.nthreads().values()))
        chunks = split_task(task, n_threads * tasks_per_worker)
        log.info(
            "%d videos in %d tasks on %d worker threads", len(task.videos), len(chunks), n_threads
        )
        run_id = uuid.uuid4().hex[:8]
        futures = [
            client.submit(
                run_task,
                chunk,
                key=f"featstore-extract-{run_id}-{i}",
                retries=TASK_RETRIES,
                pure=False,
            )
            for i, chunk in enumerate(chunks)
        ]
        summaries: list[ExtractSummary] = []
        try:
            for future in as_completed(futures):
                summaries.append(future.result())
                if on_progress is not None:
                    on_progress(_progress(summaries, len(task.videos), start))
        except BaseException:
            client.cancel(futures)
            raise
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


@contextlib.contextmanager
def _client(cluster: Any, n_workers: int) -> Iterator[Any]:
    from distributed import Client, LocalCluster

    if isinstance(cluster, Client):
        yield cluster
        return
    if cluster == "local":
        if n_workers < 1:
            raise ExtractError(f"n_workers must be at least 1, got {n_workers}")
        # one thread per worker process: the encoder's own intra-op threads do the rest
        with (
            LocalCluster(
                n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=":0"
            ) as local,
            Client(local) as client,
        ):
            yield client
        return
    if not (isinstance(cluster, str) and cluster.startswith(("tcp://", "tls://"))):
        raise ExtractError(f"cluster must be 'local' or a tcp:// address, got {cluster!r}")
    try:
        client = Client(cluster, timeout="20s")
    except OSError as exc:
        raise ExtractError(f"cannot reach the Dask scheduler at {cluster}: {exc}") from None
    with client:
        yield client
