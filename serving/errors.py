"""The service's one translation of labelloop errors into HTTP answers.

Every `LabelloopError` carries its `http_status` (`kernel.errors`); this module is the only
place that turns one into an answer, at the two kinds of edge the service has:

- `@bentoml.api` routes (and the model worker's answers to the front): `bentoml_errors()`
  re-raises the error as the BentoML exception with that `error_code`, which BentoML
  answers with that status; a client route answers a 5xx itself (`api_answer`), since
  BentoML would replace its message by "An unexpected error has occurred" and an overloaded
  service or a missing model must say so;
- the mounted FastAPI app (the Label Studio routes, `/classify_raw`): `install(app)` adds
  one exception handler answering `{"detail": <message>}` with that status, and one for
  anything unexpected that answers a plain 500 (the traceback goes to the log, never into
  a body); a client that disconnected mid-body is not a server error.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from http import HTTPStatus
from typing import Any

from bentoml.exceptions import BentoMLException
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.requests import ClientDisconnect

from kernel.errors import LabelloopError

__all__ = ["api_answer", "bentoml_errors", "install", "status_of", "to_bentoml"]

log = logging.getLogger("labelloop.serving")

UNEXPECTED = "internal error: see the service log"


def status_of(exc: LabelloopError) -> HTTPStatus:
    return HTTPStatus(exc.http_status)


def to_bentoml(exc: LabelloopError) -> BentoMLException:
    """The BentoML exception BentoML answers with `exc`'s status (and, below 500, its message)."""
    status = status_of(exc)
    kind = BentoMLException.error_mapping.get(status, BentoMLException)
    return kind(str(exc), error_code=status)


@contextmanager
def bentoml_errors() -> Iterator[None]:
    """Around the body of a `@bentoml.api` method."""
    try:
        yield
    except LabelloopError as exc:
        raise to_bentoml(exc) from exc


def api_answer(exc: LabelloopError, ctx: Any) -> JSONResponse:
    """A client route's answer to `exc`: a 4xx goes to BentoML as before (re-raised); a 5xx
    is answered here with its message (labelloop's messages hold no secrets). `ctx`: the
    route's `bentoml.Context`, whose status BentoML puts on any answer of a route that takes one."""
    status = status_of(exc)
    if status < 500:
        raise to_bentoml(exc) from exc
    log.warning("%d: %s", status, exc)
    if ctx is not None:
        ctx.response.status_code = status
    return JSONResponse({"error": str(exc)}, status_code=status)


async def _labelloop_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, LabelloopError)
    status = status_of(exc)
    if status >= 500:
        log.warning("%s %s: %d: %s", request.method, request.url.path, status, exc)
    return JSONResponse({"detail": str(exc)}, status_code=status)


async def _client_gone(request: Request, exc: Exception) -> JSONResponse:
    # The client went away mid-body, or the guard refused the body (413) and answered
    # already: nobody reads this answer, and it is no server error.
    return JSONResponse({"detail": "the client disconnected before the body was read"}, status_code=400)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    # Starlette re-raises the exception after this answer: the server logs its traceback.
    return JSONResponse({"detail": UNEXPECTED}, status_code=500)


def install(app: FastAPI) -> None:
    """The mounted app's edge: one handler for labelloop's errors, one for bugs."""
    app.add_exception_handler(LabelloopError, _labelloop_error)
    app.add_exception_handler(ClientDisconnect, _client_gone)
    app.add_exception_handler(Exception, _unexpected)
