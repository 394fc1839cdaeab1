"""Stage `prepare`: fold the label shards, load images, write train/test arrays."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kernel.errors import WorkspaceError
from pipelines.images import decode_image, preprocess
from pipelines.labels import labels_by_image, read_events
from kernel.layout import IMAGES_DIR, LABELS_DIR, PARAMS_FILE, PREPARED, TEST_IMAGES_DIR, TEST_LABELS
from pipelines.params import Params, load_params

__all__ = ["PrepareResult", "prepare"]


@dataclass(frozen=True)
class PrepareResult:
    n_train: int
    n_test: int
    out: Path


def _arrays(image_dir: Path, labels: dict[str, str], params: Params) -> tuple[np.ndarray, np.ndarray]:
    index = {name: i for i, name in enumerate(params.data.classes)}
    unknown = sorted({label for label in labels.values() if label not in index})
    if unknown:
        raise WorkspaceError(f"labels {unknown} are not among the classes in params.yaml")
    names = sorted(labels)
    images = [decode_image(image_dir / name) for name in names]
    x = preprocess(images, params.data.image_size)
    y = np.array([index[labels[name]] for name in names], dtype=np.int64)
    return x, y


def prepare(params: Params, root: Path, out: Path) -> PrepareResult:
    train_labels = labels_by_image(read_events(root / LABELS_DIR), params.data.label_policy)
    if not train_labels:
        raise WorkspaceError("no labels yet: label some tasks (or seed the workspace) first")
    with (root / TEST_LABELS).open(newline="") as fh:
        test_labels = {row["image"]: row["label"] for row in csv.DictReader(fh)}
    x_train, y_train = _arrays(root / IMAGES_DIR, train_labels, params)
    x_test, y_test = _arrays(root / TEST_IMAGES_DIR, test_labels, params)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return PrepareResult(n_train=len(y_train), n_test=len(y_test), out=out)


if __name__ == "__main__":
    result = prepare(load_params(PARAMS_FILE), Path("."), PREPARED)
    print(f"prepare: {result.n_train} labeled images, {result.n_test} held-out test images")
