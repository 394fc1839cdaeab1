"""The evaluation gate and the retrain policy, with a scripted launcher at the Launcher
seam (the real LocalLauncher runs in the pipeline and end-to-end tests)."""

from __future__ import annotations

import pytest

from kernel.errors import TrainingBusyError
from loop.core import Loop
from loop.workspace import Cursor
from pipelines.labels import LabelEvent
from serving import read_promotion
from tests.helpers.scripted import ScriptedLauncher


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
    assert loop.training.labels_pending_training() == 1
    assert loop.retrain_if_due() is None  # 1 < 2

    loop.workspace.commit_labels(
        [LabelEvent(image=pool[1], label="b", task_id=2, annotation_id=2, annotation_updated_at="t")],
        Cursor(batch=2, updated_at="2026-01-01T00:00:01.000000Z"),
    )
    run = loop.retrain_if_due()
    assert run is not None and run.trigger == "2 new labels" and run.label_batch == 2
    assert loop.training.labels_pending_training() == 0


def test_start_training_event_from_label_studio_forces_a_run(loop_with):
    from serving import spool_event

    loop, launcher = loop_with([(True, 0.5), (True, 0.5)], retrain_min_new_labels=100)
    loop.retrain_if_due()
    spool_event(loop.settings.events_dir, {"action": "START_TRAINING", "project": {"id": 1}})
    assert loop.process_events() is False  # not an annotation change
    run = loop.retrain_if_due()
    assert run is not None and run.trigger == "requested"
    assert loop.retrain_if_due() is None  # the request was consumed


class BlockingLauncher(ScriptedLauncher):
    """Holds its run until released: a long training in progress."""

    def __init__(self, outcomes, *, resumable: bool = False):
        super().__init__(outcomes)
        import threading

        self.started, self.release = threading.Event(), threading.Event()
        self.resumable = resumable

    def run(self, request):
        self.started.set()
        assert self.release.wait(30)
        return super().run(request)


def test_one_training_at_a_time_across_loop_instances(loop_with):
    """Two schedulers on one home (a restart overlapping the old process): the lease in
    the state DB lets exactly one train."""
    import threading

    loop, _ = loop_with([])
    blocking = BlockingLauncher([(True, 0.8), (True, 0.9)])
    first = Loop(loop.settings, launcher=blocking)
    second = Loop(loop.settings, launcher=blocking)
    result: list = []
    worker = threading.Thread(target=lambda: result.append(first.train(trigger="a", rescore=False)))
    worker.start()
    assert blocking.started.wait(10)
    with pytest.raises(TrainingBusyError, match="lease held by"):  # the lease is taken
        second.train(trigger="b", rescore=False)
    assert second.retrain_if_due() is None  # the scheduler's job: busy is not a failure
    holder = second.state.lease_holder("training")
    assert holder is not None and holder[0] == first.training._owner
    blocking.release.set()
    worker.join(10)
    assert result[0].status == "promoted"
    assert second.state.lease_holder("training") is None  # released at the end
    assert second.train(trigger="b", rescore=False).status == "promoted"


def test_a_crashed_holders_lease_runs_out_and_its_run_is_resumed(loop_with):
    """A scheduler died mid-run: its lease expires, the next scheduler re-attaches to the
    same run id when the launcher can (Kubernetes), else marks the run failed."""
    loop, _ = loop_with([])
    loop.state.start_run("run-orphan", loop.workspace.head(), 0, "labels")
    loop.state.acquire_lease("training", "dead-host:4242:abc", ttl_s=1.0)
    resumable = BlockingLauncher([(True, 0.85)], resumable=True)
    resumable.release.set()
    restarted = Loop(loop.settings, launcher=resumable)
    with pytest.raises(TrainingBusyError):  # the dead holder's lease is still live
        restarted.train(trigger="t", rescore=False)
    import time

    time.sleep(1.1)
    run = restarted.train(trigger="t", rescore=False)
    assert run.run_id == "run-orphan" and run.status == "promoted"
    assert [r.run_id for r in resumable.requests] == ["run-orphan"]
    # Not resumable (a local process died with its scheduler): failed, and a new run starts.
    loop.state.start_run("run-orphan-2", loop.workspace.head(), 0, "labels")
    local = ScriptedLauncher([(True, 0.9)])
    fresh = Loop(loop.settings, launcher=local).train(trigger="t", rescore=False)
    assert fresh.run_id != "run-orphan-2" and fresh.status == "promoted"
    assert loop.state.run("run-orphan-2").status == "failed"
    assert "interrupted" in loop.state.run("run-orphan-2").reason


