"""`labelloop up` killed with SIGKILL at a random moment, while annotators label and its
scheduler collects, leaves no process of its stack behind; started again on the same home
it comes up with one Label Studio, and the pushed labels equal Label Studio's, each once; a
second `up` on a live home and a taken port are refused with messages that say what to do."""

from __future__ import annotations

import itertools
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import psutil
import pytest
from dvc.exceptions import CheckoutError

from labeling import LabelStudioGateway, SimulatedAnnotator
from loop.stack import free_port
from loop.starter import digits_truth
from pipelines.labels import current_annotations
from tests.conftest import make_settings
from tests.helpers.remote import labels_from_remote

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
READY_LINE = "Ctrl-C stops everything."


def _describe(procs: list[psutil.Process]) -> str:
    lines = []
    for p in procs:
        try:
            lines.append(f"{p.pid} {' '.join(p.cmdline())[:120]}")
        except psutil.Error:
            lines.append(f"{p.pid} (gone)")
    return "\n".join(lines)


def _alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    return [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def _start_up(env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "loop.cli", "up"], cwd=ROOT, env=env,
                            stdout=log.open("w"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def _wait_ready(proc: subprocess.Popen, log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while READY_LINE not in log.read_text():
        assert proc.poll() is None, f"`labelloop up` exited {proc.returncode}:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"`labelloop up` not ready:\n{log.read_text()[-3000:]}"
        time.sleep(1)


def _label_studio_processes(data_dir: Path) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if any(part.endswith("label-studio") for part in cmd[:2]) and str(data_dir) in cmd:
            found.append(p)
    return found


class Annotators:
    """Annotators labeling the pool while `up` runs (and its scheduler collects every 2 s);
    a call that fails because the stack died is given up, as a browser would."""

    def __init__(self, settings):
        self.settings, self.truth, self.done = settings, digits_truth(), 0

    def label(self, n: int, rng: random.Random) -> None:
        gateway = LabelStudioGateway(self.settings.label_studio_url, self.settings.label_studio_token_file.read_text().strip())
        annotator = SimulatedAnnotator(gateway)
        project = gateway.find_project(self.settings.project_title)
        todo = sorted(t for t, name in gateway.task_images(project).items())
        labeled = {t.id for t in gateway.tasks_updated_since(project, None)}
        for task_id in [t for t in todo if t not in labeled][:n]:
            image = gateway.tasks_by_id([task_id])[0].image_name
            annotator.annotate(task_id, self.truth[image])
            self.done += 1
            time.sleep(rng.uniform(0.05, 0.4))

    def in_background(self, n: int, rng: random.Random) -> threading.Thread:
        def work() -> None:
            try:
                self.label(n, rng)
            except Exception:  # noqa: BLE001 - the stack was killed under them
                pass

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        return thread


def test_kill_9_of_up_leaves_nothing_and_a_restart_comes_up_once(tmp_path):
    settings = make_settings(tmp_path / "home", tmp_path / "ws",
                             label_studio_url=f"http://127.0.0.1:{free_port()}", retrain_interval_s=3600,
                             collect_interval_s=2.0)
    env = {k: v for k, v in settings.child_env().items() if k != "LABELLOOP_LABEL_STUDIO_API_KEY"}
    data_dir = settings.label_studio_token_file.parent
    rng = random.Random(16)

    up = _start_up(env, tmp_path / "up-1.log")
    _wait_ready(up, tmp_path / "up-1.log", timeout_s=600)
    tree = psutil.Process(up.pid).children(recursive=True)
    listing = _describe(tree)
    assert "label-studio" in listing and "bentoml" in listing, listing
    assert len(_label_studio_processes(data_dir)) == 1

    # SIGKILL at a random moment while annotators label and the scheduler collects.
    annotators = Annotators(settings)
    working = annotators.in_background(40, rng)
    time.sleep(rng.uniform(3.0, 9.0))
    up.send_signal(signal.SIGKILL)
    up.wait()
    deadline = time.monotonic() + 60
    while _alive(tree) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _alive(tree), f"left running after kill -9 of up:\n{_describe(_alive(tree))}\n(tree was:\n{listing})"
    working.join(60)
    assert annotators.done >= 1  # the kill came while they worked

    # Started again on the same home, as systemd or a person would: one Label Studio, ready.
    again = _start_up(env, tmp_path / "up-2.log")
    try:
        _wait_ready(again, tmp_path / "up-2.log", timeout_s=300)
        assert len(_label_studio_processes(data_dir)) == 1
        assert httpx.get(f"{settings.label_studio_url}/health/", timeout=5).status_code == 200
        assert httpx.get(f"{settings.resolved_service_url}/health", timeout=5).status_code == 200

        # A second `up` on the live home is refused, naming the running one.
        second = subprocess.run([sys.executable, "-m", "loop.cli", "up"], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=120)
        assert second.returncode == 2, second.stderr
        assert "already runs" in second.stderr and str(again.pid) in second.stderr
        assert len(_label_studio_processes(data_dir)) == 1
        annotators.label(5, rng)  # more labels after the restart
        # Everything Label Studio holds reaches the PUSHED data exactly once, through the
        # restarted scheduler's own collects (and the one cut short by the kill).
        gateway = LabelStudioGateway(settings.label_studio_url, settings.label_studio_token_file.read_text().strip())
        project = gateway.find_project(settings.project_title)
        in_label_studio = {a.id: (t.image_name, a.label) for t in gateway.tasks_updated_since(project, None)
                           for a in t.annotations if not a.was_cancelled}
        # (one annotation may have been saved by Label Studio as the kill cut its answer off)
        assert annotators.done <= len(in_label_studio) <= annotators.done + 1
        deadline = time.monotonic() + 120
        for attempt in itertools.count():
            try:
                events = labels_from_remote(settings.workspace, tmp_path / f"verify-{attempt}")
            except CheckoutError:  # the scheduler committed a batch and is pushing it now: look again
                if time.monotonic() > deadline:
                    raise
                time.sleep(3)
                continue
            pushed = {e.annotation_id: (e.image, e.label) for e in current_annotations(events).values()
                      if e.annotation_id is not None}
            if pushed == in_label_studio or time.monotonic() > deadline:
                break
            time.sleep(3)
        assert pushed == in_label_studio
        upserts = Counter((e.annotation_id, e.annotation_updated_at) for e in events
                          if e.op == "upsert" and e.annotation_id is not None)  # not the seed labels
        assert max(upserts.values()) == 1  # nothing collected twice across the kill
        tree = psutil.Process(again.pid).children(recursive=True)
    finally:
        again.send_signal(signal.SIGTERM)
        again.wait(120)
    deadline = time.monotonic() + 60
    while _alive(tree) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _alive(tree), _describe(_alive(tree))


def test_up_refuses_a_port_that_another_program_holds(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        settings = make_settings(tmp_path / "home", tmp_path / "ws", label_studio_url=f"http://127.0.0.1:{port}")
        env = {k: v for k, v in settings.child_env().items() if k != "LABELLOOP_LABEL_STUDIO_API_KEY"}
        done = subprocess.run([sys.executable, "-m", "loop.cli", "up"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert f"port {port}" in done.stderr and "LABELLOOP_LABEL_STUDIO_URL" in done.stderr
    assert "Traceback" not in done.stderr
