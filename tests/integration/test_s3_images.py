"""Images kept in an S3 bucket (issue 14): a real S3 API on loopback (moto's server), real
Label Studio with an S3 source storage on that endpoint, real git + DVC with the DVC remote
on the same S3 server."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from PIL import Image

from kernel.errors import ConfigError
from kernel.settings import Settings
from labeling import SimulatedAnnotator
from loop.core import Loop
from loop.ingest import FoundImage, SkippedFile
from loop.s3images import s3_credentials, scan_s3
from serving.fetch import ImageFetcher, storage_resolve_path
from tests.helpers.colour_images import PATTERNS, write_colour_images
from tests.helpers.s3 import S3Server


def _png(colour: tuple[int, int, int], size: int = 16) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(out, format="PNG")
    return out.getvalue()


def _upload_photos(s3, bucket: str, prefix: str, folder: Path, n: int, seed: int) -> dict[str, bytes]:
    """`n` colour photos under s3://bucket/prefix; returns {object URL: bytes}."""
    truth = write_colour_images(folder, n, seed=seed)
    objects = {}
    for path in truth:
        key = f"{prefix}{Path(path).relative_to(folder).as_posix()}"
        data = Path(path).read_bytes()
        s3.put_object(Bucket=bucket, Key=key, Body=data)
        objects[f"s3://{bucket}/{key}"] = data
    return objects


def test_a_prefix_is_scanned_like_a_folder(s3_env):
    """Class folders label, bad objects are listed with their reason, duplicates counted."""
    s3 = s3_env.client()
    s3.create_bucket(Bucket="scan-photos")
    put = lambda key, body: s3.put_object(Bucket="scan-photos", Key=f"in/{key}", Body=body)  # noqa: E731
    put("cat/a.png", _png((200, 10, 10)))
    put("dog/b.png", _png((10, 200, 10)))
    put("c.png", _png((10, 10, 200)))
    put("copy-of-c.png", _png((10, 10, 200)))
    put("notes.txt", b"not an image")
    put("broken.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    put("empty.png", b"")
    s3.put_object(Bucket="scan-photos", Key="elsewhere/x.png", Body=_png((1, 2, 3)))  # outside the prefix

    found = list(scan_s3("s3://scan-photos/in/", classes=["cat", "dog"], labels_from_folders=True,
                         endpoint_url=s3_env.url))
    images = {f.origin: f for f in found if isinstance(f, FoundImage)}
    skipped = {f.source: f for f in found if isinstance(f, SkippedFile)}
    assert sorted(images) == ["s3://scan-photos/in/c.png", "s3://scan-photos/in/cat/a.png",
                              "s3://scan-photos/in/dog/b.png"]
    assert images["s3://scan-photos/in/cat/a.png"].label == "cat"
    assert images["s3://scan-photos/in/c.png"].label is None
    assert images["s3://scan-photos/in/c.png"].sha256 == hashlib.sha256(_png((10, 10, 200))).hexdigest()
    assert skipped["s3://scan-photos/in/copy-of-c.png"].duplicate
    assert "not an image file" in skipped["s3://scan-photos/in/notes.txt"].reason
    assert "zero-byte" in skipped["s3://scan-photos/in/empty.png"].reason
    assert not skipped["s3://scan-photos/in/broken.png"].duplicate
    assert all(not Path(f.source).exists() for f in images.values())  # the downloads are gone


def test_bad_buckets_and_credentials_say_what_to_fix(s3_env, tmp_path):
    s3 = s3_env.client()
    s3.create_bucket(Bucket="scan-empty")
    with pytest.raises(ConfigError, match="no objects under s3://scan-empty/nothing/"):
        scan_s3("s3://scan-empty/nothing/", classes=["a", "b"], endpoint_url=s3_env.url)
    with pytest.raises(ConfigError, match="bucket 'no-such-bucket' does not exist"):
        scan_s3("s3://no-such-bucket/x/", classes=["a", "b"], endpoint_url=s3_env.url)
    with pytest.raises(ConfigError, match="not an S3 URL"):
        scan_s3("photos/x", classes=["a", "b"])
    guarded = S3Server(tmp_path / "moto-auth.log", enforce_auth=True).start()
    try:
        with pytest.raises(ConfigError, match="check the credentials") as refused:
            scan_s3("s3://any-bucket/x/", classes=["a", "b"], endpoint_url=guarded.url)
        assert os.environ["AWS_SECRET_ACCESS_KEY"] not in str(refused.value)  # never shown
    finally:
        guarded.stop()


@pytest.mark.e2e
def test_a_bucket_becomes_the_pool_shown_by_label_studio_and_pinned_by_dvc(s3_env, ls_settings, tmp_path):
    s3 = s3_env.client()
    s3.create_bucket(Bucket="photos")
    s3.create_bucket(Bucket="labelloop-dvc")
    first = _upload_photos(s3, "photos", "batch-1/", tmp_path / "first", 12, seed=1)
    settings = ls_settings("s3", dvc_remote="s3://labelloop-dvc/remote", s3_endpoint_url=s3_env.url)
    loop = Loop(settings)

    report = loop.init_from_images("s3://photos/batch-1/", list(PATTERNS))
    assert report.added == 12 and report.commit
    pool = loop.workspace.pool_index()
    assert sorted(row.source for row in pool.values()) == sorted(first)
    for name, row in pool.items():  # the commit pins the bytes it was made from
        assert loop.workspace.image_path(name).read_bytes() == first[row.source]
    assert s3.list_objects_v2(Bucket="labelloop-dvc", Prefix="remote/")["KeyCount"] > 12  # pushed to S3

    project = loop.connect()
    gateway = loop.gateway
    tasks = {t.id: t for t in gateway.tasks_by_id(loop.state.tasks())}
    # The API shows each task's s3:// URI resolved through the project's storage.
    shown = {tid: base64.urlsafe_b64decode(parse_qs(urlsplit(t.image_url).query)["fileuri"][0]).decode()
             for tid, t in tasks.items()}
    assert all(t.image_url.startswith(f"{settings.label_studio_url}/tasks/{tid}/resolve/") for tid, t in tasks.items())
    assert sorted(shown.values()) == sorted(first)
    storages = gateway._client.import_storage.s3.list(project=project)
    assert [s.bucket for s in storages] == ["photos"]

    # The service fetches a task's image the way Label Studio serves it: resolved through the
    # project's S3 storage to a presigned URL; the service holds no S3 credentials of its own.
    # /predict receives the raw s3:// URI (Label Studio 1.23's backend serializer).
    task_id = next(iter(tasks))
    fetcher = ImageFetcher(settings.label_studio_url, settings.label_studio_token())
    fetched = asyncio.run(fetcher.fetch(storage_resolve_path(shown[task_id], task_id)))
    assert fetched == first[shown[task_id]]
    # Without presigning (S3 the browsers cannot reach), Label Studio proxies the bytes itself.
    proxied = gateway.ensure_project(f"{settings.project_title}-proxied", list(PATTERNS))
    gateway.ensure_s3_storage(proxied, "photos", s3_credentials(s3_env.url), presign=False)
    (proxied_task,) = gateway.import_images(proxied, ["one"], {"one": shown[task_id]})
    fetcher = ImageFetcher(settings.label_studio_url, settings.label_studio_token())  # a new event loop
    assert asyncio.run(fetcher.fetch(storage_resolve_path(shown[task_id], proxied_task))) == fetched

    annotator = SimulatedAnnotator(gateway)
    truth = {}
    for task_id, task in list(tasks.items())[:5]:
        label = PATTERNS[task_id % 3]
        annotator.annotate(task_id, label)
        truth[task.image_name] = label
    result = loop.collect()
    assert result.upserts == 5
    assert {e.image: e.label for e in loop.workspace.events() if e.annotator != "import"} == truth

    # Later: a new object arrives, and one already imported is overwritten with other content.
    changed_url = sorted(first)[0]
    changed_key = changed_url.removeprefix("s3://photos/")
    s3.put_object(Bucket="photos", Key=changed_key, Body=_png((5, 250, 5)))
    second = _upload_photos(s3, "photos", "batch-2/", tmp_path / "second", 3, seed=2)
    added = loop.add("s3://photos/")
    assert added.added == 3 and added.already_in_pool == 11
    assert [s.source for s in added.skipped] == [changed_url]
    assert "changed since it was imported" in added.skipped[0].reason
    assert added.tasks_imported == 3
    pool = loop.workspace.pool_index()
    pinned = next(name for name, row in pool.items() if row.source == changed_url)
    assert loop.workspace.image_path(pinned).read_bytes() == first[changed_url]  # the pinned content wins
    assert {row.source for row in pool.values()} == set(first) | set(second)

    # Reproducible from the S3 remote alone: a fresh clone pulls the exact bytes.
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(loop.workspace.root), str(clone)], check=True)
    dvc = Path(sys.executable).with_name("dvc")
    outputs = sorted(str(p.relative_to(clone)) for p in (clone / "data" / "images").glob("*.dvc"))
    assert len(outputs) == 2  # init and add-000001: one DVC output per import batch
    pulled = subprocess.run([str(dvc), "pull", *outputs], cwd=clone, env=os.environ.copy(), capture_output=True, text=True)
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    for name, row in pool.items():
        relpath = loop.workspace.image_path(name).relative_to(loop.workspace.root)
        data = (clone / relpath).read_bytes()
        assert hashlib.sha256(data).hexdigest() == row.sha256


