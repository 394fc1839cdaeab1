"""Stage `train`: the model params.yaml names (`pipelines.models`). Plain Keras 3, so
KERAS_BACKEND=jax runs it too (the GPU training image does)."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kernel.layout import MODEL_FILE, PARAMS_FILE, PREPARED
from pipelines.models import EMBEDDING_LAYER, WeightsSource, build_model, resolve_weights, unfreeze_top
from pipelines.params import Params, load_params

__all__ = ["TRAIN_LINEAGE", "TrainResult", "epochs_for", "fit", "train", "with_embeddings"]

#: Written beside the model: what it was built from (the register stage puts it in the metadata).
TRAIN_LINEAGE = "train.json"


@dataclass(frozen=True)
class TrainResult:
    model_path: Path
    n_train: int
    epochs: int
    final_loss: float
    seconds: float
    lineage: dict  # kind, Keras backend; for a backbone its name, weights and their sha256


def epochs_for(params: Params, n_train: int) -> int:
    """`train.epochs`, or more when that many passes over `n_train` images would be fewer
    than `train.min_steps` optimizer steps (small labeled sets early in the loop)."""
    steps_per_epoch = max(1, math.ceil(n_train / params.train.batch_size))
    return max(params.train.epochs, math.ceil(params.train.min_steps / steps_per_epoch))


def fit(params: Params, x: np.ndarray, y: np.ndarray, weights: WeightsSource | None = None):
    """Train a fresh model in-process (also cross-validation and benchmarks): (keras.Model,
    final loss). A frozen backbone without augmentation trains its head on the backbone's
    features computed once (seconds on a CPU); `model.fine_tune_layers` then fine-tunes the
    backbone's top layers end to end at a tenth of the learning rate."""
    import keras

    keras.utils.set_random_seed(params.train.seed)
    model, backbone, head = build_model(params, weights)
    epochs, batch = epochs_for(params, len(y)), params.train.batch_size
    if backbone is None:
        history = model.fit(x, y, epochs=epochs, batch_size=batch, verbose=0)
        return model, float(history.history["loss"][-1])
    if params.train.augment:  # every epoch sees other pixels: no features to cache
        history = model.fit(x, y, epochs=epochs, batch_size=batch, verbose=0)
    else:
        features = backbone.predict(x * 255.0, batch_size=64, verbose=0)
        history = head.fit(features, y, epochs=epochs, batch_size=batch, verbose=0)
    if params.model.fine_tune_layers:
        unfreeze_top(backbone, params.model.fine_tune_layers)
        model.compile(optimizer=keras.optimizers.Adam(params.train.learning_rate / 10),
                      loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        history = model.fit(x, y, epochs=max(1, epochs // 4), batch_size=batch, verbose=0)
    return model, float(history.history["loss"][-1])


def train(params: Params, prepared: Path, out: Path) -> TrainResult:
    started = time.perf_counter()
    with np.load(prepared) as data:
        x, y = data["x_train"], data["y_train"]
    weights = resolve_weights(params.model.weights) if params.model.kind == "backbone" else None
    model, loss = fit(params, x, y, weights)
    out.parent.mkdir(parents=True, exist_ok=True)
    model.save(out)
    lineage = {"kind": params.model.kind, "keras_backend": keras_backend(),
               **({"backbone": params.model.backbone, **weights.lineage} if weights else {})}
    (out.parent / TRAIN_LINEAGE).write_text(json.dumps(lineage, indent=2) + "\n")
    return TrainResult(out, len(y), epochs_for(params, len(y)), loss, time.perf_counter() - started, lineage)


def with_embeddings(model):  # keras.Model -> keras.Model
    """The trained model with its embedding layer as a second output: (probabilities,
    embeddings) from ONE forward pass (the service, the drift reference at registration). A
    backbone's pooled features (`pipelines.models.EMBEDDING_LAYER`); models from before it
    was named: the penultimate layer, as then."""
    import keras

    names = {layer.name for layer in model.layers}
    features = model.get_layer(EMBEDDING_LAYER) if EMBEDDING_LAYER in names else model.layers[-2]
    return keras.Model(inputs=model.inputs, outputs=[model.outputs[0], features.output])


def keras_backend() -> str:
    import keras

    return keras.backend.backend()


if __name__ == "__main__":
    result = train(load_params(PARAMS_FILE), PREPARED, MODEL_FILE)
    print(
        f"train: {result.n_train} images, {result.epochs} epochs, "
        f"loss {result.final_loss:.4f}, {result.seconds:.1f}s ({result.lineage})"
    )
