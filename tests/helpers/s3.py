"""A real S3 API on 127.0.0.1: moto's standalone server (`moto_server`) as a subprocess,
spoken to over HTTP by boto, s3fs, DVC and Label Studio alike (never an in-process mock)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from loop.stack import free_port

__all__ = ["S3Server", "S3_ENV"]

#: moto accepts any key pair unless it enforces IAM (`enforce_auth`).
S3_ENV = {"AWS_ACCESS_KEY_ID": "labelloop-test", "AWS_SECRET_ACCESS_KEY": "labelloop-test-secret",
          "AWS_DEFAULT_REGION": "us-east-1"}


class S3Server:
    def __init__(self, log: Path, *, enforce_auth: bool = False):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = log
        self._env = {**os.environ, **S3_ENV}
        if enforce_auth:  # every request must carry credentials moto's IAM knows: none do
            self._env["INITIAL_NO_AUTH_ACTION_COUNT"] = "0"
        self._proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 60.0) -> "S3Server":
        moto = Path(sys.executable).with_name("moto_server")
        self._proc = subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", str(self.port)], env=self._env,
                                      stdout=self._log.open("ab"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"moto_server exited with {self._proc.returncode}: see {self._log}")
            try:
                httpx.get(f"{self.url}/moto-api/", timeout=1.0)
                return self
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError(f"moto_server did not answer within {timeout_s} s: see {self._log}")

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.url, aws_access_key_id=S3_ENV["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=S3_ENV["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
