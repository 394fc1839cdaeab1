"""The labelloop BentoML service: a client prediction API and a Label Studio ML backend.

Both paths run on one inference core (`ModelSlot`). Routes:

- ``POST /classify``          client API (adaptive batching), images in, predictions out
- ``GET /health``, ``POST /setup``, ``POST /predict``, ``POST /webhook``, ``GET /versions``
                              the Label Studio ML-backend protocol (a mounted FastAPI app;
                              no ``@bentoml.api`` may be named like these or it would
                              silently take the route)
- ``/readyz`` is false until a model is loaded; ``/metrics`` is BentoML's Prometheus.
"""

from __future__ import annotations

import logging
from pathlib import Path

import bentoml
from fastapi import FastAPI, HTTPException

from loop.errors import BadInputError, LabelloopError, NoModelError
from loop.settings import Settings
from pipelines.images import decode_image
from pipelines.strategies import get_strategy
from serving.events import spool_event
from serving.fetch import ImageFetcher
from serving.inference import ModelSlot
from serving.protocol import (
    ChoiceResult,
    ImagePrediction,
    PredictRequest,
    PredictResponse,
    SetupRequest,
    SetupResponse,
    TaskResult,
    WebhookAccepted,
)

log = logging.getLogger("labelloop.serving")

IMAGE_FIELD = "image"
backend = FastAPI(title="labelloop Label Studio ML backend")


def _http_error(exc: LabelloopError) -> HTTPException:
    status = 503 if isinstance(exc, NoModelError) else 400 if isinstance(exc, BadInputError) else 500
    return HTTPException(status_code=status, detail=str(exc))


@bentoml.service(name="labelloop", traffic={"timeout": 120, "concurrency": 64})
@bentoml.asgi_app(backend, path="/")
class Labelloop:
    def __init__(self) -> None:
        self.settings = Settings.load()
        self.strategy = get_strategy(self.settings.query_strategy)
        self.models = ModelSlot(
            self.settings.promotion_file, self.strategy, self.settings.model_poll_interval_s
        )
        try:
            self.models.refresh()
        except Exception:
            log.exception("could not load the promoted model at start; waiting for a promotion")
        self.models.start_watching()
        self.fetcher = ImageFetcher(self.settings.label_studio_url, self.settings.label_studio_token())

    def __is_ready__(self) -> bool:
        return self.models.current is not None

    # --- client API ------------------------------------------------------------------
    @bentoml.api(batchable=True, max_batch_size=64, max_latency_ms=20)
    def classify(self, images: list[Path]) -> list[ImagePrediction]:
        """Label, class probabilities, query-strategy score and model version per image.

        Images arrive as uploaded files and are decoded here, not by BentoML, so that a
        file that is not an image is a 400 with a reason instead of a 500."""
        try:
            scored = self.models.score([decode_image(Path(i)) for i in images])
        except NoModelError as exc:
            raise bentoml.exceptions.ServiceUnavailable(str(exc)) from exc
        except BadInputError as exc:
            raise bentoml.exceptions.InvalidArgument(str(exc)) from exc
        return [
            ImagePrediction(
                label=label,
                probabilities={c: round(float(p), 6) for c, p in zip(scored.classes, probs, strict=True)},
                score=float(score),
                strategy=self.strategy.name,
                model_version=scored.version,
            )
            for label, probs, score in zip(scored.labels, scored.probabilities, scored.scores, strict=True)
        ]

    # --- Label Studio ML backend -------------------------------------------------------
    @backend.get("/health")
    def health(self) -> dict:
        model = self.models.current
        return {"status": "UP", "model_class": "labelloop", "model_version": model.tag if model else None}

    @backend.post("/setup")
    def setup(self, request: SetupRequest) -> SetupResponse:
        model = self.models.current
        return SetupResponse(model_version=model.tag if model else "none")

    @backend.get("/versions")
    def versions(self) -> dict:
        model = self.models.current
        return {"versions": [model.tag] if model else []}

    @backend.post("/predict")
    def ls_predict(self, request: PredictRequest) -> PredictResponse:
        """One result per task, in task order, all tasks in one forward pass."""
        try:
            model = self.models.require()
        except NoModelError as exc:
            raise _http_error(exc) from exc
        fetched = self.fetcher.fetch_many([str(t.data.get(IMAGE_FIELD, "")) for t in request.tasks])
        images, usable = [], []
        for i, item in enumerate(fetched):
            if isinstance(item, BadInputError):
                log.warning("task %s: %s", request.tasks[i].id, item)
                continue
            try:
                images.append(decode_image(item))
                usable.append(i)
            except BadInputError as exc:
                log.warning("task %s: %s", request.tasks[i].id, exc)
        scored = self.models.score(images)
        results = [TaskResult(result=[], score=1.0, model_version=model.tag) for _ in request.tasks]
        for i, label, score in zip(usable, scored.labels, scored.scores, strict=True):
            results[i] = TaskResult(
                result=[ChoiceResult(from_name="choice", to_name="image", value={"choices": [label]})],
                score=float(score),
                model_version=scored.version,
            )
        return PredictResponse(results=results)

    @backend.post("/webhook")
    def webhook(self, payload: dict) -> WebhookAccepted:
        """Record the event for the loop and return at once (Label Studio waits ~1 s)."""
        action = str(payload.get("action", "UNKNOWN"))
        spool_event(self.settings.events_dir, payload)
        return WebhookAccepted(action=action)
