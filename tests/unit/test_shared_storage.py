"""Promotion record, webhook spool and run results through fsspec URLs: what replaces the
home directory when the service, the scheduler and training pods share only storage."""

from __future__ import annotations

import pytest

from pipelines.artifacts import ArtifactStore
from serving import PromotionRecord, drain_events, read_promotion, spool_event, write_promotion


@pytest.fixture(params=["memory", "file"])
def shared_url(request, tmp_path) -> str:
    if request.param == "memory":
        return f"memory://labelloop-{tmp_path.name}"
    return f"file://{tmp_path}/shared"


def test_promotion_round_trip(shared_url):
    location = f"{shared_url}/promotion.json"
    assert read_promotion(location) is None
    record = PromotionRecord(tag="labelloop-classifier:abc", accuracy=0.9, data_commit="c0ffee", n_labels=30,
                             run_id="r1")
    write_promotion(location, record)
    assert read_promotion(location) == record
    newer = record.model_copy(update={"tag": "labelloop-classifier:def"})
    write_promotion(location, newer)
    assert read_promotion(location).tag == "labelloop-classifier:def"


def test_events_are_drained_once_in_arrival_order(shared_url):
    events = f"{shared_url}/events"
    assert drain_events(events) == []
    ids = [spool_event(events, {"action": f"A{i}"}) for i in range(3)]
    assert ids == sorted(ids)
    assert [e["action"] for e in drain_events(events)] == ["A0", "A1", "A2"]
    assert drain_events(events) == []


def test_run_results(shared_url):
    store = ArtifactStore(shared_url)
    assert store.read_json(ArtifactStore.result_path("r1")) is None
    store.write_json(ArtifactStore.result_path("r1"), {"model_tag": "m:1", "accuracy": 0.9})
    assert store.read_json(ArtifactStore.result_path("r1")) == {"model_tag": "m:1", "accuracy": 0.9}
    assert store.model_url("labelloop-classifier:abc").endswith("models/labelloop-classifier/abc.bentomodel")
