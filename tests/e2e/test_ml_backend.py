"""A REAL Label Studio server connects to a REAL `bentoml serve` as its ML backend, with
basic auth and a webhook secret on (as in the Kubernetes manifests): Label Studio's own
validation accepts it, one "Retrieve predictions" of 100 tasks (local files, read by the
service from the document root it shares with Label Studio) stores 100 predictions, the queue
opens a task that carries one, and an annotation reaches the service's webhook.

Failures as Label Studio sees them: a backend that cannot fetch from Label Studio (a stale
token) is refused when connecting and answers `/predict` with the cause; a retrieve whose
images all fail stores no predictions (an empty one would stick). Fetching 200 local files
over Label Studio's HTTP vs from the shared root is measured."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from pathlib import Path

import httpx
import pytest

from kernel.errors import LabelStudioError
from labeling.gateway import LabelStudioGateway
from labeling.simulated import SimulatedAnnotator
from loop.s3images import s3_credentials
from loop.stack import ServiceServer
from serving import PredictionClient, PromotionRecord, write_promotion
from serving.fetch import ImageFetcher
from tests.conftest import make_settings

pytestmark = pytest.mark.e2e

USER, PASSWORD, HOOK_SECRET = "ls-backend", "basic-b3c1", "hook-9d2e"
CLASSES = [str(d) for d in range(10)]
N_LOCAL = 200


def _local_images(loop, files_root: Path) -> tuple[Path, list[str]]:
    """N_LOCAL pool images under Label Studio's document root, served as local files."""
    images = files_root / "ml-backend" / "images"
    images.mkdir(parents=True, exist_ok=True)
    names = loop.workspace.pool_images()[:N_LOCAL]
    for name in names:
        if not (images / name).exists():
            shutil.copy(loop.workspace.image_path(name), images / name)
    return images, names


def _start_service(settings, loop, run) -> ServiceServer:
    settings.home.mkdir(parents=True, exist_ok=True)
    (settings.home / "bentoml").symlink_to(loop.settings.bentoml_home)
    write_promotion(settings.promotion_file, PromotionRecord(
        tag=run.model_tag, accuracy=run.accuracy, data_commit=run.data_commit, n_labels=20, run_id=run.run_id))
    return ServiceServer(settings).start(timeout_s=240)


def _predict_request(urls: list[str]) -> dict:
    return {"tasks": [{"id": 1000 + i, "data": {"image": u}} for i, u in enumerate(urls)], "project": "1.1"}


@pytest.fixture(scope="module")
def backend_setup(trained, label_studio, files_root, tmp_path_factory):
    """One service for this module's tests (a start costs tens of seconds on 2 cores), set up
    as `ls_settings` does: Label Studio's URL, token and document root."""
    loop, run = trained
    settings = make_settings(
        tmp_path_factory.mktemp("ml-backend") / "home", files_root / "ml-backend" / "workspace",
        label_studio_url=label_studio.url, label_studio_api_key=label_studio.token,
        label_studio_files_root=files_root, project_title="labelloop-ml-backend",
        serving_basic_auth_user=USER, serving_basic_auth_password=PASSWORD, webhook_secret=HOOK_SECRET,
    )
    images, names = _local_images(loop, files_root)
    server = _start_service(settings, loop, run)
    yield settings, server, images, names, run
    server.stop()


