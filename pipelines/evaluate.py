"""Stage `evaluate`: accuracy and per-class F1 on the set that judges the run (the user's
test set, the annotators' evaluation sample, or k-fold cross-validation on the training
labels before the sample is large enough: see `pipelines.prepare`), a confusion matrix for
`dvc plots`, and the judged labels (`build/judged.json`) so the loop can judge the serving
model on exactly the same images.

From the same forward pass, the model's drift reference (`build/drift_reference.npz`, put
beside the model by the register stage; the service compares client images with it): the
predicted class, top probability and embedding of each held-out image, at most
`REFERENCE_MAX_IMAGES`. Held-out, not training images: the model was fit on those (and the
queue chose the hardest), so their confidences and embeddings are not what it gives new
images of the same kind, and every in-distribution stream would look drifted. A run judged
by cross-validation has no held-out images: no reference."""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from kernel.layout import CONFUSION_FILE, JUDGED_FILE, METRICS_FILE, MODEL_FILE, PARAMS_FILE, PREPARED
from pipelines.params import Params, load_params

__all__ = ["DRIFT_REFERENCE_FILE", "Metrics", "drift_reference", "evaluate", "score_predictions"]

#: The model's drift reference, read by the register stage (build/ is never committed).
DRIFT_REFERENCE_FILE = Path("build/drift_reference.npz")
#: At most this many held-out images (a seeded sample) make the reference.
REFERENCE_MAX_IMAGES = 500


@dataclass(frozen=True)
class Metrics:
    accuracy: float
    macro_f1: float
    f1: dict[str, float]
    n_test: int  # labeled images that judged the run (held out, or all of them under cv)
    n_train: int
    judged_by: str = "test"  # test | eval | cv (pipelines.prepare)


def score_predictions(
    classes: list[str], y_true: np.ndarray, y_pred: np.ndarray, n_train: int, judged_by: str = "test",
) -> Metrics:
    from sklearn.metrics import accuracy_score, f1_score

    labels = list(range(len(classes)))
    per_class = f1_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    return Metrics(
        accuracy=round(float(accuracy_score(y_true, y_pred)), 6),
        macro_f1=round(float(np.mean(per_class)), 6),
        f1={name: round(float(v), 6) for name, v in zip(classes, per_class, strict=True)},
        n_test=int(len(y_true)),
        n_train=n_train,
        judged_by=judged_by,
    )


def cross_validated_predictions(params: Params, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Out-of-fold predictions of `eval.cv_folds` models trained like the real one (stratified
    when every class has enough labels). Fewer than two labels: nothing to hold out, so the
    model's chance is its only honest score (every prediction counted wrong)."""
    from sklearn.model_selection import KFold, StratifiedKFold

    from pipelines.train import fit

    if len(y) < 2:
        return np.full(len(y), -1)
    folds = min(params.evaluation.cv_folds, len(y))
    smallest = np.bincount(y).min(initial=len(y)) if len(np.unique(y)) > 1 else 0
    splitter = (StratifiedKFold(folds, shuffle=True, random_state=params.train.seed) if smallest >= folds
                else KFold(folds, shuffle=True, random_state=params.train.seed))
    predicted = np.empty(len(y), dtype=np.int64)
    for train_idx, held_idx in splitter.split(x, y):
        model, _ = fit(params, x[train_idx], y[train_idx])
        predicted[held_idx] = np.argmax(model.predict(x[held_idx], verbose=0), axis=1)
    return predicted


def drift_reference(probabilities: np.ndarray, embeddings: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """What the service keeps of the model's outputs on held-out images (a seeded sample):
    the predicted class, the top probability and the embedding of each."""
    keep = np.arange(len(probabilities))
    if len(keep) > REFERENCE_MAX_IMAGES:
        keep = np.sort(np.random.default_rng(seed).choice(keep, REFERENCE_MAX_IMAGES, replace=False))
    return {
        "predicted": np.argmax(probabilities[keep], axis=1).astype(np.int16),
        "confidence": np.max(probabilities[keep], axis=1).astype(np.float32),
        "embedding": np.asarray(embeddings[keep], dtype=np.float32),
    }


def evaluate(
    params: Params, model_path: Path, prepared: Path, metrics_out: Path, confusion_out: Path,
    judged_out: Path | None = None, reference_out: Path | None = None,
) -> Metrics:
    import keras

    from pipelines.train import with_embeddings

    with np.load(prepared) as data:
        arrays = {k: data[k] for k in data.files}
    judged_by = str(arrays.get("judged_by", "test"))
    if reference_out is not None:
        reference_out.unlink(missing_ok=True)  # an earlier run's must never describe this model
    if judged_by == "cv":
        y_test, images = arrays["y_train"], arrays.get("train_images", np.array([]))
        y_pred = cross_validated_predictions(params, arrays["x_train"], y_test)
    else:
        y_test, images = arrays["y_test"], arrays.get("test_images", np.array([]))
        y_pred = y_test
        if len(y_test):
            # One pass: the judged predictions and the drift reference's embeddings.
            probabilities, embeddings = with_embeddings(keras.saving.load_model(model_path)).predict(
                arrays["x_test"], batch_size=64, verbose=0)
            y_pred = np.argmax(probabilities, axis=1)
            if reference_out is not None and len(y_test) > 1:
                reference_out.parent.mkdir(parents=True, exist_ok=True)
                np.savez(reference_out, **drift_reference(probabilities, embeddings, params.train.seed))
    if reference_out is not None and not reference_out.exists():
        # A DVC output must exist: no held-out images, no reference (register reads it as none).
        reference_out.parent.mkdir(parents=True, exist_ok=True)
        np.savez(reference_out, predicted=np.zeros(0, dtype=np.int64))
    metrics = score_predictions(params.data.classes, y_test, y_pred, len(arrays["y_train"]), judged_by)
    metrics_out.write_text(json.dumps(asdict(metrics), indent=2) + "\n")
    if judged_out is not None:
        judged_out.parent.mkdir(parents=True, exist_ok=True)
        judged_out.write_text(json.dumps({
            "judged_by": judged_by,
            "labels": {str(name): params.data.classes[int(t)] for name, t in zip(images, y_test, strict=False)},
        }) + "\n")
    confusion_out.parent.mkdir(parents=True, exist_ok=True)
    with confusion_out.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["actual", "predicted"])
        for t, p in zip(y_test, y_pred, strict=True):
            if p >= 0:
                writer.writerow([params.data.classes[t], params.data.classes[p]])
    return metrics


if __name__ == "__main__":
    m = evaluate(load_params(PARAMS_FILE), MODEL_FILE, PREPARED, METRICS_FILE, CONFUSION_FILE, JUDGED_FILE,
                 DRIFT_REFERENCE_FILE)
    print(f"evaluate: accuracy {m.accuracy:.4f}, macro F1 {m.macro_f1:.4f} on {m.n_test} labeled images "
          f"(judged by {m.judged_by})")
