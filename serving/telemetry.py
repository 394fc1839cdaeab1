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
import queue
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import bentoml

from serving.protocol import DRIFT_TESTS, DriftStatus, ImagePrediction

__all__ = ["Telemetry", "capture_counted", "publish_drift"]

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


# --- production capture (serving/capture.py) ---------------------------------------------
CAPTURED = bentoml.metrics.Counter(
    name="labelloop_captured",
    documentation="Client images kept for labeling, by why: low_confidence, sample, drift_sample",
    labelnames=["reason"],
)
CAPTURE_SKIPPED = bentoml.metrics.Counter(
    name="labelloop_capture_skipped",
    documentation="Client images chosen but not kept: duplicate, hour_cap, day_cap, total_cap, format",
    labelnames=["reason"],
)
CAPTURE_FAILURES = bentoml.metrics.Counter(
    name="labelloop_capture_failures",
    documentation="Client images that could not be kept: queue_full, no_space, unwritable (the request was answered)",
    labelnames=["reason"],
)
_CAPTURE_COUNTERS = {"captured": CAPTURED, "skipped": CAPTURE_SKIPPED, "failed": CAPTURE_FAILURES}

# --- drift (serving/drift.py; set by the model workers) ----------------------------------
DRIFT_P_VALUE = bentoml.metrics.Gauge(
    name="labelloop_drift_p_value",
    documentation="Last drift check of recent client images against the model's reference: p-value per test "
    "(embedding: Bonferroni-corrected over its PCA components); the lowest over model workers",
    labelnames=["test"],
    multiprocess_mode="livemin",
)
DRIFT_SCORE = bentoml.metrics.Gauge(
    name="labelloop_drift_score",
    documentation="Last drift check: classes Cramér's V, confidence KS D, embedding largest KS D (0: alike, 1: apart)",
    labelnames=["test"],
    multiprocess_mode="livemax",
)
DRIFT_DETECTED = bentoml.metrics.Gauge(
    name="labelloop_drift_detected",
    documentation="1 while the last drift check found the client images drifted",
    multiprocess_mode="livemax",
)
DRIFT_WINDOW = bentoml.metrics.Gauge(
    name="labelloop_drift_window",
    documentation="Client images the last drift check compared",
    multiprocess_mode="livemax",
)
DRIFT_REFERENCE = bentoml.metrics.Gauge(
    name="labelloop_drift_reference_images",
    documentation="Images in the serving model's drift reference (0: none, drift not judged)",
    multiprocess_mode="livemax",
)


def capture_counted(kind: str, reason: str) -> None:
    """`kind`: captured, skipped or failed."""
    _CAPTURE_COUNTERS[kind].labels(reason=reason).inc()


def publish_drift(status: DriftStatus | None) -> None:
    """The model worker's last drift check on the gauges (None: the model has no reference)."""
    DRIFT_REFERENCE.set(status.reference_images if status else 0)
    DRIFT_WINDOW.set(status.window if status else 0)
    DRIFT_DETECTED.set(1 if status and status.detected else 0)
    for test in DRIFT_TESTS:
        DRIFT_P_VALUE.labels(test=test).set(status.p_values.get(test, 1.0) if status else 1.0)
        DRIFT_SCORE.labels(test=test).set(status.scores.get(test, 0.0) if status else 0.0)


#: Answered requests waiting for the prediction log's writer.
PENDING_LOG_REQUESTS = 100_000

log = logging.getLogger("labelloop.serving")


class Telemetry:
    """The request path only counts and hands its answers over: a thread of its own writes
    the prediction log (JSON formatting, the file write, rotation)."""

    def __init__(self, log_path: Path, max_bytes: int, backups: int = 5):
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._file = logging.handlers.RotatingFileHandler(
            log_path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8"
        )
        self._file.setFormatter(logging.Formatter("%(message)s"))
        # Bounded: a disk that stalls must not grow the service's memory without end; what
        # does not fit is dropped from the log (never from the answer) and said in the log.
        self._pending: queue.Queue[tuple[float, str, Sequence[str], Sequence[ImagePrediction]]] = (
            queue.Queue(maxsize=PENDING_LOG_REQUESTS))
        self._dropped = 0
        self._writer = threading.Thread(target=self._write_log, name="prediction-log", daemon=True)
        self._writer.start()
        self._last_version: str | None = None

    def predictions(self, route: str, items: Sequence[ImagePrediction], refs: Sequence[str]) -> None:
        """Count, histogram and log each answered image. `refs` name the inputs (file name,
        task id); one per item."""
        if len(refs) != len(items):
            raise ValueError(f"{len(refs)} refs for {len(items)} predictions")
        for item in items:
            confidence = max(item.probabilities.values()) if item.probabilities else 0.0
            PREDICTIONS.labels(route=route, label=item.label, model_version=item.model_version).inc()
            CONFIDENCE.labels(route=route).observe(confidence)
            self._saw_version(item.model_version)
        try:
            self._pending.put_nowait((time.time(), route, refs, items))
        except queue.Full:
            self._dropped += 1
            if self._dropped % 1000 == 1:
                log.warning("the prediction log's writer is behind by %d requests: %d requests' lines dropped",
                            PENDING_LOG_REQUESTS, self._dropped)

    def _write_log(self) -> None:
        while True:
            now, route, refs, items = self._pending.get()
            for ref, item in zip(refs, items, strict=True):
                confidence = max(item.probabilities.values()) if item.probabilities else 0.0
                line = json.dumps({
                    "ts": round(now, 3), "route": route, "ref": ref, "label": item.label,
                    "confidence": round(confidence, 6), "score": round(item.score, 6),
                    "strategy": item.strategy, "model_version": item.model_version,
                })
                # A write that fails (a full disk) is reported on stderr by the handler; the writer goes on.
                self._file.handle(logging.makeLogRecord({"msg": line, "levelno": logging.INFO}))

    def fetch_failed(self, reason: str) -> None:
        FETCH_FAILURES.labels(reason=reason).inc()

    def _saw_version(self, version: str) -> None:
        if version == self._last_version:
            return
        if self._last_version is not None:
            MODEL_INFO.labels(model_version=self._last_version).set(0)
        MODEL_INFO.labels(model_version=version).set(1)
        self._last_version = version
