"""Micro-batching of concurrent requests into one encoder forward, off the event loop.

Requests for the same encoder wait at most ``max_wait_s`` (or until ``max_batch``
clips are queued) and go through one ``encode`` call in the batcher's own worker
thread, so the event loop never runs a forward pass. When a batched call fails,
every clip of that batch is encoded alone, so one bad clip fails only its own
request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from featstore.encoders.base import Clip
from featstore.errors import FeatstoreError
from featstore.layout import Layer

log = logging.getLogger(__name__)

__all__ = ["BatcherClosedError", "EncodeFn", "MicroBatcher"]

EncodeFn = Callable[[Sequence[Clip], Sequence[Layer]], list[dict[Layer, np.ndarray]]]


class BatcherClosedError(FeatstoreError):
    """The server is shutting down; the request was not encoded."""


@dataclass(eq=False)
class _Item:
    clip: Clip
    layers: tuple[Layer, ...]
    future: asyncio.Future[dict[Layer, np.ndarray]]


class MicroBatcher:
    """Collects ``encode`` requests on the event loop, runs them in batches in one thread.

    >>> batcher = MicroBatcher(encoder.encode, name="logfbank", max_batch=8, max_wait_s=0.01)  # doctest: +SKIP
    >>> rows = await batcher.encode(clip, ["last"])  # doctest: +SKIP
    """

    def __init__(
        self,
        encode: EncodeFn,
        *,
        name: str,
        max_batch: int = 8,
        max_wait_s: float = 0.01,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.name = name
        self.max_batch = max_batch
        self.max_wait_s = max(0.0, max_wait_s)
        self._encode = encode
        self._on_batch = on_batch
        self._pending: deque[_Item] = deque()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"encode-{name}")
        self._closed = False
        # the latest batch sizes, for tests and benchmarks (bounded: a server runs for months)
        self.batch_sizes: deque[int] = deque(maxlen=4096)

    def run_now(self, clips: Sequence[Clip], layers: Sequence[Layer]) -> list[Any]:
        """Encode in the calling thread (warm-up); same per-clip fallback as a batch."""
        return self._run_batch(list(clips), tuple(layers))

    async def encode(self, clip: Clip, layers: Sequence[Layer]) -> dict[Layer, np.ndarray]:
        """``{layer: [T, D]}`` of ``clip``, batched with other requests arriving now."""
        if self._closed:
            raise BatcherClosedError("the server is shutting down")
        loop = asyncio.get_running_loop()
        if self._task is None:
            self._wakeup = asyncio.Event()
            self._task = loop.create_task(self._loop(), name=f"batcher-{self.name}")
        assert self._wakeup is not None
        item = _Item(clip, tuple(layers), loop.create_future())
        self._pending.append(item)
        self._wakeup.set()
        return await item.future

    async def close(self) -> None:
        """Stop batching; pending requests fail with :class:`BatcherClosedError`."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while self._pending:
            item = self._pending.popleft()
            if not item.future.done():
                item.future.set_exception(BatcherClosedError("the server is shutting down"))
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _loop(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            while not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
            deadline = loop.time() + self.max_wait_s
            while len(self._pending) < self.max_batch:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except TimeoutError:
                    break
            n = min(self.max_batch, len(self._pending))
            batch = [self._pending.popleft() for _ in range(n)]
            batch = [i for i in batch if not i.future.done()]  # dropped: timed out, cancelled
            if not batch:
                continue
            layers = tuple(dict.fromkeys(x for i in batch for x in i.layers))
            try:
                results = await loop.run_in_executor(
                    self._executor, self._run_batch, [i.clip for i in batch], layers
                )
            except BaseException as exc:  # cancelled at shutdown, or the executor is gone
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(
                            BatcherClosedError(f"encoder {self.name} stopped: {exc!r}")
                        )
                raise
            for item, result in zip(batch, results, strict=True):
                if item.future.done():
                    continue
                if isinstance(result, BaseException):
                    item.future.set_exception(result)
                else:
                    item.future.set_result({x: result[x] for x in item.layers})

    def _run_batch(self, clips: list[Clip], layers: tuple[Layer, ...]) -> list[Any]:
        """Outputs per clip, or the exception that clip raised (worker thread)."""
        import torch

        self.batch_sizes.append(len(clips))
        if self._on_batch is not None:
            self._on_batch(len(clips))
        with torch.inference_mode():
            try:
                outputs = self._encode(clips, layers)
                if len(outputs) != len(clips):
                    raise RuntimeError(
                        f"encoder {self.name} returned {len(outputs)} outputs for {len(clips)} clips"
                    )
                return list(outputs)
            except Exception as exc:
                if len(clips) == 1:
                    return [exc.with_traceback(None)]
                log.info(
                    "batch of %d failed on %s (%s); encoding alone", len(clips), self.name, exc
                )
            results: list[Any] = []
            for clip in clips:
                try:
                    results.append(self._encode([clip], layers)[0])
                except Exception as exc:
                    results.append(exc.with_traceback(None))
            return results
