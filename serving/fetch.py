"""Fetching task images the way real Label Studio projects reference them.

- Label Studio local files (`/data/local-files/?d=<path>`): read straight from disk when the
  service shares Label Studio's document root (`files_root`, Label Studio's
  `LOCAL_FILES_DOCUMENT_ROOT`) and the file is there, confined to that root: a `d=` that leads
  out of it, by `..` or through a symlink, is refused and never read (`OutsideRootError`).
  A file that is not under the root (the root is not shared) is fetched over HTTP;
- other relative URLs (uploads `/data/upload/...`), and local files the service cannot read:
  fetched from Label Studio with the project's token, a legacy token (`Authorization: Token`)
  or a personal access token (a JWT refresh token, exchanged at `/api/token/refresh` for
  short-lived `Bearer` access tokens, refreshed again on 401);
- absolute http(s) URLs: fetched without Label Studio's credentials (unless they point at
  Label Studio itself: a token never leaves for another host);
- data URIs: decoded in place;
- cloud storage URIs (`s3://bucket/key`, `gs://`, `azure-blob://`): resolved by Label Studio
  through the project's storage at `/tasks/<id>/resolve/` (`storage_resolve_path`), which
  redirects to a presigned URL (fetched without Label Studio's credentials) or proxies the
  bytes: the service needs no cloud credentials of its own.

A task whose image cannot be had from where it is (unreachable, refused) is a `FetchError`,
whose message says which setting to fix; a task without an image URL, or bytes or text that
are not usable (a malformed data URI, too large, a path outside the root) a `BadInputError`.
`check_label_studio` is `/setup`'s proof that fetching from Label Studio works;
`none_usable` is `/predict`'s decision when no task of a request has an image.

Fetching is concurrent and bounded, and an LRU cache (bounded in bytes) keeps recent images:
Label Studio asks again for the same tasks (retrieve predictions, `/next/`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import posixpath
import time
from collections.abc import Generator, Sequence
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
from cachetools import LRUCache

from kernel.errors import BadInputError, FetchError, LabelloopError

__all__ = [
    "ImageFetcher", "LabelStudioTokenAuth", "OutsideRootError", "decode_base64", "local_file", "none_usable",
    "redact_url", "storage_resolve_path",
]

#: Where Label Studio serves local files; `d=` is the path under its document root.
LOCAL_FILES_PATH = "/data/local-files/"
#: One authenticated call that exists on every Label Studio (1.23 open source included).
WHOAMI_PATH = "/api/current-user/whoami"
#: Label Studio calls `/setup` before every retrieve and `/next/`: a successful check of one
#: (URL, token) is trusted this long; a failed one is never cached (a fix shows at once).
CHECK_TTL_S = 60.0
#: Label Studio gives `/setup` 3 s: the check must answer well within that.
CHECK_TIMEOUT_S = 2.0

#: URI schemes of Label Studio's cloud storages, which it resolves per task.
STORAGE_SCHEMES = ("s3://", "gs://", "azure-blob://", "azure-spi://")
#: Presigned URLs may redirect once more (a regional endpoint); more is a loop.
MAX_REDIRECTS = 3

_URL_HINT = "set LABELLOOP_LABEL_STUDIO_URL to the address the service reaches Label Studio at"
_TOKEN_HINT = ("set LABELLOOP_LABEL_STUDIO_API_KEY to a personal access token (or a legacy token, with "
               "legacy tokens enabled in Label Studio)")


class OutsideRootError(BadInputError):
    """A local-files `d=` path that leads outside Label Studio's document root, by `..` or
    through a symlink. Bad input, not a fetch failure: the task's data is what is wrong, and
    no URL or token makes it right; it is refused without reading anything."""


def decode_base64(text: str) -> bytes:
    """Image bytes from a data URI (`data:image/png;base64,...`) or bare base64 text."""
    is_uri = text.startswith("data:")
    try:
        return base64.b64decode(text.split(",", 1)[1] if is_uri else text, validate=True)
    except (IndexError, binascii.Error, ValueError) as exc:
        raise BadInputError("malformed data URI" if is_uri else "not valid base64") from exc


def local_file(root: Path, d: str) -> Path | None:
    """The file `/data/local-files/?d=<d>` names under the (resolved) document `root`, with
    every symlink resolved; None when there is no such file (the root is not shared: fetch it
    over HTTP). `d` is normalised as Label Studio does (`normpath`, leading `/` dropped);
    `OutsideRootError` when it leads outside `root`, lexically or through a symlink."""
    relative = posixpath.normpath(d).lstrip("/")
    if relative == ".." or relative.startswith("../"):
        raise OutsideRootError(f"local file {d!r} leads outside Label Studio's document root: refused")
    try:
        resolved = (root / relative).resolve()
    except (OSError, RuntimeError, ValueError) as exc:  # a symlink loop, a NUL byte
        raise OutsideRootError(f"local file {d!r} cannot be resolved under the document root: refused") from exc
    if not resolved.is_relative_to(root):
        raise OutsideRootError(
            f"local file {d!r} is a symlink to a place outside Label Studio's document root {root}: refused "
            "(copy the file under the root)"
        )
    return resolved if resolved.is_file() else None


def none_usable(problems: Sequence[LabelloopError | None]) -> LabelloopError | None:
    """The error of a `/predict` none of whose tasks has a usable image (`problems`: one per
    task, None for a usable one), else None. Label Studio stores an empty answer as an empty
    prediction and never asks for that task again, so an all-empty answer would hide a cause
    the operator can fix. A fetch failure wins (502, naming the unreachable host or the refused
    token); a request whose images are all unusable is the request's 400."""
    if not problems or any(p is None for p in problems):
        return None
    fetch = [p for p in problems if isinstance(p, FetchError)]
    first = fetch[0] if fetch else problems[0]
    assert first is not None
    n = len(problems)
    if fetch:
        return FetchError(f"could not fetch any task image of this request ({len(fetch)} of {n} tasks): {first}")
    return BadInputError(f"no task of this request has a usable image ({n} of {n}): {first}")


