"""The Label Studio ML-backend contract, pinned with payloads shaped as Label Studio 1.23.2
sends them (shared/reference/label-studio.md)."""

import json
from pathlib import Path

from serving.protocol import ChoiceResult, PredictRequest, PredictResponse, SetupRequest, TaskResult

PAYLOADS = Path(__file__).parent / "payloads"


def load(name: str) -> dict:
    return json.loads((PAYLOADS / name).read_text())


def test_predict_request_keeps_task_order_and_image_urls():
    request = PredictRequest.model_validate(load("predict_request.json"))
    assert [t.id for t in request.tasks] == [41, 42]
    assert request.tasks[0].data["image"].startswith("/data/local-files/?d=")
    assert request.project == "2.1795804712"


def test_setup_request_reads_the_schema_key():
    setup = SetupRequest.model_validate(load("setup_request.json"))
    assert setup.schema_.startswith("<View>") and setup.hostname == "http://127.0.0.1:8080"
    assert setup.extra_params is None


def test_predict_response_has_the_keys_label_studio_reads():
    response = PredictResponse(results=[TaskResult(
        result=[ChoiceResult(from_name="choice", to_name="image", value={"choices": ["7"]})],
        score=0.42, model_version="labelloop-classifier:abc")])
    assert response.model_dump() == {"results": [{
        "result": [{"from_name": "choice", "to_name": "image", "type": "choices",
                    "value": {"choices": ["7"]}}],
        "score": 0.42, "model_version": "labelloop-classifier:abc"}]}


def test_annotations_deleted_webhook_marks_those_ids_for_the_next_collect(tmp_path):
    from loop.core import Loop
    from serving import spool_event
    from tests.conftest import make_settings

    loop = Loop(make_settings(tmp_path / "home", tmp_path / "ws"))
    spool_event(loop.settings.events_dir, load("webhook_annotations_deleted.json"))
    assert loop.process_events() is True
    assert loop.state.pending_deletions() == {17, 18}
    loop.state.forget_deletions({17})
    assert loop.state.pending_deletions() == {18}


def test_queue_scores_outside_label_studios_range_never_reach_it():
    """Label Studio drops a prediction whose score is outside [0, 1] without an error."""
    import pytest

    from labeling.gateway import _queue_score
    from kernel.errors import BadInputError

    assert _queue_score(-1e-16) == 0.0 and _queue_score(1 + 1e-12) == 1.0 and _queue_score(0.25) == 0.25
    for bad in (-0.5, 1.5, float("nan")):
        with pytest.raises(BadInputError, match="within"):
            _queue_score(bad)
