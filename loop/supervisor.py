"""`python -m loop.supervisor [--lock PATH] -- CMD...`: run CMD so that its whole process
tree dies with the process that started the supervisor, however that one dies.

Label Studio and `bentoml serve` fork workers that start sessions and process groups of
their own, so killing a group, or the parent dying, does not reach them. The supervisor:

- asks the kernel for SIGTERM when its parent dies (`PR_SET_PDEATHSIG`; SIGKILL included),
- is a child subreaper (`PR_SET_CHILD_SUBREAPER`): descendants orphaned by a crashed CMD
  (BentoML's workers when `bentoml serve` is SIGKILLed) are re-parented to it, not to init,
- on SIGTERM/SIGINT, or when CMD exits, ends every descendant (SIGTERM, then SIGKILL) and
  exits with CMD's code,
- optionally holds an exclusive lock for as long as any of them lives (`--lock`): never two
  Label Studio processes on one data directory.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

__all__ = ["supervised", "end_processes", "main", "LOCK_HELD_EXIT"]

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
#: The supervisor's exit code when `--lock` is held by another process.
LOCK_HELD_EXIT = 75


def supervised(cmd: list[str], *, lock: Path | None = None) -> list[str]:
    """The command line that runs `cmd` under a supervisor (same interpreter)."""
    return [sys.executable, "-m", "loop.supervisor", *(["--lock", str(lock)] if lock else []), "--", *cmd]


def _prctl(option: int, value: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, value, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}) failed")


def end_processes(procs: list[psutil.Process], grace_s: float = 10.0) -> None:
    """SIGTERM each, SIGKILL those still alive after `grace_s`."""
    for proc in procs:
        try:
            proc.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=5)


def _end_tree() -> None:
    """End every descendant (adopted orphans included)."""
    me = psutil.Process()
    for _ in range(3):  # a dying worker can fork or orphan one more process: look again
        tree = me.children(recursive=True)
        if not tree:
            return
        end_processes(tree)


def main(argv: list[str]) -> int:
    lock_path = None
    if argv[:1] == ["--lock"]:
        lock_path, argv = Path(argv[1]), argv[2:]
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        print("usage: python -m loop.supervisor [--lock PATH] -- CMD...", file=sys.stderr)
        return 2
    parent = os.getppid()
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    if os.getppid() != parent:  # the parent died before the death signal was armed
        return 1
    if lock_path is not None:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        lock_file = lock_path.open("a+")
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock_file.seek(0)
            print(f"{lock_path} is held by process {lock_file.read().strip() or '?'}: another "
                  f"instance runs on this directory; stop it first", file=sys.stderr)
            return LOCK_HELD_EXIT
        lock_file.seek(0)
        lock_file.truncate()
        lock_file.write(str(os.getpid()))
        lock_file.flush()
    # A plain flag: a handler that touched a lock (threading.Event) could deadlock with
    # the main thread holding that same lock when the signal arrives.
    stop_requested: list[int] = []
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, lambda signum, _frame: stop_requested.append(signum))
    child = subprocess.Popen(argv)
    while not stop_requested and child.poll() is None:
        time.sleep(0.2)
    _end_tree()
    code = child.wait()
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
