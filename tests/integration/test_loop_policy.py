"""The evaluation gate and the retrain policy, with a scripted launcher at the Launcher
seam (the real LocalLauncher runs in the pipeline and end-to-end tests)."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from loop.core import Loop
from loop.launcher import TrainingRequest, TrainingResult
from loop.workspace import Cursor
from pipelines.labels import LabelEvent
from serving import read_promotion
from tests.conftest import make_settings


class ScriptedLauncher:
    def __init__(self, outcomes: list[tuple[bool, float]]):
        self.outcomes = outcomes
        self.requests: list[TrainingRequest] = []

    def run(self, request: TrainingRequest) -> TrainingResult:
        self.requests.append(request)
        ok, accuracy = self.outcomes.pop(0)
        if not ok:
            return TrainingResult(request.run_id, False, error="pod evicted")
        return TrainingResult(request.run_id, True, model_tag=f"m:{len(self.requests)}",
                              accuracy=accuracy, n_labels=4, metrics={"accuracy": accuracy})


@pytest.fixture
def loop_with(tmp_path):
    def build(outcomes, **overrides) -> tuple[Loop, ScriptedLauncher]:
        folders = tmp_path / "folders"
        for label in ("a", "b"):
            (folders / label).mkdir(parents=True)
            for i in range(5):
                Image.new("L", (8, 8), 30 * i + (100 if label == "b" else 0)).save(folders / label / f"{i}.png")
        launcher = ScriptedLauncher(list(outcomes))
        loop = Loop(make_settings(tmp_path / "home", tmp_path / "ws", **overrides), launcher=launcher)
        loop.init(folder=folders, seed_per_class=2, test_fraction=0.2)
        return loop, launcher
    return build


def test_gate_promotes_first_and_not_worse_rejects_worse_and_survives_failure(loop_with):
    loop, launcher = loop_with([(True, 0.80), (True, 0.70), (False, 0.0), (True, 0.80)])
    promotion = loop.settings.promotion_file

    first = loop.train(trigger="t")
    assert first.status == "promoted" and read_promotion(promotion).tag == "m:1"

    worse = loop.train(trigger="t")
    assert worse.status == "rejected" and "0.7000 < serving 0.8000" in worse.reason
    assert read_promotion(promotion).tag == "m:1"

    failed = loop.train(trigger="t")
    assert failed.status == "failed" and "pod evicted" in failed.reason
    assert read_promotion(promotion).tag == "m:1"

    equal = loop.train(trigger="t")
    assert equal.status == "promoted" and read_promotion(promotion).tag == "m:4"
    assert {r.data_commit for r in launcher.requests} == {loop.workspace.head()}


def test_retrain_policy_counts_labels_since_the_last_run(loop_with):
    loop, launcher = loop_with([(True, 0.5), (True, 0.6)], retrain_min_new_labels=2)
    assert loop.retrain_if_due().trigger == "first model"
    assert loop.retrain_if_due() is None  # nothing new

    pool = loop.workspace.pool_images()
    loop.workspace.commit_labels(
        [LabelEvent(image=pool[0], label="a", task_id=1, annotation_id=1, annotation_updated_at="t")],
        Cursor(batch=1, updated_at="2026-01-01T00:00:00.000000Z"),
    )
    assert loop.labels_pending_training() == 1
    assert loop.retrain_if_due() is None  # 1 < 2

    loop.workspace.commit_labels(
        [LabelEvent(image=pool[1], label="b", task_id=2, annotation_id=2, annotation_updated_at="t")],
        Cursor(batch=2, updated_at="2026-01-01T00:00:01.000000Z"),
    )
    run = loop.retrain_if_due()
    assert run is not None and run.trigger == "2 new labels" and run.label_batch == 2
    assert loop.labels_pending_training() == 0


def test_start_training_event_from_label_studio_forces_a_run(loop_with):
    from serving import spool_event

    loop, launcher = loop_with([(True, 0.5), (True, 0.5)], retrain_min_new_labels=100)
    loop.retrain_if_due()
    spool_event(loop.settings.events_dir, {"action": "START_TRAINING", "project": {"id": 1}})
    assert loop.process_events() is False  # not an annotation change
    run = loop.retrain_if_due()
    assert run is not None and run.trigger == "requested"
    assert loop.retrain_if_due() is None  # the request was consumed