def test_every_trigger_goes_through_the_one_retrain_queue(loop_with):
    """A cron schedule and START_TRAINING only mark a run as due; retrain_if_due starts it."""
    from kernel.errors import ConfigError
    from loop.scheduler import build_scheduler

    loop, launcher = loop_with([(True, 0.8), (True, 0.9)], retrain_cron="0 3 * * *")
    scheduler = build_scheduler(loop)
    cron = scheduler.get_job("cron")
    assert cron is not None and "hour='3'" in str(cron.trigger)
    cron.func()  # what the scheduler does at 03:00
    assert loop.state.marks().training_requested
    assert loop.retrain_if_due().trigger == "requested"
    assert not loop.state.marks().training_requested and loop.retrain_if_due() is None
    with pytest.raises(ConfigError, match="crontab"):
        build_scheduler(Loop(loop.settings.model_copy(update={"retrain_cron": "every night"}), launcher=launcher))


class RecordingGateway:
    """The two Label Studio calls re-queueing makes, recorded."""

    def __init__(self):
        self.requeued: list[tuple[int, int]] = []
        self.predictions: list = []

    def requeue_for_review(self, task_id: int, annotators: int) -> None:
        self.requeued.append((task_id, annotators))

    def push_predictions(self, project_id, predictions) -> int:
        self.predictions += list(predictions)
        return len(predictions)


def _votes(loop, batch, votes):
    """Commit one label batch: (task id, image, annotator, label) per annotation."""
    events = [LabelEvent(image=image, label=label, task_id=task, annotation_id=task * 100 + batch * 10 + i,
                         annotation_updated_at=f"2026-01-01T00:00:0{i}", annotator=who)
              for i, (task, image, who, label) in enumerate(votes)]
    loop.workspace.commit_labels(events, Cursor(batch=batch, updated_at=f"2026-01-0{batch}T00:00:00.000000Z"))


def test_ties_are_requeued_once_for_one_more_annotator_up_to_the_limit(loop_with):
    loop, _ = loop_with([])
    gateway = RecordingGateway()
    loop.context.gateway = gateway
    loop.state.set_marks(project_id=1, queue_version="m:1")
    first, second = loop.workspace.pool_images()[:2]

    _votes(loop, 1, [(7, first, "ann", "a"), (7, first, "bob", "b")])  # 1 vs 1
    assert loop.queue.requeue_disagreements() == [7]
    assert gateway.requeued == [(7, 3)]
    assert [(p.task_id, p.score, p.model_version, p.label) for p in gateway.predictions] == [(7, 0.0, "m:1", None)]
    assert loop.status().requeued_for_review == [7]
    assert loop.requeue_disagreements() == []  # asked once

    _votes(loop, 2, [(7, first, "cyd", "b")])  # 2 vs 1: resolved
    assert loop.requeue_disagreements() == [] and loop.status().requeued_for_review == []

    _votes(loop, 3, [(8, second, "ann", "a"), (8, second, "bob", "b")])
    assert loop.requeue_disagreements() == [8]
    _votes(loop, 4, [(8, second, "cyd", "c")])  # 1 vs 1 vs 1 with 3 annotators: the limit
    assert loop.requeue_disagreements() == [] and loop.status().requeued_for_review == []
    assert gateway.requeued == [(7, 3), (8, 3)]


def test_review_requeueing_can_be_switched_off(loop_with):
    loop, _ = loop_with([], review_disagreements=False)
    loop.context.gateway = gateway = RecordingGateway()
    first = loop.workspace.pool_images()[0]
    _votes(loop, 1, [(7, first, "ann", "a"), (7, first, "bob", "b")])
    assert loop.queue.requeue_disagreements() == [] and gateway.requeued == []
