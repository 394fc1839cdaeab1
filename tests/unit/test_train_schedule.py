"""The training schedule: epochs, but never fewer than `train.min_steps` optimizer steps."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from pipelines.params import DataParams, Params, TrainParams
from pipelines.train import epochs_for, fit


def _params(**train) -> Params:
    return Params(data=DataParams(classes=["0", "1", "2"], image_size=8), train=TrainParams(**train))


@pytest.mark.parametrize(
    ("n_train", "expected"),
    [
        (20, 200),  # 2 steps per epoch: 200 epochs for 400 steps
        (16, 400),  # one full batch per epoch
        (1, 400),
        (0, 400),  # nothing to step over: the bound still holds, fit fails on its own
        (48, 134),  # 3 steps per epoch: 134 epochs (402 steps)
        (160, 60),  # 10 steps per epoch: the 60 epochs already give 600 steps
        (1000, 60),  # 63 steps per epoch: the 60 epochs already give 3,780 steps
    ],
)
def test_epochs_for_reaches_min_steps(n_train, expected):
    assert epochs_for(_params(epochs=60, min_steps=400, batch_size=16), n_train) == expected


def test_min_steps_zero_keeps_epochs():
    assert epochs_for(_params(epochs=7, min_steps=0), 20) == 7


def test_min_steps_default_and_validation():
    assert TrainParams().min_steps == 400
    with pytest.raises(ValidationError):
        TrainParams(min_steps=-1)


def test_fit_takes_at_least_min_steps():
    rng = np.random.default_rng(0)
    x = rng.random((20, 8, 8, 1), dtype=np.float32)
    y = rng.integers(0, 3, 20)
    model, loss = fit(_params(epochs=1, min_steps=10, batch_size=16), x, y)
    # 2 batches per epoch (16 + 4): 5 epochs, 10 optimizer updates.
    assert int(model.optimizer.iterations.numpy()) == 10
    assert np.isfinite(loss)
