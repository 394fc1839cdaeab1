"""Task-image fetching against an in-process HTTP fake (httpx.MockTransport): legacy token,
personal access token with refresh, no credentials to other hosts, the cache, failures; local
files read from a real shared root (real symlinks) and confined to it; /setup's check of Label
Studio and /predict's decision when no task has an image."""

from __future__ import annotations

import asyncio
import base64
import json

import httpx
import pytest

from kernel.errors import BadInputError, FetchError
from serving.fetch import ImageFetcher, OutsideRootError, local_file, none_usable, storage_resolve_path

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
    # Told apart by type: no image to be had from where it is (reachability, credentials) vs
    # the task's own data (no URL, a malformed data URI).
    assert [type(o) for o in (out[1], out[2], out[4])] == [FetchError, BadInputError, BadInputError]
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


# --- Label Studio local files read from the shared document root ---------------------------
@pytest.fixture
def shared_root(tmp_path):
    """A document root with images/a.png, images/link-in.png -> a.png (inside), and links
    that lead out of it: images/link-out.png -> a file beside the root, escape/ -> a folder."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "images").mkdir(parents=True)
    outside.mkdir()
    (root / "images" / "a.png").write_bytes(b"inside")
    (outside / "secret.png").write_bytes(b"outside")
    (root / "images" / "link-in.png").symlink_to(root / "images" / "a.png")
    (root / "images" / "link-out.png").symlink_to(outside / "secret.png")
    (root / "escape").symlink_to(outside, target_is_directory=True)
    return root


def local_fetcher(root, handler=lambda r: httpx.Response(200, content=b"over http")):
    fetcher, seen = fetcher_with(handler, "legacy-token")
    reads: list = []
    read_local = fetcher._read_local
    fetcher._read_local = lambda path, url: reads.append(path) or read_local(path, url)
    fetcher.files_root = root.resolve()
    return fetcher, seen, reads


def test_local_files_under_the_shared_root_are_read_from_disk(shared_root):
    fetcher, seen, reads = local_fetcher(shared_root)
    assert run(fetcher.fetch("/data/local-files/?d=images/a.png")) == b"inside"
    assert run(fetcher.fetch("data/local-files/?d=images%2Fa.png")) == b"inside"  # encoded, no leading /
    assert run(fetcher.fetch(f"{LS}/data/local-files/?d=images/link-in.png")) == b"inside"  # a link inside
    assert run(fetcher.fetch("/data/local-files/?d=images/x/../a.png")) == b"inside"  # `..` that stays in
    assert run(fetcher.fetch("/data/local-files/?d=/images/a.png")) == b"inside"  # as Label Studio reads it
    assert seen == [] and len(reads) == 5


def test_a_file_not_under_the_root_is_fetched_over_http(shared_root):
    """The root is not shared (Label Studio runs elsewhere): Label Studio serves the file."""
    fetcher, seen, reads = local_fetcher(shared_root)
    assert run(fetcher.fetch("/data/local-files/?d=images/elsewhere.png")) == b"over http"
    assert seen[0].url == httpx.URL(f"{LS}/data/local-files/?d=images/elsewhere.png")
    assert seen[0].headers["authorization"] == "Token legacy-token" and reads == []
    no_root, seen, _ = local_fetcher(shared_root)
    no_root.files_root = None
    assert run(no_root.fetch("/data/local-files/?d=images/a.png")) == b"over http" and len(seen) == 1


@pytest.mark.parametrize("d", [
    "../outside/secret.png",           # `..` out of the root
    "images/../../outside/secret.png",
    "..%2Foutside%2Fsecret.png",        # encoded
    "images/link-out.png",              # a symlink to a file outside
    "escape/secret.png",                # through a symlinked folder
])
def test_a_path_that_leads_out_of_the_root_is_refused_and_never_read(shared_root, d):
    fetcher, seen, reads = local_fetcher(shared_root)
    with pytest.raises(OutsideRootError, match="outside Label Studio's document root"):
        run(fetcher.fetch(f"/data/local-files/?d={d}"))
    assert reads == [] and seen == []  # neither from disk nor through Label Studio
    out = run(fetcher.fetch_many([f"/data/local-files/?d={d}"]))
    assert isinstance(out[0], BadInputError)  # the task's data is wrong: a 400 kind, not a 502 kind


def test_local_file_resolution_is_confined_to_the_root(shared_root):
    root = shared_root.resolve()
    assert local_file(root, "images/a.png") == root / "images" / "a.png"
    assert local_file(root, "images/link-in.png") == root / "images" / "a.png"
    assert local_file(root, "images/missing.png") is None and local_file(root, "images") is None
    for d in ("..", "../x", "a/../../x", "images/link-out.png", "escape", "escape/secret.png"):
        with pytest.raises(OutsideRootError):
            local_file(root, d)


# --- /setup's check and /predict's all-failed decision ----------------------------------
def test_setup_check_proves_the_token_and_caches_a_success():
    fetcher, seen = fetcher_with(lambda r: httpx.Response(200, json={"id": 1}), "legacy-token")
    run(fetcher.check_label_studio(told=LS))
    run(fetcher.check_label_studio(told=LS))
    assert [r.url.path for r in seen] == ["/api/current-user/whoami"]  # one call, then the cache
    assert seen[0].headers["authorization"] == "Token legacy-token"


def test_setup_check_names_what_to_set():
    refused, _ = fetcher_with(lambda r: httpx.Response(401, json={"detail": "legacy token authentication has "
                                                                             "been disabled"}), "legacy-token")
    with pytest.raises(FetchError, match="refused the token .HTTP 401: legacy token .*LABELLOOP_LABEL_STUDIO_API_KEY"):
        run(refused.check_label_studio())
    with pytest.raises(FetchError):  # a failure is not cached: asked again, refused again
        run(refused.check_label_studio())

    def unreachable(request):
        raise httpx.ConnectError("connection refused", request=request)

    down, _ = fetcher_with(unreachable, "legacy-token")
    with pytest.raises(FetchError, match=r"cannot reach Label Studio at http://ls.test \(Label Studio calls itself "
                                         r"http://other:8080\): ConnectError.*LABELLOOP_LABEL_STUDIO_URL"):
        run(down.check_label_studio(told="http://other:8080"))
    tokenless, seen = fetcher_with(lambda r: httpx.Response(200), None)
    with pytest.raises(FetchError, match="no Label Studio token"):
        run(tokenless.check_label_studio())
    assert seen == []
    not_ls, _ = fetcher_with(lambda r: httpx.Response(404), "legacy-token")
    with pytest.raises(FetchError, match="HTTP 404 to /api/current-user/whoami"):
        run(not_ls.check_label_studio())


def test_fetch_errors_from_label_studio_name_the_setting():
    refused, _ = fetcher_with(lambda r: httpx.Response(401), "legacy-token")
    with pytest.raises(FetchError, match="HTTP 401 from Label Studio at http://ls.test: set LABELLOOP_LABEL_STUDIO_API_KEY"):
        run(refused.fetch("/data/local-files/?d=images/a.png"))


def test_a_request_with_no_usable_image_fails_naming_the_first_cause():
    fetch, bad = FetchError("cannot fetch /a.png: HTTP 401"), BadInputError("not an image")
    assert none_usable([None, fetch, bad]) is None  # some usable: the others get empty results
    assert none_usable([None]) is None and none_usable([]) is None
    failed = none_usable([bad, fetch, fetch])
    assert isinstance(failed, FetchError) and failed.http_status == 502
    assert str(failed) == ("could not fetch any task image of this request (2 of 3 tasks): "
                           "cannot fetch /a.png: HTTP 401")
    unusable = none_usable([bad, OutsideRootError("local file '../x' leads outside")])
    assert type(unusable) is BadInputError and unusable.http_status == 400 and "not an image" in str(unusable)


def test_setup_credentials_serve_where_settings_are_unset_and_the_latest_wins():
    fetcher, seen = fetcher_with(lambda r: httpx.Response(200, content=b"png"), None)
    fetcher.label_studio_url, fetcher._configured = "", (False, False)  # nothing configured
    fetcher.use_label_studio("http://ls-a.test/", "token-1")
    fetcher.use_label_studio("http://ls-b.test", "token-2")  # e.g. the token was reset in Label Studio
    run(fetcher.fetch("/data/upload/1/a.png"))
    assert seen[-1].url == httpx.URL("http://ls-b.test/data/upload/1/a.png")
    assert seen[-1].headers["authorization"] == "Token token-2"
    configured, seen = fetcher_with(lambda r: httpx.Response(200, content=b"png"), "operator-token")
    configured.use_label_studio("http://elsewhere.test", "project-token")  # settings win
    run(configured.fetch("/data/upload/1/a.png"))
    assert seen[-1].url.host == "ls.test" and seen[-1].headers["authorization"] == "Token operator-token"


def test_storage_uris_are_resolved_by_label_studio_and_the_presigned_url_gets_no_token():
    """An s3:// task image: Label Studio's /tasks/<id>/resolve/ answers 303 to a presigned
    URL on the S3 host, fetched without Label Studio's token (the signature is the grant)."""
    uri = "s3://photos/batch-1/cat 1.png"
    path = storage_resolve_path(uri, 42)
    assert path.startswith("/tasks/42/resolve/?fileuri=")
    assert base64.urlsafe_b64decode(path.split("fileuri=")[1]).decode() == uri
    assert storage_resolve_path("/data/upload/1/a.png", 42) == "/data/upload/1/a.png"  # other URLs as is
    assert storage_resolve_path(uri, None) == uri

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "ls.test":
            return httpx.Response(303, headers={"location": "http://s3.test/photos/batch-1/cat%201.png?X-Amz-Signature=s"})
        return httpx.Response(200, content=b"bytes from s3")

    fetcher, seen = fetcher_with(handler, "legacy-token")
    assert run(fetcher.fetch(path)) == b"bytes from s3"
    assert seen[0].headers["authorization"] == "Token legacy-token"
    assert seen[1].url.host == "s3.test" and "authorization" not in seen[1].headers


def test_a_storage_redirect_loop_is_a_fetch_error():
    fetcher, _ = fetcher_with(lambda r: httpx.Response(302, headers={"location": f"{LS}/again"}), "legacy-token")
    with pytest.raises(FetchError, match="HTTP 302"):
        run(fetcher.fetch(storage_resolve_path("s3://b/k.png", 1)))
