"""A REAL Label Studio server connects to a REAL `bentoml serve` as its ML backend, with
basic auth and a webhook secret on (as in the Kubernetes manifests): Label Studio's own
validation accepts it, one "Retrieve predictions" of 100 tasks (local files, fetched by the
service with the project's token) stores 100 predictions, the queue opens a task that
carries one, and an annotation reaches the service's webhook."""

from __future__ import annotations

import shutil
import time

import httpx
import pytest

from labeling.gateway import LabelStudioGateway
from labeling.simulated import SimulatedAnnotator
from loop.stack import ServiceServer
from serving import PromotionRecord, write_promotion

pytestmark = pytest.mark.e2e

USER, PASSWORD, HOOK_SECRET = "ls-backend", "basic-b3c1", "hook-9d2e"


@pytest.fixture
def backend_setup(trained, ls_settings, files_root, tmp_path):
    loop, run = trained
    settings = ls_settings(
        "ml-backend", serving_basic_auth_user=USER, serving_basic_auth_password=PASSWORD,
        webhook_secret=HOOK_SECRET,
    )
    settings.home.mkdir(parents=True, exist_ok=True)
    (settings.home / "bentoml").symlink_to(loop.settings.bentoml_home)
    write_promotion(settings.promotion_file, PromotionRecord(
        tag=run.model_tag, accuracy=run.accuracy, data_commit=run.data_commit, n_labels=20, run_id=run.run_id))
    # 100 pool images under Label Studio's document root, served as local files.
    images = files_root / "ml-backend" / "images"
    images.mkdir(parents=True)
    names = loop.workspace.pool_images()[:100]
    for name in names:
        shutil.copy(loop.workspace.image_path(name), images / name)
    server = ServiceServer(settings).start(timeout_s=240)
    yield settings, server, images, names, run
    server.stop()


def test_label_studio_uses_the_service_as_its_ml_backend(backend_setup, files_root):
    settings, server, images, names, run = backend_setup
    gateway = LabelStudioGateway(settings.label_studio_url, settings.label_studio_token())
    annotator = SimulatedAnnotator(gateway)
    project = gateway.ensure_project(settings.project_title, [str(d) for d in range(10)])
    gateway.ensure_local_storage(project, images)
    tasks = gateway.import_images(project, names, f"/data/local-files/?d={images.relative_to(files_root)}/")
    assert len(tasks) == 100

    backend_id = gateway.connect_ml_backend(
        project, server.url, "labelloop", basic_auth=(USER, PASSWORD), webhook_headers={"X-Labelloop-Webhook-Secret": HOOK_SECRET})
    assert backend_id > 0  # Label Studio called /health and /setup with basic auth and accepted the answers

    started = time.perf_counter()
    annotator.retrieve_predictions(project, list(tasks))
    elapsed = time.perf_counter() - started
    predicted = {task_id: annotator.task_predictions(task_id) for task_id in tasks}
    assert all(len(p) == 1 for p in predicted.values()), [t for t, p in predicted.items() if len(p) != 1][:5]
    for preds in predicted.values():
        (pred,) = preds
        assert pred["model_version"] == run.model_tag
        assert pred["result"][0]["value"]["choices"][0] in [str(d) for d in range(10)]
        assert 0.0 <= pred["score"] <= 1.0
    log = (settings.home / "logs" / "service.log").read_text()
    assert log.count("POST,path=/predict") == 1, "Label Studio asked for the 100 tasks in ONE /predict"
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
