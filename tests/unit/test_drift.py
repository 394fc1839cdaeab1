"""The drift detector on synthetic model outputs: alike streams raise no alarm, each kind of
shift (classes, confidences, embeddings) is flagged by its own test; the window, the check
cadence, the reference file and the watch thread."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from pipelines.register import DRIFT_REFERENCE_FILENAME
from kernel.settings import DriftSettings
from serving.drift import DriftDetector, DriftReference, DriftWatch
from serving.protocol import DRIFT_TESTS

N_CLASSES, DIM = 10, 32


def outputs(rng: np.random.Generator, n: int, *, class_p=None, sharpness: float = 4.0, shift: float = 0.0):
    """(probabilities, embeddings) of a fake classifier: embeddings around a class centre,
    probabilities a softmax that favours the image's class."""
    centres = np.random.default_rng(0).normal(size=(N_CLASSES, DIM)) * 3
    classes = rng.choice(N_CLASSES, size=n, p=class_p)
    embeddings = centres[classes] + rng.normal(size=(n, DIM)) + shift
    logits = rng.normal(size=(n, N_CLASSES))
    logits[np.arange(n), classes] += sharpness
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return probabilities, embeddings.astype(np.float32)


def reference(rng: np.random.Generator, n: int = 400) -> DriftReference:
    probabilities, embeddings = outputs(rng, n)
    return DriftReference(predicted=np.argmax(probabilities, axis=1), confidence=probabilities.max(axis=1),
                          embedding=embeddings.astype(np.float64))


CONFIG = DriftSettings(window=200, min_samples=100, check_every=50, p_value=0.01, components=8)


def test_a_stream_like_the_reference_raises_no_alarm_across_seeds():
    alarms = 0
    for seed in range(20):
        rng = np.random.default_rng(seed)
        detector = DriftDetector(reference(rng), N_CLASSES, CONFIG)
        detector.observe(*outputs(rng, 200))
        status = detector.check()
        assert status.window == 200 and set(status.p_values) == set(DRIFT_TESTS)
        alarms += status.detected
    assert alarms <= 1  # the family-wise rate is 1%: 20 streams, at most one false alarm


@pytest.mark.parametrize("shift, flagged_by", [
    ({"class_p": [0.5] + [0.5 / 9] * 9}, "classes"),  # half the images are now one class
    ({"sharpness": 1.0}, "confidence"),  # the model is much less sure
    ({"shift": 1.5}, "embedding"),  # the inputs moved in the model's feature space
])
def test_each_kind_of_shift_is_flagged_by_its_test(shift, flagged_by):
    rng = np.random.default_rng(7)
    detector = DriftDetector(reference(rng), N_CLASSES, CONFIG)
    detector.observe(*outputs(rng, 200, **shift))
    status = detector.check()
    assert status.detected, status
    assert status.p_values[flagged_by] < CONFIG.p_value / 3
    assert status.scores[flagged_by] == max(status.scores[flagged_by], 0.0) and 0 < status.scores[flagged_by] <= 1


def test_no_verdict_before_min_samples_and_a_check_due_every_check_every():
    rng = np.random.default_rng(1)
    detector = DriftDetector(reference(rng), N_CLASSES, CONFIG)
    due = [detector.observe(*outputs(rng, 25)) for _ in range(12)]  # 25, 50, ..., 300 images
    # Due at 100 (min_samples, 100 new), 150, 200, 250, 300: every 50 new images once 100 are in.
    assert due == [False, False, False, True, False, True, False, True, False, True, False, True]
    status = detector.check()
    assert status.window == CONFIG.window and status.images_seen == 300  # the window keeps the last 200
    young = DriftDetector(reference(rng), N_CLASSES, CONFIG)
    young.observe(*outputs(rng, 60))
    assert young.check().p_values == {} and not young.status.detected and young.status.window == 60


def test_the_reference_file_round_trips_and_a_model_without_one_has_none(tmp_path):
    assert DriftReference.load(tmp_path) is None
    ref = reference(np.random.default_rng(2), 50)
    np.savez(tmp_path / DRIFT_REFERENCE_FILENAME, predicted=ref.predicted.astype(np.int16),
             confidence=ref.confidence.astype(np.float32), embedding=ref.embedding.astype(np.float32))
    loaded = DriftReference.load(tmp_path)
    assert len(loaded) == 50 and loaded.embedding.shape == (50, DIM)
    assert np.array_equal(loaded.predicted, ref.predicted)


def test_the_watch_checks_when_due_and_publishes_each_new_model_as_it_starts():
    rng = np.random.default_rng(3)
    published, seen = [], threading.Event()
    current: list[DriftDetector | None] = [DriftDetector(reference(rng), N_CLASSES, CONFIG)]

    def publish(status):
        published.append(status)
        seen.set()

    watch = DriftWatch(lambda: current[0], publish, idle_s=0.05)
    assert seen.wait(5) and published[0].window == 0  # the new model's empty window, at once
    seen.clear()
    current[0].observe(*outputs(rng, 100, shift=2.0))
    watch.due()
    assert seen.wait(5) and published[-1].detected and published[-1].window == 100
    seen.clear()
    current[0] = None  # a model without a reference now serves
    assert seen.wait(5) and published[-1] is None
