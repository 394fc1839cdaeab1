from __future__ import annotations

import pytest

from loop.core import Loop
from tests.conftest import make_settings


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
