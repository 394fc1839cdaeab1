"""One forward pass at a time, fed from one bounded queue: the batching of the process that
holds the model (one-process topology).

Requests wait in one queue; whenever the model is free, the pass takes the head of the
queue and, when merging is on, every following request of the same kind up to
`max_batch_size` images. Nothing waits for a batch to fill: under light load a request
runs alone at once (batching never adds latency), under load the queue that built up
while the model was busy becomes the next batch. BentoML's adaptive dispatcher instead
waits for its latency model to say a larger batch pays: one process parsing HTTP and
running the model measured a worse p99 with it than with no batching at all.

Backpressure: a request that would put more than `max_queue` images in the queue is
refused at once with `OverloadedError` (503, Retry-After), and one that waited longer than
`max_wait_s` is refused instead of run: an answer the client has given up on is wasted
work that delays everyone behind it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from kernel.errors import OverloadedError

__all__ = ["ForwardQueue"]

log = logging.getLogger("labelloop.serving")

In = TypeVar("In")
Out = TypeVar("Out")


@dataclass
class _Job(Generic[In, Out]):
    items: Sequence[In]
    kind: Hashable  # jobs of one kind can share a pass (the same options to `run`)
    merge: bool
    future: asyncio.Future[list[Out]]
    queued_at: float = field(default_factory=time.monotonic)


class ForwardQueue(Generic[In, Out]):
    """`run(items, **options)` is the forward pass (blocking; it runs in one dedicated
    thread, so the event loop keeps answering while the model works)."""

    def __init__(self, run: Callable[..., list[Out]], *, max_batch_size: int, max_queue: int,
                 max_wait_s: float):
        self._run = run
        self._max_batch_size = max_batch_size
        self._max_queue = max_queue
        self._max_wait_s = max_wait_s
        self._queue: deque[_Job[In, Out]] = deque()
        self._queued_items = 0
        self._drainer: asyncio.Task[None] | None = None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="forward-pass")
        self.batch_sizes: deque[int] = deque(maxlen=256)  # recent passes' sizes (tests, benchmarks)

    @property
    def queued(self) -> int:
        """Images waiting for the model."""
        return self._queued_items

    async def submit(self, items: Sequence[In], *, merge: bool = True, shed: bool = True,
                     **options: Any) -> list[Out]:
        """The outputs for `items`, in order. `merge`: may share a pass with other requests
        of the same options. `shed`: refused when the queue is full (client traffic);
        the loop's and Label Studio's calls are bounded by their senders and always queue."""
        if not items:
            return []
        if shed and self._queued_items + len(items) > self._max_queue:
            raise OverloadedError(
                f"{self._queued_items} images are waiting for the model (at most "
                f"LABELLOOP_SERVING_MAX_QUEUE={self._max_queue}): retry in a second"
            )
        job: _Job[In, Out] = _Job(items, tuple(sorted(options.items())), merge,
                                  asyncio.get_running_loop().create_future())
        self._queue.append(job)
        self._queued_items += len(items)
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.ensure_future(self._drain())
        return await job.future

    def _next_batch(self) -> list[_Job[In, Out]]:
        """The head of the queue, plus the following jobs it can share a pass with."""
        batch: list[_Job[In, Out]] = []
        size = 0
        now = time.monotonic()
        while self._queue:
            job = self._queue[0]
            if batch and not (job.merge and batch[0].merge and job.kind == batch[0].kind
                              and size + len(job.items) <= self._max_batch_size):
                break
            self._queue.popleft()
            self._queued_items -= len(job.items)
            if job.future.done():  # the client went away (its request task was cancelled)
                continue
            if now - job.queued_at > self._max_wait_s:
                job.future.set_exception(OverloadedError(
                    f"the request waited {now - job.queued_at:.1f} s for the model (more than "
                    f"LABELLOOP_SERVING_MAX_LATENCY_MS): retry in a second"))
                continue
            batch.append(job)
            size += len(job.items)
        return batch

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queue:
            batch = self._next_batch()
            if not batch:
                continue
            items = [item for job in batch for item in job.items]
            self.batch_sizes.append(len(items))
            try:
                outputs = await loop.run_in_executor(self._thread, lambda: self._run(items, **dict(batch[0].kind)))
            except Exception as exc:  # noqa: BLE001 - every waiting request gets the pass's error
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            start = 0
            for job in batch:
                end = start + len(job.items)
                if not job.future.done():
                    job.future.set_result(outputs[start:end])
                start = end
