"""Production capture: client images worth labeling are kept for the loop, never on the
request's time.

The front door offers every client image it answered (`CaptureWriter.offer`: a comparison
and, for the random share, one random number per image, then a non-blocking put on a
bounded queue; a full queue drops the image and counts it). Chosen are images whose top
probability lies in [`capture_min_confidence`, `capture_max_confidence`] (the model is
unsure) and a random share of the others (`capture_sample_rate`, an unbiased view of
production; `capture_drift_sample_rate` while the model worker reports drift). One
background thread writes them to the capture store, one file per image named by its
content (`<sha256><suffix>`: the same image twice is kept once), within the caps: per
clock hour, per UTC day (counted by this process since it started) and in total (images
waiting in the store for the loop). A store that is full or cannot be written is counted
(`labelloop_capture_failures_total{reason}`) and logged; the request was answered anyway.

The store is a local folder or an fsspec URL (s3://..., a shared volume): the loop, maybe
in another pod, imports the images into the pool and removes them (`loop.monitoring`).
"""

from __future__ import annotations

import errno
import hashlib
import io
import logging
import os
import posixpath
import queue
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from kernel.settings import CaptureSettings
from kernel.storage import storage_fs

__all__ = ["CaptureStore", "CaptureWriter", "choose", "failure_reason"]

log = logging.getLogger("labelloop.serving")

