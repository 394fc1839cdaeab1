"""The dashboard's pure parts: the credentials rule, flattening what other parts report,
the page's sections for what exists and what does not, the learning curve, and the app's
routes over a home with no workspace (in-process, through httpx's ASGI transport)."""

from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass

import httpx
import lxml.html
import pytest

from kernel.errors import ConfigError
from loop.cli import main
from loop.core import Loop
from loop.dashboard import (DashboardServer, DashboardView, authorized, create_app, curve_points, flatten,
                            render_page)
from loop.state import PromotionEvent, RunRecord
from loop.status import LoopStatus
from serving import PromotionRecord
from tests.conftest import make_settings


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.parametrize("header, expected", [
    (None, False), ("", False), ("Bearer key-ü", True), ("bearer key-ü", True), ("Bearer wrong", False),
    (basic("anyone", "key-ü"), True), (basic("", "key-ü"), True), (basic("ml", "secret"), True),
    (basic("ml", "wrong"), False), (basic("other", "secret"), False), (basic("key-ü", ""), False),
    ("Basic !!!", False), ("Basic " + base64.b64encode(b"no-colon").decode(), False), ("Digest x", False),
])
def test_the_api_key_or_the_backend_credentials_open_the_page(header, expected):
    assert authorized(header, api_key="key-ü", basic=("ml", "secret")) is expected


def test_without_credentials_configured_it_is_open_and_with_one_only_that_one():
    assert authorized(None, api_key=None, basic=None)
    assert authorized(basic("ml", "secret"), api_key=None, basic=("ml", "secret"))
    assert not authorized("Bearer secret", api_key=None, basic=("ml", "secret"))  # no API key: no bearer
    assert not authorized(basic("anyone", "secret"), api_key=None, basic=("ml", "secret"))
    assert not authorized(basic("ml", "secret"), api_key="key", basic=None)


@dataclass
class Drift:
    score: float
    alarm: bool


def test_flatten_shows_whatever_a_section_holds():
    value = {"capture": {"kept": 12, "rate": 0.25, "by_reason": {"low_confidence": 10, "random": 2}, "last": None},
             "drift": Drift(0.123456, True), "classes": ["a", "b"], "windows": [{"n": 1}, {"n": 2}], "empty": {}}
    assert flatten(value) == [
        ("capture.kept", "12"), ("capture.rate", "0.2500"), ("capture.by_reason.low_confidence", "10"),
        ("capture.by_reason.random", "2"), ("capture.last", "-"), ("drift.score", "0.1235"), ("drift.alarm", "yes"),
        ("classes", "a, b"), ("windows[0].n", "1"), ("windows[1].n", "2"), ("empty", "-"),
    ]
    assert flatten(Drift(1.0, False)) == [("score", "1.0000"), ("alarm", "no")]


def _event(i: int, action: str, labels: int, accuracy: float, judged_by: str) -> PromotionEvent:
    record = PromotionRecord(tag=f"labelloop-classifier:v{i}", accuracy=accuracy, data_commit="c" * 40,
                             n_labels=labels, run_id=f"run-{i}", judged_by=judged_by)
    return PromotionEvent(i, f"2026-01-0{i}T00:00:00+00:00", action, record.tag, None, record.run_id, "test",
                          "<b>why</b>", record.model_dump_json())


def _status(**changes) -> LoopStatus:
    values = dict(workspace="/ws", data_commit="d" * 40, label_batch=3, labels=30, labels_pending_training=4,
                  serving=None, service_version=None, runs=[], last_collect=None, training_labels=25, pool_images=90)
    values.update(changes)
    return LoopStatus(**values)


def _view(status: LoopStatus | None, **changes) -> DashboardView:
    values = dict(generated_at="now", workspace="/ws", label_studio_url="http://ls", service_url="http://svc",
                  status=status)
    values.update(changes)
    return DashboardView(**values)


def test_the_curve_has_one_point_per_change_oldest_first():
    history = [_event(3, "rollback", 20, 0.8, "cv"), _event(2, "promote", 40, 0.9, "eval"),
               _event(1, "promote", 20, 0.8, "cv")]  # newest first, as the state store gives it
    points = curve_points(history)
    assert [(p.labels, p.accuracy, p.judged_by, p.action, p.version) for p in points] == [
        (20, 0.8, "cv", "promote", "v1"), (40, 0.9, "eval", "promote", "v2"), (20, 0.8, "cv", "rollback", "v3")]


