"""The service as a real `bentoml serve` process: no model -> 503, promotion -> hot swap
without restart, the Label Studio protocol, webhook spooling, route precedence."""

from __future__ import annotations

import base64
import json
import time

import httpx
import pytest

from loop.stack import ServiceServer
from pipelines.layout import METRICS_FILE, MODEL_FILE, PARAMS_FILE, REGISTERED_FILE
from serving import PromotionRecord, write_promotion
from tests.conftest import make_settings


@pytest.fixture(scope="module")
def service(trained, tmp_path_factory):
    """Started BEFORE anything is promoted in its home (the trained store is shared)."""
    loop, run = trained
    home = tmp_path_factory.mktemp("svc-home")
    (home / "bentoml").symlink_to(loop.settings.bentoml_home)
    settings = make_settings(home, loop.settings.workspace)
    server = ServiceServer(settings).start(timeout_s=240)
    yield settings, server
    server.stop()


def _png(loop, index: int = 0) -> bytes:
    return loop.workspace.image_path(loop.workspace.pool_images()[index]).read_bytes()


def test_without_a_model_it_is_not_ready_and_answers_503(service, trained):
    settings, server = service
    loop, _ = trained
    assert httpx.get(f"{server.url}/readyz").status_code != 200
    assert httpx.get(f"{server.url}/health").json()["model_version"] is None
    r = httpx.post(f"{server.url}/classify", files=[("images", ("a.png", _png(loop), "image/png"))])
    assert r.status_code == 503
    r = httpx.post(f"{server.url}/predict", json={"tasks": [{"id": 1, "data": {"image": "x"}}]})
    assert r.status_code == 503 and "no model has been promoted" in r.json()["detail"]


@pytest.fixture(scope="module")
def promoted(service, trained):
    settings, server = service
    loop, run = trained
    write_promotion(settings.promotion_file, PromotionRecord(
        tag=run.model_tag, accuracy=run.accuracy, data_commit=run.data_commit, n_labels=20, run_id=run.run_id))
    deadline = time.monotonic() + 60
    while httpx.get(f"{server.url}/readyz").status_code != 200:
        assert time.monotonic() < deadline, "service did not load the promoted model"
        time.sleep(0.5)
    return settings, server, run


def test_client_api_returns_label_probabilities_score_and_version(promoted, trained):
    settings, server, run = promoted
    loop, _ = trained
    files = [("images", (f"{i}.png", _png(loop, i), "image/png")) for i in range(3)]
    r = httpx.post(f"{server.url}/classify", files=files)
    assert r.status_code == 200, r.text
    out = r.json()
    assert len(out) == 3
    for item in out:
        assert item["model_version"] == run.model_tag
        assert set(item["probabilities"]) == {str(d) for d in range(10)}
        assert abs(sum(item["probabilities"].values()) - 1) < 1e-3
        assert item["label"] == max(item["probabilities"], key=item["probabilities"].get)
        assert item["strategy"] == "margin" and 0 <= item["score"] <= 1


def test_not_an_image_is_a_400_and_the_service_stays_up(promoted):
    _, server, _ = promoted
    r = httpx.post(f"{server.url}/classify", files=[("images", ("x.png", b"garbage", "image/png"))])
    assert r.status_code == 400
    assert httpx.get(f"{server.url}/health").status_code == 200


def test_label_studio_predict_one_result_per_task_in_order(promoted, trained):
    _, server, run = promoted
    loop, _ = trained
    uri = "data:image/png;base64," + base64.b64encode(_png(loop, 1)).decode()
    tasks = [
        {"id": 11, "data": {"image": uri}},
        {"id": 12, "data": {"image": "/data/upload/1/missing.png"}},  # cannot be fetched
        {"id": 13, "data": {"image": uri}},
    ]
    r = httpx.post(f"{server.url}/predict", json={"tasks": tasks, "project": "1.1", "label_config": "<View/>"})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == 3
    assert results[0]["result"] == results[2]["result"]  # same image, same answer
    assert results[0]["score"] == pytest.approx(results[2]["score"], abs=1e-6)
    assert results[0]["result"][0]["value"]["choices"][0] in "0123456789"
    assert results[1]["result"] == []  # no prediction for the broken task, the others still get one
    assert {res["model_version"] for res in results} == {run.model_tag}


def test_setup_and_versions_report_the_model(promoted):
    _, server, run = promoted
    r = httpx.post(f"{server.url}/setup", json={"project": "1.1", "schema": "<View/>", "hostname": "", "access_token": ""})
    assert r.json() == {"model_version": run.model_tag}
    assert httpx.get(f"{server.url}/versions").json() == {"versions": [run.model_tag]}


def test_mounted_routes_win_where_they_should(promoted):
    """/health is the Label Studio route (mounted app); /healthz and /metrics are BentoML's."""
    _, server, _ = promoted
    assert httpx.get(f"{server.url}/health").json()["status"] == "UP"
    assert httpx.get(f"{server.url}/healthz").status_code == 200
    assert "bentoml" in httpx.get(f"{server.url}/metrics").text.lower()


def test_webhook_spools_the_event_and_returns_at_once(promoted):
    settings, server, _ = promoted
    payload = {"action": "ANNOTATION_CREATED", "annotation": {"id": 5}, "task": {"id": 9}, "project": {"id": 1}}
    started = time.perf_counter()
    r = httpx.post(f"{server.url}/webhook", json=payload)
    elapsed = time.perf_counter() - started
    assert r.status_code == 200 and r.json()["action"] == "ANNOTATION_CREATED"
    spooled = [json.loads(p.read_text()) for p in settings.events_dir.glob("*.json")]
    assert payload in spooled
    print(f"webhook answered in {elapsed * 1000:.1f} ms")


def test_promotion_hot_swaps_without_restart(promoted, trained):
    settings, server, run = promoted
    loop, _ = trained
    # Register the same trained model again: a second, distinct version in the store.
    import subprocess
    import sys

    repo = loop.settings.runs_dir / run.run_id / "repo"
    env = loop.settings.child_env()
    code = (
        "from pathlib import Path; from pipelines.register import register; from pipelines.params import load_params;"
        f"r = register(load_params(Path('{repo / PARAMS_FILE}')), Path('{repo}'), Path('{repo / MODEL_FILE}'),"
        f" Path('{repo / METRICS_FILE}'), Path('{repo / REGISTERED_FILE}.2')); print(r.tag)"
    )
    new_tag = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                             check=True).stdout.strip().splitlines()[-1]
    assert new_tag != run.model_tag
    pid_before = server._proc.pid
    write_promotion(settings.promotion_file, PromotionRecord(
        tag=new_tag, accuracy=run.accuracy, data_commit=run.data_commit, n_labels=20, run_id="again"))
    versions = set()
    deadline = time.monotonic() + 60
    files = [("images", ("a.png", _png(loop), "image/png"))]
    while time.monotonic() < deadline:
        r = httpx.post(f"{server.url}/classify", files=files)
        assert r.status_code == 200  # no request fails during the swap
        versions.add(r.json()[0]["model_version"])
        if new_tag in versions:
            break
    assert new_tag in versions and versions <= {run.model_tag, new_tag}
    assert server._proc.pid == pid_before and server.running