def test_a_watched_prefix_adds_only_new_objects(s3_env, tmp_path):
    """The scheduler's watch job on an s3:// prefix: one data commit per sync with news, and
    objects seen before with the same ETag are not downloaded again."""
    s3 = s3_env.client()
    s3.create_bucket(Bucket="watched")
    _upload_photos(s3, "watched", "in/", tmp_path / "first", 4, seed=3)
    settings = Settings.load(home=tmp_path / "home", workspace=tmp_path / "ws", label_studio_files_root=tmp_path,
                             watch_folder="s3://watched/in/", s3_endpoint_url=s3_env.url)
    loop = Loop(settings)
    assert loop.init_from_images("s3://watched/in/", list(PATTERNS)).added == 4
    first = loop.sync_watched_folder()  # the first sync after a start reads everything once
    assert first.added == 0 and first.already_in_pool == 4 and first.commit is None
    later = _upload_photos(s3, "watched", "in/later/", tmp_path / "later", 2, seed=4)
    second = loop.sync_watched_folder()
    assert second.added == 2 and second.already_in_pool == 0 and second.commit  # the 4 were not read again
    assert {row.source for row in loop.workspace.pool_index().values()} >= set(later)
    assert loop.sync_watched_folder().added == 0
    s3.delete_object(Bucket="watched", Key=_keys(later)[0])
    assert loop.sync_watched_folder().commit is None  # a deleted object: the pinned copy stays


def _keys(objects: dict[str, bytes]) -> list[str]:
    return sorted(url.split("/", 3)[3] for url in objects)
