"""The request deadline that stands in for BentoML's: a slow request is answered 504 and
cancelled, an answer begun in time is let finish, and no timer outlives its request (the
leak of BentoML 1.4's TimeoutMiddleware: every request's context alive for the whole timeout)."""

from __future__ import annotations

import asyncio

from serving.deadline import ResponseDeadline, install


def _run(app, timeout: float):
    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def scenario():
        await ResponseDeadline(app, timeout)({"type": "http", "path": "/x"}, receive, send)
        await asyncio.sleep(0.01)  # a cancelled app finishes its cancellation
        loop = asyncio.get_running_loop()
        # The deadline's timer went with the request: nothing is scheduled any more.
        return [h for h in getattr(loop, "_scheduled", []) if not h.cancelled()]

    pending = asyncio.run(scenario())
    return sent, pending


async def _answer(send, body: bytes = b"ok"):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def test_a_fast_request_leaves_no_timer_behind():
    async def app(scope, receive, send):
        await _answer(send)

    sent, pending = _run(app, timeout=120)
    assert [m.get("status") for m in sent if m["type"] == "http.response.start"] == [200]
    assert pending == []


def test_a_request_with_no_answer_by_the_deadline_is_cancelled_and_answered_504():
    cancelled = []

    async def app(scope, receive, send):
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    sent, pending = _run(app, timeout=0.05)
    assert sent[0]["status"] == 504 and b"0.05 seconds" in sent[1]["body"]
    assert cancelled == [True]
    assert pending == []


def test_an_answer_begun_in_time_is_let_finish():
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await asyncio.sleep(0.1)  # past the deadline, but the answer has begun
        await send({"type": "http.response.body", "body": b"late but whole"})

    sent, _ = _run(app, timeout=0.05)
    assert [m.get("body") for m in sent if m["type"] == "http.response.body"] == [b"late but whole"]


def test_bentoml_builds_its_apps_with_it():
    from bentoml._internal.server.base_app import BaseAppFactory
    from bentoml._internal.server.http import traffic

    install()
    assert traffic.TimeoutMiddleware is ResponseDeadline

    class App(BaseAppFactory):
        name = "probe"

    kinds = [m.cls for m in App(timeout=120).middlewares]
    assert ResponseDeadline in kinds
