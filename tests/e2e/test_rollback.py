"""Rollback for real: two models trained by the real pipeline, a REAL `bentoml serve`
answering clients while the serving model is rolled back (no failed request, every answer
from one of the two models, then only the restored one), and a REAL Label Studio whose
queue follows the restored model again."""

from __future__ import annotations

import threading

import httpx
import pytest

from labeling import SimulatedAnnotator
from loop.core import Loop
from loop.stack import ServiceServer
from serving import PredictionClient, read_promotion

pytestmark = pytest.mark.e2e


def test_rollback_hot_swaps_back_without_a_failed_request_and_realigns_the_queue(ls_settings):
    settings = ls_settings("rollback", promotion_mode="manual")
    loop = Loop(settings)
    loop.init(starter="digits")
    first = loop.train(trigger="test", rescore=False)
    assert first.status == "approved"  # manual: the gate approves, a person promotes
    loop.promote(first.run_id)
    # The same data and seed give the same accuracy: not worse, so approved again.
    second = loop.train(trigger="test", rescore=False)
    assert second.status == "approved" and second.model_tag != first.model_tag

    with ServiceServer(settings).start(timeout_s=240) as service:
        project = loop.connect()
        loop.promote(second.run_id, reason="newer")
        assert PredictionClient(service.url).wait_for_version(second.model_tag, timeout_s=120)
        annotator = SimulatedAnnotator(loop.gateway)
        assert annotator.queue_settings(project).model_version == second.model_tag

        image = loop.workspace.image_path(loop.workspace.pool_images()[0]).read_bytes()
        answers: list[tuple[int, str]] = []
        stop = threading.Event()

        def client() -> None:
            with httpx.Client(base_url=service.url, timeout=30) as http:
                while not stop.is_set():
                    r = http.post("/classify", files=[("images", ("x.png", image, "image/png"))])
                    answers.append((r.status_code, r.json()[0]["model_version"] if r.status_code == 200 else r.text))

        threads = [threading.Thread(target=client) for _ in range(4)]
        for t in threads:
            t.start()
        try:
            restored = loop.rollback(reason="newer was worse on the cats")
            assert restored.tag == first.model_tag
            assert PredictionClient(service.url).wait_for_version(first.model_tag, timeout_s=120)
            seen = len(answers)
            while len(answers) < seen + 20:  # answers after the swap
                threading.Event().wait(0.05)
        finally:
            stop.set()
            for t in threads:
                t.join()

        assert [a for a in answers if a[0] != 200] == []  # no failed request during the swap
        assert {v for _, v in answers} <= {first.model_tag, second.model_tag}
        assert {v for _, v in answers[seen:]} == {first.model_tag}
        # Label Studio's queue follows the restored model: project version and predictions.
        assert annotator.queue_settings(project).model_version == first.model_tag
        assert loop.state.marks().queue_version == first.model_tag
        scores = annotator.prediction_scores(project, first.model_tag)
        assert len(scores) == len(loop.workspace.pool_images())
        assert read_promotion(settings.promotion_file).tag == first.model_tag
        history = loop.status().promotions
        assert [(e.action, e.tag) for e in history[:2]] == [("rollback", first.model_tag),
                                                           ("promote", second.model_tag)]
