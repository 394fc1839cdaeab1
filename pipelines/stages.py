"""The ML pipeline as DVC stages (`dvc.yaml` of every workspace): prepare -> train ->
evaluate -> register. Each stage is a module of this package with a thin `__main__`."""

from __future__ import annotations

from kernel.layout import IMAGES_DIR, JUDGED_FILE, LABELS_DIR, POOL_DIR, TEST_DIR

__all__ = ["DVC_PIPELINE"]

DVC_PIPELINE = {
    "stages": {
        "prepare": {
            "cmd": "python -m pipelines.prepare",
            "deps": [str(IMAGES_DIR), str(POOL_DIR), str(LABELS_DIR), str(TEST_DIR)],
            "params": ["data", "eval"],
            "outs": ["build/prepared.npz"],
        },
        "train": {
            "cmd": "python -m pipelines.train",
            "deps": ["build/prepared.npz"],
            "params": ["data", "model", "train"],
            "outs": ["build/model.keras", {"build/train.json": {"cache": False}}],
        },
        "evaluate": {
            "cmd": "python -m pipelines.evaluate",
            "deps": ["build/model.keras", "build/prepared.npz"],
            "params": ["model", "train", "eval"],  # cross-validation trains with them
            "outs": [{str(JUDGED_FILE): {"cache": False}}, {"build/drift_reference.npz": {"cache": False}}],
            "metrics": [{"metrics.json": {"cache": False}}],
            "plots": [
                {
                    "plots/confusion.csv": {
                        "cache": False,
                        "template": "confusion",
                        "x": "actual",
                        "y": "predicted",
                    }
                }
            ],
        },
        "register": {
            "cmd": "python -m pipelines.register",
            "deps": ["build/model.keras", "metrics.json", "build/drift_reference.npz"],
            "params": ["register"],
            "outs": [{"build/registered.json": {"cache": False}}],
        },
    }
}
