"""The one-process topology's forward queue: requests that arrive while the model is busy
share the next pass (in order, each getting its own outputs), a lone request runs alone,
kinds never mix, a full queue or a request that waited too long is refused with 503's
OverloadedError, a failed pass fails only its own requests; and the guard puts Retry-After
on every 503 the service sends."""

from __future__ import annotations

import asyncio
import threading

import pytest

from kernel.errors import OverloadedError
from serving.batching import ForwardQueue
from serving.guard import RETRY_AFTER_S, Guard, GuardConfig


class Model:
    """A forward pass that records its batches and, while `gate` is clear, blocks (the
    model is busy: requests arriving meanwhile queue up)."""

    def __init__(self, fail_on: str | None = None):
        self.batches: list[tuple[list[str], dict]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.fail_on = fail_on

    def run(self, items: list[str], **options) -> list[str]:
        self.gate.wait(10)
        self.batches.append((list(items), options))
        if self.fail_on in items:
            raise ValueError(f"cannot score {self.fail_on}")
        return [f"{item}:{options.get('tag', '')}" for item in items]


def queue_of(model: Model, **kwargs) -> ForwardQueue:
    return ForwardQueue(model.run, **{"max_batch_size": 8, "max_queue": 100, "max_wait_s": 30.0, **kwargs})


async def _busy_then(model: Model, queue: ForwardQueue, coros) -> list:
    """Hold the model in a first pass while `coros` queue, then let everything run."""
    model.gate.clear()
    first = asyncio.ensure_future(queue.submit(["first"]))
    await asyncio.sleep(0.05)  # the first pass has started and blocks
    rest = [asyncio.ensure_future(c) for c in coros]
    await asyncio.sleep(0.05)  # all queued
    model.gate.set()
    return [await first, *await asyncio.gather(*rest, return_exceptions=True)]


def test_requests_queued_while_the_model_is_busy_share_one_pass_in_order():
    model = Model()
    queue = queue_of(model)
    answers = asyncio.run(_busy_then(model, queue, [queue.submit([f"r{i}a", f"r{i}b"]) for i in range(3)]))
    assert answers == [["first:"], ["r0a:", "r0b:"], ["r1a:", "r1b:"], ["r2a:", "r2b:"]]
    assert [items for items, _ in model.batches] == [["first"], ["r0a", "r0b", "r1a", "r1b", "r2a", "r2b"]]


def test_a_lone_request_runs_alone_at_once():
    model = Model()
    queue = queue_of(model)
    assert asyncio.run(queue.submit(["only"])) == ["only:"]
    assert model.batches == [(["only"], {})]


def test_a_pass_never_exceeds_the_batch_size_nor_mixes_kinds_or_unmerged_requests():
    model = Model()
    queue = queue_of(model, max_batch_size=4)
    asyncio.run(_busy_then(model, queue, [
        queue.submit(["a1", "a2", "a3"]), queue.submit(["b1", "b2"]),  # 3 + 2 > 4: two passes
        queue.submit(["c1"], tag="x"),  # another kind
        queue.submit(["d1"], merge=False), queue.submit(["e1"]),
    ]))
    assert [(items, options) for items, options in model.batches] == [
        (["first"], {}), (["a1", "a2", "a3"], {}), (["b1", "b2"], {}), (["c1"], {"tag": "x"}), (["d1"], {}),
        (["e1"], {})]


def test_a_full_queue_refuses_client_requests_but_not_the_loops():
    model = Model()
    queue = queue_of(model, max_queue=3)
    answers = asyncio.run(_busy_then(model, queue, [
        queue.submit(["a", "b"]), queue.submit(["c", "d"]), queue.submit(["e", "f"], shed=False)]))
    assert answers[1] == ["a:", "b:"]
    assert isinstance(answers[2], OverloadedError) and "LABELLOOP_SERVING_MAX_QUEUE=3" in str(answers[2])
    assert answers[3] == ["e:", "f:"]
    assert queue.queued == 0


def test_a_request_that_waited_too_long_is_refused_instead_of_run():
    model = Model()
    queue = queue_of(model, max_wait_s=0.02)
    answers = asyncio.run(_busy_then(model, queue, [queue.submit(["late"])]))
    assert answers[0] == ["first:"]
    assert isinstance(answers[1], OverloadedError) and "waited" in str(answers[1])
    assert [items for items, _ in model.batches] == [["first"]]


def test_a_failed_pass_fails_its_own_requests_only():
    model = Model(fail_on="bad")
    queue = queue_of(model)

    async def scenario():
        failed = await _busy_then(model, queue, [queue.submit(["bad"]), queue.submit(["ok"])])
        return failed, await queue.submit(["after"])

    (first, bad, ok), after = asyncio.run(scenario())
    assert isinstance(bad, ValueError) and isinstance(ok, ValueError)  # they shared the failed pass
    assert after == ["after:"]


def test_a_request_whose_client_left_is_not_run():
    model = Model()
    queue = queue_of(model)

    async def scenario():
        model.gate.clear()
        first = asyncio.ensure_future(queue.submit(["first"]))
        await asyncio.sleep(0.05)
        gone = asyncio.ensure_future(queue.submit(["gone"]))
        kept = asyncio.ensure_future(queue.submit(["kept"]))
        await asyncio.sleep(0.05)
        gone.cancel()
        model.gate.set()
        return await first, await kept

    assert asyncio.run(scenario()) == (["first:"], ["kept:"])
    assert [items for items, _ in model.batches] == [["first"], ["kept"]]


@pytest.mark.parametrize("status, retry_after", [(503, str(RETRY_AFTER_S).encode()), (200, None)])
def test_the_guard_puts_retry_after_on_every_503(status, retry_after):
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"x"})

    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    guard = Guard(app, GuardConfig(max_body_bytes=1024))
    asyncio.run(guard({"type": "http", "method": "GET", "path": "/versions", "headers": []}, receive, send))
    headers = dict(sent[0]["headers"])
    assert sent[0]["status"] == status
    assert headers.get(b"retry-after") == retry_after
