"""Stage `evaluate`: held-out accuracy, per-class F1, confusion matrix for `dvc plots`."""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from kernel.layout import CONFUSION_FILE, METRICS_FILE, MODEL_FILE, PARAMS_FILE, PREPARED
from pipelines.params import Params, load_params

__all__ = ["Metrics", "evaluate", "score_predictions"]


@dataclass(frozen=True)
class Metrics:
    accuracy: float
    macro_f1: float
    f1: dict[str, float]
    n_test: int
    n_train: int


def score_predictions(classes: list[str], y_true: np.ndarray, y_pred: np.ndarray, n_train: int) -> Metrics:
    from sklearn.metrics import accuracy_score, f1_score

    labels = list(range(len(classes)))
    per_class = f1_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    return Metrics(
        accuracy=round(float(accuracy_score(y_true, y_pred)), 6),
        macro_f1=round(float(np.mean(per_class)), 6),
        f1={name: round(float(v), 6) for name, v in zip(classes, per_class, strict=True)},
        n_test=int(len(y_true)),
        n_train=n_train,
    )


def evaluate(params: Params, model_path: Path, prepared: Path, metrics_out: Path, confusion_out: Path) -> Metrics:
    import keras

    with np.load(prepared) as data:
        x_test, y_test, n_train = data["x_test"], data["y_test"], len(data["y_train"])
    model = keras.saving.load_model(model_path)
    y_pred = np.argmax(model.predict(x_test, verbose=0), axis=1)
    metrics = score_predictions(params.data.classes, y_test, y_pred, n_train)
    metrics_out.write_text(json.dumps(asdict(metrics), indent=2) + "\n")
    confusion_out.parent.mkdir(parents=True, exist_ok=True)
    with confusion_out.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["actual", "predicted"])
        for t, p in zip(y_test, y_pred, strict=True):
            writer.writerow([params.data.classes[t], params.data.classes[p]])
    return metrics


if __name__ == "__main__":
    m = evaluate(load_params(PARAMS_FILE), MODEL_FILE, PREPARED, METRICS_FILE, CONFUSION_FILE)
    print(f"evaluate: accuracy {m.accuracy:.4f}, macro F1 {m.macro_f1:.4f} on {m.n_test} held-out images")
