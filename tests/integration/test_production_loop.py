"""Production capture and drift end to end, against ONE real `bentoml serve` (capture on)
and the session's real Label Studio: an in-distribution stream of client images raises no
drift alarm, a shifted one (inverted digits) is flagged within a bounded number of
requests, and (when asked) queues one training run per serving model; the captured images
join the pool as Label Studio tasks tagged `source: production` through the loop (the
loop's own re-scoring is neither captured nor monitored), exactly once; an unwritable
capture store fails no request and shows in status."""

from __future__ import annotations

import io
import json
import shutil
import time

import httpx
import pytest
from PIL import Image, ImageOps

from loop.core import Loop
from loop.monitoring import production_lines
from loop.provision import PRODUCTION_ORIGIN
from loop.stack import ServiceServer
from loop.workspace import Cursor
from pipelines.labels import LabelEvent
from serving import PredictionClient, PromotionRecord, write_promotion
from serving.capture import CaptureStore
from tests.conftest import make_settings

STREAM = 150  # client images per stream: the drift window
CHECK_EVERY = 25
POLL_S = 0.25


@pytest.fixture(scope="module")
def production(trained, label_studio, files_root, tmp_path_factory):
    """A digits workspace connected to Label Studio, served the trained model by a service
    that captures low-confidence images (and every image while it reports drift)."""
    trained_loop, run = trained
    home = tmp_path_factory.mktemp("production-home")
    # The trained model store is shared; BentoML's home (its Prometheus multiprocess files,
    # which a starting server wipes) is this service's own.
    (home / "bentoml").mkdir()
    (home / "bentoml" / "models").symlink_to(trained_loop.settings.bentoml_home / "models")
    settings = make_settings(
        home, files_root / "production" / "workspace",
        label_studio_url=label_studio.url, label_studio_api_key=label_studio.token,
        label_studio_files_root=files_root, project_title="labelloop-production",
        capture_enabled=True, capture_max_confidence=0.5, capture_sample_rate=0.0, capture_drift_sample_rate=1.0,
        capture_max_per_hour=10_000, capture_max_per_day=10_000,
        drift_window=STREAM, drift_min_samples=100, drift_check_every=CHECK_EVERY,
        model_poll_interval_s=POLL_S,  # how soon the front learns the model worker's drift verdict
    )
    write_promotion(settings.promotion_file, PromotionRecord(
        tag=run.model_tag, accuracy=run.accuracy, data_commit=run.data_commit, n_labels=20, run_id=run.run_id))
    loop = Loop(settings)
    loop.init(starter="digits")
    server = ServiceServer(settings).start(timeout_s=240)
    loop.connect()
    yield loop, server
    server.stop()


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def _pool_pngs(loop: Loop, start: int, n: int, *, inverted: bool = False) -> list[bytes]:
    ws = loop.workspace
    names = [name for name, row in ws.pool_index().items() if row.split == "pool"][start:start + n]
    out = []
    for name in names:
        with Image.open(ws.image_path(name)) as image:
            out.append(_png(ImageOps.invert(image.convert("L"))) if inverted else ws.image_path(name).read_bytes())
    return out


def _send(http: httpx.Client, png: bytes) -> None:
    r = http.post("/classify", files=[("images", ("client.png", png, "image/png"))])
    assert r.status_code == 200, r.text
    assert len(r.json()) == 1


def _metrics(loop: Loop):
    client = PredictionClient.for_settings(loop.settings.serving)
    try:
        return client.production_metrics()
    finally:
        client.close()