def test_label_studio_uses_the_service_as_its_ml_backend(backend_setup, files_root):
    settings, server, images, names, run = backend_setup
    gateway = LabelStudioGateway(settings.label_studio_url, settings.label_studio_token())
    annotator = SimulatedAnnotator(gateway)
    project = gateway.ensure_project(settings.project_title, CLASSES)
    gateway.ensure_local_storage(project, images)
    prefix = f"/data/local-files/?d={images.relative_to(files_root)}/"
    tasks = gateway.import_images(project, names[:100], {n: prefix + n for n in names[:100]})
    assert len(tasks) == 100

    backend_id = gateway.connect_ml_backend(
        project, server.url, "labelloop", basic_auth=(USER, PASSWORD), webhook_headers={"X-Labelloop-Webhook-Secret": HOOK_SECRET})
    assert backend_id > 0  # Label Studio called /health and /setup with basic auth and accepted the answers

    log_file = settings.home / "logs" / "service.log"
    predicts_before = log_file.read_text().count("POST,path=/predict")
    started = time.perf_counter()
    annotator.retrieve_predictions(project, list(tasks))
    elapsed = time.perf_counter() - started
    predicted = {task_id: annotator.task_predictions(task_id) for task_id in tasks}
    assert all(len(p) == 1 for p in predicted.values()), [t for t, p in predicted.items() if len(p) != 1][:5]
    for preds in predicted.values():
        (pred,) = preds
        assert pred["model_version"] == run.model_tag
        assert pred["result"][0]["value"]["choices"][0] in CLASSES
        assert 0.0 <= pred["score"] <= 1.0
    predicts = log_file.read_text().count("POST,path=/predict") - predicts_before
    assert predicts == 1, "Label Studio asked for the 100 tasks in ONE /predict"
    print(f"retrieve predictions for 100 tasks (Label Studio end to end): {elapsed:.2f} s")

    # The annotator's queue: the task it opens carries the model's prediction.
    gateway.align_queue(project, run.model_tag)
    task = annotator.next_task(project)
    assert task is not None and task.id in tasks
    assert [p["model_version"] for p in annotator.task_predictions(task.id)] == [run.model_tag]

    # Annotating it fires Label Studio's webhook at the service, through the shared secret.
    annotator.annotate(task.id, "3")
    deadline = time.monotonic() + 30
    while not any(settings.events_dir.glob("*.json")):
        assert time.monotonic() < deadline, "the webhook never reached the service"
        time.sleep(0.3)
    assert httpx.post(f"{server.url}/webhook", json={"action": "X"}).status_code == 401


def test_a_retrieve_whose_images_all_fail_stores_no_predictions(backend_setup, files_root):
    """Files Label Studio cannot serve (404): the service answers the cause and Label Studio
    stores nothing, so the next retrieve asks again (an empty prediction would stick)."""
    settings, server, images, names, run = backend_setup
    gateway = LabelStudioGateway(settings.label_studio_url, settings.label_studio_token())
    annotator = SimulatedAnnotator(gateway)
    project = gateway.ensure_project(f"{settings.project_title}-missing", CLASSES)
    gateway.ensure_local_storage(project, images)
    prefix = f"/data/local-files/?d={images.relative_to(files_root)}/"
    gone = ["gone-1.png", "gone-2.png", "gone-3.png"]
    tasks = gateway.import_images(project, gone, {n: prefix + n for n in gone})
    gateway.connect_ml_backend(project, server.url, "labelloop", basic_auth=(USER, PASSWORD))
    failures_before = (PredictionClient(server.url).image_fetch_failures() or {}).get("fetch", 0)
    annotator.retrieve_predictions(project, list(tasks))
    assert {t: annotator.task_predictions(t) for t in tasks} == {t: [] for t in tasks}
    log = (settings.home / "logs" / "service.log").read_text()
    assert "could not fetch any task image of this request (3 of 3 tasks)" in log and "HTTP 404" in log
    assert PredictionClient(server.url).image_fetch_failures()["fetch"] - failures_before == 3


def test_local_files_are_read_from_the_shared_root_measured_against_label_studio_http(backend_setup, files_root):
    """The same N_LOCAL local-file tasks: fetched over Label Studio's HTTP (the path when the
    root is not shared) vs read from the shared root; then one /predict of all of them."""
    settings, server, images, names, run = backend_setup
    gateway = LabelStudioGateway(settings.label_studio_url, settings.label_studio_token())
    gateway.ensure_local_storage(gateway.ensure_project(settings.project_title, CLASSES), images)
    urls = [f"/data/local-files/?d={images.relative_to(files_root)}/{n}" for n in names]
    assert len(urls) == N_LOCAL

    async def fetch_all(fetcher: ImageFetcher) -> tuple[float, list]:
        started = time.perf_counter()
        out = await fetcher.fetch_many(urls)
        return time.perf_counter() - started, out

    token = settings.label_studio_token()
    http_s, over_http = asyncio.run(fetch_all(ImageFetcher(settings.label_studio_url, token)))
    direct_s, direct = asyncio.run(fetch_all(ImageFetcher(settings.label_studio_url, token, files_root=files_root)))
    assert over_http == direct == [(images / n).read_bytes() for n in names]

    started = time.perf_counter()
    r = httpx.post(f"{server.url}/predict", json=_predict_request(urls), auth=(USER, PASSWORD), timeout=120)
    predict_s = time.perf_counter() - started
    assert r.status_code == 200, r.text
    assert all(res["result"][0]["value"]["choices"][0] in CLASSES for res in r.json()["results"])
    assert len(r.json()["results"]) == N_LOCAL
    print(f"{N_LOCAL} local files: fetched over Label Studio's HTTP {http_s:.2f} s, read from the shared root "
          f"{direct_s:.3f} s; one /predict of {N_LOCAL} local-file tasks (direct) {predict_s:.2f} s")


