"""A real full disk under the workspace (a size-limited tmpfs the test mounts): a collect
fails with a clear error and leaves nothing half-written; once space is freed the next
collect catches up and the pushed labels equal Label Studio's annotations."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from labeling import SimulatedAnnotator
from loop.core import Loop
from loop.starter import digits_truth
from pipelines.labels import current_annotations
from serving import read_promotion
from tests.conftest import make_settings
from tests.helpers.remote import labels_from_remote

pytestmark = pytest.mark.e2e


@pytest.fixture
def small_disk(files_root):
    """A 48 MiB filesystem under Label Studio's document root (the workspace must be there)."""
    mount = files_root / "full-disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:  # not root, or no mount rights: say so, never pretend
        pytest.skip(f"cannot mount a size-limited filesystem here ({done.stderr.strip()}); the ENOSPC "
                    "crash point of tests/e2e/test_outages.py covers the code path")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(directory: Path) -> Path:
    """Write until the filesystem has no byte left (ENOSPC), as a runaway log would."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for chunk in (1 << 20, 1 << 12, 1):
            try:
                while True:
                    os.write(fd, b"\0" * chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


def collect(settings) -> subprocess.CompletedProcess:
    cli = Path(sys.executable).parent / "labelloop"
    return subprocess.run([str(cli), "collect"], env=settings.child_env(), capture_output=True, text=True,
                          timeout=300)


def test_a_full_disk_during_collect_loses_nothing(label_studio, files_root, small_disk, tmp_path):
    settings = make_settings(tmp_path / "home", small_disk / "workspace", label_studio_url=label_studio.url,
                             label_studio_api_key=label_studio.token, label_studio_files_root=files_root,
                             project_title="labelloop-full-disk")
    loop = Loop(settings)
    loop.init(starter="digits")
    project = loop.connect()
    annotator = SimulatedAnnotator(loop.gateway)
    truth = digits_truth()
    tasks = iter(sorted(loop.state.tasks().items()))
    ws = loop.workspace
    head = ws.head()

    filler = fill(small_disk)
    for _ in range(5):
        task_id, image = next(tasks)
        annotator.annotate(task_id, truth[image])
    failed = collect(settings)
    assert failed.returncode in (3, 10), (failed.returncode, failed.stderr[-2000:])  # workspace or OS error
    assert "No space left" in failed.stderr or "space" in failed.stderr.lower(), failed.stderr[-2000:]
    assert "Traceback" not in failed.stderr
    assert ws.head() == head  # no commit half-made

    filler.unlink()  # space freed: the next collect catches up, exactly once
    caught_up = collect(settings)
    assert caught_up.returncode == 0, caught_up.stderr[-2000:]
    assert ws.git("status", "--porcelain") == ""
    in_label_studio = {a.id: (t.image_name, a.label) for t in loop.gateway.tasks_updated_since(project, None)
                       for a in t.annotations if not a.was_cancelled}
    assert len(in_label_studio) == 5
    pushed = {e.annotation_id: (e.image, e.label)
              for e in current_annotations(labels_from_remote(ws.root, tmp_path)).values()
              if e.annotation_id is not None}
    assert pushed == in_label_studio


@pytest.fixture
def small_runs_disk(tmp_path):
    """The training runs' folder (`<home>/runs`) on a 48 MiB filesystem of its own."""
    runs = tmp_path / "home" / "runs"
    runs.mkdir(parents=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(runs)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a size-limited filesystem here ({done.stderr.strip()})")
    yield runs
    subprocess.run(["umount", "-l", str(runs)], check=False)


def test_a_full_disk_during_training_fails_the_run_clearly_and_keeps_the_serving_model(small_runs_disk, tmp_path):
    """Training runs where the disk fills: the run is recorded as failed with the cause, the
    serving model stays, nothing crashes; once space is freed the next run promotes."""
    settings = make_settings(tmp_path / "home", tmp_path / "workspace")
    loop = Loop(settings)
    loop.init(starter="digits")
    first = loop.train(trigger="test", rescore=False)
    assert first.status == "promoted", first
    serving = read_promotion(settings.promotion_file).tag

    filler = fill(small_runs_disk)
    full = loop.train(trigger="test", rescore=False)
    assert full.status == "failed" and "space" in (full.reason or "").lower(), full
    assert read_promotion(settings.promotion_file).tag == serving  # the model in service is untouched
    assert loop.status().runs[0].status == "failed"

    filler.unlink()
    again = loop.train(trigger="test", rescore=False)
    assert again.status in ("promoted", "rejected"), again  # trained and judged again
    assert "space" not in (again.reason or "").lower()
