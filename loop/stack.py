"""Starting and stopping the processes of the embedded stack: Label Studio (from its own
venv) and the labelloop service (`bentoml serve`). Used by `up`, `demo` and the tests."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import httpx

from loop.errors import ConfigError, LabelloopError
from loop.settings import Settings
from serving.client import PredictionClient

__all__ = ["ManagedProcess", "LabelStudioServer", "ServiceServer", "free_port"]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ManagedProcess:
    name = "process"

    def __init__(self, log_path: Path):
        self.log_path = log_path
        self._proc: subprocess.Popen | None = None

    def _spawn(self, cmd: list[str], env: dict[str, str], cwd: Path) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        # Own session: stop() ends the whole tree (bentoml and Label Studio fork workers).
        self._proc = subprocess.Popen(
            cmd, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )

    def _wait_http(self, url: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise LabelloopError(
                    f"{self.name} exited with code {self._proc.returncode}; see {self.log_path}"
                )
            try:
                if httpx.get(url, timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise LabelloopError(f"{self.name} not ready after {timeout_s:.0f}s; see {self.log_path}")

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self, timeout_s: float = 15.0) -> None:
        if self._proc is None or self._proc.poll() is not None:
            return
        os.killpg(self._proc.pid, signal.SIGTERM)
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
        client = PredictionClient.for_settings(self.settings)
        deadline = time.monotonic() + timeout_s
        while client.health() is None:
            if self._proc is not None and self._proc.poll() is not None:
                raise LabelloopError(
                    f"{self.name} exited with code {self._proc.returncode}; see {self.log_path}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise LabelloopError(f"{self.name} not ready after {timeout_s:.0f}s; see {self.log_path}")
            time.sleep(0.5)