def test_tasks_in_a_bucket_get_predictions_through_label_studio_s3_storage(backend_setup, s3_env):
    """Tasks whose images live in S3 (s3:// URIs, an S3 source storage on a loopback S3
    server): one "Retrieve predictions" stores a prediction for each. The service holds no
    S3 credentials (it started without them): it asks Label Studio to resolve each URI and
    follows the redirect to the presigned URL."""
    settings, server, images, names, run = backend_setup
    s3 = s3_env.client()
    s3.create_bucket(Bucket="backend-photos")
    urls = {}
    for name in names[:6]:
        s3.put_object(Bucket="backend-photos", Key=f"digits/{name}", Body=(images / name).read_bytes())
        urls[name] = f"s3://backend-photos/digits/{name}"
    gateway = LabelStudioGateway(settings.label_studio_url, settings.label_studio_token())
    annotator = SimulatedAnnotator(gateway)
    project = gateway.ensure_project(f"{settings.project_title}-s3", CLASSES)
    gateway.ensure_s3_storage(project, "backend-photos", s3_credentials(s3_env.url))
    tasks = gateway.import_images(project, list(urls), urls)
    gateway.connect_ml_backend(project, server.url, "labelloop", basic_auth=(USER, PASSWORD))
    annotator.retrieve_predictions(project, list(tasks))
    predicted = {t: annotator.task_predictions(t) for t in tasks}
    assert all(len(p) == 1 for p in predicted.values()), predicted
    assert all(p[0]["result"][0]["value"]["choices"][0] in CLASSES for p in predicted.values())


@pytest.fixture
def stale_token_backend(trained, ls_settings, tmp_path):
    """A service with a token Label Studio does not know, and no shared document root."""
    loop, run = trained
    settings = ls_settings("ml-backend-stale", label_studio_api_key="stale-token",
                           label_studio_files_root=tmp_path / "not-shared")
    server = _start_service(settings, loop, run)
    yield settings, server, run
    server.stop()


def test_a_backend_that_cannot_fetch_is_refused_and_says_why(stale_token_backend, trained, label_studio, files_root):
    settings, server, run = stale_token_backend
    loop, _ = trained
    images, names = _local_images(loop, files_root)
    gateway = LabelStudioGateway(label_studio.url, label_studio.token)  # the test's own, valid token
    project = gateway.ensure_project(settings.project_title, CLASSES)
    gateway.ensure_local_storage(project, images)

    # Connecting: Label Studio calls /setup, the service cannot fetch with its token, Label
    # Studio refuses the backend (it shows the status line only; the body says why).
    with pytest.raises(LabelStudioError) as refused:
        gateway.connect_ml_backend(project, server.url, "labelloop")
    shown = json.dumps(refused.value.__cause__.body)  # Label Studio's whole answer (the error shortens it)
    assert f"Reason: 502 Server Error: Bad Gateway for url: {server.url}/setup" in shown, shown
    setup = httpx.post(f"{server.url}/setup", json={"project": f"{project}.1", "schema": "",
                                                    "hostname": label_studio.url, "access_token": label_studio.token})
    assert setup.status_code == 502
    detail = setup.json()["detail"]
    assert detail.startswith(f"Label Studio at {label_studio.url} refused the token (HTTP 401"), detail
    assert detail.endswith("set LABELLOOP_LABEL_STUDIO_API_KEY to a personal access token (or a legacy token, "
                           "with legacy tokens enabled in Label Studio)"), detail

    # /predict of local files it cannot fetch: the cause, not N_LOCAL empty predictions.
    urls = [f"/data/local-files/?d={images.relative_to(files_root)}/{n}" for n in names]
    r = httpx.post(f"{server.url}/predict", json=_predict_request(urls), timeout=120)
    assert r.status_code == 502, r.text
    detail = r.json()["detail"]
    assert detail.startswith(f"could not fetch any task image of this request ({N_LOCAL} of {N_LOCAL} tasks): "
                             f"cannot fetch /data/local-files/?d="), detail
    assert f"HTTP 401 from Label Studio at {label_studio.url}: set LABELLOOP_LABEL_STUDIO_API_KEY" in detail
    assert PredictionClient(server.url).image_fetch_failures() == {"fetch": N_LOCAL}
