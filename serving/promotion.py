"""The model-promotion record: the loop writes it, every service worker watches it.

A promotion names an explicit BentoML model tag (never `:latest`), so every worker
and every replica converges on the same version.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from pydantic import BaseModel, Field

from kernel.storage import read_text, write_text_atomic

__all__ = ["PromotionRecord", "read_promotion", "write_promotion"]


class PromotionRecord(BaseModel):
    tag: str = Field(description="BentoML model tag, e.g. labelloop-classifier:abc123")
    accuracy: float
    data_commit: str
    n_labels: int
    run_id: str
    judged_by: str = "test"  # the set its accuracy was measured on: test | eval | cv
    n_judged: int | None = None
    promoted_at: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat())


def read_promotion(location: Path | str) -> PromotionRecord | None:
    """From a local file or any fsspec URL (shared storage on Kubernetes)."""
    text = read_text(location)
    return None if text is None else PromotionRecord.model_validate_json(text)


def write_promotion(location: Path | str, record: PromotionRecord) -> None:
    """Atomic: readers see the old record or the new one, never half of one."""
    write_text_atomic(location, json.dumps(record.model_dump(), indent=2) + "\n")