def storage_resolve_path(url: str, task_id: int | None) -> str:
    """For a cloud storage URI, the path at which Label Studio resolves it for this task
    (the way its own frontend fetches it); any other URL as is."""
    if task_id is None or not url.startswith(STORAGE_SCHEMES):
        return url
    return f"/tasks/{int(task_id)}/resolve/?fileuri={base64.urlsafe_b64encode(url.encode()).decode()}"


def _is_personal_access_token(token: str) -> bool:
    parts = token.split(".")
    return len(parts) == 3 and all(parts) and token.startswith("ey")


class LabelStudioTokenAuth(httpx.Auth):
    """Legacy token as is; a personal access token through the JWT refresh endpoint."""

    requires_response_body = True

    def __init__(self, label_studio_url: str, token: str):
        self._refresh_url = f"{label_studio_url.rstrip('/')}/api/token/refresh"
        self._token = token
        self.key = (label_studio_url, token)
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
        files_root: Path | None = None,
        concurrency: int = 16,
        cache_bytes: int = 64 * 1024 * 1024,
        max_image_bytes: int = 32 * 1024 * 1024,
        timeout_s: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ):
        self.label_studio_url = label_studio_url.rstrip("/")
        self._token = token
        self.files_root = files_root.resolve() if files_root is not None else None
        self._concurrency = concurrency
        self._timeout_s = timeout_s
        self.max_image_bytes = max_image_bytes
        self._cache: LRUCache[str, bytes] = LRUCache(maxsize=max(cache_bytes, 1), getsizeof=len)
        self._configured = (bool(self.label_studio_url), bool(token))  # the operator's settings
        self._auth: LabelStudioTokenAuth | None = None
        self._clients: tuple[httpx.AsyncClient, httpx.AsyncClient] | None = None
        self._gate: asyncio.Semaphore | None = None
        self._transport = transport  # tests: an in-process fake of Label Studio and the web
        self._checked: dict[tuple[str, str | None], float] = {}  # (URL, token) -> when it last worked

    def use_label_studio(self, url: str | None, token: str | None) -> None:
        """What `/setup` tells: the host Label Studio calls itself and the project's token.
        Settings win where they are set (an operator's choice is not overridden); otherwise
        the latest `/setup` does (a token reset in Label Studio is picked up)."""
        if url and not self._configured[0]:
            self.label_studio_url = url.rstrip("/")
        if token and not self._configured[1]:
            self._token = token

    def _label_studio_auth(self) -> LabelStudioTokenAuth | None:
        """The credentials for Label Studio's URL, kept while URL and token stay the same (a
        personal access token's short-lived access token with them)."""
        if not self._token:
            return None
        if self._auth is None or self._auth.key != (self.label_studio_url, self._token):
            self._auth = LabelStudioTokenAuth(self.label_studio_url, self._token)
        return self._auth

    def _http(self) -> tuple[httpx.AsyncClient, httpx.AsyncClient]:
        if self._clients is None:
            limits = httpx.Limits(max_connections=self._concurrency)
            self._clients = (  # Label Studio's credentials go per request (`_label_studio_auth`)
                httpx.AsyncClient(timeout=self._timeout_s, limits=limits, follow_redirects=False,
                                  transport=self._transport),
                httpx.AsyncClient(timeout=self._timeout_s, limits=limits, follow_redirects=True,
                                  transport=self._transport),
            )
            self._gate = asyncio.Semaphore(self._concurrency)
        return self._clients

    async def check_label_studio(self, told: str = "") -> None:
        """One authenticated call to Label Studio with the URL and token fetching uses, or a
        `FetchError` that says what to set. `told`: the URL Label Studio gave `/setup` (named
        in the error when the service uses another). A success is trusted `CHECK_TTL_S`."""
        url = self.label_studio_url
        elsewhere = f" (Label Studio calls itself {told})" if told and told.rstrip("/") != url else ""
        if not url:
            raise FetchError(f"no Label Studio URL is known: {_URL_HINT}")
        key = (url, self._token)
        if time.monotonic() - self._checked.get(key, float("-inf")) < CHECK_TTL_S:
            return
        if not self._token:
            raise FetchError(f"no Label Studio token is known to fetch task images from {url}: {_TOKEN_HINT}")
        label_studio, _ = self._http()
        try:
            response = await label_studio.get(f"{url}{WHOAMI_PATH}", timeout=CHECK_TIMEOUT_S,
                                              auth=self._label_studio_auth())
        except httpx.HTTPError as exc:
            raise FetchError(f"cannot reach Label Studio at {url}{elsewhere}: {type(exc).__name__}; "
                             f"{_URL_HINT}") from exc
        if response.status_code in (401, 403):
            raise FetchError(f"Label Studio at {url} refused the token (HTTP {response.status_code}"
                             f"{_detail(response)}): {_TOKEN_HINT}")
        if response.status_code != 200:
            raise FetchError(f"Label Studio at {url}{elsewhere} answered HTTP {response.status_code} to "
                             f"{WHOAMI_PATH}: is it Label Studio? {_URL_HINT}")
        self._checked[key] = time.monotonic()

    async def fetch(self, url: str) -> bytes:
        if not url:
            raise BadInputError("task has no image URL (under the data key the labeling config names)")
        if url.startswith("data:"):
            return decode_base64(url)
        if (path := self._local_file(url)) is not None:
            return await asyncio.to_thread(self._read_local, path, url)
        if url.startswith(("http://", "https://")):
            absolute = url
        elif self.label_studio_url:
            absolute = f"{self.label_studio_url}/{url.lstrip('/')}"
        else:
            raise FetchError(f"{url} is relative and no Label Studio URL is known: {_URL_HINT}")
        if (cached := self._cache.get(absolute)) is not None:
            return cached
        label_studio, open_web = self._http()
        to_label_studio = absolute.startswith(self.label_studio_url + "/")
        assert self._gate is not None
        async with self._gate:
            try:
                if to_label_studio:
                    response = await label_studio.get(absolute, auth=self._label_studio_auth())
                    for _ in range(MAX_REDIRECTS):  # a storage URI resolved to a presigned URL
                        if not (response.is_redirect and (location := response.headers.get("location"))):
                            break
                        target = str(response.url.join(location))
                        if target.startswith(self.label_studio_url + "/"):
                            response = await label_studio.get(target, auth=self._label_studio_auth())
                        else:  # the credentials stay with Label Studio: the signature is in the URL
                            response = await open_web.get(target)
                else:
                    response = await open_web.get(absolute)
            except httpx.HTTPError as exc:
                hint = f" at {self.label_studio_url}; {_URL_HINT}" if to_label_studio else ""
                raise FetchError(f"cannot fetch {redact_url(url)}: {type(exc).__name__}{hint}") from exc
        if response.status_code != 200:
            # The host that refused: a presigned URL's 403 (a missing object, an expired
            # signature) is no fault of Label Studio's token.
            refused = str(response.url).startswith(self.label_studio_url + "/") and response.status_code in (401, 403)
            hint = f" from Label Studio at {self.label_studio_url}: {_TOKEN_HINT}" if refused else ""
            raise FetchError(f"cannot fetch {redact_url(url)}: HTTP {response.status_code}{hint}")
        if len(response.content) > self.max_image_bytes:
            raise BadInputError(f"{redact_url(url)} is larger than {self.max_image_bytes} bytes")
        self._cache[absolute] = response.content
        return response.content

    def _local_file(self, url: str) -> Path | None:
        """The file a Label Studio local-files URL names under the shared root, if it is there."""
        if self.files_root is None:
            return None
        if url.startswith(("http://", "https://")):
            if not (self.label_studio_url and url.startswith(self.label_studio_url + "/")):
                return None
            url = url[len(self.label_studio_url):]
        parts = urlsplit("/" + url.lstrip("/"))
        if parts.path.rstrip("/") != LOCAL_FILES_PATH.rstrip("/"):
            return None
        d = parse_qs(parts.query, keep_blank_values=True).get("d")
        return local_file(self.files_root, d[-1]) if d and d[-1] else None

    def _read_local(self, path: Path, url: str) -> bytes:
        try:
            size = path.stat().st_size
            if size > self.max_image_bytes:
                raise BadInputError(f"{url} is larger than {self.max_image_bytes} bytes")
            return path.read_bytes()
        except OSError as exc:
            raise FetchError(f"cannot read {url} under Label Studio's document root: {type(exc).__name__}") from exc

    async def fetch_many(self, urls: Sequence[str]) -> list[bytes | FetchError | BadInputError]:
        """One entry per URL, in order: the bytes, or the error that stopped that one."""

        async def one(url: str) -> bytes | FetchError | BadInputError:
            try:
                return await self.fetch(url)
            except (FetchError, BadInputError) as exc:
                return exc

        return list(await asyncio.gather(*(one(u) for u in urls)))


def _detail(response: httpx.Response) -> str:
    """Label Studio's own reason for a refusal (`{"detail": ...}`), shortened, if it gave one."""
    try:
        body = response.json()
    except ValueError:
        return ""
    detail = body.get("detail") if isinstance(body, dict) else None
    return f": {str(detail)[:200]}" if detail else ""


def redact_url(url: str) -> str:
    """What a log, an error or a report may say of an image URL: signed URLs (S3, GCS) carry
    credentials in the query string, a data URI its whole image; a local file's path stays."""
    if url.startswith("data:"):
        return url.split(",", 1)[0] + ",..."
    if "?" not in url or "/data/local-files/" in url:
        return url
    return url.split("?", 1)[0] + "?..."
