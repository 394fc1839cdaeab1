"""The front's calls to the model worker: transport errors (what BentoML's dependency client
raises when it recycles its session under load) are retried by type, nothing else is; the
worker's 503 is told apart (no model vs shed); the model's identity is cached."""

from __future__ import annotations

import asyncio
from http import HTTPStatus

import aiohttp
import pytest
from bentoml.exceptions import BentoMLException, ServiceUnavailable

from kernel.errors import NoModelError, ServiceUnavailableError
from serving.model_worker import ModelWorkerClient

INFO = {"version": "labelloop-classifier:v1", "classes": ["0", "1"], "metadata": {}}


def prediction(version: str = "labelloop-classifier:v1") -> dict:
    return {"label": "1", "probabilities": {"0": 0.2, "1": 0.8}, "score": 0.6, "strategy": "margin",
            "model_version": version}


class FakeWorker:
    """BentoML's async client of the dependency: each method pops its next outcome."""

    def __init__(self, **outcomes: list):
        self.outcomes = outcomes
        self.calls: list[str] = []

    def __getattr__(self, method: str):
        async def call(**kwargs):
            self.calls.append(method)
            await asyncio.sleep(0)
            queue = self.outcomes[method]
            outcome = queue.pop(0) if len(queue) > 1 else queue[0]
            if isinstance(outcome, BaseException):
                raise outcome
            return outcome

        return call


def client_of(fake: FakeWorker, ttl: float = 60.0) -> ModelWorkerClient:
    return ModelWorkerClient(lambda: fake, info_ttl_s=ttl)


@pytest.mark.parametrize("transport_error", [
    aiohttp.ServerDisconnectedError(),
    aiohttp.ClientConnectionError("Connector is closed."),
    aiohttp.ClientOSError(None, "Can not write request body"),
])
def test_transport_errors_are_retried(transport_error):
    fake = FakeWorker(classify_all=[transport_error, transport_error, [prediction()]])
    out = asyncio.run(client_of(fake).classify("classify_all", [b"png"]))
    assert [p.model_version for p in out] == ["labelloop-classifier:v1"]
    assert fake.calls == ["classify_all"] * 3


@pytest.mark.parametrize("error", [ValueError("a bug"), aiohttp.ServerTimeoutError("timed out"),
                                   BentoMLException("worker failed")])
def test_anything_else_is_not_retried(error):
    fake = FakeWorker(classify_all=[error])
    with pytest.raises(type(error)):
        asyncio.run(client_of(fake).classify("classify_all", [b"png"]))
    assert fake.calls == ["classify_all"]


def test_retries_stop_and_reraise_the_transport_error():
    fake = FakeWorker(classify_all=[aiohttp.ServerDisconnectedError()])
    with pytest.raises(aiohttp.ServerDisconnectedError):
        asyncio.run(client_of(fake).classify("classify_all", [b"png"]))
    assert len(fake.calls) == 5


def test_the_workers_503_is_no_model_or_overload():
    shed = ServiceUnavailable("busy", error_code=HTTPStatus.SERVICE_UNAVAILABLE)
    nothing = FakeWorker(classify_images=[shed], model_info=[None])
    with pytest.raises(NoModelError, match="no model has been promoted"):
        asyncio.run(client_of(nothing).classify("classify_images", [b"png"]))
    loaded = FakeWorker(classify_images=[shed], model_info=[INFO])
    with pytest.raises(ServiceUnavailableError, match="overloaded"):
        asyncio.run(client_of(loaded).classify("classify_images", [b"png"]))


def test_model_info_is_asked_once_for_many_requests():
    fake = FakeWorker(model_info=[aiohttp.ServerDisconnectedError(), INFO])
    worker = client_of(fake)

    async def many():
        return await asyncio.gather(*(worker.info() for _ in range(64)))

    infos = asyncio.run(many())
    assert {i.version for i in infos} == {"labelloop-classifier:v1"}
    assert fake.calls == ["model_info", "model_info"]  # one call (retried once), not 64


def test_stale_info_is_answered_at_once_and_refreshed_in_the_background():
    v2 = dict(INFO, version="labelloop-classifier:v2")
    fake = FakeWorker(model_info=[INFO, v2], classify_all=[[prediction("labelloop-classifier:v2")]])
    worker = client_of(fake, ttl=60.0)

    async def scenario():
        assert (await worker.info()).version.endswith("v1")
        assert (await worker.info()).version.endswith("v1") and fake.calls == ["model_info"]  # cached
        await worker.classify("classify_all", [b"png"])  # an answer names another version
        stale = await worker.info()
        await asyncio.sleep(0.01)  # the background refresh
        return stale, await worker.info()

    stale, fresh = asyncio.run(scenario())
    assert stale.version.endswith("v1") and fresh.version.endswith("v2")
    assert fake.calls == ["model_info", "classify_all", "model_info"]


def test_without_a_known_model_every_request_waits_for_the_answer():
    fake = FakeWorker(model_info=[None, INFO])
    worker = client_of(fake, ttl=0.0)

    async def scenario():
        return await worker.info(), await worker.info()

    assert asyncio.run(scenario()) == (None, worker._info)
    assert worker._info is not None and fake.calls == ["model_info", "model_info"]
