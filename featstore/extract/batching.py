"""Length-bucketed batches under a frame budget, and the prefetching decode stage.

A batch costs ``len(batch) * max(length)`` padded frames; sorting a window of decoded
clips by length before cutting it keeps padding small (clips of similar length end up
together) while the window bounds memory and latency.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def length_batches(
    items: Iterable[T],
    *,
    length: Callable[[T], int],
    batch_frames: int,
    window_frames: int | None = None,
) -> Iterator[list[T]]:
    """Group ``items`` into batches whose padded size ``n * max_len`` stays within
    ``batch_frames`` (a single longer item is a batch of its own).

    Items are gathered into windows of about ``window_frames`` frames (default four
    batches), sorted by length and cut into batches; the last, partial batch of a window
    is carried into the next one, so only the end of the stream yields a small batch.

    >>> [len(b) for b in length_batches([5, 1, 5, 1], length=int, batch_frames=4)]
    [2, 1, 1]
    """
    if batch_frames < 1:
        raise ValueError(f"batch_frames must be at least 1, got {batch_frames}")
    window_frames = window_frames or 4 * batch_frames
    window: list[T] = []
    frames = 0
    for item in items:
        window.append(item)
        frames += length(item)
        if frames >= window_frames:
            *full, window = _cut(window, length, batch_frames)
            yield from full
            frames = sum(length(x) for x in window)
    if window:
        yield from _cut(window, length, batch_frames)


def _cut(window: list[T], length: Callable[[T], int], batch_frames: int) -> list[list[T]]:
    """Sorted by length, cut greedily; always returns at least one (possibly partial) batch."""
    batches: list[list[T]] = []
    batch: list[T] = []
    for item in sorted(window, key=length):
        n = length(item)  # the longest so far: items are sorted
        if batch and (len(batch) + 1) * n > batch_frames:
            batches.append(batch)
            batch = []
        batch.append(item)
    batches.append(batch)
    return batches


def prefetch(
    fn: Callable[[T], R], items: Iterable[T], *, num_workers: int, max_pending: int
) -> Iterator[tuple[T, R | BaseException]]:
    """``(item, fn(item))`` in input order, computed ahead by ``num_workers`` threads.

    At most ``max_pending`` results are in flight or waiting, which bounds memory.
    Exceptions are returned in place of results (the caller decides which are
    per-item failures). ``num_workers=0`` runs ``fn`` inline. Leaving the iterator
    early cancels what has not started.
    """
    if num_workers == 0:
        for item in items:
            yield item, _call(fn, item)
        return
    source = iter(items)
    with ThreadPoolExecutor(num_workers, thread_name_prefix="featstore-decode") as pool:
        pending: collections.deque[tuple[T, Future[R | BaseException]]] = collections.deque()
        try:
            for item in source:
                pending.append((item, pool.submit(_call, fn, item)))
                if len(pending) >= max(1, max_pending):
                    break
            while pending:
                item, future = pending.popleft()
                result = future.result()
                for nxt in source:
                    pending.append((nxt, pool.submit(_call, fn, nxt)))
                    break
                yield item, result
        finally:
            for _, future in pending:
                future.cancel()


def _call(fn: Callable[[T], R], item: T) -> R | BaseException:
    try:
        return fn(item)
    except Exception as exc:  # handed to the caller, which re-raises what is not per-item
        return exc