def test_a_page_with_a_model_its_history_production_data_and_escaped_text():
    history = [_event(2, "promote", 40, 0.9, "eval"), _event(1, "promote", 20, 0.8, "cv")]
    serving = PromotionRecord.model_validate_json(history[0].record)
    run = RunRecord("run-2", "promoted", "<script>alert(1)</script>", "cli", "c" * 40, 3, 40,
                    serving.tag, 0.9, "2026-01-02", "2026-01-02", "eval", 12)
    status = _status(serving=serving, runs=[run], promotions=history,
                     production={"capture": {"kept": 7}, "drift": {"confidence": {"p_value": 0.01}}})
    page = lxml.html.fromstring(render_page(_view(status, history=history, service_health={"model_version": "v2"},
                                                  label_studio_up=True, reports={"run-2": True})))
    text = lambda element_id: " ".join(page.get_element_by_id(element_id).text_content().split())  # noqa: E731
    assert text("problems").startswith("No problems")
    assert text("stat-service") == "serves v2" and text("stat-label-studio") == "reachable"
    assert text("stat-serving-tag") == serving.tag and text("stat-serving-accuracy") == "0.9000"
    assert (text("stat-labels"), text("stat-training-labels"), text("stat-evaluation-labels"),
            text("stat-pool-images")) == ("30", "25", "5", "90")
    assert "<script>alert(1)</script>" in text("run-run-2") and not page.findall(".//script")  # text, not markup
    assert "<b>why</b>" in text("history") and not page.findall(".//b")
    assert page.get_element_by_id("learning-curve").find(".//{*}svg") is not None
    (link,) = page.get_element_by_id("run-run-2").iterfind(".//a")
    assert link.get("href") == "runs/run-2/report/"
    rows = {tr[0].text_content(): tr[1].text_content() for tr in page.get_element_by_id("production")}
    assert rows == {"capture.kept": "7", "drift.confidence.p_value": "0.0100"}
    assert text("label-quality") == "Not computed yet."
    assert page.find(".//meta[@http-equiv='refresh']") is not None


def test_a_page_with_no_model_and_a_snapshot_does_not_reload():
    status = _status(missing_for_first_model=["class 'a': 0 of 2 labels"], label_quality={"suspects": 3})
    page = lxml.html.fromstring(render_page(_view(status, problems=["Label Studio is not reachable"]), snapshot=True))
    text = lambda element_id: " ".join(page.get_element_by_id(element_id).text_content().split())  # noqa: E731
    assert text("stat-serving-tag") == "No model yet. The first one waits for labels: class 'a': 0 of 2 labels."
    assert text("stat-service") == "not reachable" and text("stat-label-studio") == "not reachable"
    assert text("problems") == "Label Studio is not reachable"
    assert text("runs") == "No training runs yet." and text("production").startswith("Not enabled")
    assert [(tr[0].text_content(), tr[1].text_content()) for tr in page.get_element_by_id("label-quality")] == [
        ("suspects", "3")]
    assert page.find(".//meta[@http-equiv='refresh']") is None


def _get(app, path: str, **headers: str) -> httpx.Response:
    async def get() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://dashboard") as client:
            return await client.get(path, headers=headers)
    return asyncio.run(get())


def test_the_app_over_a_home_without_a_workspace_says_so(tmp_path):
    loop = Loop(make_settings(tmp_path / "home", tmp_path / "no-workspace", label_studio_url="http://127.0.0.1:9",
                              serving_api_key="key"))
    app = create_app(loop)
    assert _get(app, "/").status_code == 401
    answer = _get(app, "/", authorization="Bearer key")
    assert answer.status_code == 200 and answer.headers["cache-control"] == "no-store"
    page = lxml.html.fromstring(answer.text)
    problems = page.get_element_by_id("problems").text_content()
    assert f"no workspace at {tmp_path / 'no-workspace'}" in problems and "Label Studio is not reachable" in problems
    assert _get(app, "/runs/x/report/", authorization="Bearer key").status_code == 404


def test_an_empty_or_zero_port_turns_it_off(tmp_path):
    assert make_settings(tmp_path / "home", tmp_path / "ws", dashboard_port="").dashboard_port == 0
    loop = Loop(make_settings(tmp_path / "home", tmp_path / "ws", dashboard_port=0))
    assert DashboardServer.for_loop(loop) is None
    with pytest.raises(ConfigError, match="LABELLOOP_DASHBOARD_PORT"):
        DashboardServer(loop).start()


def test_the_dashboard_command_writes_a_snapshot(tmp_path, monkeypatch, capsys):
    for name, value in {"HOME": tmp_path / "home", "WORKSPACE": tmp_path / "no-workspace",
                        "LABEL_STUDIO_URL": "http://127.0.0.1:9", "SERVICE_URL": "http://127.0.0.1:9"}.items():
        monkeypatch.setenv(f"LABELLOOP_{name}", str(value))
    target = tmp_path / "page" / "dashboard.html"
    assert main(["dashboard", "--snapshot", str(target)]) == 0
    page = lxml.html.fromstring(target.read_text())
    assert "no workspace at" in page.get_element_by_id("problems").text_content()
    assert page.find(".//meta[@http-equiv='refresh']") is None  # a file does not reload
