"""The model families of params.yaml `model:`: the small CNN trained from scratch (digits,
icons), or a pretrained `keras.applications` backbone with a small trained head (photos).

Every model takes the batch `pipelines.images.preprocess` makes (float32 in [0, 1]) and has
a layer named `embedding`: the features the service returns beside the probabilities, which
diversity selection and the cold start use. For a backbone that is its pooled features.

Weights of a backbone: "imagenet" (Keras downloads its file once into its cache), "none"
(random init), or a path or http(s) URL of a weights file (fetched once into Keras's cache).
The file's sha256 goes into the model's lineage (`WeightsSource.lineage`), so a run says
exactly which weights it started from. A file that does not fit the architecture is refused
before any training, naming both.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from kernel.errors import ConfigError, TrainingError
from pipelines.params import Params

__all__ = [
    "BACKBONES", "EMBEDDING_LAYER", "WeightsSource", "build_backbone", "build_model", "pretrained_features",
    "resolve_weights", "unfreeze_top",
]

EMBEDDING_LAYER = "embedding"

#: Architectures whose Keras implementation takes 0..255 pixels and normalises them itself
#: (its preprocessing is inside the model, so serving needs nothing beside it).
BACKBONES: dict[str, dict] = {
    "MobileNetV3Small": {"include_preprocessing": True},
    "MobileNetV3Large": {"include_preprocessing": True},
    "EfficientNetB0": {},
    "EfficientNetB1": {},
    "EfficientNetV2B0": {"include_preprocessing": True},
    "ConvNeXtTiny": {"include_preprocessing": True},
}

_IMAGENET_HINT = (
    "model.weights: imagenet needs Keras's download host (storage.googleapis.com), which this machine "
    "cannot reach: set model.weights in params.yaml to a local weights file (or an http(s) URL this "
    "machine can reach), e.g. one saved elsewhere with `keras.applications.{name}(include_top=False, "
    "pooling='avg', input_shape=({size}, {size}, 3)).save_weights('backbone.weights.h5')`, or to none"
)


@dataclass(frozen=True)
class WeightsSource:
    """Where a backbone's starting weights come from."""

    spec: str  # as params.yaml says: imagenet | none | a path | a URL
    path: Path | None = None  # the local file (a path, or a URL's cached download)
    sha256: str | None = None

    @property
    def lineage(self) -> dict:
        return {"weights": self.spec, "weights_sha256": self.sha256}


def resolve_weights(spec: str, cache_dir: Path | None = None) -> WeightsSource:
    """A path or URL becomes a local file with its sha256; imagenet and none stay as they are."""
    if spec in ("imagenet", "none"):
        return WeightsSource(spec)
    if urlsplit(spec).scheme in ("http", "https"):
        import keras

        name = Path(urlsplit(spec).path).name or "weights.h5"
        try:
            local = Path(keras.utils.get_file(fname=name, origin=spec, cache_subdir="labelloop-weights",
                                              cache_dir=str(cache_dir) if cache_dir else None))
        except Exception as exc:  # noqa: BLE001 - urllib's and Keras's errors: one message
            raise TrainingError(f"cannot download model.weights {spec}: {exc}; fetch the file yourself and set "
                                "model.weights to its path") from exc
    else:
        local = Path(spec).expanduser()
        if not local.is_file():
            raise ConfigError(f"model.weights {spec} is not a file (nor imagenet, none or an http(s) URL)")
    with local.open("rb") as fh:
        sha256 = hashlib.file_digest(fh, "sha256").hexdigest()
    return WeightsSource(spec, local, sha256)


def _check(params: Params) -> None:
    name = params.model.backbone
    if name not in BACKBONES:
        raise ConfigError(f"model.backbone {name!r} is not supported: one of {', '.join(BACKBONES)}")
    if params.data.channels != 3:
        raise ConfigError("model.kind backbone takes colour input: set data.channels to 3 in params.yaml")


