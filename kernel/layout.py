"""Where things are inside a data workspace (paths relative to its root)."""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "IMAGES_DIR", "TEST_DIR", "TEST_IMAGES_DIR", "TEST_LABELS", "LABELS_DIR", "POOL_DIR", "JUDGED_FILE",
    "PARAMS_FILE", "PREPARED", "MODEL_FILE", "METRICS_FILE", "CONFUSION_FILE", "REGISTERED_FILE",
]

#: Every image annotators may see, immutable, one DVC-tracked folder per import batch
#: (data/images/init/, data/images/add-000001/...): adding images costs the new ones.
IMAGES_DIR = Path("data/images")
TEST_DIR = Path("data/test")  # held-out split, never imported into Label Studio
TEST_IMAGES_DIR = TEST_DIR / "images"
TEST_LABELS = TEST_DIR / "labels.csv"
LABELS_DIR = Path("data/labels")  # label shards + cursor
#: One CSV per import batch (git): each image's name, batch, split (pool/eval/seed), source.
POOL_DIR = Path("data/pool")
PARAMS_FILE = Path("params.yaml")
PREPARED = Path("build/prepared.npz")
MODEL_FILE = Path("build/model.keras")
METRICS_FILE = Path("metrics.json")
CONFUSION_FILE = Path("plots/confusion.csv")
REGISTERED_FILE = Path("build/registered.json")
JUDGED_FILE = Path("build/judged.json")  # the labels a run was judged on (image -> label)
