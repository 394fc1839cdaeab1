"""Shared fixtures: ONE real Label Studio server per test session (its own venv), real
`bentoml serve` processes, real git+DVC workspaces with a local remote. No fixed ports."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import pytest

from loop.core import Loop
from kernel.settings import Settings
from loop.stack import LabelStudioServer, free_port
from tests.helpers.s3 import S3_ENV, S3Server

REPO = Path(__file__).resolve().parents[1]
LS_VENV = Path(os.environ.get("LABELLOOP_LABEL_STUDIO_VENV", REPO / ".venv-labelstudio"))


@pytest.fixture(scope="session")
def files_root(tmp_path_factory) -> Path:
    """Label Studio's local-files document root: every workspace a test makes lives here."""
    return tmp_path_factory.mktemp("files")


def make_settings(home: Path, workspace: Path, **overrides) -> Settings:
    values = {
        "home": home,
        "workspace": workspace,
        "label_studio_venv": LS_VENV,
        "service_port": free_port(),
        "dashboard_port": free_port(),
        "collect_overlap_s": 300.0,
    }
    values.update(overrides)
    return Settings.load(**values)


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory, files_root) -> LabelStudioServer:
    base = tmp_path_factory.mktemp("label-studio")
    settings = make_settings(
        base / "home", base / "unused",
        label_studio_url=f"http://127.0.0.1:{free_port()}",
        label_studio_api_key=secrets.token_hex(16),
        label_studio_files_root=files_root,
    )
    server = LabelStudioServer(settings, base / "data").start(timeout_s=400)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> S3Server:
    """ONE real S3 API on loopback per session; each test uses its own buckets."""
    server = S3Server(tmp_path_factory.mktemp("s3") / "moto.log").start()
    yield server
    server.stop()


@pytest.fixture
def s3_env(s3_server, monkeypatch) -> S3Server:
    """boto's usual places point at the loopback server: DVC, s3fs and labelloop read them."""
    for key, value in {**S3_ENV, "AWS_ENDPOINT_URL": s3_server.url}.items():
        monkeypatch.setenv(key, value)
    return s3_server


@pytest.fixture
def ls_settings(label_studio, files_root, tmp_path):
    """Settings for one test: its own home, a workspace under the document root, the shared server."""
    def build(name: str, **overrides) -> Settings:
        values = dict(
            label_studio_url=label_studio.url,
            label_studio_api_key=label_studio.token,
            label_studio_files_root=files_root,
            project_title=f"labelloop-{name}",
        )
        values.update(overrides)  # e.g. a proxy in front of the server
        return make_settings(tmp_path / "home", files_root / name / "workspace", **values)
    return build


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A digits workspace with model v1 trained by the real pipeline (dvc repro, Keras)
    and promoted. Shared by the integration tests that need a model."""
    base = tmp_path_factory.mktemp("trained")
    settings = make_settings(base / "home", base / "workspace")
    loop = Loop(settings)
    loop.init(starter="digits")
    run = loop.train(trigger="test")
    assert run is not None and run.status == "promoted", run
    return loop, run
