"""The one inference core behind both the client API and the Label Studio backend.

`ModelSlot` holds the current model. A background thread watches the promotion record;
a new tag is loaded beside the old model and then swapped in with one reference
assignment, so a request always runs on one complete model and reports its version.
"""

from __future__ import annotations

import gc
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from kernel.errors import NoModelError
from kernel.settings import DriftSettings, ServingSettings
from pipelines.artifacts import ArtifactStore
from pipelines.images import InputSpec, preprocess
from pipelines.register import MODEL_FILENAME  # the file the register stage stores
from pipelines.strategies import QueryStrategy, get_strategy, per_image_scores
from pipelines.train import with_embeddings
from serving.drift import DriftDetector, DriftReference, DriftWatch
from serving.promotion import PromotionRecord, read_promotion
from serving.protocol import DriftStatus, ImagePrediction, ModelInfo

__all__ = ["LoadedModel", "ModelCore", "ModelSlot", "NO_MODEL", "Scored", "load_model"]

log = logging.getLogger(__name__)

NO_MODEL = "no model has been promoted yet: run `labelloop train` (or wait for the loop)"

@dataclass(frozen=True)
class Scored:
    """Outputs for a batch of images, all from one model version."""

    version: str
    classes: list[str]
    probabilities: np.ndarray  # (n, n_classes)
    scores: np.ndarray  # query-strategy score per image; lower = label first
    embeddings: np.ndarray | None = None  # (n, d) the model's `embedding` layer (a backbone's pooled features)

    @property
    def labels(self) -> list[str]:
        return [self.classes[i] for i in np.argmax(self.probabilities, axis=1)]


@dataclass
class LoadedModel:
    tag: str
    classes: list[str]
    image_size: int
    keras_model: object
    metadata: dict = field(default_factory=dict)
    spec: InputSpec | None = None  # None: a grey, squashed image_size model
    drift_reference: DriftReference | None = field(default=None, repr=False)  # None: registered before references
    drift: DriftDetector | None = field(default=None, repr=False)  # this version's window of client images
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    _with_embeddings: object = field(default=None, repr=False)

    def predict(self, images: Sequence[Image.Image]) -> tuple[np.ndarray, np.ndarray]:
        """(class probabilities, penultimate-layer embeddings) from ONE forward pass; the
        embeddings feed batch-mode query strategies (diversity in the model's own space)."""
        if not images:
            return np.zeros((0, len(self.classes))), np.zeros((0, 0))
        batch = preprocess(images, self.spec or self.image_size)
        with self._lock:  # one forward pass at a time per model; Keras models aren't re-entrant
            if self._with_embeddings is None:
                self._with_embeddings = with_embeddings(self.keras_model)
            # predict_on_batch runs the compiled predict function: ~5 ms here for 1 to 64
            # images, where an eager call costs 11-20 ms (measured, bench/serving.py).
            probs, embeddings = self._with_embeddings.predict_on_batch(batch)
        return np.asarray(probs, dtype=np.float64), np.asarray(embeddings, dtype=np.float32)


def load_model(tag: str) -> LoadedModel:
    import bentoml
    import keras

    stored = bentoml.models.get(tag)
    keras_model = keras.saving.load_model(Path(stored.path) / MODEL_FILENAME)
    meta = dict(stored.info.metadata)
    return LoadedModel(
        tag=str(stored.tag),
        classes=[str(c) for c in meta["classes"]],
        image_size=int(meta["image_size"]),
        keras_model=keras_model,
        metadata=meta,
        spec=InputSpec.from_metadata(meta),
        drift_reference=DriftReference.load(Path(stored.path)),
    )


def _warm_up(model: LoadedModel) -> None:
    """Trace the forward pass before the model serves (and before the heap is frozen): for
    one image, then for a batch, after which TensorFlow keeps a shape-generic trace. The
    first requests would otherwise pay the tracing, and its objects would sit outside the
    frozen heap."""
    blank = Image.new("RGB", (8, 8))
    model.predict([blank])
    model.predict([blank, blank])


