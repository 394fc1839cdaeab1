"""Stage `register`: put the trained model in the BentoML model store with its lineage.

The store is the one named by BENTOML_HOME (labelloop sets it to <home>/bentoml).
Registration does not promote: the loop's evaluation gate decides that.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kernel.layout import METRICS_FILE, MODEL_FILE, PARAMS_FILE, REGISTERED_FILE
from pipelines.evaluate import DRIFT_REFERENCE_FILE
from pipelines.params import Params, load_params
from pipelines.train import TRAIN_LINEAGE

__all__ = ["DRIFT_REFERENCE_FILENAME", "Registration", "register", "MODEL_FILENAME"]

MODEL_FILENAME = "model.keras"
#: Beside the model in its store directory: what the service compares client inputs with
#: (`pipelines.evaluate.drift_reference`, copied from DRIFT_REFERENCE_FILE).
DRIFT_REFERENCE_FILENAME = "drift_reference.npz"


@dataclass(frozen=True)
class Registration:
    """A model in the BentoML store, with the data, metrics and params it came from."""

    tag: str
    data_commit: str
    accuracy: float
    n_labels: int


def _data_commit(root: Path) -> str:
    out = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=False
    )
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def register(params: Params, root: Path, model_path: Path, metrics_path: Path, out: Path,
             reference_path: Path | None = None) -> Registration:
    """`reference_path`: the model's drift reference the evaluate stage wrote (absent when
    cross-validation judged the run: no held-out images); it goes into the model's directory."""
    import bentoml

    metrics = json.loads(metrics_path.read_text())
    lineage_path = model_path.parent / TRAIN_LINEAGE  # absent for models trained before it existed
    lineage = json.loads(lineage_path.read_text()) if lineage_path.exists() else {}
    n_labels = int(metrics["n_train"])  # training labels: the evaluation sample is never trained on
    data_commit = _data_commit(root)
    metadata = {
        "data_commit": data_commit,
        "classes": params.data.classes,
        "image_size": params.data.image_size,
        "channels": params.data.channels,
        "resize": params.data.resize,
        "params": params.model_dump(by_alias=True),
        "metrics": metrics,
        "n_labels": n_labels,
        "lineage": lineage,  # model kind, Keras backend, backbone weights and their sha256
    }
    reference = reference_path if reference_path is not None and reference_path.exists() else None
    if reference is not None:
        with np.load(reference) as data:
            images = int(len(data["predicted"]))
        reference = reference if images else None  # evaluate writes an empty one when it has none
    if reference is not None:
        metadata["drift_reference"] = {"images": images, "judged_by": metrics.get("judged_by")}
    else:
        metadata["drift_reference"] = {"images": 0, "why": "no held-out images (judged by cross-validation)"}
    with bentoml.models.create(
        params.registration.model_name,
        labels={"framework": "keras", "project": "labelloop"},
        metadata=metadata,
    ) as model:
        shutil.copyfile(model_path, Path(model.path) / MODEL_FILENAME)
        if reference is not None:
            shutil.copyfile(reference, Path(model.path) / DRIFT_REFERENCE_FILENAME)
    registration = Registration(str(model.tag), data_commit, float(metrics["accuracy"]), n_labels)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(registration.__dict__, indent=2) + "\n")
    return registration


if __name__ == "__main__":
    r = register(load_params(PARAMS_FILE), Path("."), MODEL_FILE, METRICS_FILE, REGISTERED_FILE, DRIFT_REFERENCE_FILE)
    print(f"register: {r.tag} (data {r.data_commit[:10]}, {r.n_labels} labels, accuracy {r.accuracy:.4f})")
