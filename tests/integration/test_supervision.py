"""Supervision: what labelloop starts dies with it, however it dies; one stack per home;
never two processes on one locked directory; a taken port is an error, never adopted.

Real processes, real signals (the stack's own processes are tested end to end in
tests/e2e/test_up_supervision.py)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from kernel.errors import ConfigError
from loop.stack import StackLock, require_free_port
from loop.supervisor import LOCK_HELD_EXIT, supervised

ROOT = Path(__file__).resolve().parents[2]
#: A command whose tree escapes process groups and sessions, like BentoML's and Label Studio's workers.
ESCAPING_TREE = ["bash", "-c", "sleep 300 & setsid sleep 301 & (setsid bash -c 'sleep 302 & wait') & wait"]


def _wait_for(predicate, what: str, timeout_s: float = 30.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    return [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def _starter(cmd: list[str]) -> subprocess.Popen:
    """A process that starts `cmd` under a supervisor and then just waits (like `up`)."""
    code = ("import subprocess, sys, time; "
            f"subprocess.Popen({supervised(cmd)!r}, start_new_session=True); time.sleep(600)")
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT)


def _tree(pid: int) -> list[psutil.Process]:
    """The tree under `pid` once the three sleeps of ESCAPING_TREE run."""
    def grown():
        tree = psutil.Process(pid).children(recursive=True)
        commands = set()
        for p in tree:
            try:
                commands.add(" ".join(p.cmdline()))
            except psutil.Error:
                pass
        return {"sleep 300", "sleep 301", "sleep 302"} <= commands and tree
    return _wait_for(grown, "the tree's three sleeps", timeout_s=60)


def test_the_whole_tree_dies_when_its_starter_is_sigkilled():
    starter = _starter(ESCAPING_TREE)
    tree = _tree(starter.pid)
    starter.send_signal(signal.SIGKILL)
    starter.wait()
    _wait_for(lambda: not _alive(tree), "the tree to die with its starter")


def test_killing_the_command_itself_ends_what_it_left_behind():
    """`bentoml serve` SIGKILLed: its workers (own sessions) must not live on."""
    supervisor = subprocess.Popen(supervised(ESCAPING_TREE), cwd=ROOT, start_new_session=True)
    tree = _tree(supervisor.pid)
    command = next(p for p in tree if p.ppid() == supervisor.pid)
    command.send_signal(signal.SIGKILL)
    assert supervisor.wait(30) == 128 + signal.SIGKILL
    assert not _alive(tree)


def test_sigterm_stops_the_tree_gracefully():
    supervisor = subprocess.Popen(supervised(ESCAPING_TREE), cwd=ROOT, start_new_session=True)
    tree = _tree(supervisor.pid)
    supervisor.send_signal(signal.SIGTERM)
    supervisor.wait(30)
    assert not _alive(tree)


def test_a_locked_directory_gets_one_process_tree(tmp_path):
    lock = tmp_path / "data" / "labelloop-label-studio.lock"
    first = subprocess.Popen(supervised(["sleep", "300"], lock=lock), cwd=ROOT, start_new_session=True)
    _wait_for(lambda: lock.exists() and lock.read_text().strip() == str(first.pid), "the first lock")
    second = subprocess.run(supervised(["sleep", "300"], lock=lock), cwd=ROOT, capture_output=True, text=True,
                            timeout=60)
    assert second.returncode == LOCK_HELD_EXIT
    assert f"held by process {first.pid}" in second.stderr
    first.send_signal(signal.SIGTERM)
    first.wait(30)
    again = subprocess.run(supervised(["true"], lock=lock), cwd=ROOT, timeout=60)
    assert again.returncode == 0  # released when its holder died


def test_a_taken_port_is_an_error_naming_the_setting():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ConfigError, match=f"port {port} .* in use.*LABELLOOP_SERVICE_PORT"):
            require_free_port("127.0.0.1", port, "LABELLOOP_SERVICE_PORT")
    require_free_port("127.0.0.1", port, "LABELLOOP_SERVICE_PORT")  # free again


def test_one_stack_per_home_and_a_dead_ones_leftovers_are_stopped(tmp_path):
    home = tmp_path / "home"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from loop.stack import StackLock; "
        f"lock = StackLock(Path({str(home)!r})).__enter__(); "
        "lock.record(label_studio_url='http://127.0.0.1:8123', service_url='http://127.0.0.1:3123'); "
        "print('locked', flush=True); time.sleep(600)")], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(ConfigError, match=rf"already runs .*pid {holder.pid}.*8123.*3123"):
        StackLock(home).__enter__()
    # It dies without cleaning up, leaving a process it had started (recorded in stack.json).
    leftover = _orphan(["sleep", "300"])
    record = json.loads((home / "stack.json").read_text())
    record["processes"] = [{"name": "service", "pid": leftover.pid, "cmdline": leftover.cmdline(),
                            "create_time": leftover.create_time()}]
    (home / "stack.json").write_text(json.dumps(record))
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    unrelated = _orphan(["sleep", "299"])  # a pid reused by another program must be left alone
    record["processes"].append({"name": "label-studio", "pid": unrelated.pid, "cmdline": ["sleep", "300"],
                                "create_time": unrelated.create_time()})
    (home / "stack.json").write_text(json.dumps(record))
    with StackLock(home) as lock:
        assert not _alive([leftover])  # stopped before anything starts
        assert _alive([unrelated])
        assert json.loads(lock.record_path.read_text())["pid"] == os.getpid()
    assert not (home / "stack.json").exists()
    unrelated.kill()


def _orphan(cmd: list[str]) -> psutil.Process:
    """A process that is nobody's child here (its parent exited), like one a dead `up` left."""
    done = subprocess.run(["bash", "-c", f"setsid {' '.join(cmd)} >/dev/null 2>&1 & echo $!"],
                          capture_output=True, text=True, check=True)
    proc = psutil.Process(int(done.stdout))
    return _wait_for(lambda: proc.cmdline() == cmd and proc, f"{cmd} to run")  # setsid execs it
