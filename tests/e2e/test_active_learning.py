"""Active learning through a REAL Label Studio server: the queue Label Studio hands out
follows labelloop's strategy round after round, from the cold start (no model yet) to
the models the loop trains; disagreements come back for review; and the default
strategy selects exactly the tasks the benchmark's in-process path selects."""

from __future__ import annotations

import pytest

from bench.active_learning import load_digits_split, select_rounds
from labeling import ReviewState, SimulatedAnnotator
from loop.core import Loop
from loop.queue import COLD_START_VERSION, REVIEW_SCORE
from loop.stack import ServiceServer
from loop.starter import digits_truth
from pipelines.images import decode_image, preprocess
from pipelines.labels import labels_by_image
from pipelines.strategies import cold_start_order

pytestmark = pytest.mark.e2e


def _annotate_next(annotator, project, truth, n, scores=None):
    """Label `n` tasks in the order Label Studio's queue serves them. With `scores` (task
    id -> the queue version's score), check every task served is the most useful one left."""
    served = []
    for _ in range(n):
        task = annotator.next_task(project)
        assert task is not None and not task.annotations
        if scores is not None:
            assert scores[task.id] == pytest.approx(min(scores.values()), abs=1e-9), (
                f"served task {task.id} (score {scores[task.id]}) while {min(scores.values())} was waiting")
            del scores[task.id]
        annotator.annotate(task.id, truth[task.image_name])
        served.append(task.image_name)
    return served


def test_cold_start_queue_disagreements_come_back_for_review_skips_do_not(ls_settings):
    settings = ls_settings("al-review")
    loop = Loop(settings)
    ws = loop.init(starter="digits")
    project = loop.connect()  # no model yet: the pool is queued in a diversity order
    annotator, truth = SimulatedAnnotator(loop.gateway), digits_truth()
    assert loop.status().queue_version == COLD_START_VERSION

    tasks = sorted(loop.state.tasks().items())
    pixels = preprocess([decode_image(ws.image_path(name)) for _, name in tasks], ws.params().data.image_size)
    expected = [tasks[i][1] for i in cold_start_order(pixels.reshape(len(tasks), -1),
                                                      head=settings.cold_start_diverse)]
    assert expected[:5] != [name for _, name in tasks[:5]]  # not task-id order
    # Round after round, the queue serves the diversity order.
    assert _annotate_next(annotator, project, truth, 3) == expected[:3]
    assert _annotate_next(annotator, project, truth, 2) == expected[3:5]

    # Two annotators disagree on a task further down the queue (1 vs 1, no majority).
    disputed = next(t for t, name in tasks if name == expected[20])
    right = truth[expected[20]]
    wrong = "1" if right != "1" else "2"
    for label in (right, wrong):
        annotator.annotate(disputed, label, completed_by=annotator.add_user())
    loop.collect()
    status = loop.status()
    assert status.requeued_for_review == [disputed]
    assert annotator.review_state(disputed) == ReviewState(overlap=3, is_labeled=False)
    assert annotator.prediction_scores(project, COLD_START_VERSION)[disputed] == REVIEW_SCORE
    assert loop.requeue_disagreements() == []  # asked once, not again

    # The next annotator (who has not labeled it) gets the disputed task first and breaks the tie.
    assert _annotate_next(annotator, project, truth, 1) == [expected[20]]
    loop.collect()
    assert loop.status().requeued_for_review == []
    assert labels_by_image(ws.events(), "majority")[expected[20]] == right
    # Then the queue goes on where it was. A task the annotator skips is not served to them
    # again (LABELLOOP_SKIP_QUEUE=REQUEUE_FOR_OTHERS) and gives no label.
    skipped = annotator.next_task(project)
    assert skipped.image_name == expected[5]
    annotator.skip(skipped.id)
    assert annotator.next_task(project).image_name == expected[6]
    loop.collect()
    assert expected[5] not in labels_by_image(ws.events())


def test_default_strategy_selects_the_same_tasks_as_the_benchmark(ls_settings):
    """One seed of the default strategy through the whole product (Label Studio queue,
    collect, DVC, `dvc repro` training, promotion gate, serving re-score) against the
    benchmark's in-process path: the same tasks, in the same order, round after round."""
    rounds = 3
    settings = ls_settings("al-seed", retrain_min_new_labels=10)
    loop = Loop(settings)
    ws = loop.init(starter="digits")
    seed_names = sorted(labels_by_image(ws.events()))
    first = loop.train(trigger="initial", rescore=False)
    assert first is not None and first.status == "promoted"
    truth = digits_truth()
    served_rounds = []
    with ServiceServer(settings).start(timeout_s=240):
        project = loop.connect()
        assert loop.rescore() == len(ws.pool_images())
        annotator = SimulatedAnnotator(loop.gateway)
        for _ in range(rounds):
            version = loop.status().queue_version
            scores = annotator.prediction_scores(project, version)
            served_rounds.append(_annotate_next(annotator, project, truth, settings.query_batch_size, scores))
            assert loop.collect().upserts == settings.query_batch_size
            run = loop.train(trigger="test")
            assert run is not None and run.status in ("promoted", "rejected"), run

    data = load_digits_split()
    index = {name: i for i, name in enumerate(data.train_names)}
    params = ws.params()
    picked = select_rounds(settings.query_strategy, data, [index[n] for n in seed_names], rounds=rounds,
                           step=settings.query_batch_size, train=params.train)
    assert [[data.train_names[i] for i in batch] for batch in picked] == served_rounds