#: Stored suffix per Pillow format: the formats the loop's import takes (`loop.ingest.IMAGE_SUFFIXES`).
SUFFIXES = {"PNG": ".png", "JPEG": ".jpg", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tiff", "WEBP": ".webp"}
#: How long the count of images waiting in the store is trusted before it is listed again
#: (the loop removes what it imported).
PENDING_REFRESH_S = 30.0
#: Content hashes remembered as written (a repeated image is not looked up in the store again).
REMEMBERED = 50_000
#: A store failure is logged at most once per reason in this many seconds (counted every time).
LOG_EVERY_S = 60.0


def choose(confidence: float, config: CaptureSettings, *, drifting: bool, draw: Callable[[], float]) -> str | None:
    """Why an answered image is kept (`low_confidence`, `sample`, `drift_sample`), or None."""
    if config.min_confidence <= confidence <= config.max_confidence:
        return "low_confidence"
    rate = config.drift_sample_rate if drifting else config.sample_rate
    if rate > 0 and draw() < rate:
        return "drift_sample" if drifting else "sample"
    return None


def failure_reason(exc: BaseException) -> str:
    """The `reason` label of a store failure: no_space (a full disk or quota), else unwritable."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "no_space"
    return "unwritable"


class CaptureStore:
    """Captured images on a local path or an fsspec URL, one file per image, named by content.
    Files being written carry a hidden name (`.<name>.tmp`) and are never listed."""

    def __init__(self, location: Path | str):
        self.location = location
        self._remote = storage_fs(location)

    def __repr__(self) -> str:
        return f"CaptureStore({self.location!s})"

    def _path(self, name: str) -> str:
        fs, root = self._remote
        return posixpath.join(root, name)

    def names(self) -> list[str]:
        """The images waiting, sorted (none when the store does not exist yet)."""
        if self._remote:
            fs, root = self._remote
            if not fs.exists(root):
                return []
            found = [posixpath.basename(p.rstrip("/")) for p in fs.ls(root, detail=False)]
        else:
            folder = Path(self.location)
            found = [p.name for p in folder.iterdir()] if folder.is_dir() else []
        return sorted(n for n in found if not n.startswith(".") and Path(n).suffix in SUFFIXES.values())

    def exists(self, name: str) -> bool:
        if self._remote:
            fs, _ = self._remote
            return bool(fs.exists(self._path(name)))
        return (Path(self.location) / name).exists()

    def write(self, name: str, data: bytes) -> None:
        """Whole or not at all: written under a hidden name, then moved."""
        if self._remote:
            fs, root = self._remote
            fs.makedirs(root, exist_ok=True)
            tmp = self._path(f".{name}.tmp")
            fs.pipe_file(tmp, data)
            fs.mv(tmp, self._path(name))
            return
        folder = Path(self.location)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{name}.{os.getpid()}.tmp"
        try:
            tmp.write_bytes(data)
            tmp.replace(folder / name)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def read(self, name: str) -> bytes:
        if self._remote:
            fs, _ = self._remote
            return fs.cat_file(self._path(name))
        return (Path(self.location) / name).read_bytes()

    def remove(self, names: Iterable[str]) -> None:
        for name in names:
            if self._remote:
                fs, _ = self._remote
                if fs.exists(self._path(name)):
                    fs.rm_file(self._path(name))
            else:
                (Path(self.location) / name).unlink(missing_ok=True)


class CaptureWriter:
    """The bounded queue and the one thread that writes to the store. `count(kind, reason)`
    receives every outcome (kind: captured, skipped, failed): the Prometheus counters."""

    def __init__(self, store: CaptureStore, config: CaptureSettings, *, count: Callable[[str, str], None],
                 clock: Callable[[], float] = time.time, seed: int | None = None, start: bool = True):
        self.store, self.config = store, config
        self._count = count
        self._clock = clock
        self._random = random.Random(seed)
        self._queue: queue.Queue[tuple[bytes, str]] = queue.Queue(maxsize=config.queue_size)
        self._written: OrderedDict[str, None] = OrderedDict()
        self._hour: tuple[int, int] = (-1, 0)  # (clock hour, images kept in it)
        self._day: tuple[int, int] = (-1, 0)
        self._pending: int | None = None
        self._pending_at = float("-inf")
        self._logged: dict[str, float] = {}
        self._thread = threading.Thread(target=self._run, name="capture-writer", daemon=True)
        if start:
            self.start()

    def start(self) -> None:
        """Start the writer thread (`start=False`: a test fills the queue first)."""
        self._thread.start()

    # --- the request's side: cheap, never blocks, never raises ---------------------------
    def offer(self, images: Sequence[bytes], confidences: Sequence[float], *, drifting: bool = False) -> int:
        """Queue the images worth keeping; returns how many were queued."""
        queued = 0
        for data, confidence in zip(images, confidences, strict=True):
            reason = choose(confidence, self.config, drifting=drifting, draw=self._random.random)
            if reason is None:
                continue
            try:
                self._queue.put_nowait((data, reason))
                queued += 1
            except queue.Full:
                self._count("failed", "queue_full")
        return queued

    def drain(self, timeout_s: float = 10.0) -> bool:
        """Wait until every queued image was handled (tests, benchmarks); False on timeout."""
        deadline = time.monotonic() + timeout_s
        while self._queue.unfinished_tasks:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    # --- the writer thread ----------------------------------------------------------------
    def _run(self) -> None:
        while True:
            data, reason = self._queue.get()
            try:
                self._keep(data, reason)
            except Exception:  # a bug here must not end the thread: later images still count
                log.exception("capture: could not handle an image")
                self._count("failed", "unwritable")
            finally:
                self._queue.task_done()

    def _keep(self, data: bytes, reason: str) -> None:
        digest = hashlib.sha256(data).hexdigest()
        if digest in self._written:
            self._written.move_to_end(digest)
            self._count("skipped", "duplicate")
            return
        if (cap := self._over_cap()) is not None:
            self._count("skipped", cap)
            return
        suffix = _suffix(data)
        if suffix is None:
            self._count("skipped", "format")
            return
        name = f"{digest}{suffix}"
        try:
            if self.store.exists(name):
                self._remember(digest)
                self._count("skipped", "duplicate")
                return
            self.store.write(name, data)
        except Exception as exc:  # noqa: BLE001 - any store failure is counted, the service goes on
            self._failed(failure_reason(exc), exc)
            return
        self._remember(digest)
        self._hour = (self._hour[0], self._hour[1] + 1)
        self._day = (self._day[0], self._day[1] + 1)
        if self._pending is not None:
            self._pending += 1
        self._count("captured", reason)

    def _over_cap(self) -> str | None:
        now = self._clock()
        hour, day = int(now // 3600), int(now // 86400)
        if self._hour[0] != hour:
            self._hour = (hour, 0)
        if self._day[0] != day:
            self._day = (day, 0)
        if self._hour[1] >= self.config.max_per_hour:
            return "hour_cap"
        if self._day[1] >= self.config.max_per_day:
            return "day_cap"
        if time.monotonic() - self._pending_at > PENDING_REFRESH_S:
            self._pending_at = time.monotonic()
            try:
                self._pending = len(self.store.names())
            except Exception:  # noqa: BLE001 - the write that follows fails and is counted
                self._pending = None
        if self._pending is not None and self._pending >= self.config.max_pending:
            return "total_cap"
        return None

    def _remember(self, digest: str) -> None:
        self._written[digest] = None
        if len(self._written) > REMEMBERED:
            self._written.popitem(last=False)

    def _failed(self, reason: str, exc: BaseException) -> None:
        self._count("failed", reason)
        now = time.monotonic()
        if now - self._logged.get(reason, float("-inf")) >= LOG_EVERY_S:
            self._logged[reason] = now
            log.warning("capture: cannot keep client images in %s (%s: %s); requests are answered, the failures "
                        "counted in labelloop_capture_failures_total{reason=%r}: free space or fix "
                        "LABELLOOP_CAPTURE_URL", self.store.location, type(exc).__name__, exc, reason)


def _suffix(data: bytes) -> str | None:
    """The stored suffix of an image's format (from its header only), None for a format the
    pool does not take."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            return SUFFIXES.get(image.format or "")
    except Exception:  # noqa: BLE001 - the front decoded it; anything else is not poolable
        return None
