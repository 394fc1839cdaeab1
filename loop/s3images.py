"""Images kept in an S3 bucket (or any S3-compatible store) for `labelloop init --images
s3://bucket/prefix`, `labelloop add s3://...` and a watched prefix.

Every object under the prefix is downloaded once into a temporary file, examined as a local
file is (`DownloadExaminer`: hashed, deduplicated, decoded in full) and handed to the import,
which copies it into the DVC-tracked images under its content name. The data commit pins
those bytes: training reads them back from DVC, never from the bucket, so a run can be
reproduced after the object changed or was deleted. The pool shard records where each
image came from (`s3://bucket/key`); its Label Studio task shows that URI through the
project's S3 source storage (presigned URLs).

Credentials and the endpoint come from boto's usual places (environment, `~/.aws`, an
instance role; `AWS_ENDPOINT_URL` for an S3-compatible server): labelloop never asks for
them and never logs them. Errors are translated here once, into `ConfigError`s that say
what to fix.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from kernel.errors import ConfigError
from labeling import S3StorageCredentials
from loop.ingest import IMAGE_SUFFIXES, DownloadExaminer, FoundImage, SkippedFile

__all__ = ["S3Location", "is_s3_url", "s3_credentials", "scan_s3"]

log = logging.getLogger(__name__)

SCHEME = "s3://"


def is_s3_url(value: object) -> bool:
    return isinstance(value, str) and value.startswith(SCHEME)


@dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str  # "" or ending in "/" unless it names one object

    @classmethod
    def parse(cls, url: str) -> "S3Location":
        if not is_s3_url(url):
            raise ConfigError(f"{url!r} is not an S3 URL: write s3://bucket/prefix")
        bucket, _, prefix = url[len(SCHEME):].partition("/")
        if not bucket:
            raise ConfigError(f"{url!r} names no bucket: write s3://bucket/prefix")
        return cls(bucket, prefix)

    @property
    def url(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.prefix}"

    def object_url(self, key: str) -> str:
        return f"{SCHEME}{self.bucket}/{key}"


def s3_credentials(endpoint_url: str | None) -> S3StorageCredentials:
    """The credentials boto finds in its usual places (for handing to Label Studio)."""
    import botocore.session

    session = botocore.session.get_session()
    found = session.get_credentials()
    frozen = found.get_frozen_credentials() if found is not None else None
    return S3StorageCredentials(
        access_key_id=frozen.access_key if frozen else None,
        secret_access_key=frozen.secret_key if frozen else None,
        session_token=frozen.token if frozen else None,
        region=session.get_config_variable("region"),
        endpoint_url=endpoint_url or None,
    )


def _filesystem(endpoint_url: str | None):
    import s3fs

    # skip_instance_cache: a wrong-credentials run must not leave a cached client behind.
    kwargs = {"client_kwargs": {"endpoint_url": endpoint_url}} if endpoint_url else {}
    return s3fs.S3FileSystem(skip_instance_cache=True, **kwargs)


def _translate(exc: Exception, location: S3Location, endpoint_url: str | None) -> ConfigError:
    """One place where S3's errors become what a user can act on."""
    where = f" at {endpoint_url}" if endpoint_url else ""
    text = str(exc)
    if isinstance(exc, FileNotFoundError) and "bucket" in text.lower():
        return ConfigError(f"the bucket {location.bucket!r} does not exist{where}: check the name in {location.url}")
    if isinstance(exc, PermissionError) or any(
        code in text for code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "ExpiredToken")
    ):
        return ConfigError(
            f"S3{where} refused access to {location.url} ({type(exc).__name__}: {text[:200]}); check the "
            "credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or ~/.aws/credentials) and "
            "that they may list and read the bucket"
        )
    if "NoCredentials" in type(exc).__name__ or "Unable to locate credentials" in text:
        return ConfigError(f"no S3 credentials found for {location.url}: set AWS_ACCESS_KEY_ID and "
                           "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE")
    return ConfigError(f"cannot read {location.url}{where}: {type(exc).__name__}: {text[:300]}; "
                       "check the bucket, AWS_ENDPOINT_URL and the network")


@dataclass(frozen=True)
class S3Object:
    key: str
    size: int
    etag: str


