"""The model-promotion record: the loop writes it, every service worker watches it.

A promotion names an explicit BentoML model tag (never `:latest`), so every worker
and every replica converges on the same version.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

from pydantic import BaseModel, Field

__all__ = ["PromotionRecord", "read_promotion", "write_promotion"]


class PromotionRecord(BaseModel):
    tag: str = Field(description="BentoML model tag, e.g. labelloop-classifier:abc123")
    accuracy: float
    data_commit: str
    n_labels: int
    run_id: str
    promoted_at: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat())


def read_promotion(location: Path | str) -> PromotionRecord | None:
    """From a local file or any fsspec URL (shared storage on Kubernetes)."""
    if isinstance(location, str) and "://" in location:
        import fsspec

        fs, path = fsspec.core.url_to_fs(location)
        if not fs.exists(path):
            return None
        with fs.open(path, "r") as src:
            return PromotionRecord.model_validate_json(src.read())
    path = Path(location)
    if not path.exists():
        return None
    return PromotionRecord.model_validate_json(path.read_text())


def write_promotion(location: Path | str, record: PromotionRecord) -> None:
    """Atomic: readers see the old record or the new one, never half of one."""
    text = json.dumps(record.model_dump(), indent=2) + "\n"
    if isinstance(location, str) and "://" in location:
        import fsspec

        fs, path = fsspec.core.url_to_fs(location)
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        with fs.open(f"{path}.tmp", "w") as out:
            out.write(text)
        fs.mv(f"{path}.tmp", path)
        return
    path = Path(location)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
