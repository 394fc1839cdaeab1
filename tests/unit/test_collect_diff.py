from labeling import Annotation, Task
from loop.collection import annotation_events
from pipelines.labels import LabelEvent

CLASSES = {"0", "1", "2"}


def task(tid, *anns, name=None, updated="2026-01-01T00:00:09Z"):
    return Task(id=tid, image_name=name or f"img-{tid}.png", image_url="", updated_at=updated,
                annotations=tuple(anns))


def a(aid, tid, label, at="2026-01-01T00:00:00Z", cancelled=False):
    return Annotation(id=aid, task_id=tid, label=label, was_cancelled=cancelled, updated_at=at,
                      completed_by="7")


def known(aid, tid, label, at="2026-01-01T00:00:00Z"):
    return LabelEvent(image=f"img-{tid}.png", label=label, task_id=tid, annotation_id=aid,
                      annotation_updated_at=at, annotator="7")


def test_new_annotation_is_an_upsert():
    events = annotation_events([task(1, a(10, 1, "2"))], {}, {}, CLASSES)
    assert [(e.op, e.annotation_id, e.label, e.image) for e in events] == [("upsert", 10, "2", "img-1.png")]


def test_unchanged_annotation_is_not_collected_twice():
    k = {10: known(10, 1, "2")}
    assert annotation_events([task(1, a(10, 1, "2"))], k, {1: {10}}, CLASSES) == []


def test_updated_annotation_is_a_new_version():
    k = {10: known(10, 1, "2")}
    events = annotation_events([task(1, a(10, 1, "1", at="2026-01-02T00:00:00Z"))], k, {1: {10}}, CLASSES)
    assert [(e.op, e.label, e.annotation_updated_at) for e in events] == [("upsert", "1", "2026-01-02T00:00:00Z")]


def test_deleted_and_cancelled_annotations_are_deletes():
    k = {10: known(10, 1, "2"), 11: known(11, 2, "0")}
    tasks = [task(1), task(2, a(11, 2, None, cancelled=True))]
    events = annotation_events(tasks, k, {1: {10}, 2: {11}}, CLASSES)
    assert sorted((e.op, e.annotation_id) for e in events) == [("delete", 10), ("delete", 11)]


def test_skipped_task_never_seen_before_is_ignored():
    assert annotation_events([task(3, a(12, 3, None, cancelled=True))], {}, {}, CLASSES) == []


def test_label_outside_the_classes_is_not_a_label():
    assert annotation_events([task(4, a(13, 4, "cat"))], {}, {}, CLASSES) == []


def test_generated_label_config_round_trips_through_the_sdk_parser():
    from labeling import classes_from_config, label_config

    assert classes_from_config(label_config(["cat", "dog", "7"])) == ["cat", "dog", "7"]


def test_timestamps_without_a_fraction_are_normalised_and_accepted_as_cursors():
    """Label Studio's JSON drops a zero fraction: '2026-11-28T00:50:09Z' (found by CI)."""
    from datetime import datetime, timezone

    from labeling.gateway import _iso
    from loop.collection import _earlier

    assert _iso("2026-11-28T00:50:09Z") == "2026-11-28T00:50:09.000000Z"
    assert _iso("2026-11-28T00:50:09.123400Z") == "2026-11-28T00:50:09.123400Z"
    assert _iso("2026-11-28T01:50:09+01:00") == "2026-11-28T00:50:09.000000Z"
    assert _iso(datetime(2026, 11, 28, 0, 50, 9, tzinfo=timezone.utc)) == "2026-11-28T00:50:09.000000Z"
    assert _iso(None) == "" and _iso("not a time") == "not a time"
    assert _earlier("2026-11-28T00:50:09Z", 300) == "2026-11-28T00:45:09.000000Z"
    assert _earlier("2026-11-28T00:50:09.500000Z", 0.5) == "2026-11-28T00:50:09.000000Z"
