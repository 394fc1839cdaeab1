"""The service's front door, as one ASGI middleware: auth, content types, body size.

Checked before any route runs, so a refused request costs no parsing and no model time:

- Label Studio ML-backend routes (`/health`, `/setup`, `/predict`, `/versions`): HTTP basic
  auth when configured (Label Studio's "Basic Authentication" option of a backend).
- `/webhook`: a shared secret in `X-Labelloop-Webhook-Secret` when configured (Label Studio
  sends no basic auth on webhooks, but custom webhook headers).
- Client API (`/classify...`): `Authorization: Bearer <api key>` when configured.
- BentoML's probes, metrics and docs (`/readyz`, `/livez`, `/healthz`, `/metrics`, `/docs*`)
  stay open: the cluster probes and scrapes them.
- A body over the limit is a 413 (from Content-Length, or counted while streaming);
  a POST with a content type the route does not take is a 415.
- Backpressure: more than `max_in_flight` client-API requests at once (received, not yet
  answered) and the next is a 503 before its body is read; the service never queues
  without bound in its event loop.
- Every 503 going out (overload, no model yet, BentoML's own) carries `Retry-After`, so a
  client backs off instead of retrying at once or dropping the connection.
"""

from __future__ import annotations

import base64
import hmac
import json
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Guard", "GuardConfig", "WEBHOOK_SECRET_HEADER"]

WEBHOOK_SECRET_HEADER = "x-labelloop-webhook-secret"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

#: Seconds a 503 asks the client to wait (the model's queue drains within that at this
#: machine's throughput; a model still loading is ready within a few).
RETRY_AFTER_S = 1

LABEL_STUDIO_ROUTES = frozenset({"/health", "/setup", "/predict", "/versions"})
#: POST route -> the content types it takes (prefix match).
CONTENT_TYPES: dict[str, tuple[str, ...]] = {
    "/classify": ("multipart/form-data",),
    "/classify_base64": ("application/json",),
    "/classify_raw": ("image/", "application/octet-stream"),
    "/setup": ("application/json",),
    "/predict": ("application/json",),
    "/webhook": ("application/json",),
}


@dataclass(frozen=True)
class GuardConfig:
    max_body_bytes: int
    api_key: str | None = None
    basic_auth: tuple[str, str] | None = None
    webhook_secret: str | None = None
    max_in_flight: int | None = None  # client-API requests at once; None: no bound


class Guard:
    def __init__(self, app: Callable[..., Awaitable[None]], config: GuardConfig):
        self.app = app
        self.config = config
        user_pass = config.basic_auth
        self._basic = (
            "Basic " + base64.b64encode(f"{user_pass[0]}:{user_pass[1]}".encode()).decode()
            if user_pass else None
        )
        self._in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        refusal = self._refuse(scope.get("method", "GET"), path, headers)
        if refusal:
            await _respond(send, *refusal)
            return
        if path.startswith("/classify") and self.config.max_in_flight is not None:
            if self._in_flight >= self.config.max_in_flight:
                await _respond(send, 503, f"the service holds {self._in_flight} client requests (at most "
                               f"LABELLOOP_SERVING_MAX_IN_FLIGHT={self.config.max_in_flight}): retry in a second",
                               {"retry-after": str(RETRY_AFTER_S)})
                return
            self._in_flight += 1
            try:
                await self._guarded(scope, receive, send, path)
            finally:
                self._in_flight -= 1
            return
        await self._guarded(scope, receive, send, path)

    async def _guarded(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        if path == "/classify" and scope.get("method") == "POST":
            # BentoML would treat a text value in a file field as a URL and download it
            # (a 500 for junk, a server-side fetch for a URL): only uploaded files pass.
            body = await _read_body(receive, self.config.max_body_bytes)
            if body is None:
                await _respond(send, 413, f"request body is larger than {self.config.max_body_bytes} bytes")
                return
            if problem := await _form_problem(scope, body):
                await _respond(send, 400, problem)
                return
            receive = _replay(body)
        limit = self.config.max_body_bytes
        received = 0
        state = {"started": False, "refused": False}

        async def limited_receive() -> Message:
            nonlocal received
            if state["refused"]:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # Chunked upload without Content-Length: answer now, and let the
                    # route see a disconnect; whatever it answers after is dropped.
                    state["refused"] = True
                    if not state["started"]:
                        state["started"] = True
                        await _respond(send, 413, f"request body is larger than {limit} bytes")
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if state["refused"]:
                return
            if message["type"] == "http.response.start":
                state["started"] = True
                if message.get("status") == 503 and not any(k.lower() == b"retry-after"
                                                             for k, _ in message.get("headers", [])):
                    message = {**message, "headers": [*message.get("headers", []),
                                                      (b"retry-after", str(RETRY_AFTER_S).encode())]}
            await send(message)

        await self.app(scope, limited_receive, guarded_send)

    def _refuse(self, method: str, path: str, headers: dict[str, str]) -> tuple[int, str, dict] | None:
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                return 400, "Content-Length is not a number", {}
            if int(length) > self.config.max_body_bytes:
                return 413, f"request body is larger than {self.config.max_body_bytes} bytes", {}
        if path in LABEL_STUDIO_ROUTES and self._basic:
            if not hmac.compare_digest(headers.get("authorization", ""), self._basic):
                return 401, "basic authentication required", {"www-authenticate": 'Basic realm="labelloop"'}
        elif path == "/webhook" and self.config.webhook_secret:
            if not hmac.compare_digest(headers.get(WEBHOOK_SECRET_HEADER, ""), self.config.webhook_secret):
                return 401, f"missing or wrong {WEBHOOK_SECRET_HEADER} header", {}
        elif path.startswith("/classify") and self.config.api_key:
            if not hmac.compare_digest(headers.get("authorization", ""), f"Bearer {self.config.api_key}"):
                return 401, "an API key is required: Authorization: Bearer <key>", {
                    "www-authenticate": 'Bearer realm="labelloop"'}
        accepted = CONTENT_TYPES.get(path)
        if method == "POST" and accepted:
            content_type = headers.get("content-type", "").split(";")[0].strip().lower()
            if not content_type.startswith(accepted):
                shown = content_type or "none"
                return 415, f"{path} takes {' or '.join(accepted)}, not {shown}", {}
        return None


async def _respond(send: Send, status: int, message: str, extra_headers: dict | None = None) -> None:
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.encode(), v.encode()) for k, v in (extra_headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        if size > limit:
            return None
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes) -> Receive:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


async def _form_problem(scope: Scope, body: bytes) -> str | None:
    from starlette.datastructures import UploadFile
    from starlette.requests import Request

    request = Request(scope, receive=_replay(body))
    try:
        form = await request.form()
    except Exception as exc:  # malformed multipart
        return f"malformed multipart body: {exc}"
    try:
        texts = [k for k, v in form.multi_items() if k == "images" and not isinstance(v, UploadFile)]
    finally:
        await form.close()
    if texts:
        return "the 'images' field must hold uploaded files (multipart file parts), not text"
    return None
