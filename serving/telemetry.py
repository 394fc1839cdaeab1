"""What the service tells monitoring: Prometheus metrics and a rotating prediction log.

Metrics go through `bentoml.metrics` (the prometheus-client API, multi-process safe), so
they appear on BentoML's own `/metrics` beside its request metrics. The prediction log is
JSON lines, one per image answered, for monitoring and drift analysis; it holds no image
bytes, URLs with tokens or secrets.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import time
from collections.abc import Sequence
from pathlib import Path

import bentoml

from serving.protocol import ImagePrediction

__all__ = ["Telemetry"]

_CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)

PREDICTIONS = bentoml.metrics.Counter(
    name="labelloop_predictions",
    documentation="Images answered, by route, predicted class and model version",
    labelnames=["route", "label", "model_version"],
)
CONFIDENCE = bentoml.metrics.Histogram(
    name="labelloop_prediction_confidence",
    documentation="Top-class probability of each answered image",
    labelnames=["route"],
    buckets=_CONFIDENCE_BUCKETS,
)
FETCH_FAILURES = bentoml.metrics.Counter(
    name="labelloop_image_fetch_failures",
    documentation="Label Studio task images that could not be fetched or decoded",
    labelnames=["reason"],
)
MODEL_INFO = bentoml.metrics.Gauge(
    name="labelloop_model_info",
    documentation="1 for the model version that answered last, 0 for earlier ones",
    labelnames=["model_version"],
    multiprocess_mode="livemax",
)


class Telemetry:
    def __init__(self, log_path: Path, max_bytes: int, backups: int = 5):
        log_path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.handlers.RotatingFileHandler(
            log_path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8"
        )
        handler.setFormatter(logging.Formatter("%(message)s"))
        self._log = logging.getLogger(f"labelloop.predictions.{log_path}")
        self._log.propagate = False
        self._log.setLevel(logging.INFO)
        if not self._log.handlers:
            self._log.addHandler(handler)
        self._last_version: str | None = None

    def predictions(self, route: str, items: Sequence[ImagePrediction], refs: Sequence[str]) -> None:
        """Count, histogram and log each answered image. `refs` name the inputs (file name,
        task id); one per item."""
        now = time.time()
        for ref, item in zip(refs, items, strict=True):
            confidence = max(item.probabilities.values()) if item.probabilities else 0.0
            PREDICTIONS.labels(route=route, label=item.label, model_version=item.model_version).inc()
            CONFIDENCE.labels(route=route).observe(confidence)
            self._log.info(json.dumps({
                "ts": round(now, 3), "route": route, "ref": ref, "label": item.label,
                "confidence": round(confidence, 6), "score": round(item.score, 6),
                "strategy": item.strategy, "model_version": item.model_version,
            }))
            self._saw_version(item.model_version)

    def fetch_failed(self, reason: str) -> None:
        FETCH_FAILURES.labels(reason=reason).inc()

    def _saw_version(self, version: str) -> None:
        if version == self._last_version:
            return
        if self._last_version is not None:
            MODEL_INFO.labels(model_version=self._last_version).set(0)
        MODEL_INFO.labels(model_version=version).set(1)
        self._last_version = version
