"""Label quality inside the loop, on a real git+DVC workspace (training scripted at the
Launcher seam): what a data commit holds out, what a run's report lists, the class-balanced
queue order. The whole path through a real Label Studio: tests/e2e/test_label_quality.py."""

from __future__ import annotations

from loop.reports import _suspects_at
from loop.workspace import Cursor
from pipelines.labels import LabelEvent, Suspect, annotation_versions, write_suspects
from serving import ImagePrediction


def test_a_data_commit_decides_what_is_held_out_and_the_report_lists_it(loop_with):
    loop, launcher = loop_with([(True, 0.8)])
    ws = loop.workspace
    first, second = ws.pool_images()[:2]
    events = [LabelEvent(image=first, label="a", task_id=1, annotation_id=1, annotation_updated_at="t1", annotator="7"),
              LabelEvent(image=second, label="b", task_id=2, annotation_id=2, annotation_updated_at="t1", annotator="7")]
    write_suspects(ws.root / "data" / "labels", [Suspect(first, "a", "7", 1, annotation_versions(events, first),
                                                         "suspect label: annotator 7 chose 'a'", True, 1)])
    commit = ws.commit_labels(events, Cursor(batch=1, updated_at="2026-01-01T00:00:00.000000Z"))
    assert first in ws.label_splits().held_suspects and first not in ws.label_splits().train
    run = loop.train(trigger="test", rescore=False)
    assert run.data_commit == commit and launcher.requests[0].data_commit == commit
    report = _suspects_at(ws, commit)
    assert report["by_state"] == {"open": 1} and [h["image"] for h in report["held_out"]] == [first]
    quality = loop.status().label_quality
    assert quality["held_out"] == 1 and quality["suspects"][0]["reason"].startswith("suspect label")

    # A review in the next commit: the label is back in training; the older commit still held it.
    review = LabelEvent(image=first, label="b", task_id=1, annotation_id=3, annotation_updated_at="t2", annotator="8")
    later = ws.commit_labels([review], Cursor(batch=2, updated_at="2026-01-02T00:00:00.000000Z"))
    assert ws.label_splits().train[first] == "b" and not ws.label_splits().held_suspects
    assert _suspects_at(ws, later)["by_state"] == {"relabeled": 1} and _suspects_at(ws, later)["held_out"] == []
    assert _suspects_at(ws, commit)["held_out"][0]["image"] == first


def test_class_balanced_queue_keeps_the_rare_predicted_class_in_the_first_batch(loop_with):
    loop, _ = loop_with([], query_class_balance=True, query_batch_size=4)
    preds, scores = [], []
    for i in range(12):  # margin order: 11 'a' first, the one 'b' (confident) last
        label = "b" if i == 11 else "a"
        preds.append(ImagePrediction(label=label, probabilities={"a": 0.6, "b": 0.4} if label == "a" else
                                     {"a": 0.01, "b": 0.99}, score=i / 20, strategy="margin", model_version="m:1"))
        scores.append(i / 20)
    balanced = loop.queue.class_balanced_scores(preds, scores)
    first_batch = sorted(range(12), key=balanced.__getitem__)[:4]
    assert 11 in first_batch  # the rare predicted class is in the first batch of query_batch_size
    assert all(0 < s < 1 for s in balanced) and len(set(balanced)) == 12  # queue positions for Label Studio
