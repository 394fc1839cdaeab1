"""The front's calls to the model: over BentoML's dependency client to the model-worker
processes (`ModelWorkerClient`), or to the model in its own process (`InProcessModel`, the
one-process topology). Both answer `classify(method, images, decoded)` and `info()`.

BentoML 1.4's dependency client recycles its aiohttp session every `max_requests` calls
and after `max_age` seconds while other calls are still in flight, and a keep-alive
connection the model worker closed while idle fails on reuse: such a call fails with a
transport error (an `aiohttp.ClientError`: "Server disconnected", "Connector is closed").
Every call here is retried on those, told apart by type (inference and the model's
identity are idempotent); a timeout is not retried, and nothing else is. The model's
identity is asked at most once per `info_ttl_s` (the workers' promotion poll interval),
in the background, instead of once per request, and again as soon as an answer names
another version.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

import aiohttp
from bentoml.exceptions import BentoMLException
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    retry_if_not_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from PIL import Image

from kernel.errors import NoModelError, OverloadedError, ServiceUnavailableError
from serving.batching import ForwardQueue
from serving.inference import NO_MODEL, ModelCore
from serving.protocol import ImagePrediction, ModelInfo

__all__ = ["CLIENT_METHOD", "InProcessModel", "ModelWorkerClient", "TRANSPORT_ERRORS"]

#: The worker method of client-API images: merged into batches, drift-monitored, shed under overload.
CLIENT_METHOD = "classify_images"

log = logging.getLogger("labelloop.serving")

#: What a call over the hop raises when the connection, not the model worker, failed.
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (aiohttp.ClientError,)
#: Transport errors that are not retried: the call already waited its whole timeout.
NOT_RETRIED: tuple[type[BaseException], ...] = (aiohttp.ServerTimeoutError,)
#: The model's identity is one attribute read in the worker.
INFO_TIMEOUT_S = 10.0


class ModelWorkerClient:
    """`client` returns BentoML's async client of the `Classifier` dependency (resolved per
    call: BentoML builds it lazily in the serving process)."""

    def __init__(self, client: Callable[[], Any], *, info_ttl_s: float = 1.0, attempts: int = 5,
                 max_queue: int | None = None):
        self._client = client
        # Client images in flight to the workers: beyond `max_queue` a request is refused
        # (503) instead of piling onto the workers' queues.
        self._max_queue = max_queue
        self._in_flight = 0
        self._info_ttl_s = info_ttl_s
        self._retrying = dict(
            retry=retry_if_exception_type(TRANSPORT_ERRORS) & retry_if_not_exception_type(NOT_RETRIED),
            stop=stop_after_attempt(attempts),
            wait=wait_exponential_jitter(multiplier=0.01, max=0.5, jitter=0.02),
            before_sleep=_log_retry,
            reraise=True,
        )
        self._info: ModelInfo | None = None
        self._info_at = float("-inf")
        self._pending: asyncio.Future[ModelInfo | None] | None = None

    async def call(self, method: str, **kwargs: Any) -> Any:
        """One call to the model worker, retried on transport errors. The worker's 503
        becomes `NoModelError` (nothing promoted yet) or `ServiceUnavailableError` (it shed
        the request)."""
        try:
            return await self._send(method, **kwargs)
        except BentoMLException as exc:
            if exc.error_code != HTTPStatus.SERVICE_UNAVAILABLE:
                raise
            if await self.info() is None:
                raise NoModelError(NO_MODEL) from exc
            raise ServiceUnavailableError(
                "the model worker could not take the request (overloaded: it sheds requests it "
                "expects to wait longer than LABELLOOP_SERVING_MAX_LATENCY_MS; or still loading "
                "the promoted model): retry later"
            ) from exc

    async def _send(self, method: str, **kwargs: Any) -> Any:
        async for attempt in AsyncRetrying(**self._retrying):
            with attempt:
                return await getattr(self._client(), method)(**kwargs)
        raise AssertionError("unreachable: tenacity re-raises the last error")

    async def classify(self, method: str, images: list[bytes], decoded: list[Image.Image] | None = None,
                       **kwargs: Any) -> list[ImagePrediction]:
        """`decoded` (the front's validation of `images`) does not cross the hop: the worker decodes."""
        if method == CLIENT_METHOD and self._max_queue is not None:
            if self._in_flight + len(images) > self._max_queue:
                raise OverloadedError(
                    f"{self._in_flight} images are in flight to the model workers (at most "
                    f"LABELLOOP_SERVING_MAX_QUEUE={self._max_queue}): retry in a second")
            self._in_flight += len(images)
            try:
                out = await self.call(method, images=images, **kwargs)
            finally:
                self._in_flight -= len(images)
        else:
            out = await self.call(method, images=images, **kwargs)
        predictions = [ImagePrediction.model_validate(o) if isinstance(o, dict) else o for o in out]
        if predictions and self._info is not None and predictions[-1].model_version != self._info.version:
            self.expire()  # a promotion happened: the next info() asks the worker again
        return predictions

    async def info(self) -> ModelInfo | None:
        """The serving model's version and classes (None: nothing promoted yet). Fresh for
        `info_ttl_s`; after that the known answer is returned while one call refreshes it
        in the background, so a request waits on the model worker's identity only while
        none is known."""
        if time.monotonic() - self._info_at < self._info_ttl_s:
            return self._info
        if self._info is None:
            return await asyncio.shield(self._refresh())
        self._refresh()
        return self._info

    def _refresh(self) -> asyncio.Future[ModelInfo | None]:
        """One `model_info` call in flight at a time, shared by everyone who asks."""
        if self._pending is None or self._pending.done():
            self._pending = asyncio.ensure_future(self._fetch_info())
            self._pending.add_done_callback(_log_failure)
        return self._pending

    async def _fetch_info(self) -> ModelInfo | None:
        # Bounded: a call that hangs (BentoML's client, a session closed under it) must not
        # hold every request that waits for the answer until the 120 s request timeout.
        info = await asyncio.wait_for(self._send("model_info"), INFO_TIMEOUT_S)
        self._info = ModelInfo.model_validate(info) if isinstance(info, dict) else info
        self._info_at = time.monotonic()
        return self._info

    def expire(self) -> None:
        self._info_at = float("-inf")


class InProcessModel:
    """The model in the front's own process: no hop, no second decode, no pickling. The
    calls the model-worker service would answer go through one `ForwardQueue`, one pass at a
    time: with `batching`, client images merge into shared passes, and so do Label Studio's
    /predicts and the loop's re-scoring among themselves (the same outputs; a request larger
    than a batch runs alone); embeddings one pass per request. Client traffic is shed when
    the queue is full; Label Studio's and the loop's calls always queue."""

    def __init__(self, core: ModelCore, *, batching: bool, max_batch_size: int, max_queue: int,
                 max_wait_s: float):
        self._core = core
        self._batching = batching
        self.queue: ForwardQueue[Image.Image, ImagePrediction] = ForwardQueue(
            core.predict, max_batch_size=max_batch_size, max_queue=max_queue, max_wait_s=max_wait_s)

    async def classify(self, method: str, images: list[bytes], decoded: list[Image.Image] | None = None,
                       **kwargs: Any) -> list[ImagePrediction]:
        if decoded is None:
            raise TypeError("the in-process model takes decoded images")
        if method == CLIENT_METHOD:
            return await self.queue.submit(decoded, merge=self._batching, observe=True)
        if method == "classify_all":
            # Label Studio's /predicts (annotators opening tasks at once) share passes too.
            return await self.queue.submit(decoded, merge=self._batching, shed=False)
        if method == "classify_with_embeddings":
            observe = bool(kwargs.get("observe", False))  # a client's images (not the loop's)
            return await self.queue.submit(decoded, merge=False, shed=observe, with_embeddings=True,
                                           observe=observe)
        raise ValueError(f"no model method {method!r}")

    async def info(self) -> ModelInfo | None:
        return self._core.info()

    def expire(self) -> None:
        """Nothing cached: `info` reads the model slot itself."""


def _log_failure(done: asyncio.Future[ModelInfo | None]) -> None:
    if not done.cancelled() and (error := done.exception()) is not None:
        log.warning("could not ask the model worker which model it serves: %s: %s", type(error).__name__, error)


def _log_retry(state: Any) -> None:
    error = state.outcome.exception() if state.outcome else None
    log.warning("model worker call failed in transport (%s: %s); retry %d", type(error).__name__, error,
             state.attempt_number)
