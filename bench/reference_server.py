"""The serving benchmark's reference: the same model behind a minimal one-process ASGI app.

    python -m bench.reference_server --tag TAG [--port 8000] [--strategy margin]

Starlette on uvicorn, one process, no batching, no process hop, no access log, no auth, no
metrics, no prediction log: the practical floor of per-request cost in Python on this
machine. What it shares with the service is what a request must cost anyway: the model
loaded by `serving.inference.load_model` from the same BentoML store (BENTOML_HOME), the
pipeline's decoder (`pipelines.images.decode_image`, every image checked before the forward
pass as the service's front does) and preprocessing (`LoadedModel.predict`, one forward pass
for probabilities and embeddings), the same multipart `POST /classify` (field `images`, one
or more files) and the same JSON answer (`serving.protocol.ImagePrediction`: label,
probabilities, score, scores, strategy, model_version), serialised once by pydantic as the
service does. The forward pass runs in a worker thread (what a plain FastAPI `def` route
does), so the event loop keeps accepting while it runs. `GET /readyz` is 200 once the model
is loaded and traced; the port only opens then.
"""

from __future__ import annotations

import argparse
import logging

import anyio
import uvicorn
from pydantic import TypeAdapter
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from kernel.errors import BadInputError
from pipelines.images import decode_image
from pipelines.strategies import get_strategy, per_image_scores
from serving.inference import load_model
from serving.protocol import ImagePrediction

_PREDICTIONS = TypeAdapter(list[ImagePrediction])


def build_app(tag: str, strategy_name: str) -> Starlette:
    model = load_model(tag)
    strategy = get_strategy(strategy_name)

    def predict(raw: list[bytes]) -> bytes:
        images = [decode_image(data) for data in raw]  # BadInputError: this request's 400
        probs, _ = model.predict(images)
        scores = strategy.score(probs)
        all_scores = per_image_scores(probs)
        labels = [model.classes[i] for i in probs.argmax(axis=1)]
        return _PREDICTIONS.dump_json([
            ImagePrediction(
                label=label,
                probabilities={c: round(float(p), 6) for c, p in zip(model.classes, row, strict=True)},
                score=float(score),
                scores={name: round(float(values[i]), 6) for name, values in all_scores.items()},
                strategy=strategy.name,
                model_version=model.tag,
            )
            for i, (label, row, score) in enumerate(zip(labels, probs, scores, strict=True))
        ])

    async def classify(request: Request) -> Response:
        async with request.form() as form:
            raw = [await upload.read() for upload in form.getlist("images") if hasattr(upload, "read")]
        if not raw:
            return JSONResponse({"detail": "no image in the request (multipart field `images`)"}, status_code=400)
        try:
            body = await anyio.to_thread.run_sync(predict, raw)
        except BadInputError as exc:
            return JSONResponse({"detail": str(exc)}, status_code=400)
        return Response(body, media_type="application/json")

    async def readyz(_: Request) -> Response:
        return PlainTextResponse("ok")

    # Trace the predict graph before the port opens, as the service's worker does before /readyz.
    import io

    from PIL import Image

    png = io.BytesIO()
    Image.new("L", (model.image_size, model.image_size)).save(png, format="PNG")
    predict([png.getvalue()])
    return Starlette(routes=[Route("/classify", classify, methods=["POST"]), Route("/readyz", readyz)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tag", required=True, help="BentoML model tag (from the promotion record)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--strategy", default="margin", help="query strategy for `score`")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    app = build_app(args.tag, args.strategy)
    uvicorn.run(app, host=args.host, port=args.port, workers=1, access_log=False, log_level="warning",
                backlog=4096)


if __name__ == "__main__":
    main()
