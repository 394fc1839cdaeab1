"""Production capture's choice and its writer on real stores: a folder, fsspec's memory
filesystem, a path under a regular file (unwritable, for root too) and a full tmpfs; the caps,
deduplication, the bounded queue; the status lines."""

from __future__ import annotations

import subprocess
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from kernel.settings import CaptureSettings, Settings
from loop.monitoring import ProductionStatus, production_lines
from serving.capture import CaptureStore, CaptureWriter, choose
from tests.helpers.images import png_bytes


def image(i: int, size: int = 8) -> bytes:
    pixels = np.random.default_rng(i).integers(0, 255, (size, size), dtype=np.uint8)
    return png_bytes(Image.fromarray(pixels, "L"))


class Counts:
    """What the service's Prometheus counters receive."""

    def __init__(self):
        self.seen: Counter[tuple[str, str]] = Counter()

    def __call__(self, kind: str, reason: str) -> None:
        self.seen[kind, reason] += 1


def writer(location, counts: Counts, **config) -> CaptureWriter:
    return CaptureWriter(CaptureStore(location), CaptureSettings(**{"sample_rate": 0.0, **config}), count=counts, seed=0)


def test_choice_keeps_the_confidence_window_and_a_random_share_raised_under_drift():
    config = CaptureSettings(min_confidence=0.2, max_confidence=0.5, sample_rate=0.1, drift_sample_rate=0.5)
    draws = iter([0.05, 0.3, 0.3, 0.05])
    assert choose(0.4, config, drifting=False, draw=lambda: 1.0) == "low_confidence"
    assert choose(0.1, config, drifting=False, draw=lambda: 1.0) is None  # below the window, not drawn
    assert choose(0.9, config, drifting=False, draw=lambda: next(draws)) == "sample"
    assert choose(0.9, config, drifting=False, draw=lambda: next(draws)) is None
    assert choose(0.9, config, drifting=True, draw=lambda: next(draws)) == "drift_sample"
    assert choose(0.9, config, drifting=True, draw=lambda: next(draws)) == "drift_sample"
    rng = np.random.default_rng(0)
    kept = sum(choose(0.99, config, drifting=False, draw=rng.random) is not None for _ in range(10_000))
    assert 850 < kept < 1150  # ~10%


def test_images_are_written_once_by_content_and_the_loop_can_read_and_remove_them(tmp_path):
    counts = Counts()
    capture = writer(tmp_path / "capture", counts)
    assert capture.offer([image(1), image(2), image(1), image(3)], [0.3, 0.4, 0.3, 0.99]) == 3
    assert capture.drain()
    names = capture.store.names()
    assert len(names) == 2 and all(n.endswith(".png") and len(n) == 64 + 4 for n in names)
    assert counts.seen == {("captured", "low_confidence"): 2, ("skipped", "duplicate"): 1}
    assert sorted(capture.store.read(n) for n in names) == sorted([image(1), image(2)])
    assert not list((tmp_path / "capture").glob(".*"))  # no half-written file left
    capture.store.remove(names[:1])
    assert capture.store.names() == names[1:]


def test_caps_per_hour_per_day_and_in_total(tmp_path):
    now = [3600.0 * 10]
    counts = Counts()
    capture = CaptureWriter(CaptureStore(tmp_path / "c"), CaptureSettings(max_per_hour=2, max_per_day=3,
                                                                        max_pending=100, sample_rate=0.0),
                            count=counts, clock=lambda: now[0])
    capture.offer([image(i) for i in range(4)], [0.1] * 4)
    assert capture.drain()
    assert counts.seen == {("captured", "low_confidence"): 2, ("skipped", "hour_cap"): 2}
    now[0] += 3600  # the next hour: one more fits the day
    capture.offer([image(i) for i in range(10, 13)], [0.1] * 3)
    assert capture.drain()
    assert counts.seen["captured", "low_confidence"] == 3 and counts.seen["skipped", "day_cap"] == 2
    total = Counts()
    pending = writer(tmp_path / "c", total, max_pending=4)  # the store already holds 3
    pending.offer([image(i) for i in range(20, 23)], [0.1] * 3)
    assert pending.drain()
    assert total.seen == {("captured", "low_confidence"): 1, ("skipped", "total_cap"): 2}


