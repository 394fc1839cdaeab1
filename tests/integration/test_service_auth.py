"""Auth on a real `bentoml serve`: an API key for the client API, basic auth for the Label
Studio routes, a shared secret for the webhook; probes and metrics stay open; no secret
ever reaches the service log."""

from __future__ import annotations

import time

import httpx
import pytest

from loop.stack import ServiceServer
from serving import WEBHOOK_SECRET_HEADER, PredictionClient, PromotionRecord, write_promotion
from tests.conftest import make_settings

API_KEY = "client-key-4f1e9c"
LS_USER, LS_PASSWORD = "label-studio", "basic-pass-77a0"
WEBHOOK_SECRET = "hook-secret-2b8d"


@pytest.fixture(scope="module")
def guarded(trained, tmp_path_factory):
    loop, run = trained
    home = tmp_path_factory.mktemp("guarded-home")
    (home / "bentoml").symlink_to(loop.settings.bentoml_home)
    settings = make_settings(
        home, loop.settings.workspace,
        serving_api_key=API_KEY, serving_basic_auth_user=LS_USER, serving_basic_auth_password=LS_PASSWORD,
        webhook_secret=WEBHOOK_SECRET,
    )
    write_promotion(settings.promotion_file, PromotionRecord(
        tag=run.model_tag, accuracy=run.accuracy, data_commit=run.data_commit, n_labels=20, run_id=run.run_id))
    server = ServiceServer(settings).start(timeout_s=240)  # waits on /health WITH the credentials
    deadline = time.monotonic() + 90
    while httpx.get(f"{server.url}/readyz").status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.5)
    yield settings, server, loop, run
    server.stop()


def _files(loop):
    png = loop.workspace.image_path(loop.workspace.pool_images()[0]).read_bytes()
    return [("images", ("a.png", png, "image/png"))]


def test_client_api_needs_the_api_key(guarded):
    settings, server, loop, run = guarded
    assert httpx.post(f"{server.url}/classify", files=_files(loop)).status_code == 401
    wrong = httpx.post(f"{server.url}/classify", files=_files(loop), headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and "API key" in wrong.text
    right = httpx.post(f"{server.url}/classify", files=_files(loop), headers={"Authorization": f"Bearer {API_KEY}"})
    assert right.status_code == 200 and right.json()[0]["model_version"] == run.model_tag
    # The loop's own client takes the key from settings.
    client = PredictionClient.for_settings(settings.serving)
    path = loop.workspace.image_path(loop.workspace.pool_images()[0])
    assert client.classify_files([path])[0].model_version == run.model_tag
    assert client.serving_version() == run.model_tag  # /health with basic auth


def test_label_studio_routes_need_basic_auth(guarded):
    _, server, _, run = guarded
    for method, route, body in [("GET", "/health", None), ("GET", "/versions", None),
                                ("POST", "/setup", {"schema": ""}), ("POST", "/predict", {"tasks": []})]:
        r = httpx.request(method, f"{server.url}{route}", json=body)
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Basic"), route
        bad = httpx.request(method, f"{server.url}{route}", json=body, auth=(LS_USER, "wrong"))
        assert bad.status_code == 401, route
    ok = httpx.get(f"{server.url}/health", auth=(LS_USER, LS_PASSWORD))
    assert ok.status_code == 200 and ok.json()["model_version"] == run.model_tag
    # The API key is not a way into the Label Studio routes.
    assert httpx.get(f"{server.url}/health", headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 401


def test_webhook_needs_the_shared_secret(guarded):
    settings, server, _, _ = guarded
    payload = {"action": "START_TRAINING", "project": {"id": 1}}
    assert httpx.post(f"{server.url}/webhook", json=payload).status_code == 401
    assert httpx.post(f"{server.url}/webhook", json=payload, headers={WEBHOOK_SECRET_HEADER: "x"}).status_code == 401
    ok = httpx.post(f"{server.url}/webhook", json=payload, headers={WEBHOOK_SECRET_HEADER: WEBHOOK_SECRET})
    assert ok.status_code == 200 and (settings.events_dir / f"{ok.json()['event_id']}.json").exists()


def test_probes_and_metrics_stay_open_and_no_secret_is_logged(guarded):
    settings, server, _, _ = guarded
    for route in ("/readyz", "/livez", "/metrics", "/docs.json"):
        assert httpx.get(f"{server.url}{route}").status_code == 200, route
    logs = "\n".join(p.read_text(errors="replace") for p in (settings.home / "logs").glob("*"))
    assert logs  # the service did log (requests, startup)
    for secret in (API_KEY, LS_PASSWORD, WEBHOOK_SECRET):
        assert secret not in logs
