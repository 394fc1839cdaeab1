"""`labelloop up` killed with SIGKILL leaves no process of its stack behind; started again
on the same home it comes up with one Label Studio; a second `up` on a live home and a
taken port are refused with messages that say what to do."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from loop.stack import free_port
from tests.conftest import make_settings

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


def test_kill_9_of_up_leaves_nothing_and_a_restart_comes_up_once(tmp_path):
    settings = make_settings(tmp_path / "home", tmp_path / "ws",
                             label_studio_url=f"http://127.0.0.1:{free_port()}", retrain_interval_s=3600)
    env = {k: v for k, v in settings.child_env().items() if k != "LABELLOOP_LABEL_STUDIO_API_KEY"}
    data_dir = settings.label_studio_token_file.parent

    up = _start_up(env, tmp_path / "up-1.log")
    _wait_ready(up, tmp_path / "up-1.log", timeout_s=600)
    tree = psutil.Process(up.pid).children(recursive=True)
    listing = _describe(tree)
    assert "label-studio" in listing and "bentoml" in listing, listing
    assert len(_label_studio_processes(data_dir)) == 1

    up.send_signal(signal.SIGKILL)
    up.wait()
    deadline = time.monotonic() + 60
    while _alive(tree) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _alive(tree), f"left running after kill -9 of up:\n{_describe(_alive(tree))}\n(tree was:\n{listing})"

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
