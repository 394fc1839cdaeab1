"""The labelloop BentoML service: a client prediction API and a Label Studio ML backend.

Two BentoML services, one deployment (`bentoml serve serving.service:Labelloop`):

- `Labelloop` (the front door, no TensorFlow): parses and validates every request on its
  own, so a bad upload is that client's 400 and never fails a batch that merged other
  clients' images; fetches Label Studio task images; auth, limits, metrics, prediction log.
  Routes:
    ``POST /classify``           multipart upload of one or more images (bentoml clients)
    ``POST /classify_base64``    JSON ``{"images": ["<base64 or data URI>", ...]}``
    ``POST /classify_raw``       one image as the raw body (``Content-Type: image/*``)
    ``GET /health``, ``POST /setup``, ``POST /predict``, ``POST /webhook``, ``GET /versions``
                                 the Label Studio ML-backend protocol (a mounted FastAPI app;
                                 no ``@bentoml.api`` may be named like these or it would
                                 silently take the route)
    ``/readyz`` (false until a model is loaded), ``/livez``, ``/metrics``: BentoML's own.
- `Classifier` (the one inference core, `serving_workers` processes): holds the promoted
  model, hot-swaps it, and runs the forward passes: adaptively batched for the client API,
  one pass per Label Studio `/predict`.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Annotated

import aiohttp
import anyio
import bentoml
import numpy as np
from fastapi import FastAPI, HTTPException, Request, Response
from pydantic import BaseModel, Field, TypeAdapter
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from loop.errors import BadInputError, NoModelError
from loop.settings import Settings
from pipelines.artifacts import ArtifactStore
from pipelines.images import decode_image
from pipelines.strategies import entropy_scores, get_strategy, least_confidence_scores, margin_scores
from serving.events import spool_event
from serving.fetch import ImageFetcher, decode_base64
from serving.guard import Guard, GuardConfig
from serving.inference import ModelSlot
from serving.labeling_config import ChoiceTarget, check_classes, parse_label_config
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
from serving.telemetry import Telemetry

log = logging.getLogger("labelloop.serving")

#: Read once per process: BentoML imports this module in every worker.
SETTINGS = Settings.load()
NO_MODEL = "no model has been promoted yet: run `labelloop train` (or wait for the loop)"
#: The names labelloop's own project config uses; a /predict without a config gets these.
DEFAULT_TARGET = ChoiceTarget(from_name="choice", to_name="image", data_key="image", choices=())


class ModelInfo(BaseModel):
    version: str
    classes: list[str]
    metadata: dict


# --- the inference core -------------------------------------------------------------------
@bentoml.service(
    name="labelloop-classifier",
    workers=SETTINGS.serving_workers,
    traffic={"timeout": 120},
)
class Classifier:
    def __init__(self) -> None:
        self.strategy = get_strategy(SETTINGS.query_strategy)
        fetch = ArtifactStore(SETTINGS.artifacts_url).ensure_local_model if SETTINGS.artifacts_url else None
        self.models = ModelSlot(
            SETTINGS.promotion_file, self.strategy, SETTINGS.model_poll_interval_s, fetch_model=fetch
        )
        try:
            self.models.refresh()
        except Exception:
            log.exception("could not load the promoted model at start; waiting for a promotion")
        self.models.start_watching()

    def __is_ready__(self) -> bool:
        return self.models.current is not None

    def _predict(self, images: list[bytes], *, with_embeddings: bool = False) -> list[ImagePrediction]:
        try:
            scored = self.models.score([decode_image(i) for i in images])
        except NoModelError as exc:
            raise bentoml.exceptions.ServiceUnavailable(str(exc)) from exc
        except BadInputError as exc:  # the front validated these; only a bug gets here
            raise bentoml.exceptions.InvalidArgument(str(exc)) from exc
        probs = scored.probabilities
        all_scores = {
            "margin": margin_scores(probs) if len(probs) else np.zeros(0),
            "least_confidence": least_confidence_scores(probs) if len(probs) else np.zeros(0),
            "entropy": entropy_scores(probs) if len(probs) else np.zeros(0),
        }
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

    @bentoml.api(
        batchable=SETTINGS.serving_batching,
        batch_dim=0,
        max_batch_size=SETTINGS.serving_max_batch_size,
        max_latency_ms=SETTINGS.serving_max_latency_ms,
    )
    def classify_images(self, images: list[bytes]) -> list[ImagePrediction]:
        """Client images, merged across requests into adaptive batches."""
        return self._predict(images)

    @bentoml.api
    def classify_all(self, images: list[bytes]) -> list[ImagePrediction]:
        """All images of one Label Studio `/predict` in one forward pass."""
        return self._predict(images)

    @bentoml.api
    def classify_with_embeddings(self, images: list[bytes]) -> list[ImagePrediction]:
        """Predictions plus penultimate-layer embeddings, one forward pass per call (the
        loop's pool re-scoring for batch-mode strategies; not latency-bound)."""
        return self._predict(images, with_embeddings=True)

    @bentoml.api
    def model_info(self) -> ModelInfo | None:
        model = self.models.current
        if model is None:
            return None
        return ModelInfo(version=model.tag, classes=model.classes, metadata=model.metadata)


# --- the front door -----------------------------------------------------------------------
backend = FastAPI(title="labelloop Label Studio ML backend")


def _decodes(data: bytes) -> BadInputError | None:
    """None if the pipeline's decoder reads the image, else why not."""
    try:
        decode_image(data)
    except BadInputError as exc:
        return exc
    return None


def _validate_images(raw: list[bytes]) -> None:
    """The first image the decoder cannot read is this request's 400."""
    for i, data in enumerate(raw):
        if problem := _decodes(data):
            raise BadInputError(f"image {i}: {problem}") from problem


_PREDICTIONS = TypeAdapter(list[ImagePrediction])


def _json_response(predictions: list[ImagePrediction]) -> Response:
    """The typed answer, serialised once by pydantic's Rust core. BentoML would rebuild the
    output's JSON schema for every response (a fifth of the front's CPU under load,
    measured with py-spy); a Response is passed through as is. The published schema still
    comes from the annotation."""
    return Response(content=_PREDICTIONS.dump_json(predictions), media_type="application/json")


ImageList = Annotated[list[Path], Field(min_length=1, description="Image files (PNG, JPEG, ...)")]
Base64List = Annotated[
    list[str], Field(min_length=1, description="Images as base64 strings or data URIs")
]


@bentoml.service(name="labelloop", traffic={"timeout": 120})
@bentoml.asgi_app(backend, path="/")
class Labelloop:
    classifier = bentoml.depends(Classifier)

    def __init__(self) -> None:
        token = SETTINGS.label_studio_token()
        self.fetcher = ImageFetcher(
            SETTINGS.label_studio_url,
            token,
            concurrency=SETTINGS.fetch_concurrency,
            cache_bytes=int(SETTINGS.fetch_cache_mb * 1024 * 1024),
            max_image_bytes=int(SETTINGS.serving_max_body_mb * 1024 * 1024),
        )
        self.telemetry = Telemetry(
            SETTINGS.prediction_log, max_bytes=int(SETTINGS.prediction_log_max_mb * 1024 * 1024)
        )

    async def __is_ready__(self) -> bool:
        try:
            return await self._model_info() is not None
        except Exception:
            return False

    async def _model_info(self) -> ModelInfo | None:
        info = await self.classifier.to_async.model_info()
        return ModelInfo.model_validate(info) if isinstance(info, dict) else info

    async def _infer(self, method: str, images: list[bytes]) -> list[ImagePrediction]:
        call = getattr(self.classifier.to_async, method)
        try:
            # A pooled keep-alive connection the model worker closed while idle surfaces as
            # "server disconnected" on reuse; inference is idempotent, so send it again.
            async for attempt in AsyncRetrying(
                retry=retry_if_exception_type(aiohttp.ClientConnectionError),
                stop=stop_after_attempt(3), wait=wait_exponential(multiplier=0.05, max=0.5), reraise=True,
            ):
                with attempt:
                    out = await call(images=images)
        except bentoml.exceptions.BentoMLException as exc:
            if getattr(exc, "error_code", None) is not None and int(exc.error_code) == 503:
                raise NoModelError(NO_MODEL) from exc
            raise
        return [ImagePrediction.model_validate(o) if isinstance(o, dict) else o for o in out]

    async def _classify(
        self, route: str, raw: list[bytes], refs: list[str], *, with_embeddings: bool = False
    ) -> list[ImagePrediction]:
        try:
            if not raw:
                raise BadInputError("no image in the request")
            await anyio.to_thread.run_sync(_validate_images, raw)
            size = SETTINGS.serving_max_batch_size
            # One request never exceeds one batch: larger ones go as several concurrent calls.
            method = "classify_with_embeddings" if with_embeddings else "classify_images"
            parts = await asyncio.gather(
                *(self._infer(method, raw[i : i + size]) for i in range(0, len(raw), size))
            )
        except BadInputError as exc:
            raise bentoml.exceptions.InvalidArgument(str(exc)) from exc
        except NoModelError as exc:
            raise bentoml.exceptions.ServiceUnavailable(str(exc)) from exc
        predictions = [p for part in parts for p in part]
        self.telemetry.predictions(route, predictions, refs)
        return predictions

    # --- client API ------------------------------------------------------------------
    @bentoml.api(route="/classify")
    async def classify(self, images: ImageList, with_embeddings: bool = False) -> list[ImagePrediction]:
        """Label, class probabilities, query-strategy scores and model version per image
        (multipart upload; one or more files in the `images` field). `with_embeddings`:
        also the model's penultimate-layer activations (batch-mode query strategies)."""
        raw = [Path(p).read_bytes() for p in images]
        return _json_response(await self._classify("classify", raw, [Path(p).name for p in images],
                                                   with_embeddings=with_embeddings))

    @bentoml.api(route="/classify_base64")
    async def classify_base64(self, images: Base64List) -> list[ImagePrediction]:
        """The same, for JSON clients: images as base64 strings or `data:` URIs."""
        try:
            raw = [decode_base64(text) for text in images]
        except BadInputError as exc:
            raise bentoml.exceptions.InvalidArgument(str(exc)) from exc
        return _json_response(await self._classify("classify_base64", raw, [f"#{i}" for i in range(len(raw))]))

    @backend.post("/classify_raw", response_model=list[ImagePrediction])
    async def classify_raw(self, request: Request) -> list[ImagePrediction]:
        """One image as the raw request body (`Content-Type: image/png`, `image/jpeg`, ...)."""
        body = await request.body()
        try:
            return await self._classify("classify_raw", [body], ["raw"])
        except bentoml.exceptions.BentoMLException as exc:
            raise HTTPException(status_code=int(exc.error_code), detail=str(exc)) from exc

    # --- Label Studio ML backend -------------------------------------------------------
    @backend.get("/health")
    async def health(self) -> dict:
        info = await self._model_info()
        return {"status": "UP", "model_class": "labelloop", "model_version": info.version if info else None}

    @backend.post("/setup")
    async def setup(self, request: SetupRequest) -> SetupResponse:
        """Label Studio connects: check its labeling config fits the model (4xx says why)."""
        self.fetcher.use_label_studio(request.hostname or None, request.access_token or None)
        info = await self._model_info()
        try:
            if request.schema_:
                target = parse_label_config(request.schema_)
                if info is not None:
                    check_classes(target, info.classes)
        except BadInputError as exc:
            raise HTTPException(status_code=422, detail=str(exc)) from exc
        return SetupResponse(model_version=info.version if info else "none")

    @backend.get("/versions")
    async def versions(self) -> dict:
        info = await self._model_info()
        return {"versions": [info.version] if info else []}

    @backend.post("/predict")
    async def ls_predict(self, request: PredictRequest) -> PredictResponse:
        """One result per task, in task order, all fetched images in one forward pass.
        A task whose image cannot be fetched or decoded gets an empty result."""
        if not request.tasks:
            raise HTTPException(status_code=422, detail="the request holds no tasks")
        try:
            target = parse_label_config(request.label_config) if request.label_config else DEFAULT_TARGET
        except BadInputError as exc:
            raise HTTPException(status_code=422, detail=str(exc)) from exc
        info = await self._model_info()
        if info is None:
            raise HTTPException(status_code=503, detail=NO_MODEL)
        urls = [str(t.data.get(target.data_key) or "") for t in request.tasks]
        fetched = await self.fetcher.fetch_many(urls)
        checks = await anyio.to_thread.run_sync(
            lambda: [item if isinstance(item, BadInputError) else _decodes(item) for item in fetched]
        )
        usable = [i for i, problem in enumerate(checks) if problem is None]
        for task, problem in zip(request.tasks, checks, strict=True):
            if problem is not None:
                log.warning("task %s: no prediction: %s", task.id, problem)
                self.telemetry.fetch_failed("fetch" if "fetch" in str(problem) or "URL" in str(problem) else "decode")
        try:
            predictions = await self._infer("classify_all", [fetched[i] for i in usable]) if usable else []
        except NoModelError as exc:
            raise HTTPException(status_code=503, detail=str(exc)) from exc
        version = predictions[0].model_version if predictions else info.version
        results = [TaskResult(result=[], score=1.0, model_version=version) for _ in request.tasks]
        for i, prediction in zip(usable, predictions, strict=True):
            if target.choices and prediction.label not in target.choices:
                log.warning("task %s: label %r is not a choice of the config", request.tasks[i].id, prediction.label)
                continue
            results[i] = TaskResult(
                result=[ChoiceResult(from_name=target.from_name, to_name=target.to_name,
                                     value={"choices": [prediction.label]})],
                score=prediction.score,
                model_version=prediction.model_version,
            )
        self.telemetry.predictions("predict", predictions, [f"task:{request.tasks[i].id}" for i in usable])
        return PredictResponse(results=results)

    @backend.post("/webhook")
    def webhook(self, payload: dict) -> WebhookAccepted:
        """Record the event for the loop and return at once (Label Studio waits ~1 s):
        annotation events make the loop collect soon, START_TRAINING queues a run."""
        action = payload.get("action")
        if not isinstance(action, str) or not action:
            raise HTTPException(status_code=422, detail="a Label Studio webhook payload has an 'action'")
        return WebhookAccepted(action=action, event_id=spool_event(SETTINGS.events_dir, payload))


Labelloop.add_asgi_middleware(
    Guard,
    config=GuardConfig(
        max_body_bytes=int(SETTINGS.serving_max_body_mb * 1024 * 1024),
        api_key=SETTINGS.serving_api_key.get_secret_value() if SETTINGS.serving_api_key else None,
        basic_auth=(
            (SETTINGS.serving_basic_auth_user, SETTINGS.serving_basic_auth_password.get_secret_value())
            if SETTINGS.serving_basic_auth_user and SETTINGS.serving_basic_auth_password
            else None
        ),
        webhook_secret=SETTINGS.webhook_secret.get_secret_value() if SETTINGS.webhook_secret else None,
    ),
)
