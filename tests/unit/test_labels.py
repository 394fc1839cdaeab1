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


def test_several_annotators_latest_or_majority_with_ties_held_back():
    from pipelines.labels import held_back

    def ann(image, label, annotation_id, when):
        return LabelEvent(image=image, label=label, annotation_id=annotation_id, annotation_updated_at=when)

    events = [
        ann("a.png", "3", 1, "2026-01-01T00:00:01"), ann("a.png", "3", 2, "2026-01-01T00:00:02"),
        ann("a.png", "8", 3, "2026-01-01T00:00:03"),  # 2 votes to 1; the latest says 8
        ann("b.png", "1", 4, "2026-01-01T00:00:01"), ann("b.png", "7", 5, "2026-01-01T00:00:02"),  # a tie
        ann("c.png", "5", 6, "2026-01-01T00:00:01"),
    ]
    assert labels_by_image(events, "latest") == {"a.png": "8", "b.png": "7", "c.png": "5"}
    assert labels_by_image(events, "majority") == {"a.png": "3", "c.png": "5"}
    assert held_back(events, "majority") == ["b.png"] and held_back(events, "latest") == []
    # A third annotator breaks the tie; deleting a vote changes the majority.
    broken = events + [ann("b.png", "7", 7, "2026-01-01T00:00:05")]
    assert labels_by_image(broken, "majority")["b.png"] == "7"
    retracted = events + [LabelEvent(image="a.png", label="3", op="delete", annotation_id=2)]
    assert "a.png" not in labels_by_image(retracted, "majority")  # 3 vs 8: now a tie