def test_a_full_queue_drops_and_counts_without_waiting(tmp_path):
    counts = Counts()
    capture = CaptureWriter(CaptureStore(tmp_path / "c"), CaptureSettings(queue_size=2), count=counts, start=False)
    assert capture.offer([image(i) for i in range(5)], [0.1] * 5) == 2
    assert counts.seen == {("failed", "queue_full"): 3}
    capture.start()
    assert capture.drain() and len(capture.store.names()) == 2


def test_an_unwritable_store_is_counted_and_the_writer_keeps_going(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    counts = Counts()
    capture = writer(blocker / "capture", counts)  # fails for root too: its parent is a regular file
    capture.offer([image(1), image(2)], [0.1, 0.1])
    assert capture.drain()
    assert counts.seen == {("failed", "unwritable"): 2}
    blocker.unlink()  # the store is fixed: the same writer keeps images again
    capture.offer([image(3)], [0.1])
    assert capture.drain() and counts.seen["captured", "low_confidence"] == 1


@pytest.fixture
def tiny_disk(tmp_path):
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    assert done.returncode == 0, f"this test needs root to mount a 64 KiB tmpfs: {done.stderr.strip()}"
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_is_counted_as_no_space(tiny_disk):
    (tiny_disk / "filler").write_bytes(b"\0" * 60 * 1024)
    counts = Counts()
    capture = writer(tiny_disk / "capture", counts)
    capture.offer([image(1, size=128)], [0.1])  # ~16 KiB of noise: more than is left
    assert capture.drain()
    assert counts.seen == {("failed", "no_space"): 1}
    assert capture.store.names() == [] and not list((tiny_disk / "capture").iterdir())  # nothing half-written


def test_a_store_behind_an_fsspec_url():
    store = CaptureStore("memory://labelloop-test/capture")
    counts = Counts()
    capture = CaptureWriter(store, CaptureSettings(), count=counts)
    capture.offer([image(5), image(6)], [0.2, 0.2])
    assert capture.drain()
    names = store.names()
    assert len(names) == 2 and {store.read(n) for n in names} == {image(5), image(6)}
    store.remove(names)
    assert store.names() == []


def status(**overrides) -> dict:
    values = dict(capture_enabled=True, capture_store="/srv/capture", waiting=3, imported=40, service_reachable=True,
                  captured={"low_confidence": 10, "drift_sample": 2}, skipped={"duplicate": 1}, failed={},
                  drift_reference_images=450, drift_window=300, drift_min_samples=100, drift_detected=False,
                  drift_p_values={"classes": 0.4, "confidence": 0.2, "embedding": 1.0},
                  drift_scores={"classes": 0.1, "confidence": 0.05, "embedding": 0.07})
    values.update(overrides)
    return ProductionStatus(**values).__dict__


def test_status_lines_say_what_was_kept_what_failed_and_the_drift_verdict():
    lines = production_lines(status())
    assert lines[0].startswith("capture        on: 12 kept since the service started (drift_sample 2, "
                               "low_confidence 10), 1 not kept (duplicate 1); 3 waiting in /srv/capture; 40 imported")
    assert lines[1].startswith("drift          none over the last 300 client images: classes p=0.4")
    failing = production_lines(status(failed={"unwritable": 4}, drift_detected=True,
                                      drift_p_values={"classes": 1e-9, "confidence": 0.2, "embedding": 1e-12}))
    assert "capture failed 4 client images not kept (unwritable 4); every request was answered" in failing[1]
    assert "DETECTED over the last 300 client images" in failing[2] and "classes p=1e-09" in failing[2]
    assert production_lines(status(drift_window=40))[1] == "drift          no verdict yet: 40 of 100 client images"
    assert "no reference" in production_lines(status(drift_reference_images=0))[1]
    off = production_lines(status(capture_enabled=False, captured={}, imported=0, drift_reference_images=None))
    assert off == []
    assert production_lines(None) == []


def test_the_store_is_shared_storage_when_there_is_one_and_a_relative_folder_is_under_the_home(tmp_path):
    assert Settings.load(home=tmp_path).capture_dir == tmp_path / "capture"
    assert Settings.load(home=tmp_path, capture_url="cap").serving.capture_dir == tmp_path / "cap"
    assert Settings.load(home=tmp_path, artifacts_url="s3://b/labelloop/").capture_dir == "s3://b/labelloop/capture"
    assert Settings.load(home=tmp_path, capture_url="s3://c/x").capture_dir == "s3://c/x"
