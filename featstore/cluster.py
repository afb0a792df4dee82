"""Reaching a Dask cluster for ``--cluster`` (the ``distributed`` extra), and running tasks on it.

``--cluster local`` starts a ``LocalCluster`` of worker processes for the
duration of a command; ``--cluster tcp://HOST:PORT`` (or ``tls://``) connects
to a running scheduler. Every task is submitted with :data:`TASK_RETRIES`
retries; a task whose worker dies is rescheduled by the scheduler on another
worker (``distributed.scheduler.allowed-failures`` times), so a lost worker
loses no work. The store must be reachable from every worker under the same
URL (a shared disk or object storage).

>>> with connect("local", n_workers=2) as client:  # doctest: +SKIP
...     for key, result in run_tasks(client, {"a": (sum, [1, 2])}):
...         print(key, result)
a 3
"""

from __future__ import annotations

import collections
import contextlib
import logging
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from featstore.errors import FeatstoreError

log = logging.getLogger(__name__)

TASK_RETRIES = 3
INSTALL_HINT = "pip install 'featstore[distributed]'"

__all__ = [
    "INSTALL_HINT",
    "TASK_RETRIES",
    "ClusterError",
    "DistributedUnavailableError",
    "Tasks",
    "check_cluster",
    "connect",
    "run_tasks",
]


class ClusterError(FeatstoreError, ValueError):
    """``--cluster`` names no cluster this command can use."""


class DistributedUnavailableError(ClusterError, ImportError):
    """``--cluster`` was asked for but dask.distributed is not installed."""


def check_cluster(cluster: Any) -> None:
    """Fail early on a ``--cluster`` value that is neither ``local``, an address nor a Client."""
    if cluster == "local" or (
        isinstance(cluster, str) and cluster.startswith(("tcp://", "tls://"))
    ):
        return
    try:
        from distributed import Client
    except ImportError:
        raise DistributedUnavailableError(
            f"--cluster needs dask.distributed: {INSTALL_HINT}"
        ) from None
    if not isinstance(cluster, Client):
        raise ClusterError(f"cluster must be 'local' or a tcp:// address, got {cluster!r}")


@contextlib.contextmanager
def connect(cluster: Any, *, n_workers: int = 2) -> Iterator[Any]:
    """A ``distributed.Client`` for ``cluster``: "local", "tcp://host:port" or a Client."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise DistributedUnavailableError(
            f"--cluster needs dask.distributed: {INSTALL_HINT}"
        ) from None
    if isinstance(cluster, Client):
        yield cluster
        return
    check_cluster(cluster)
    if cluster == "local":
        if n_workers < 1:
            raise ClusterError(f"n_workers must be at least 1, got {n_workers}")
        # one thread per worker process: torch's own intra-op threads do the rest
        with (
            LocalCluster(
                n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=":0"
            ) as local,
            Client(local) as client,
        ):
            yield client
        return
    try:
        client = Client(cluster, timeout="20s")
    except OSError as exc:
        raise ClusterError(f"cannot reach the Dask scheduler at {cluster}: {exc}") from None
    with client:
        yield client


class Tasks:
    """Named tasks run on a Dask client, or here, one after the other, without one.

    Results come back as tasks finish (``for name, result in tasks``), and
    tasks may be submitted while results are being consumed (a grid submits
    a probe's evaluations when its training returns). On a cluster each task
    is retried ``retries`` times when it raises; leaving the loop early, or a
    task failing for good, cancels the tasks still pending.
    """

    def __init__(
        self, client: Any = None, *, prefix: str = "featstore", retries: int = TASK_RETRIES
    ) -> None:
        self.client, self.retries = client, retries
        self._prefix = f"{prefix}-{uuid.uuid4().hex[:8]}"
        self._local: collections.deque[tuple[Any, Callable[..., Any], tuple[Any, ...]]]
        self._local = collections.deque()
        self._futures: dict[Any, Any] = {}
        self._done: Any = None
        if client is not None:
            from distributed import as_completed

            self._done = as_completed()

    def submit(self, name: Any, function: Callable[..., Any], *args: Any) -> None:
        if self.client is None:
            self._local.append((name, function, args))
            return
        key = f"{self._prefix}-{len(self._futures)}"
        future = self.client.submit(function, *args, key=key, retries=self.retries, pure=False)
        self._futures[future] = name
        self._done.add(future)

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        if self.client is None:
            while self._local:
                name, function, args = self._local.popleft()
                yield name, function(*args)
            return
        try:
            for future in self._done:
                yield self._futures[future], future.result()
        finally:
            pending = [f for f in self._futures if not f.done()]
            if pending:
                self.client.cancel(pending)


def run_tasks(
    client: Any,
    tasks: Mapping[str, tuple[Callable[..., Any], list[Any]]],
    *,
    prefix: str = "featstore",
    retries: int = TASK_RETRIES,
) -> Iterator[tuple[str, Any]]:
    """Submit ``{name: (function, args)}`` to ``client`` (None: run here) and yield
    ``(name, result)`` as tasks finish (:class:`Tasks`)."""
    runner = Tasks(client, prefix=prefix, retries=retries)
    for name, (function, args) in tasks.items():
        runner.submit(name, function, *args)
    yield from runner
