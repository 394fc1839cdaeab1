"""The service's request deadline: a 504 when a request has not begun its answer in time.

It stands in for BentoML 1.4's `TimeoutMiddleware` (the `traffic.timeout` of a service),
which arms a `loop.call_later(timeout)` per request and never cancels it: every finished
request stays reachable from its timer, with the copy of the context the timer holds
(tracing spans, BentoML's request context), for the whole timeout. At 400 requests/s and
labelloop's 120 s that is ~50,000 requests' objects alive at once, and every full garbage
collection walks them: measured here, collections grew from 16 ms to over 200 ms within a
minute of load, each one a pause for every request in flight. The behaviour is BentoML's
(wait for the first message of the answer; past the deadline cancel the request and answer
504; once an answer has begun, let it finish); only the timer is released with the request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

__all__ = ["ResponseDeadline", "install"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class ResponseDeadline:
    def __init__(self, app: Callable[..., Awaitable[None]], timeout: float) -> None:
        self.app = app
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        begun: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def send_and_note(message: Message) -> None:
            if not begun.done():
                begun.set_result(None)
            await send(message)

        request = asyncio.ensure_future(self.app(scope, receive, send_and_note))
        request.add_done_callback(lambda _: begun.done() or begun.set_result(None))
        try:
            # wait_for cancels its own timer when it returns: nothing outlives the request.
            await asyncio.wait_for(asyncio.shield(begun), self.timeout)
        except asyncio.TimeoutError:
            if request.cancel():
                await _answer_504(send, self.timeout)
                return
        except asyncio.CancelledError:
            request.cancel()
            raise
        await request


async def _answer_504(send: Send, timeout: float) -> None:
    body = f'{{"error": "Not able to process the request in {timeout:g} seconds"}}'.encode()
    await send({"type": "http.response.start", "status": 504,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def install() -> None:
    """Make BentoML build its apps with `ResponseDeadline` (it looks the class up in its
    traffic module each time it builds one). Called when the service module loads, before
    BentoML builds the app, in every process of the service."""
    from bentoml._internal.server.http import traffic

    traffic.TimeoutMiddleware = ResponseDeadline  # type: ignore[misc, assignment]
