from pipelines.labels import (
    LabelEvent,
    current_annotations,
    labels_by_image,
    read_events,
    write_shard,
)


def ann(image, label, aid, at, op="upsert"):
    return LabelEvent(image=image, label=label, op=op, task_id=1, annotation_id=aid,
                      annotation_updated_at=at, annotator="1")


def test_relabel_replaces_and_delete_removes():
    events = [
        LabelEvent(image="a.png", label="1"),  # seed
        ann("b.png", "3", 10, "2026-01-01T00:00:00Z"),
        ann("c.png", "4", 11, "2026-01-01T00:00:01Z"),
        ann("b.png", "8", 10, "2026-01-02T00:00:00Z"),  # relabel of annotation 10
        ann("c.png", "4", 11, "2026-01-03T00:00:00Z", op="delete"),
    ]
    assert labels_by_image(events) == {"a.png": "1", "b.png": "8"}
    assert set(current_annotations(events)) == {"seed:a.png", "annotation:10"}


def test_latest_annotation_wins_for_one_image():
    events = [ann("x.png", "1", 1, "2026-01-01T00:00:00Z"), ann("x.png", "2", 2, "2026-01-05T00:00:00Z")]
    assert labels_by_image(events) == {"x.png": "2"}


def test_shards_round_trip_in_order(tmp_path):
    write_shard(tmp_path / "seed.csv", [LabelEvent(image="a.png", label="1")])
    write_shard(tmp_path / "batch-000002.csv", [ann("a.png", "1", 5, "t2", op="upsert")])
    write_shard(tmp_path / "batch-000001.csv", [ann("b.png", "2", 4, "t1")])
    events = read_events(tmp_path)
    assert [e.annotation_id for e in events] == [None, 4, 5]
    assert events[1] == ann("b.png", "2", 4, "t1")
