"""The model families of params.yaml (issue 15): real Keras models built and trained on small
inputs; weights files made here (these machines cannot download ImageNet weights), served
over real HTTP for the URL case."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading
import urllib.request

import numpy as np
import pytest

from kernel.errors import ConfigError, TrainingError
from pipelines.models import (
    BACKBONES, EMBEDDING_LAYER, build_backbone, build_model, pretrained_features, resolve_weights, unfreeze_top,
)
from pipelines.params import Params
from pipelines.train import fit

SIZE = 32


def _params(**model) -> Params:
    return Params(data={"classes": ["a", "b", "c"], "image_size": SIZE, "channels": 3, "resize": "center_crop"},
                  model={"kind": "backbone", "backbone": "MobileNetV3Small", "weights": "none", **model},
                  train={"epochs": 2, "min_steps": 10})


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "mnv3s.weights.h5"
    build_backbone(_params(), resolve_weights("none")).save_weights(str(path))
    return path


def test_unknown_backbones_and_grey_input_are_refused_with_what_to_set():
    with pytest.raises(ConfigError, match="'ResNet9' is not supported: one of MobileNetV3Small, .*EfficientNetB0"):
        build_model(_params(backbone="ResNet9"))
    grey = _params().model_copy(update={"data": _params().data.model_copy(update={"channels": 1})})
    with pytest.raises(ConfigError, match="set data.channels to 3"):
        build_model(grey)
    assert {"MobileNetV3Small", "EfficientNetB0"} <= set(BACKBONES)


def test_a_weights_file_has_its_sha256_in_the_lineage_and_a_wrong_one_is_refused_before_training(weights_file):
    source = resolve_weights(str(weights_file))
    assert source.lineage == {"weights": str(weights_file),
                              "weights_sha256": hashlib.sha256(weights_file.read_bytes()).hexdigest()}
    model, backbone, head = build_model(_params(weights=str(weights_file)), source)
    assert [layer.name for layer in model.layers][-3:] == [EMBEDDING_LAYER, "head_dropout", "classify"]
    assert head.output_shape == (None, 3) and backbone.output_shape == (None, 576)
    with pytest.raises(ConfigError, match="does not fit MobileNetV3Large at 32x32"):
        build_model(_params(backbone="MobileNetV3Large", weights=str(weights_file)))
    with pytest.raises(ConfigError, match="is not a file"):
        resolve_weights("/nowhere/weights.h5")


def test_imagenet_without_a_network_names_the_setting_and_the_way_out(monkeypatch):
    for name in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):  # no route to the download host
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    monkeypatch.setenv("KERAS_HOME", "/nonexistent-keras-home")
    # urllib builds its global opener (with the proxies) once: put back the one from before.
    monkeypatch.setattr(urllib.request, "_opener", None)
    with pytest.raises(TrainingError, match="model.weights in params.yaml to a local weights file"):
        build_model(_params(weights="imagenet"))


def test_a_weights_url_is_fetched_once(weights_file, tmp_path):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(weights_file.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{weights_file.name}"
        first = resolve_weights(url, cache_dir=tmp_path)
        server.shutdown()  # the second resolution must not need the server
        again = resolve_weights(url, cache_dir=tmp_path)
    finally:
        server.server_close()
    assert first.path == again.path and first.path.read_bytes() == weights_file.read_bytes()
    assert first.sha256 == again.sha256 == hashlib.sha256(weights_file.read_bytes()).hexdigest()


def test_frozen_head_fine_tuning_and_the_small_cnn_train_and_expose_an_embedding(weights_file):
    rng = np.random.default_rng(0)
    x, y = rng.random((24, SIZE, SIZE, 3), dtype=np.float32), rng.integers(0, 3, 24)
    frozen, _ = fit(_params(weights=str(weights_file)), x, y)
    before = [w.copy() for w in frozen.get_layer("MobileNetV3Small").get_weights()]
    assert all(np.array_equal(a, b) for a, b in zip(before, build_backbone(
        _params(weights=str(weights_file)), resolve_weights(str(weights_file))).get_weights()))  # frozen: unchanged
    tuned, _ = fit(_params(weights=str(weights_file), fine_tune_layers=4), x, y)
    after = tuned.get_layer("MobileNetV3Small").get_weights()
    assert any(not np.array_equal(a, b) for a, b in zip(before, after))  # the top layers moved
    small = Params(data={"classes": ["a", "b"], "image_size": 8, "channels": 3}, train={"epochs": 1, "min_steps": 1})
    model, _ = fit(small, rng.random((6, 8, 8, 3), dtype=np.float32), rng.integers(0, 2, 6))
    assert model.get_layer(EMBEDDING_LAYER).output.shape[-1] == 128 and model.input_shape == (None, 8, 8, 3)


def test_unfreezing_leaves_batch_normalization_frozen():
    backbone = build_backbone(_params(), resolve_weights("none"))
    assert unfreeze_top(backbone, 5) >= 1
    assert not any(layer.trainable for layer in backbone.layers if type(layer).__name__ == "BatchNormalization")


def test_the_cold_start_measures_diversity_in_a_pretrained_backbones_features(weights_file):
    x = np.random.default_rng(1).random((5, SIZE, SIZE, 3), dtype=np.float32)
    assert pretrained_features(_params(weights=str(weights_file)), x).shape == (5, 576)
    assert pretrained_features(_params(weights="none"), x) is None  # random features say nothing: pixels
    small = Params(data={"classes": ["a", "b"]})
    assert pretrained_features(small, x) is None


def test_augmentation_acts_in_training_only():
    params = Params(data={"classes": ["a", "b"], "image_size": 8, "channels": 3}, train={"augment": True})
    model, _, _ = build_model(params)
    assert "augment" in [layer.name for layer in model.layers]
    x = np.random.default_rng(2).random((4, 8, 8, 3), dtype=np.float32)
    assert np.array_equal(model.predict_on_batch(x), model.predict_on_batch(x))  # inference: no randomness
    augment = model.get_layer("augment")
    assert np.allclose(augment(x, training=False), x)  # inference sees the image as it is
    assert not np.allclose(augment(x, training=True), x)  # training sees a flipped/shifted/jittered view
