"""Fetching task images the way a real Label Studio project references them."""

from __future__ import annotations

import base64
import binascii
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Sequence

import httpx

from loop.errors import BadInputError

__all__ = ["ImageFetcher"]

MAX_IMAGE_BYTES = 20 * 1024 * 1024


class ImageFetcher:
    """Relative Label Studio URLs (local files, uploads) with the project's token,
    absolute http(s) URLs, and data URIs. Concurrent and bounded."""

    def __init__(self, label_studio_url: str, token: str | None, *, max_workers: int = 8, timeout_s: float = 10.0):
        self.label_studio_url = label_studio_url.rstrip("/")
        headers = {"Authorization": f"Token {token}"} if token else {}
        self._client = httpx.Client(headers=headers, timeout=timeout_s, follow_redirects=True)
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="fetch")

    def fetch(self, url: str) -> bytes:
        if not url:
            raise BadInputError("task has no image URL")
        if url.startswith("data:"):
            try:
                return base64.b64decode(url.split(",", 1)[1], validate=True)
            except (IndexError, binascii.Error) as exc:
                raise BadInputError("malformed data URI") from exc
        absolute = url if url.startswith(("http://", "https://")) else f"{self.label_studio_url}/{url.lstrip('/')}"
        try:
            response = self._client.get(absolute)
        except httpx.HTTPError as exc:
            raise BadInputError(f"cannot fetch {url}: {exc}") from exc
        if response.status_code != 200:
            raise BadInputError(f"cannot fetch {url}: HTTP {response.status_code}")
        if len(response.content) > MAX_IMAGE_BYTES:
            raise BadInputError(f"{url} is larger than {MAX_IMAGE_BYTES} bytes")
        return response.content

    def fetch_many(self, urls: Sequence[str]) -> list[bytes | BadInputError]:
        """One entry per URL, in order: the bytes, or the error that stopped that one."""
        def one(url: str) -> bytes | BadInputError:
            try:
                return self.fetch(url)
            except BadInputError as exc:
                return exc
        return list(self._pool.map(one, urls))

    def close(self) -> None:
        self._pool.shutdown(wait=False)
        self._client.close()