def build_backbone(params: Params, weights: WeightsSource):  # -> keras.Model
    """The architecture without its classifier, globally average-pooled, input 0..255,
    with `weights` loaded (a file that does not fit is a `ConfigError` naming both)."""
    import keras

    _check(params)
    name, size = params.model.backbone, params.data.image_size
    constructor = getattr(keras.applications, name)
    try:
        backbone = constructor(include_top=False, pooling="avg", input_shape=(size, size, 3),
                               weights="imagenet" if weights.spec == "imagenet" else None, **BACKBONES[name])
    except Exception as exc:  # noqa: BLE001 - Keras raises plain Exception for a failed download
        if weights.spec == "imagenet" and ("fetch" in str(exc).lower() or "url" in str(exc).lower()):
            raise TrainingError(f"{exc}; {_IMAGENET_HINT.format(name=name, size=size)}") from exc
        raise ConfigError(f"cannot build {name} at {size}x{size}: {exc}") from exc
    if weights.path is not None:
        try:
            backbone.load_weights(str(weights.path))
        except Exception as exc:  # noqa: BLE001 - h5py/Keras raise ValueError, KeyError, OSError...
            raise ConfigError(
                f"model.weights {weights.spec} does not fit {name} at {size}x{size} pixels "
                f"({type(exc).__name__}: {str(exc)[:300]}); it must be a weights file saved from that "
                "architecture with include_top=False and pooling='avg'") from exc
    return backbone


def _augmentation():  # -> keras.Sequential, active only in training
    import keras

    return keras.Sequential([
        keras.layers.RandomFlip("horizontal"),
        keras.layers.RandomTranslation(0.1, 0.1, fill_mode="reflect"),
        keras.layers.RandomBrightness(0.15, value_range=(0.0, 1.0)),
        keras.layers.RandomContrast(0.15, value_range=(0.0, 1.0)),
    ], name="augment")


def build_model(params: Params, weights: WeightsSource | None = None):  # -> keras.Model
    """The params' model, compiled; for a backbone also its parts: (model, backbone, head)
    where `head` maps pooled features to probabilities (the frozen fast path trains it on
    cached embeddings, which trains the model's own head layers)."""
    import keras

    size, channels, n_classes = params.data.image_size, params.data.channels, len(params.data.classes)
    inputs = keras.Input(shape=(size, size, channels), name="image")
    x = _augmentation()(inputs) if params.train.augment else inputs
    if params.model.kind == "small_cnn":
        x = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(x)
        x = keras.layers.Conv2D(64, 3, padding="same", activation="relu")(x)
        x = keras.layers.MaxPooling2D(2)(x)
        x = keras.layers.Flatten()(x)
        x = keras.layers.Dropout(0.3)(x)
        x = keras.layers.Dense(128, activation="relu", name=EMBEDDING_LAYER)(x)
        outputs = keras.layers.Dense(n_classes, activation="softmax")(x)
        model = keras.Model(inputs, outputs, name="small_cnn")
        _compile(model, params.train.learning_rate)
        return model, None, None
    backbone = build_backbone(params, weights or resolve_weights(params.model.weights))
    backbone.trainable = False
    x = keras.layers.Rescaling(255.0, name="to_0_255")(x)
    # training=False: BatchNormalization keeps its statistics even while fine-tuning.
    features = backbone(x, training=False)
    embedding = keras.layers.Identity(name=EMBEDDING_LAYER)
    dropout = keras.layers.Dropout(params.model.dropout, name="head_dropout")
    classify = keras.layers.Dense(n_classes, activation="softmax", name="classify")
    outputs = classify(dropout(embedding(features)))
    model = keras.Model(inputs, outputs, name=f"{params.model.backbone}_classifier")
    pooled = keras.Input(shape=(features.shape[-1],), name="features")
    head = keras.Model(pooled, classify(dropout(pooled)), name="head")
    _compile(head, params.train.learning_rate)
    _compile(model, params.train.learning_rate)
    return model, backbone, head


def _compile(model, learning_rate: float) -> None:
    import keras

    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])


def unfreeze_top(backbone, n_layers: int) -> int:
    """Make the top `n_layers` weighted layers of the backbone trainable (BatchNormalization
    stays frozen, as Keras's fine-tuning guide advises); returns how many were unfrozen."""
    import keras

    backbone.trainable = True
    weighted = [layer for layer in backbone.layers if layer.weights]
    top = set(map(id, weighted[-n_layers:])) if n_layers else set()
    unfrozen = 0
    for layer in backbone.layers:
        layer.trainable = id(layer) in top and not isinstance(layer, keras.layers.BatchNormalization)
        unfrozen += int(layer.trainable)
    return unfrozen


def pretrained_features(params: Params, x: np.ndarray) -> np.ndarray | None:
    """The pretrained backbone's pooled features of preprocessed images `x`, for ordering a
    pool before any model is trained; None when the params name no pretrained backbone
    (small_cnn, or weights none: random features say nothing)."""
    if params.model.kind != "backbone" or params.model.weights == "none":
        return None
    backbone = build_backbone(params, resolve_weights(params.model.weights))
    return np.asarray(backbone.predict(x * 255.0, batch_size=64, verbose=0), dtype=np.float32)
