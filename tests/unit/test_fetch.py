"""Task-image fetching against an in-process HTTP fake (httpx.MockTransport): legacy token,
personal access token with refresh, no credentials to other hosts, the cache, failures."""

from __future__ import annotations

import asyncio
import base64
import json

import httpx
import pytest

from kernel.errors import BadInputError, FetchError
from serving.fetch import ImageFetcher

LS = "http://ls.test"
PAT = "eyJhbGciOiJIUzI1NiJ9.eyJ0b2tlbl90eXBlIjoicmVmcmVzaCJ9.c2lnbmF0dXJl"


def run(coro):
    return asyncio.run(coro)


def fetcher_with(handler, token) -> tuple[ImageFetcher, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return handler(request)

    fetcher = ImageFetcher(LS, token, concurrency=4, cache_bytes=1024, transport=httpx.MockTransport(record))
    return fetcher, seen


def test_legacy_token_goes_to_label_studio_only():
    fetcher, seen = fetcher_with(lambda r: httpx.Response(200, content=b"png"), "legacy-token")
    assert run(fetcher.fetch("/data/local-files/?d=images/a.png")) == b"png"
    assert run(fetcher.fetch("https://cdn.example.com/b.png")) == b"png"
    assert seen[0].url == httpx.URL(f"{LS}/data/local-files/?d=images/a.png")
    assert seen[0].headers["authorization"] == "Token legacy-token"
    assert "authorization" not in seen[1].headers  # a token never leaves for another host


def test_personal_access_token_is_exchanged_and_refreshed_on_401():
    state = {"access": 0, "expired": False}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/token/refresh":
            assert json.loads(request.read()) == {"refresh": PAT}
            state["access"] += 1
            return httpx.Response(200, json={"access": f"access-{state['access']}"})
        if request.headers["authorization"] == "Bearer access-1" and state["expired"]:
            return httpx.Response(401)
        return httpx.Response(200, content=request.headers["authorization"].encode())

    fetcher, seen = fetcher_with(handler, PAT)
    assert run(fetcher.fetch("/data/upload/1/a.png")) == b"Bearer access-1"
    state["expired"] = True
    assert run(fetcher.fetch("/data/upload/1/b.png")) == b"Bearer access-2"
    assert [r.url.path for r in seen].count("/api/token/refresh") == 2


def test_cache_failures_and_data_uris():
    calls = []

    def handler(request):
        calls.append(request.url.path)
        return httpx.Response(404) if "missing" in request.url.path else httpx.Response(200, content=b"x" * 100)

    fetcher, _ = fetcher_with(handler, None)
    out = run(fetcher.fetch_many(["/a.png", "/missing.png", "", "data:image/png;base64," +
                                  base64.b64encode(b"inline").decode(), "data:image/png;base64,%%"]))
    assert out[0] == b"x" * 100
    assert "HTTP 404" in str(out[1]) and "no image URL" in str(out[2])
    assert out[3] == b"inline" and "malformed data URI" in str(out[4])
    # Told apart by type: no image to be had (a reachability or data problem) vs unusable input.
    assert [type(o) for o in (out[1], out[2], out[4])] == [FetchError, FetchError, BadInputError]
    assert run(fetcher.fetch("/a.png")) == b"x" * 100
    assert calls.count("/a.png") == 1  # the second one came from the cache


def test_unreachable_hosts_and_refused_tokens_are_fetch_errors():
    def unreachable(request):
        raise httpx.ConnectError("connection refused", request=request)

    fetcher, _ = fetcher_with(unreachable, None)
    with pytest.raises(FetchError, match="ConnectError"):
        run(fetcher.fetch("https://cdn.example.com/a.png"))
    refused, _ = fetcher_with(lambda r: httpx.Response(401), PAT)
    with pytest.raises(FetchError, match="refused the personal access token"):
        run(refused.fetch("/data/upload/1/a.png"))
    relative, _ = fetcher_with(lambda r: httpx.Response(200), None)
    relative.label_studio_url = ""
    with pytest.raises(FetchError, match="no Label Studio URL"):
        run(relative.fetch("/data/upload/1/a.png"))


def test_signed_url_queries_are_not_echoed_in_errors():
    fetcher, _ = fetcher_with(lambda r: httpx.Response(403), None)
    with pytest.raises(FetchError) as info:
        run(fetcher.fetch("https://bucket.s3.example.com/a.png?X-Amz-Signature=secret"))
    assert "secret" not in str(info.value) and "a.png" in str(info.value)
