"""Fetching task images the way real Label Studio projects reference them.

- relative URLs (local files `/data/local-files/?d=...`, uploads `/data/upload/...`): fetched
  from Label Studio with the project's token, a legacy token (`Authorization: Token`) or a
  personal access token (a JWT refresh token, exchanged at `/api/token/refresh` for
  short-lived `Bearer` access tokens, refreshed again on 401);
- absolute http(s) URLs: fetched without Label Studio's credentials (unless they point at
  Label Studio itself: a token never leaves for another host);
- data URIs: decoded in place.

A task whose image cannot be had (no URL, unreachable, refused) is a `FetchError`; bytes or
text that are not usable (a malformed data URI, too large) a `BadInputError`.

Fetching is concurrent and bounded, and an LRU cache (bounded in bytes) keeps recent images:
Label Studio asks again for the same tasks (retrieve predictions, `/next/`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from collections.abc import Generator, Sequence

import httpx
from cachetools import LRUCache

from kernel.errors import BadInputError, FetchError

__all__ = ["ImageFetcher", "LabelStudioTokenAuth", "decode_base64"]


def decode_base64(text: str) -> bytes:
    """Image bytes from a data URI (`data:image/png;base64,...`) or bare base64 text."""
    is_uri = text.startswith("data:")
    try:
        return base64.b64decode(text.split(",", 1)[1] if is_uri else text, validate=True)
    except (IndexError, binascii.Error, ValueError) as exc:
        raise BadInputError("malformed data URI" if is_uri else "not valid base64") from exc


def _is_personal_access_token(token: str) -> bool:
    parts = token.split(".")
    return len(parts) == 3 and all(parts) and token.startswith("ey")


class LabelStudioTokenAuth(httpx.Auth):
    """Legacy token as is; a personal access token through the JWT refresh endpoint."""

    requires_response_body = True

    def __init__(self, label_studio_url: str, token: str):
        self._refresh_url = f"{label_studio_url.rstrip('/')}/api/token/refresh"
        self._token = token
        self._access: str | None = None
        self.personal = _is_personal_access_token(token)

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if not self.personal:
            request.headers["Authorization"] = f"Token {self._token}"
            yield request
            return
        if self._access is None:
            yield from self._refresh()
        request.headers["Authorization"] = f"Bearer {self._access}"
        response = yield request
        if response.status_code == 401:  # access tokens live minutes: refresh once, retry
            yield from self._refresh()
            request.headers["Authorization"] = f"Bearer {self._access}"
            yield request

    def _refresh(self) -> Generator[httpx.Request, httpx.Response, None]:
        response = yield httpx.Request("POST", self._refresh_url, json={"refresh": self._token})
        if response.status_code != 200:
            raise FetchError(
                f"Label Studio refused the personal access token (HTTP {response.status_code} "
                "from /api/token/refresh): set a valid LABELLOOP_LABEL_STUDIO_API_KEY"
            )
        self._access = response.json()["access"]


class ImageFetcher:
    def __init__(
        self,
        label_studio_url: str,
        token: str | None,
        *,
        concurrency: int = 16,
        cache_bytes: int = 64 * 1024 * 1024,
        max_image_bytes: int = 32 * 1024 * 1024,
        timeout_s: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ):
        self.label_studio_url = label_studio_url.rstrip("/")
        self._token = token
        self._concurrency = concurrency
        self._timeout_s = timeout_s
        self.max_image_bytes = max_image_bytes
        self._cache: LRUCache[str, bytes] = LRUCache(maxsize=max(cache_bytes, 1), getsizeof=len)
        self._clients: tuple[httpx.AsyncClient, httpx.AsyncClient] | None = None
        self._gate: asyncio.Semaphore | None = None
        self._transport = transport  # tests: an in-process fake of Label Studio and the web

    def use_label_studio(self, url: str | None, token: str | None) -> None:
        """What `/setup` tells: the host Label Studio calls itself and the project's token.
        Settings win where they are set (an operator's choice is not overridden)."""
        changed = False
        if url and not self.label_studio_url:
            self.label_studio_url, changed = url.rstrip("/"), True
        if token and not self._token:
            self._token, changed = token, True
        if changed:
            self._clients = None  # rebuilt with the new credentials on next use

    def _http(self) -> tuple[httpx.AsyncClient, httpx.AsyncClient]:
        if self._clients is None:
            limits = httpx.Limits(max_connections=self._concurrency)
            auth = LabelStudioTokenAuth(self.label_studio_url, self._token) if self._token else None
            self._clients = (
                httpx.AsyncClient(auth=auth, timeout=self._timeout_s, limits=limits, follow_redirects=False,
                                  transport=self._transport),
                httpx.AsyncClient(timeout=self._timeout_s, limits=limits, follow_redirects=True,
                                  transport=self._transport),
            )
            self._gate = asyncio.Semaphore(self._concurrency)
        return self._clients

    async def fetch(self, url: str) -> bytes:
        if not url:
            raise FetchError("task has no image URL")
        if url.startswith("data:"):
            return decode_base64(url)
        if url.startswith(("http://", "https://")):
            absolute = url
        elif self.label_studio_url:
            absolute = f"{self.label_studio_url}/{url.lstrip('/')}"
        else:
            raise FetchError(f"{url} is relative and no Label Studio URL is known")
        if (cached := self._cache.get(absolute)) is not None:
            return cached
        label_studio, open_web = self._http()
        client = label_studio if absolute.startswith(self.label_studio_url + "/") else open_web
        assert self._gate is not None
        async with self._gate:
            try:
                response = await client.get(absolute)
            except httpx.HTTPError as exc:
                raise FetchError(f"cannot fetch {_redact(url)}: {type(exc).__name__}") from exc
        if response.status_code != 200:
            raise FetchError(f"cannot fetch {_redact(url)}: HTTP {response.status_code}")
        if len(response.content) > self.max_image_bytes:
            raise BadInputError(f"{_redact(url)} is larger than {self.max_image_bytes} bytes")
        self._cache[absolute] = response.content
        return response.content

    async def fetch_many(self, urls: Sequence[str]) -> list[bytes | FetchError | BadInputError]:
        """One entry per URL, in order: the bytes, or the error that stopped that one."""

        async def one(url: str) -> bytes | FetchError | BadInputError:
            try:
                return await self.fetch(url)
            except (FetchError, BadInputError) as exc:
                return exc

        return list(await asyncio.gather(*(one(u) for u in urls)))


def _redact(url: str) -> str:
    """Signed URLs (S3, GCS) carry credentials in the query string: never log those."""
    if "?" not in url or "/data/local-files/" in url:
        return url
    return url.split("?", 1)[0] + "?..."
