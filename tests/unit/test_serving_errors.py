"""The service's one translation of labelloop errors into HTTP answers, at both kinds of edge:
`@bentoml.api` routes (BentoML's error_code exceptions) and the mounted FastAPI app."""

from __future__ import annotations

from http import HTTPStatus

import pytest
from bentoml.exceptions import BentoMLException
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.requests import ClientDisconnect

from kernel.errors import BadInputError, FetchError, LabelloopError, NoModelError
from serving import errors
from serving.protocol import UnprocessableError

CASES = [(BadInputError("not an image"), 400), (UnprocessableError("no tasks"), 422),
         (NoModelError("no model yet"), 503), (FetchError("cannot fetch x.png"), 502)]


@pytest.mark.parametrize(("error", "status"), CASES)
def test_bentoml_routes_answer_the_errors_status(error, status):
    with pytest.raises(BentoMLException) as raised:
        with errors.bentoml_errors():
            raise error
    assert raised.value.error_code == HTTPStatus(status) and str(error) in str(raised.value)
    assert raised.value.__cause__ is error


def test_bentoml_routes_let_bugs_through_untranslated():
    with pytest.raises(KeyError):
        with errors.bentoml_errors():
            raise KeyError("bug")


@pytest.fixture
def app() -> TestClient:
    app = FastAPI()
    errors.install(app)

    @app.get("/raise/{index}")
    def raise_case(index: int) -> dict:
        raise CASES[index][0]

    @app.get("/gone")
    def gone() -> dict:
        raise ClientDisconnect()

    @app.get("/bug")
    def bug() -> dict:
        raise RuntimeError("secret internals at /srv/x.py line 3")

    return TestClient(app, raise_server_exceptions=False)


@pytest.mark.parametrize("index", range(len(CASES)))
def test_the_mounted_app_answers_the_errors_status_and_message(app, index):
    error, status = CASES[index]
    r = app.get(f"/raise/{index}")
    assert r.status_code == status and r.json() == {"detail": str(error)}
    assert isinstance(error, LabelloopError) and error.http_status == status


def test_a_bug_is_a_plain_500_without_a_traceback(app):
    r = app.get("/bug")
    assert r.status_code == 500 and r.json() == {"detail": errors.UNEXPECTED}
    assert "Traceback" not in r.text and "secret" not in r.text


def test_a_client_gone_mid_body_is_no_server_error(app):
    assert app.get("/gone").status_code == 400
