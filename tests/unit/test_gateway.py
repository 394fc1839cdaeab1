"""The gateway's failure rules, offline: the SDK client runs on an httpx MockTransport that
answers (or fails) as each test scripts it. Transport errors and 502/503/504 are retried on
reads only; Label Studio's refusals and exhausted retries become one LabelStudioError that
names the URL, the call and the status; bugs surface unchanged and are never retried."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest

from kernel.errors import LabelStudioError
from labeling import LabelStudioGateway, SimulatedAnnotator
from labeling.gateway import READ_ATTEMPTS

URL = "http://label-studio.test"
TASK = {"id": 5, "data": {"image": "/data/local-files/?d=a.png", "name": "a.png"},
        "updated_at": "2026-11-28T00:50:09Z", "annotations": []}

Answer = httpx.Response | Exception | Callable[[httpx.Request], httpx.Response]


class ScriptedLabelStudio:
    """Answers each request with the next scripted answer (the last one repeats) and
    records what was asked."""

    def __init__(self, *answers: Answer):
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer(request) if callable(answer) else answer

    def gateway(self) -> LabelStudioGateway:
        client = httpx.Client(transport=httpx.MockTransport(self))
        return LabelStudioGateway(URL, "test-token", retry_wait_s=0, http_client=client)


def refused() -> httpx.ConnectError:
    return httpx.ConnectError("[Errno 111] Connection refused")


def test_a_transport_error_on_a_read_is_retried_then_succeeds():
    ls = ScriptedLabelStudio(refused(), httpx.ReadTimeout("timed out"), httpx.Response(200, json=TASK))
    tasks = ls.gateway().tasks_by_id([5])
    assert [(t.id, t.image_name) for t in tasks] == [(5, "a.png")]
    assert len(ls.requests) == 3
    assert ls.requests[0].headers["authorization"] == "Token test-token"


def test_a_gateway_status_on_a_read_is_retried_through_the_sdk():
    page = {"count": 1, "next": None, "previous": None, "results": [{"id": 3, "title": "p"}]}
    ls = ScriptedLabelStudio(httpx.Response(503, text="restarting"), httpx.Response(502, text="bad gateway"),
                             httpx.Response(200, json=page),
                             httpx.Response(200, json={**page, "results": []}))  # the pager's last page
    assert ls.gateway().find_project("p") == 3
    assert len(ls.requests) == 4


def test_a_refusal_is_not_retried_and_names_url_call_and_status():
    ls = ScriptedLabelStudio(httpx.Response(400, json={"detail": "bad filter"}))
    with pytest.raises(LabelStudioError) as raised:
        ls.gateway().tasks_by_id([5])
    assert len(ls.requests) == 1
    message = str(raised.value)
    assert URL in message and "GET api/tasks/5/" in message and "HTTP 400" in message and "bad filter" in message


def test_a_rejected_token_says_which_setting_to_fix():
    ls = ScriptedLabelStudio(httpx.Response(401, json={"detail": "Invalid token."}))
    with pytest.raises(LabelStudioError, match="LABELLOOP_LABEL_STUDIO_API_KEY"):
        ls.gateway().align_queue(1, "v1")
    assert len(ls.requests) == 1


def test_a_server_error_is_not_retried():
    ls = ScriptedLabelStudio(httpx.Response(500, text="database is locked"))
    with pytest.raises(LabelStudioError, match="HTTP 500.*see its log"):
        ls.gateway().tasks_by_id([5])
    assert len(ls.requests) == 1


def test_exhausted_retries_become_one_unreachable_error():
    ls = ScriptedLabelStudio(refused())
    with pytest.raises(LabelStudioError) as raised:
        ls.gateway().tasks_by_id([5])
    assert len(ls.requests) == READ_ATTEMPTS
    message = str(raised.value)
    assert "unreachable" in message and URL in message and "ConnectError" in message
    assert isinstance(raised.value.__cause__, httpx.ConnectError)


def test_a_write_is_never_retried():
    ls = ScriptedLabelStudio(refused(), httpx.Response(200, json={"id": 1}))
    with pytest.raises(LabelStudioError, match="unreachable"):
        ls.gateway().align_queue(1, "v1")
    assert len(ls.requests) == 1


def test_a_bug_is_neither_retried_nor_wrapped():
    calls = []

    def buggy() -> None:
        calls.append(1)
        raise TypeError("a bug")

    gateway = ScriptedLabelStudio(httpx.Response(200)).gateway()
    with pytest.raises(TypeError, match="a bug"):
        gateway._read("do something", buggy)
    assert calls == [1]


def test_a_bug_under_the_sdk_surfaces_unchanged():
    ls = ScriptedLabelStudio(KeyError("not a transport error"))
    with pytest.raises(KeyError):
        ls.gateway().tasks_by_id([5])
    assert len(ls.requests) == 1


def test_the_simulated_annotator_sends_what_the_ui_sends():
    ls = ScriptedLabelStudio(httpx.Response(200, json=TASK), httpx.Response(201, json={"id": 9}))
    annotator = SimulatedAnnotator(ls.gateway())
    assert annotator.label_next(2, {"a.png": "7"}, 1) == ["a.png"]
    annotator.annotate(5, "3", completed_by=4)
    annotator.skip(6)
    nxt, first, second, skipped = ls.requests
    assert nxt.method == "GET" and nxt.url.path == "/api/projects/2/next/"
    assert first.url.path == "/api/tasks/5/annotations/"
    choice = [{"from_name": "choice", "to_name": "image", "type": "choices", "value": {"choices": ["7"]}}]
    assert json.loads(first.content) == {"result": choice, "lead_time": 1.0}
    assert json.loads(second.content)["completed_by"] == 4
    assert json.loads(skipped.content) == {"result": [], "lead_time": 1.0, "was_cancelled": True}
