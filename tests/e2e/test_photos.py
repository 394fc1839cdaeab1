"""Photos, not 8x8 digits (issue 15): colour images of photo size make `init` choose a
pretrained backbone; a MobileNetV3Small with weights from a file (made here: these machines
cannot download ImageNet weights) trains under Keras on JAX through the real DVC pipeline, is
promoted, served by a real `bentoml serve` on TensorFlow, and pre-labels colour tasks in a
real Label Studio."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml

from labeling import SimulatedAnnotator
from loop.core import Loop
from loop.stack import ServiceServer
from loop.workspace import Cursor
from pipelines.labels import LabelEvent
from pipelines.models import build_backbone, resolve_weights
from pipelines.params import Params
from serving import PredictionClient
from tests.helpers.colour_images import PATTERNS, write_colour_images

pytestmark = pytest.mark.e2e

SIZE = 32  # small input: the whole pipeline in a couple of minutes on 2 cores
LABELS_PER_CLASS = 8


def _weights_file(path: Path) -> Path:
    """A MobileNetV3Small backbone's weights as a user would bring them (saved elsewhere)."""
    params = Params(data={"classes": list(PATTERNS), "image_size": SIZE, "channels": 3},
                    model={"kind": "backbone", "backbone": "MobileNetV3Small", "weights": "none"})
    build_backbone(params, resolve_weights("none")).save_weights(str(path))
    return path


def test_photos_train_a_backbone_under_jax_served_by_tensorflow_and_prelabel_label_studio(ls_settings, tmp_path):
    photos = write_colour_images(tmp_path / "photos", 45, seed=5, sides=(70, 120))
    weights = _weights_file(tmp_path / "mobilenet_v3_small.weights.h5")
    settings = ls_settings("photos", keras_backend="jax")
    loop = Loop(settings)

    report = loop.init_from_images(tmp_path / "photos", list(PATTERNS), image_size=SIZE, weights=str(weights))
    assert report.model.startswith(f"backbone MobileNetV3Small ({weights} weights, frozen) at {SIZE}x{SIZE} RGB")
    assert "photos" in report.model  # chosen from the images: median side >= 64 px
    params = loop.workspace.params()
    assert (params.model.kind, params.data.channels, params.data.resize) == ("backbone", 3, "center_crop")

    # Labels for 8 images per class, as a collect would commit them.
    truth = {name: photos[row.source] for name, row in loop.workspace.pool_index().items() if row.split == "pool"}
    chosen = [name for pattern in PATTERNS for name in sorted(n for n, p in truth.items() if p == pattern)[:LABELS_PER_CLASS]]
    events = [LabelEvent(image=name, label=truth[name], task_id=i, annotation_id=i, annotator="test",
                         annotation_updated_at="2026-01-01T00:00:00.000000Z") for i, name in enumerate(chosen, 1)]
    loop.workspace.commit_labels(events, Cursor(batch=1, updated_at="2026-01-01T00:00:00.000000Z"))

    run = loop.train(trigger="test", rescore=False)
    assert run.status == "promoted", run
    name, version = run.model_tag.split(":")
    stored = yaml.safe_load((settings.bentoml_home / "models" / name / version / "model.yaml").read_text())
    lineage = stored["metadata"]["lineage"]
    assert lineage == {"kind": "backbone", "keras_backend": "jax", "backbone": "MobileNetV3Small",
                       "weights": str(weights), "weights_sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}
    assert (stored["metadata"]["channels"], stored["metadata"]["resize"]) == (3, "center_crop")

    server = ServiceServer(settings).start(timeout_s=300)
    try:
        client = PredictionClient.for_settings(settings.serving)
        assert client.wait_for_version(run.model_tag, timeout_s=120)
        sample = [Path(p) for p in sorted(photos)[:4]]
        predictions = client.classify_files(sample, with_embeddings=True)
        assert all(p.label in PATTERNS and p.model_version == run.model_tag for p in predictions)
        assert {len(p.embedding) for p in predictions} == {576}  # MobileNetV3Small's pooled features

        project = loop.connect()  # the service is up: connected as the ML backend
        tasks = list(loop.state.tasks())[:6]
        annotator = SimulatedAnnotator(loop.gateway)
        annotator.retrieve_predictions(project, tasks)
        stored_predictions = [annotator.task_predictions(t) for t in tasks]
        assert all(len(p) == 1 and p[0]["result"][0]["value"]["choices"][0] in PATTERNS for p in stored_predictions)
    finally:
        server.stop()
