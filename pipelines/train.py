"""Stage `train`: a small Keras 3 CNN. Plain Keras, so KERAS_BACKEND=jax runs it too."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kernel.layout import MODEL_FILE, PARAMS_FILE, PREPARED
from pipelines.params import Params, load_params

__all__ = ["TrainResult", "build_model", "epochs_for", "fit", "train"]


@dataclass(frozen=True)
class TrainResult:
    model_path: Path
    n_train: int
    epochs: int
    final_loss: float
    seconds: float


def build_model(image_size: int, n_classes: int, learning_rate: float):  # -> keras.Model
    import keras

    model = keras.Sequential(
        [
            keras.Input(shape=(image_size, image_size, 1)),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
            keras.layers.Conv2D(64, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dropout(0.3),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(n_classes, activation="softmax"),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def epochs_for(params: Params, n_train: int) -> int:
    """`train.epochs`, or more when that many passes over `n_train` images would be fewer
    than `train.min_steps` optimizer steps (small labeled sets early in the loop)."""
    steps_per_epoch = max(1, math.ceil(n_train / params.train.batch_size))
    return max(params.train.epochs, math.ceil(params.train.min_steps / steps_per_epoch))


def fit(params: Params, x: np.ndarray, y: np.ndarray):  # -> (keras.Model, final loss)
    """Train a fresh model in-process (also used by benchmarks)."""
    import keras

    keras.utils.set_random_seed(params.train.seed)
    model = build_model(params.data.image_size, len(params.data.classes), params.train.learning_rate)
    history = model.fit(
        x, y, epochs=epochs_for(params, len(y)), batch_size=params.train.batch_size, verbose=0
    )
    return model, float(history.history["loss"][-1])


def train(params: Params, prepared: Path, out: Path) -> TrainResult:
    started = time.perf_counter()
    with np.load(prepared) as data:
        x, y = data["x_train"], data["y_train"]
    model, loss = fit(params, x, y)
    out.parent.mkdir(parents=True, exist_ok=True)
    model.save(out)
    return TrainResult(out, len(y), epochs_for(params, len(y)), loss, time.perf_counter() - started)


if __name__ == "__main__":
    result = train(load_params(PARAMS_FILE), PREPARED, MODEL_FILE)
    print(
        f"train: {result.n_train} images, {result.epochs} epochs, "
        f"loss {result.final_loss:.4f}, {result.seconds:.1f}s"
    )