def _settle_heap() -> None:
    """Collect once (the replaced model's reference cycles) and move everything alive to
    the collector's permanent generation. With a framework and a model loaded the process
    holds ~500,000 objects, and every full collection walks them all: 300 ms with the
    interpreter locked, a pause that hit random requests (measured: p99 400+ ms where p50
    was 45). Frozen, they are skipped; only what requests create is collected. One 300 ms
    pause per promotion, in the watcher's thread, instead of one every few seconds."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


class ModelSlot:
    def __init__(
        self,
        promotion_file: Path | str,
        strategy: QueryStrategy,
        poll_interval_s: float = 1.0,
        *,
        fetch_model: Callable[[str], None] | None = None,
        drift: DriftSettings | None = None,
        on_drift_due: Callable[[], None] | None = None,
    ):
        self._promotion_file = promotion_file
        # Drift monitoring (None: off): each loaded model gets a detector; `on_drift_due`
        # wakes the thread that runs its checks.
        self._drift = drift
        self._on_drift_due = on_drift_due
        # On Kubernetes the promoted model lives in shared storage: import it first.
        self._fetch_model = fetch_model
        self._strategy = strategy
        self._poll_interval_s = poll_interval_s
        self._current: LoadedModel | None = None
        self._record: PromotionRecord | None = None
        self._refresh_lock = threading.Lock()
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    @property
    def current(self) -> LoadedModel | None:
        return self._current

    @property
    def record(self) -> PromotionRecord | None:
        return self._record

    def require(self) -> LoadedModel:
        model = self._current
        if model is None:
            raise NoModelError(NO_MODEL)
        return model

    def refresh(self) -> bool:
        """Load the promoted model if it changed. Returns True when a swap happened."""
        with self._refresh_lock:
            record = read_promotion(self._promotion_file)
            if record is None or (self._current and self._current.tag == record.tag):
                return False
            if self._fetch_model is not None:
                self._fetch_model(record.tag)
            new_model = load_model(record.tag)  # loaded beside the old one
            _warm_up(new_model)
            if self._drift is not None and new_model.drift_reference is not None and len(new_model.drift_reference) > 1:
                new_model.drift = DriftDetector(new_model.drift_reference, len(new_model.classes), self._drift)
            old = self._current
            self._current, self._record = new_model, record  # the swap: one assignment
            log.info("serving model %s (was %s)", new_model.tag, old.tag if old else "none")
            del old
            _settle_heap()
            return True

    def start_watching(self) -> None:
        def watch() -> None:
            while not self._stop.wait(self._poll_interval_s):
                try:
                    self.refresh()
                except Exception:  # a bad record must not kill the watcher
                    log.exception("could not load the promoted model; keeping the current one")

        self._watcher = threading.Thread(target=watch, name="model-watcher", daemon=True)
        self._watcher.start()

    def stop(self) -> None:
        self._stop.set()

    def score(self, images: Sequence[Image.Image], *, observe: bool = False) -> Scored:
        """`observe`: client images: their outputs join the model's drift window."""
        model = self.require()
        probs, embeddings = model.predict(images)
        scores = self._strategy.score(probs) if len(probs) else np.zeros(0)
        if observe and model.drift is not None and model.drift.observe(probs, embeddings) and self._on_drift_due:
            self._on_drift_due()
        return Scored(model.tag, model.classes, probs, scores, embeddings)

    def drift_status(self) -> DriftStatus | None:
        """The serving model's last drift check; None when monitoring is off or it has no reference."""
        model = self._current
        return model.drift.status if model is not None and model.drift is not None else None

    def drift_detector(self) -> DriftDetector | None:
        model = self._current
        return model.drift if model is not None else None


class ModelCore:
    """What the process holding the model does: load the promoted model, hot-swap it, and
    turn decoded images into typed predictions. The model-worker service (`Classifier`)
    wraps one; so does the front when it holds the model itself (one process)."""

    def __init__(self, settings: ServingSettings, publish_drift: Callable[[DriftStatus | None], None]):
        self.strategy = get_strategy(settings.query_strategy)
        fetch = ArtifactStore(settings.artifacts_url).ensure_local_model if settings.artifacts_url else None
        self.drift_watch: DriftWatch | None = None
        self.models = ModelSlot(
            settings.promotion_file, self.strategy, settings.model_poll_interval_s, fetch_model=fetch,
            drift=settings.drift, on_drift_due=self._drift_due,
        )
        if settings.drift is not None:
            # Client images' drift checks run in a thread of their own, off every request.
            self.drift_watch = DriftWatch(self.models.drift_detector, publish_drift)
        try:
            self.models.refresh()
        except Exception:
            log.exception("could not load the promoted model at start; waiting for a promotion")
        self.models.start_watching()

    def _drift_due(self) -> None:
        if self.drift_watch is not None:
            self.drift_watch.due()

    def predict(self, images: Sequence[Image.Image], *, with_embeddings: bool = False,
                observe: bool = False) -> list[ImagePrediction]:
        """`observe`: client images (not the loop's, not Label Studio's): they join the
        drift window. Raises `NoModelError` while nothing is promoted."""
        scored = self.models.score(images, observe=observe)
        probs = scored.probabilities
        all_scores = per_image_scores(probs)
        return [
            ImagePrediction(
                label=label,
                probabilities={c: round(float(p), 6) for c, p in zip(scored.classes, row, strict=True)},
                score=float(score),
                scores={name: round(float(values[i]), 6) for name, values in all_scores.items()},
                strategy=self.strategy.name,
                model_version=scored.version,
                # Only on request: 128 floats per image are real work in the batched hot path.
                embedding=[round(float(v), 5) for v in scored.embeddings[i]] if with_embeddings else None,
            )
            for i, (label, row, score) in enumerate(zip(scored.labels, probs, scored.scores, strict=True))
        ]

    def info(self) -> ModelInfo | None:
        """The serving model's identity (None: nothing promoted yet)."""
        model = self.models.current
        if model is None:
            return None
        return ModelInfo(version=model.tag, classes=model.classes, metadata=model.metadata,
                         drift=self.models.drift_status())
