"""Starting and stopping the processes of the embedded stack: Label Studio (from its own
venv) and the labelloop service (`bentoml serve`). Used by `up`, `demo` and the tests.

Every process runs under `loop.supervisor`, so its whole tree dies with whoever started
it, SIGKILL included. `StackLock` keeps one `labelloop up` per home and stops what a dead
one left behind; a port that is already taken is an error, never a server adopted."""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import httpx
import psutil

from kernel.errors import ConfigError, LabelloopError
from kernel.settings import Settings
from loop.supervisor import LOCK_HELD_EXIT, end_processes, supervised
from serving.client import PredictionClient

__all__ = ["ManagedProcess", "LabelStudioServer", "ServiceServer", "StackLock", "free_port", "require_free_port"]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def require_free_port(host: str, port: int, setting: str) -> None:
    """A port someone else listens on is an error naming the setting to change: a server
    found there is never adopted as ours."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            raise ConfigError(f"port {port} on {host} is already in use by another program: stop it, "
                              f"or set {setting} to a free port") from None


class ManagedProcess:
    name = "process"
    #: Held by the supervisor while the process tree lives (None: no lock).
    lock_path: Path | None = None

    def __init__(self, log_path: Path):
        self.log_path = log_path
        self._proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int | None:
        """The supervisor's pid (the root of the tree)."""
        return self._proc.pid if self._proc is not None else None

    def _spawn(self, cmd: list[str], env: dict[str, str], cwd: Path) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        # Under a supervisor that dies with us and ends the whole tree (bentoml and Label
        # Studio fork workers with sessions of their own); its own session for stop().
        self._proc = subprocess.Popen(
            supervised(cmd, lock=self.lock_path), env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )

    def _check_alive(self) -> None:
        if self._proc is None or self._proc.poll() is None:
            return
        if self._proc.returncode == LOCK_HELD_EXIT:
            raise ConfigError(f"another {self.name} already runs on {self.lock_path.parent}: stop it first "
                              f"(its pid is in {self.lock_path})")
        raise LabelloopError(f"{self.name} exited with code {self._proc.returncode}; see {self.log_path}")

    def _wait_until(self, ready, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not ready():
            self._check_alive()
            if time.monotonic() > deadline:
                self.stop()
                raise LabelloopError(f"{self.name} not ready after {timeout_s:.0f}s; see {self.log_path}")
            time.sleep(0.5)

    def _wait_http(self, url: str, timeout_s: float) -> None:
        def answers() -> bool:
            try:
                return httpx.get(url, timeout=2.0).status_code == 200
            except httpx.HTTPError:
                return False

        self._wait_until(answers, timeout_s)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM to the supervisor, which ends the tree; SIGKILL the group if it hangs."""
        if self._proc is None or self._proc.poll() is not None:
            return
        self._proc.send_signal(signal.SIGTERM)
        try:
            self._proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait(5)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class LabelStudioServer(ManagedProcess):
    """A headless Label Studio with SQLite (facts: shared/reference/label-studio.md)."""

    name = "Label Studio"

    def __init__(self, settings: Settings, data_dir: Path):
        super().__init__(settings.home / "logs" / "label-studio.log")
        self.settings = settings
        self.data_dir = data_dir
        self.lock_path = data_dir / "labelloop-label-studio.lock"  # never two on one data dir
        parsed = urlparse(settings.label_studio_url)
        self.host, self.port = parsed.hostname or "127.0.0.1", parsed.port or 8080
        self.url = f"http://{self.host}:{self.port}"
        self.token = self._token()

    def _token(self) -> str:
        """The admin's legacy token: configured, or made once and kept in the data dir
        (Label Studio only applies it when it first creates the user). `up` keeps its data
        dir at `settings.label_studio_token_file`'s folder, so later CLI calls find it."""
        if self.settings.label_studio_api_key is not None:
            return self.settings.label_studio_api_key.get_secret_value()
        path = self.data_dir / "labelloop-token"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(secrets.token_hex(20))
            path.chmod(0o600)
        return path.read_text().strip()

    def start(self, timeout_s: float = 240.0, *, wait: bool = True) -> "LabelStudioServer":
        exe = self.settings.label_studio_venv / "bin" / "label-studio"
        if not exe.exists():
            raise ConfigError(f"Label Studio is not installed at {exe}: run `make venvs`")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LABELLOOP_", "DJANGO"))}
        env.update({
            "LABEL_STUDIO_BASE_DATA_DIR": str(self.data_dir),
            "LABEL_STUDIO_USERNAME": self.settings.label_studio_username,
            "LABEL_STUDIO_PASSWORD": self.settings.label_studio_password.get_secret_value(),
            "LABEL_STUDIO_USER_TOKEN": self.token,
            "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
            "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
            "LATEST_VERSION_CHECK": "false",
            "COLLECT_ANALYTICS": "false",
            "SENTRY_DSN": "",
            "FRONTEND_SENTRY_DSN": "",
            # The service runs on 127.0.0.1 here; a real deployment needs neither flag.
            "ML_BLOCK_LOCAL_IP": "false",
            "SSRF_PROTECTION_ENABLED": "false",
            "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
            "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(self.settings.files_root),
            "LABEL_STUDIO_HOST": self.url,
        })
        self.data_dir.mkdir(parents=True, exist_ok=True)
        require_free_port(self.host, self.port, "LABELLOOP_LABEL_STUDIO_URL")
        self._spawn(
            [str(exe), "start", "--no-browser", "--internal-host", self.host,
             "--port", str(self.port), "--data-dir", str(self.data_dir)],
            env, cwd=self.data_dir,
        )
        if wait:
            self.wait_ready(timeout_s)
        return self

    def wait_ready(self, timeout_s: float = 240.0) -> None:
        self._wait_http(f"{self.url}/health/", timeout_s)


class ServiceServer(ManagedProcess):
    """`bentoml serve serving.service:Labelloop` with the loop's settings."""

    name = "labelloop service"

    def __init__(self, settings: Settings):
        super().__init__(settings.home / "logs" / "service.log")
        self.settings = settings
        self.url = settings.resolved_service_url

    def start(self, timeout_s: float = 180.0, *, wait: bool = True) -> "ServiceServer":
        bentoml = Path(sys.executable).parent / "bentoml"
        require_free_port(self.settings.service_host, self.settings.service_port, "LABELLOOP_SERVICE_PORT")
        self._spawn(
            [str(bentoml), "serve", "serving.service:Labelloop",
             "--host", self.settings.service_host, "--port", str(self.settings.service_port)],
            self.settings.child_env(), cwd=self.settings.home,
        )
        if wait:
            self.wait_ready(timeout_s)
        return self

    def wait_ready(self, timeout_s: float = 180.0) -> None:
        """Up when the front answers /health through its model worker (with the configured
        credentials): both BentoML services are serving."""
        client = PredictionClient.for_settings(self.settings.serving)
        self._wait_until(lambda: client.health() is not None, timeout_s)


class StackLock:
    """One `labelloop up` per home: an exclusive lock (released by the kernel however its
    holder dies) and a record of what it started (`<home>/stack.json`: pids, command lines,
    URLs). A second `up` on a live home is refused naming the running one; a record left by
    a dead one is cleaned up first: its processes, verified by command line, are stopped."""

    def __init__(self, home: Path):
        self.path = home / "stack.lock"
        self.record_path = home / "stack.json"
        self._file = None

    def __enter__(self) -> "StackLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a+")
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.close()
            running = self._read_record()
            raise ConfigError(
                f"labelloop up already runs on {self.path.parent} (pid {running.get('pid', '?')}, "
                f"Label Studio {running.get('label_studio_url', '?')}, service {running.get('service_url', '?')}): "
                "use it, or stop it first (Ctrl-C or `kill` that pid)") from None
        self._stop_leftovers()
        self.record(pid=os.getpid(), processes=[])
        return self

    def __exit__(self, *exc: object) -> None:
        self.record_path.unlink(missing_ok=True)
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()

    def _read_record(self) -> dict:
        try:
            return json.loads(self.record_path.read_text())
        except (OSError, ValueError):
            return {}

    def record(self, **fields: object) -> None:
        data = {**self._read_record(), **fields}
        tmp = self.record_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(self.record_path)

    def add_process(self, name: str, process: ManagedProcess) -> None:
        """Record a started process (its supervisor's pid and command line)."""
        proc = psutil.Process(process.pid)
        entry = {"name": name, "pid": proc.pid, "cmdline": proc.cmdline(), "create_time": proc.create_time()}
        self.record(processes=[*self._read_record().get("processes", []), entry])

    def _stop_leftovers(self) -> None:
        for entry in self._read_record().get("processes", []):
            try:
                proc = psutil.Process(entry["pid"])
                if proc.cmdline() != entry["cmdline"] or abs(proc.create_time() - entry["create_time"]) > 1:
                    continue  # the pid was reused by something else
                tree = [proc, *proc.children(recursive=True)]
            except psutil.Error:
                continue
            end_processes(tree, grace_s=15)
