"""Drift: do recent client images still look like the data the serving model was built for?

Every model carries a reference (`pipelines.register.drift_reference`: its predicted class,
top probability and embedding for a few hundred images it never trained on). The model
worker keeps the last `drift_window` client images' three outputs (appending them costs
the hot path one `deque.extend`; the forward pass computes the embeddings anyway) and,
after every `drift_check_every` new images, a background thread compares the window with
the reference with scipy.stats:

- predicted classes: the chi-square test of homogeneity (`chi2_contingency`) of the two
  class histograms; score: Cramér's V;
- confidences: the two-sample Kolmogorov-Smirnov test (`ks_2samp`); score: its D;
- embeddings: a two-sample KS test per component of a PCA (scikit-learn) fitted on the
  reference embeddings, Bonferroni-corrected over the components, as alibi-detect's
  `KSDrift` does with a dimension reduction in front; score: the largest D.

Drift is detected when one of the three corrected p-values is below `drift_p_value / 3`
(Bonferroni over the three tests too). A model without a reference (registered before
references existed) is not judged. Each model version has its own detector: a promotion
starts a new window.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kernel.settings import DriftSettings
from pipelines.register import DRIFT_REFERENCE_FILENAME
from serving.protocol import DRIFT_TESTS as TESTS, DriftStatus

__all__ = ["DriftDetector", "DriftReference", "DriftWatch"]

log = logging.getLogger("labelloop.serving")


@dataclass(frozen=True)
class DriftReference:
    """The model's outputs on its reference images."""

    predicted: np.ndarray  # (n,) class index
    confidence: np.ndarray  # (n,) top probability
    embedding: np.ndarray  # (n, d)

    @classmethod
    def load(cls, model_dir: Path) -> "DriftReference | None":
        path = Path(model_dir) / DRIFT_REFERENCE_FILENAME
        if not path.exists():
            return None
        with np.load(path) as data:
            return cls(predicted=data["predicted"].astype(np.int64), confidence=data["confidence"].astype(np.float64),
                       embedding=data["embedding"].astype(np.float64))

    def __len__(self) -> int:
        return len(self.predicted)


class DriftDetector:
    """One model version's window of recent client images and its tests against the reference."""

    def __init__(self, reference: DriftReference, n_classes: int, config: DriftSettings):
        from sklearn.decomposition import PCA

        self.config = config
        self.n_classes = n_classes
        self._reference = reference
        k = max(1, min(config.components, reference.embedding.shape[1], len(reference) - 1))
        self._pca = PCA(n_components=k, svd_solver="full").fit(reference.embedding)
        self._reference_projection = self._pca.transform(reference.embedding)
        self._predicted: deque[int] = deque(maxlen=config.window)
        self._confidence: deque[float] = deque(maxlen=config.window)
        self._embedding: deque[np.ndarray] = deque(maxlen=config.window)
        self._lock = threading.Lock()
        self._since_check = 0
        self._seen = 0
        self.status = DriftStatus(reference_images=len(reference), window=0, min_samples=config.min_samples)

    def observe(self, probabilities: np.ndarray, embeddings: np.ndarray) -> bool:
        """Add a batch of client images' outputs; True when a check is due. Cheap: the hot path."""
        if not len(probabilities):
            return False
        with self._lock:
            self._predicted.extend(np.argmax(probabilities, axis=1).tolist())
            self._confidence.extend(np.max(probabilities, axis=1).tolist())
            self._embedding.extend(embeddings)
            self._since_check += len(probabilities)
            self._seen += len(probabilities)
            due = len(self._predicted) >= self.config.min_samples and self._since_check >= self.config.check_every
            if due:
                self._since_check = 0
            return due

    def _snapshot(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        with self._lock:
            return (np.fromiter(self._predicted, dtype=np.int64), np.fromiter(self._confidence, dtype=np.float64),
                    np.asarray(self._embedding, dtype=np.float64), self._seen)

    def check(self) -> DriftStatus:
        """The three tests on the current window (off the hot path: a background thread)."""
        from scipy import stats
        from scipy.stats import contingency

        predicted, confidence, embedding, seen = self._snapshot()
        window = len(predicted)
        if window < self.config.min_samples:
            self.status = DriftStatus(reference_images=len(self._reference), window=window,
                                      min_samples=self.config.min_samples, images_seen=seen)
            return self.status
        p_values: dict[str, float] = {}
        scores: dict[str, float] = {}
        # Classes: a 2 x classes table; classes neither side predicted carry no information.
        table = np.stack([np.bincount(self._reference.predicted, minlength=self.n_classes),
                          np.bincount(predicted, minlength=self.n_classes)])
        table = table[:, table.sum(axis=0) > 0]
        if table.shape[1] > 1:
            p_values["classes"] = float(stats.chi2_contingency(table).pvalue)
            scores["classes"] = float(contingency.association(table, method="cramer"))
        else:  # both sides predict one and the same class: nothing differs
            p_values["classes"], scores["classes"] = 1.0, 0.0
        ks = stats.ks_2samp(self._reference.confidence, confidence)
        p_values["confidence"], scores["confidence"] = float(ks.pvalue), float(ks.statistic)
        projected = self._pca.transform(embedding)
        per_component = [stats.ks_2samp(self._reference_projection[:, j], projected[:, j])
                         for j in range(projected.shape[1])]
        p_values["embedding"] = min(1.0, min(float(r.pvalue) for r in per_component) * len(per_component))
        scores["embedding"] = max(float(r.statistic) for r in per_component)
        threshold = self.config.p_value / len(TESTS)
        self.status = DriftStatus(
            reference_images=len(self._reference), window=window, min_samples=self.config.min_samples,
            images_seen=seen, detected=any(p < threshold for p in p_values.values()),
            p_values={t: p_values[t] for t in TESTS}, scores={t: round(scores[t], 6) for t in TESTS},
            checked_at=round(time.time(), 3),
        )
        return self.status


class DriftWatch:
    """The model worker's background thread: runs a detector's check when `observe` said one
    is due, and hands the result to `publish` (the Prometheus gauges); a new model version
    (a new detector, or none) is published as it starts, so the gauges never describe the
    model that served before."""

    def __init__(self, current: Callable[[], DriftDetector | None],
                 publish: Callable[[DriftStatus | None], None], *, idle_s: float = 2.0):
        self._current = current
        self._publish = publish
        self._idle_s = idle_s
        self._due = threading.Event()
        self._thread = threading.Thread(target=self._run, name="drift-watch", daemon=True)
        self._thread.start()

    def due(self) -> None:
        self._due.set()

    def _run(self) -> None:
        last: DriftDetector | None = None
        while True:
            woken = self._due.wait(self._idle_s)
            self._due.clear()
            detector = self._current()
            if detector is not last:
                last = detector
                self._publish(detector.status if detector is not None else None)
            if not woken or detector is None:
                continue
            try:
                status = detector.check()
            except Exception:  # a failed check must not end the watch: the next one may work
                log.exception("drift check failed")
                continue
            if status.detected:
                log.warning("drift detected over the last %d client images: p-values %s", status.window,
                            status.p_values)
            self._publish(status)