def _wait_for(loop: Loop, condition, timeout_s: float = 5.0):
    """The service's production metrics once `condition` holds (its checks and writes run in
    the background), or as they are at the timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        metrics = _metrics(loop)
        if condition(metrics) or time.monotonic() > deadline:
            return metrics
        time.sleep(0.1)


def _drift_log(loop: Loop) -> list[str]:
    return [line for line in (loop.settings.home / "logs" / "service.log").read_text().splitlines()
            if "drift detected" in line]


def test_an_in_distribution_stream_raises_no_alarm(production):
    loop, server = production
    with httpx.Client(base_url=server.url, timeout=60) as http:
        for png in _pool_pngs(loop, 0, STREAM):
            _send(http, png)
    metrics = _wait_for(loop, lambda m: m.drift_window == STREAM)
    assert metrics.drift_reference_images == 450  # the test split: images the model never trained on
    assert metrics.drift_window == STREAM, metrics
    assert not metrics.drift_detected, metrics.drift_p_values
    assert min(metrics.drift_p_values.values()) > 0.01 / 3, metrics.drift_p_values
    assert _drift_log(loop) == []  # no check of the stream (at 100, 125, 150 images) alarmed


def test_a_shifted_stream_is_flagged_within_a_bounded_number_of_requests(production):
    loop, server = production
    before = _metrics(loop)
    flagged_at = None
    with httpx.Client(base_url=server.url, timeout=60) as http:
        for i, png in enumerate(_pool_pngs(loop, STREAM, STREAM, inverted=True), 1):
            _send(http, png)
            if i % CHECK_EVERY == 0 and flagged_at is None and _wait_for(loop, lambda m: m.drift_detected, 3.0).drift_detected:
                flagged_at = i
                time.sleep(4 * POLL_S)  # the front learns the verdict within a poll interval
    # The window still held 150 - i in-distribution images when the shifted ones came in.
    assert flagged_at is not None and flagged_at <= 2 * CHECK_EVERY, flagged_at
    # From then on the drift sample rate (1.0 here) keeps every client image.
    after = _wait_for_writes(loop, CaptureStore(loop.settings.capture_dir))
    assert sum(after.captured.values()) - sum(before.captured.values()) >= STREAM - flagged_at, after.captured
    assert after.captured.get("drift_sample", 0) > 0
    metrics = _metrics(loop)
    assert metrics.drift_detected and min(metrics.drift_p_values.values()) < 1e-6, metrics.drift_p_values
    production_status = loop.status().production
    assert production_status["drift_detected"] and production_status["drift_window"] == STREAM
    assert any("DETECTED" in line for line in production_lines(production_status))


def test_drift_queues_one_training_run_per_serving_model_when_asked(production):
    from loop.scheduler import build_scheduler

    loop, _ = production
    assert loop.production.retrain_on_drift() is False  # LABELLOOP_DRIFT_RETRAIN is off
    eager = Loop(loop.settings.model_copy(update={"drift_retrain": True}))
    assert eager.training.labels_pending_training() == 0
    assert eager.production.retrain_on_drift() is False  # drift, but no new label to learn from
    # An annotator labels one image (as a collect commits it).
    image = next(name for name, row in loop.workspace.pool_index().items() if row.split == "pool")
    task_id = next(task for task, name in loop.state.tasks().items() if name == image)  # its real task
    stamp = "2026-01-01T00:00:00.000000Z"
    loop.workspace.commit_labels([LabelEvent(image=image, label="3", task_id=task_id, annotation_id=1, annotator="test",
                                             annotation_updated_at=stamp)], Cursor(batch=1, updated_at=stamp))
    assert eager.training.labels_pending_training() == 1 and not eager.state.marks().training_requested
    assert eager.production.retrain_on_drift() is True  # the service reports drift (the test before)
    assert eager.state.marks().training_requested
    assert eager.production.retrain_on_drift() is False  # once per serving model
    eager.state.set_marks(training_requested=False)  # no run here: the retrain job is not running
    job = build_scheduler(eager).get_job("production")
    assert job is not None and job.trigger.interval.total_seconds() == loop.settings.capture_import_interval_s
    assert "production" in eager.state.next_runs()


def test_captured_images_join_the_pool_as_production_tasks_exactly_once(production, label_studio):
    loop, server = production
    store = CaptureStore(loop.settings.capture_dir)
    metrics = _wait_for_writes(loop, store)
    kept = sum(metrics.captured.values())
    assert kept == len(store.names()) and not metrics.failed, metrics
    report = loop.import_captures()
    # In-distribution images the model was unsure of are pool images already: counted, not added.
    assert report.commit is not None and report.added + report.already_in_pool == kept, report
    assert report.added >= STREAM - 2 * CHECK_EVERY and report.tasks_imported == report.added, report
    assert store.names() == []
    ws = loop.workspace
    production_rows = [row for row in ws.pool_index().values() if row.source.startswith(PRODUCTION_ORIGIN)]
    assert len(production_rows) == report.added and {r.batch for r in production_rows} == {report.batch}
    assert loop.state.marks().pushed_commit == report.commit  # the commit is in the DVC remote
    # Tagged for annotators and the Data Manager: Label Studio's own filter finds exactly them.
    query = json.dumps({"filters": {"conjunction": "and", "items": [
        {"filter": "filter:tasks:data.source", "operator": "equal", "type": "String", "value": "production"}]}})
    found = httpx.get(f"{label_studio.url}/api/tasks/", headers={"Authorization": f"Token {label_studio.token}"},
                      params={"project": loop.state.marks().project_id, "query": query, "fields": "task_only",
                              "page_size": 1000}, timeout=30).json()
    assert sorted(t["data"]["labelloop_image"] for t in found["tasks"]) == sorted(r.name for r in production_rows)
    # The import re-scored the pool through the service: the loop's own requests are neither kept nor monitored.
    after = _metrics(loop)
    assert after.captured == metrics.captured and after.drift_window == STREAM
    unlabeled = set(ws.pool_images()) - ws.label_splits().train.keys()
    assert report.queued == len(unlabeled)  # the whole unlabeled pool, new tasks included
    # A crash between the commit and the store's cleanup leaves an image there: it is imported once only.
    replay = next(r for r in production_rows)
    store.write(replay.source[len(PRODUCTION_ORIGIN):], ws.image_path(replay.name).read_bytes())
    again = loop.import_captures()
    assert again.commit is None and again.added == 0 and again.already_in_pool == 1 and store.names() == []
    assert loop.import_captures() is None  # nothing waiting


def test_an_unwritable_capture_store_fails_no_request_and_shows_in_status(production):
    loop, server = production
    folder = loop.settings.capture_dir
    shutil.rmtree(folder, ignore_errors=True)
    folder.write_text("a regular file where the capture folder should be: unwritable for root too")
    try:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            for png in _pool_pngs(loop, 2 * STREAM, 3, inverted=True):  # new images: drift keeps every one
                _send(http, png)
        metrics = _wait_for(loop, lambda m: m.failed.get("unwritable", 0) >= 3)
        assert metrics.failed == {"unwritable": 3}, metrics
        status = loop.status().production
        assert status["failed"] == {"unwritable": 3}
        assert any("capture failed 3 client images not kept (unwritable 3); every request was answered" in line
                   for line in production_lines(status))
    finally:
        folder.unlink()


def _wait_for_writes(loop: Loop, store: CaptureStore, timeout_s: float = 20.0):
    """The background writer has written everything it was handed (its counters stopped moving)."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        metrics = _metrics(loop)
        handled = (metrics.captured, metrics.skipped, metrics.failed)
        if handled == last:
            return metrics
        last = handled
        time.sleep(0.5)
    return _metrics(loop)