def list_objects(location: S3Location, endpoint_url: str | None) -> list[S3Object]:
    """Every object under the prefix, sorted by key (deterministic imports)."""
    fs = _filesystem(endpoint_url)
    try:
        found = fs.find(f"{location.bucket}/{location.prefix}", detail=True)
    except Exception as exc:  # noqa: BLE001 - botocore's and s3fs's errors, translated once
        raise _translate(exc, location, endpoint_url) from exc
    objects = []
    for path, info in found.items():
        if info.get("type") == "directory":
            continue
        key = path.split("/", 1)[1] if "/" in path else path
        objects.append(S3Object(key=key, size=int(info.get("size") or 0), etag=str(info.get("ETag") or "")))
    return sorted(objects, key=lambda o: o.key)


def scan_s3(
    url: str,
    *,
    classes: Sequence[str],
    labels: Mapping[str, str] | None = None,
    labels_from_folders: bool = False,
    endpoint_url: str | None = None,
    on_object: Callable[[str, int], None] | None = None,
    unchanged: Callable[[str, str], bool] | None = None,
    require_objects: bool = True,
) -> Iterator[FoundImage | SkippedFile]:
    """Every object under `url` as a `FoundImage` (a temporary download, deleted once the
    consumer moves on) or a `SkippedFile` with its reason. Labels as for a folder: `labels`
    keyed by the key relative to the prefix (or the bare name), else with
    `labels_from_folders` the first path part below the prefix when it names a class.
    `on_object(key, total)`: progress, once per image object. `unchanged(object_url, etag)`
    True: an object seen before with this ETag, not downloaded again. `require_objects`:
    an empty prefix is a `ConfigError` (a user typed it), else nothing (a watched prefix)."""
    location = S3Location.parse(url)
    objects = list_objects(location, endpoint_url)
    if not objects and require_objects:
        raise ConfigError(f"no objects under {location.url}: check the prefix (it is case-sensitive)")
    return _scan(location, objects, set(classes), dict(labels or {}), labels_from_folders, endpoint_url,
                 on_object, unchanged)


#: Objects downloaded concurrently (s3fs fetches a batch at once); a batch's bytes are in
#: memory together, each image is then examined from its own temporary file.
DOWNLOAD_BATCH = 32


def _scan(location, objects, classes, labels, labels_from_folders, endpoint_url, on_object, unchanged):
    fs = _filesystem(endpoint_url)
    examiner = DownloadExaminer()
    candidates = [o for o in objects if PurePosixPath(o.key).suffix.lower() in IMAGE_SUFFIXES]
    base = location.prefix if location.prefix.endswith("/") or not location.prefix else location.prefix + "/"
    wanted: list[S3Object] = []
    for obj in objects:
        origin = location.object_url(obj.key)
        if PurePosixPath(obj.key).suffix.lower() not in IMAGE_SUFFIXES:
            yield SkippedFile(origin, f"not an image file ({_describe(obj.key)})")
        elif obj.size == 0:
            yield SkippedFile(origin, "zero-byte object")
        else:
            wanted.append(obj)
    with tempfile.TemporaryDirectory(prefix="labelloop-s3-") as tmp:
        download = Path(tmp) / "object"
        for start in range(0, len(wanted), DOWNLOAD_BATCH):
            batch = wanted[start : start + DOWNLOAD_BATCH]
            fresh = []
            for obj in batch:
                if on_object is not None:
                    on_object(obj.key, len(candidates))
                if unchanged is None or not unchanged(location.object_url(obj.key), obj.etag):
                    fresh.append(obj)
            if not fresh:
                continue
            try:
                contents = fs.cat([f"{location.bucket}/{o.key}" for o in fresh], on_error="return")
            except Exception as exc:  # noqa: BLE001 - the batch as a whole failed: translated once
                raise _translate(exc, location, endpoint_url) from exc
            for obj in fresh:
                origin = location.object_url(obj.key)
                data = contents.get(f"{location.bucket}/{obj.key}")
                if isinstance(data, PermissionError):
                    raise _translate(data, location, endpoint_url) from data
                if not isinstance(data, bytes):
                    yield SkippedFile(origin, f"cannot download: {type(data).__name__}: {str(data)[:200]}")
                    continue
                download.write_bytes(data)
                del contents[f"{location.bucket}/{obj.key}"]
                rel = obj.key[len(base):] if obj.key.startswith(base) else obj.key
                label = labels.get(rel) or labels.get(PurePosixPath(rel).name)
                if label is None and labels_from_folders and "/" in rel and rel.split("/")[0] in classes:
                    label = rel.split("/")[0]
                try:
                    yield examiner.examine(download, origin, suffix=PurePosixPath(obj.key).suffix, label=label)
                finally:
                    download.unlink(missing_ok=True)


def _describe(key: str) -> str:
    suffix = PurePosixPath(key).suffix
    return f"suffix {suffix}" if suffix else "no suffix"
