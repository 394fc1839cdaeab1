"""One full turn of the loop against a REAL Label Studio server, a REAL `bentoml serve`
and a real git+DVC workspace with a local remote."""

from __future__ import annotations

import time

import pytest

from labeling import SimulatedAnnotator
from loop.core import Loop
from loop.stack import ServiceServer
from loop.starter import digits_truth
from pipelines.labels import current_annotations, labels_by_image
from serving import PredictionClient
from tests.helpers.remote import labels_from_remote

pytestmark = pytest.mark.e2e


def test_one_full_loop_turn(ls_settings, tmp_path):
    # margin pinned: the queue below is checked against the lowest margin.
    settings = ls_settings("e2e", retrain_min_new_labels=30, query_strategy="margin")
    loop = Loop(settings)
    loop.init(starter="digits")
    first = loop.train(trigger="initial", rescore=False)
    assert first is not None and first.status == "promoted"

    with ServiceServer(settings).start(timeout_s=240) as service:
        project = loop.connect()
        gateway, annotator = loop.gateway, SimulatedAnnotator(loop.gateway)
        assert loop.rescore() == len(loop.workspace.pool_images())

        # Label Studio's queue serves the most informative task (lowest margin) first.
        pool = loop.workspace.pool_images()
        scores = {name: p.score for name, p in zip(pool, PredictionClient(service.url).classify_files(
            [loop.workspace.image_path(n) for n in pool]), strict=True)}
        first_in_queue = annotator.next_task(project)
        assert scores[first_in_queue.image_name] == pytest.approx(min(scores.values()), abs=1e-6)
        # The Data Manager tab "labelloop queue" orders the same way ("Label Tasks As Displayed").
        view = loop.state.marks().queue_view
        assert annotator.next_task(project, view=view).image_name == first_in_queue.image_name
        assert gateway.ensure_queue_view(project) == view  # idempotent
        queue = annotator.queue_settings(project)
        assert queue.skip_queue == "REQUEUE_FOR_OTHERS" and queue.sampling == "Uncertainty sampling"

        # The annotator works the queue Label Studio hands out, answering from ground truth.
        truth = digits_truth()
        labeled = annotator.label_next(project, truth, 32)
        assert len(labeled) == 32 and len(set(labeled)) == 32
        loop.collect()

        # A relabel and a deletion, then collect again (and once more: nothing new).
        annotated = [t for t in gateway.tasks_updated_since(project, None) if t.annotations]
        relabeled, deleted = annotated[0], annotated[1]
        wrong = "1" if truth[relabeled.image_name] != "1" else "2"
        annotator.update_annotation(relabeled.annotations[0].id, wrong)
        gone = deleted.annotations[0].id
        annotator.delete_annotation(gone)
        # The deletion reaches the loop only through Label Studio's own webhook (registered for
        # the ML backend, received and spooled by the service): the task has no annotation
        # left, so no task listing shows it, and nothing in this test spools events.
        deadline = time.monotonic() + 30
        while gone not in loop.state.pending_deletions():
            assert time.monotonic() < deadline, "Label Studio's ANNOTATIONS_DELETED webhook never arrived"
            loop.process_events()
            time.sleep(0.5)
        assert all(gone not in {a.id for a in t.annotations} for t in gateway.tasks_updated_since(project, None))
        second = loop.collect()
        assert second.upserts == 1 and second.deletes == 1
        assert loop.collect().commit is None  # exactly once: nothing collected twice

        # Everything Label Studio holds is in the PUSHED DVC data, exactly once.
        in_label_studio = {
            a.id: (t.image_name, a.label)
            for t in gateway.tasks_updated_since(project, None) for a in t.annotations
            if not a.was_cancelled
        }
        assert len(in_label_studio) == 31
        events = labels_from_remote(loop.workspace.root, tmp_path)
        pushed = {e.annotation_id: (e.image, e.label)
                  for e in current_annotations(events).values() if e.annotation_id is not None}
        assert pushed == in_label_studio
        ids = [e.annotation_id for e in current_annotations(events).values() if e.annotation_id]
        assert len(ids) == len(set(ids)) == 31
        assert labels_by_image(events)[relabeled.image_name] == wrong
        assert deleted.image_name not in labels_by_image(events)

        # The retrain policy fires (31 new labels >= 30): train, gate, promote, re-score.
        run = loop.retrain_if_due()
        assert run is not None and run.status == "promoted", run
        assert run.model_tag != first.model_tag and run.n_labels == 20 + 31
        assert run.data_commit == loop.workspace.head()

        # The running service answers with the new version (no restart)...
        client = PredictionClient(service.url)
        assert client.serving_version() == run.model_tag
        answer = client.classify_files([loop.workspace.image_path(loop.workspace.pool_images()[0])])
        assert answer[0].model_version == run.model_tag

        # ...and Label Studio holds predictions of the new version; its queue follows them.
        unlabeled = [t for t in annotator.all_tasks(project) if not t.annotations]
        preds = annotator.task_predictions(unlabeled[0].id)
        assert run.model_tag in {p["model_version"] for p in preds}
        nxt = annotator.next_task(project)
        assert nxt is not None and not nxt.annotations
        newest = {p["model_version"]: p["score"] for p in annotator.task_predictions(nxt.id)}
        assert run.model_tag in newest

    status = loop.status()
    assert status.serving.tag == run.model_tag and status.labels == 20 + 31
