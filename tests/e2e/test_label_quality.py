"""Label quality through a REAL Label Studio: an annotator labels some tasks wrongly; the
collect finds the suspects and commits them with the labels; they come back first in Label
Studio's queue, for one more annotator, saying why; `status` lists them and training leaves
them out; a second annotator's review changes the label in the next data commit, once."""

from __future__ import annotations

import pytest

from labeling import ReviewState, SimulatedAnnotator
from labeling.noise import AnnotatorNoise
from loop.core import Loop
from loop.queue import COLD_START_VERSION, REVIEW_SCORE
from loop.quality import REVIEW_FIELD
from loop.starter import digits_truth
from pipelines.labels import current_annotations, labels_by_image, read_suspects
from tests.helpers.remote import labels_from_remote

pytestmark = pytest.mark.e2e

CLASSES = [str(d) for d in range(10)]


def test_suspect_labels_come_back_for_review_and_the_review_fixes_them(ls_settings, tmp_path):
    # 5 labels per class on average: the 20 seed labels and 60 annotations are judged.
    settings = ls_settings("quality", quality_min_labels_per_class=5)
    loop = Loop(settings)
    ws = loop.init(starter="digits")
    project = loop.connect()  # no model yet: the cold-start queue
    annotator, truth = SimulatedAnnotator(loop.gateway), digits_truth()

    # A careless colleague labels 60 tasks, 1 in 5 wrongly (digits people mix up: 1/7, 3/8, 4/9).
    careless, noise = annotator.add_user(), AnnotatorNoise(0.2, "confusing", seed=3)
    tasks = sorted(loop.state.tasks().items())[:60]
    for task_id, name in tasks:
        annotator.annotate(task_id, noise.answer(name, truth[name], CLASSES), completed_by=careless)
    wrong = {name for _, name in tasks if noise.is_wrong(name, truth[name], CLASSES)}
    assert len(wrong) >= 8

    first = loop.collect()
    suspects = {s.image: s for s in read_suspects(ws.root / "data" / "labels")}
    assert first.upserts == 60 and first.suspects == len(suspects) > 0
    caught = wrong & set(suspects)
    assert caught, f"none of the {len(wrong)} wrong labels was found: {sorted(suspects)}"
    # In the data commit of those labels, for the training run that clones it.
    assert "suspects.csv" in ws.git("show", "--stat", "--format=", "HEAD")

    # Label Studio: back in the queue for one more annotator, first, saying why.
    task_of = {name: task_id for task_id, name in tasks}
    scores = annotator.prediction_scores(project, COLD_START_VERSION)
    for name, suspect in suspects.items():
        task_id = task_of[name]
        assert annotator.review_state(task_id) == ReviewState(overlap=2, is_labeled=False)
        assert scores[task_id] == REVIEW_SCORE
        assert annotator.task_data(task_id)[REVIEW_FIELD] == suspect.reason
        assert f"chose {suspect.label!r}" in suspect.reason
    # `status`: listed, held out of training, re-queued.
    status = loop.status()
    listed = {s["image"]: s for s in status.label_quality["suspects"]}
    assert set(listed) == set(suspects) and all(s["state"] == "open" and s["held"] for s in listed.values())
    assert not set(suspects) & set(ws.label_splits().train)
    assert set(status.requeued_for_review) == {task_of[n] for n in suspects}
    assert status.label_quality["agreement"]["annotators"][0]["suspects"] == len(suspects)

    # The second annotator (the API key's user, who labeled none of them) gets them first.
    reviewed = {}
    for _ in suspects:
        task = annotator.next_task(project)
        assert task is not None and task.image_name in suspects
        annotator.annotate(task.id, truth[task.image_name])
        reviewed[task.image_name] = task.id
    assert set(reviewed) == set(suspects)

    second = loop.collect()
    assert second.upserts == len(suspects) and second.suspects == 0
    labels = labels_by_image(ws.events())
    assert all(labels[name] == truth[name] for name in suspects)  # wrong ones changed, right ones confirmed
    after = {s["image"]: s["state"] for s in loop.status().label_quality["suspects"]}
    assert after == {name: "relabeled" if name in wrong else "confirmed" for name in suspects}
    assert set(suspects) <= set(ws.label_splits().train)  # back in training
    assert loop.status().requeued_for_review == []
    assert loop.collect().commit is None  # nothing collected twice

    # The pushed data: each review once, and the label it gave.
    events = labels_from_remote(ws.root, tmp_path)
    reviews = [e for e in events if e.image in suspects and e.annotator != str(careless)]
    assert len(reviews) == len({e.annotation_id for e in reviews}) == len(suspects)
    pushed = labels_by_image(events)
    assert all(pushed[name] == truth[name] for name in caught)
    assert len(current_annotations(events)) == 20 + 60 + len(suspects)
