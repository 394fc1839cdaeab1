"""The labelloop BentoML service: a client prediction API and a Label Studio ML backend.

One deployment (`bentoml serve serving.service:Labelloop`) in one of two topologies
(`LABELLOOP_SERVING_TOPOLOGY`, resolved once in the settings):

- **one process** (the default on a CPU machine with `LABELLOOP_SERVING_WORKERS=1`):
  `Labelloop` holds the model itself (`InProcessModel`): requests are parsed, validated and
  decoded once, then wait in one bounded `ForwardQueue` that runs one forward pass at a
  time, merging whatever queued meanwhile. No second HTTP parse, no pickling, no second
  event loop between a request and the model.
- **model workers** (several workers, or a GPU): `Labelloop` is the front door (no
  TensorFlow) and `Classifier` runs the model in `serving_workers` processes behind
  BentoML's dependency hop, batched by BentoML's adaptive dispatcher.

Either way the front parses and validates every request on its own, so a bad upload is
that client's 400 and never fails a batch that merged other clients' images; fetches Label
Studio task images; auth, limits, metrics, prediction log. Routes:
    ``POST /classify``           multipart upload of one or more images (bentoml clients)
    ``POST /classify_base64``    JSON ``{"images": ["<base64 or data URI>", ...]}``
    ``POST /classify_raw``       one image as the raw body (``Content-Type: image/*``)
    ``GET /health``, ``POST /setup``, ``POST /predict``, ``POST /webhook``, ``GET /versions``
                                 the Label Studio ML-backend protocol (a mounted FastAPI app;
                                 no ``@bentoml.api`` may be named like these or it would
                                 silently take the route)
    ``/readyz`` (false until a model is loaded), ``/livez``, ``/metrics``: BentoML's own.
Overload is a 503 with Retry-After (more than `LABELLOOP_SERVING_MAX_IN_FLIGHT` client
requests held, or `LABELLOOP_SERVING_MAX_QUEUE` client images waiting for the model),
never a dropped connection.

Production (README "Production capture and drift"): the front hands client images worth
labeling to a background writer (`serving.capture`, off by default); the process holding
the model keeps client images' outputs in the serving model's drift window and tests it in
a background thread (`serving.drift`). The loop's own requests (header `X-Labelloop-Source: loop`) and
Label Studio's `/predict` are neither.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Annotated

import anyio
import bentoml
from fastapi import FastAPI, Request, Response
from PIL import Image
from pydantic import Field, TypeAdapter

from kernel.errors import BadInputError, FetchError, LabelloopError, NoModelError
from kernel.settings import Settings
from pipelines.images import decode_image
from serving import deadline, errors
from serving.capture import CaptureStore, CaptureWriter
from serving.events import spool_event
from serving.fetch import ImageFetcher, OutsideRootError, decode_base64, none_usable, storage_resolve_path
from serving.guard import Guard, GuardConfig
from serving.inference import NO_MODEL, ModelCore
from serving.labeling_config import ChoiceTarget, check_classes, parse_label_config
from serving.model_worker import CLIENT_METHOD, InProcessModel, ModelWorkerClient
from serving.protocol import (
    LOOP_SOURCE,
    SOURCE_HEADER,
    ChoiceResult,
    ImagePrediction,
    ModelInfo,
    PredictRequest,
    PredictResponse,
    SetupRequest,
    SetupResponse,
    TaskResult,
    UnprocessableError,
    WebhookAccepted,
)
from serving.telemetry import Telemetry, capture_counted, publish_drift

log = logging.getLogger("labelloop.serving")

#: Read once per process (BentoML imports this module in every worker): serving's section only.
SETTINGS = Settings.load().serving
# Before BentoML builds the app: its request timeout leaks a timer per request (serving/deadline.py).
deadline.install()
#: The names labelloop's own project config uses; a /predict without a config gets these.
DEFAULT_TARGET = ChoiceTarget(from_name="choice", to_name="image", data_key="image", choices=())
#: BentoML's dependency client recycles its session every `max_requests` calls (100 by
#: default) and after `max_age` seconds, failing the calls still in flight ("Server
#: disconnected", "Connector is closed"): at 64 concurrent requests 11-43% of the calls
#: (measured). Its peer is a local model worker: nothing to rebalance, so never recycle.
#: The transport errors left (a keep-alive connection the worker closed, a restarted
#: worker) are retried in serving/model_worker.py.
WORKER_CONNECTION = {"max_requests": 2**31 - 1, "max_age": 1e9}


# --- the inference core -------------------------------------------------------------------
@bentoml.service(
    name="labelloop-classifier",
    workers=SETTINGS.workers,
    traffic={"timeout": 120},
    runner_connection=WORKER_CONNECTION,
)
class Classifier:
    """The model-worker topology's processes: the core behind BentoML's adaptive batching."""

    def __init__(self) -> None:
        self.core = ModelCore(SETTINGS, publish_drift)

    def __is_ready__(self) -> bool:
        return self.core.models.current is not None

    def _predict(self, images: list[bytes], **options: bool) -> list[ImagePrediction]:
        # NoModelError is the front's 503; a BadInputError here (the front validated these) a bug's 400.
        with errors.bentoml_errors():
            return self.core.predict([decode_image(i) for i in images], **options)

    @bentoml.api(
        batchable=SETTINGS.batching,
        batch_dim=0,
        max_batch_size=SETTINGS.max_batch_size,
        max_latency_ms=SETTINGS.max_latency_ms,
    )
    def classify_images(self, images: list[bytes]) -> list[ImagePrediction]:
        """Client images, merged across requests into adaptive batches (drift-monitored)."""
        return self._predict(images, observe=True)

    @bentoml.api
    def classify_all(self, images: list[bytes]) -> list[ImagePrediction]:
        """All images of one Label Studio `/predict` (or one request of the loop's own
        re-scoring) in one forward pass; not client traffic, so not drift-monitored."""
        return self._predict(images)

    @bentoml.api
    def classify_with_embeddings(self, images: list[bytes], observe: bool = False) -> list[ImagePrediction]:
        """Predictions plus penultimate-layer embeddings, one forward pass per call (the
        loop's pool re-scoring for batch-mode strategies; not latency-bound). `observe`: a
        client's images (drift-monitored)."""
        return self._predict(images, with_embeddings=True, observe=observe)

    @bentoml.api
    def model_info(self) -> ModelInfo | None:
        return self.core.info()


# --- the front door -----------------------------------------------------------------------
backend = FastAPI(title="labelloop Label Studio ML backend")
errors.install(backend)


def _decoded(data: bytes) -> Image.Image | BadInputError:
    """The image as the pipeline's decoder reads it, or why it cannot."""
    try:
        return decode_image(data)
    except BadInputError as exc:
        return exc


def _failure_reason(problem: Exception) -> str:
    """The `reason` label of `labelloop_image_fetch_failures_total`."""
    if isinstance(problem, FetchError):
        return "fetch"
    return "outside_root" if isinstance(problem, OutsideRootError) else "decode"


def _decode_all(raw: list[bytes]) -> list[Image.Image]:
    """Every image decoded; the first the decoder cannot read is this request's 400."""
    images = []
    for i, data in enumerate(raw):
        image = _decoded(data)
        if isinstance(image, BadInputError):
            raise BadInputError(f"image {i}: {image}") from image
        images.append(image)
    return images


_PREDICTIONS = TypeAdapter(list[ImagePrediction])


def _from_loop(ctx: bentoml.Context | None) -> bool:
    """The request is the loop's own (`serving.client` sets the header), not production's."""
    return ctx is not None and ctx.request.headers.get(SOURCE_HEADER) == LOOP_SOURCE


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
    if not SETTINGS.one_process:
        # The model-worker topology: the model in `SETTINGS.workers` processes behind a hop.
        classifier = bentoml.depends(Classifier)

    def __init__(self) -> None:
        label_studio = SETTINGS.label_studio
        self.fetcher = ImageFetcher(
            label_studio.url,
            label_studio.token_value(),
            files_root=label_studio.files_root,
            concurrency=SETTINGS.fetch_concurrency,
            cache_bytes=int(SETTINGS.fetch_cache_mb * 1024 * 1024),
            max_image_bytes=int(SETTINGS.max_body_mb * 1024 * 1024),
        )
        self.telemetry = Telemetry(
            SETTINGS.prediction_log, max_bytes=int(SETTINGS.prediction_log_max_mb * 1024 * 1024)
        )
        self.worker: InProcessModel | ModelWorkerClient
        if SETTINGS.one_process:
            # The model in this process: one forward pass at a time from one bounded queue.
            self.worker = InProcessModel(
                ModelCore(SETTINGS, publish_drift), batching=SETTINGS.batching,
                max_batch_size=SETTINGS.max_batch_size, max_queue=SETTINGS.max_queue,
                max_wait_s=SETTINGS.max_latency_ms / 1000,
            )
        else:
            # Every call to the model workers goes through this: retried on transport
            # errors, the model's identity cached for a poll interval.
            self.worker = ModelWorkerClient(lambda: self.classifier.to_async,
                                            info_ttl_s=SETTINGS.model_poll_interval_s, max_queue=SETTINGS.max_queue)
        capture = SETTINGS.capture
        # Client images worth labeling go to a background writer (off by default).
        self.capture = (CaptureWriter(CaptureStore(SETTINGS.capture_dir), capture, count=capture_counted)
                        if capture is not None else None)

    async def __is_ready__(self) -> bool:
        try:
            return await self.worker.info() is not None
        except Exception:
            return False

    async def _classify(
        self, route: str, raw: list[bytes], refs: list[str], *, with_embeddings: bool = False,
        from_loop: bool = False,
    ) -> list[ImagePrediction]:
        """`from_loop`: the loop's own re-scoring of the pool (`serving.client` says so in a
        header): neither captured nor drift-monitored, since it is not production traffic."""
        if not raw:
            raise BadInputError("no image in the request")
        decoded = await anyio.to_thread.run_sync(_decode_all, raw)
        size = SETTINGS.max_batch_size
        # One request never exceeds one batch: larger ones go as several concurrent calls.
        if with_embeddings:
            method, extra = "classify_with_embeddings", {"observe": not from_loop}
        else:
            method, extra = ("classify_all" if from_loop else CLIENT_METHOD), {}
        parts = await asyncio.gather(
            *(self.worker.classify(method, raw[i : i + size], decoded[i : i + size], **extra)
              for i in range(0, len(raw), size))
        )
        predictions = [p for part in parts for p in part]
        self.telemetry.predictions(route, predictions, refs)
        if self.capture is not None and not from_loop:
            confidences = [max(p.probabilities.values(), default=0.0) for p in predictions]
            self.capture.offer(raw, confidences, drifting=await self._drifting())
        return predictions

    async def _drifting(self) -> bool:
        """The model worker's last drift verdict (known within a poll interval; never waits on
        the worker once its identity is known)."""
        try:
            info = await self.worker.info()
        except Exception:  # noqa: BLE001 - capture only samples less while the worker cannot say
            return False
        return bool(info is not None and info.drift is not None and info.drift.detected)

    # --- client API ------------------------------------------------------------------
    @bentoml.api(route="/classify")
    async def classify(self, images: ImageList, with_embeddings: bool = False,
                       ctx: bentoml.Context = None) -> list[ImagePrediction]:
        """Label, class probabilities, query-strategy scores and model version per image
        (multipart upload; one or more files in the `images` field). `with_embeddings`:
        also the model's penultimate-layer activations (batch-mode query strategies)."""
        try:
            raw = [Path(p).read_bytes() for p in images]
            return _json_response(await self._classify("classify", raw, [Path(p).name for p in images],
                                                       with_embeddings=with_embeddings, from_loop=_from_loop(ctx)))
        except LabelloopError as exc:
            return errors.api_answer(exc, ctx)

    @bentoml.api(route="/classify_base64")
    async def classify_base64(self, images: Base64List, ctx: bentoml.Context = None) -> list[ImagePrediction]:
        """The same, for JSON clients: images as base64 strings or `data:` URIs."""
        try:
            raw = [decode_base64(text) for text in images]
            return _json_response(await self._classify("classify_base64", raw, [f"#{i}" for i in range(len(raw))],
                                                       from_loop=_from_loop(ctx)))
        except LabelloopError as exc:
            return errors.api_answer(exc, ctx)

    @backend.post("/classify_raw", response_model=list[ImagePrediction])
    async def classify_raw(self, request: Request) -> list[ImagePrediction]:
        """One image as the raw request body (`Content-Type: image/png`, `image/jpeg`, ...)."""
        return await self._classify("classify_raw", [await request.body()], ["raw"],
                                    from_loop=request.headers.get(SOURCE_HEADER) == LOOP_SOURCE)

    # --- Label Studio ML backend -------------------------------------------------------
    @backend.get("/health")
    async def health(self) -> dict:
        info = await self.worker.info()
        return {"status": "UP", "model_class": "labelloop", "model_version": info.version if info else None}

    @backend.post("/setup")
    async def setup(self, request: SetupRequest) -> SetupResponse:
        """Label Studio connects: check its labeling config fits the model (4xx says why)
        and, when Label Studio names itself (`hostname`), that the service can fetch task
        images from it with the URL and token it will use (502 says which to set)."""
        hostname = request.hostname.strip()
        if hostname and not hostname.startswith(("http://", "https://")):
            raise UnprocessableError(f"'hostname' is Label Studio's http(s) URL, not {hostname[:80]!r}")
        self.fetcher.use_label_studio(hostname or None, request.access_token or None)
        info = await self.worker.info()
        if request.schema_:
            target = parse_label_config(request.schema_)
            if info is not None:
                check_classes(target, info.classes)
        if hostname:
            await self.fetcher.check_label_studio(told=hostname)
        return SetupResponse(model_version=info.version if info else "none")

    @backend.get("/versions")
    async def versions(self) -> dict:
        info = await self.worker.info()
        return {"versions": [info.version] if info else []}

    @backend.post("/predict")
    async def ls_predict(self, request: PredictRequest) -> PredictResponse:
        """One result per task, in task order, all fetched images in one forward pass.
        A task whose image cannot be fetched or decoded gets an empty result; when no task
        has one, the request fails naming the first cause (`none_usable`): Label Studio
        would store the empty answers and never ask for those tasks again."""
        if not request.tasks:
            raise UnprocessableError("the request holds no tasks")
        target = parse_label_config(request.label_config) if request.label_config else DEFAULT_TARGET
        info = await self.worker.info()
        if info is None:
            raise NoModelError(NO_MODEL)
        urls = [storage_resolve_path(str(t.data.get(target.data_key) or ""), t.id) for t in request.tasks]
        fetched = await self.fetcher.fetch_many(urls)
        decoded = await anyio.to_thread.run_sync(
            lambda: [_decoded(item) if isinstance(item, bytes) else item for item in fetched]
        )
        checks = [item if isinstance(item, Exception) else None for item in decoded]
        usable = [i for i, problem in enumerate(checks) if problem is None]
        for problem in checks:
            if problem is not None:
                self.telemetry.fetch_failed(_failure_reason(problem))
        if failure := none_usable(checks):
            raise failure
        for task, problem in zip(request.tasks, checks, strict=True):
            if problem is not None:
                log.warning("task %s: no prediction: %s", task.id, problem)
        images = [fetched[i] for i in usable]
        predictions = (await self.worker.classify("classify_all", images, [decoded[i] for i in usable])
                       if images else [])
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
            raise UnprocessableError("a Label Studio webhook payload has an 'action'")
        return WebhookAccepted(action=action, event_id=spool_event(SETTINGS.events_dir, payload))


Labelloop.add_asgi_middleware(
    Guard,
    config=GuardConfig(
        max_body_bytes=int(SETTINGS.max_body_mb * 1024 * 1024),
        api_key=SETTINGS.api_key.get_secret_value() if SETTINGS.api_key else None,
        basic_auth=SETTINGS.basic_auth,
        webhook_secret=SETTINGS.webhook_secret.get_secret_value() if SETTINGS.webhook_secret else None,
        max_in_flight=SETTINGS.max_in_flight,
    ),
)
