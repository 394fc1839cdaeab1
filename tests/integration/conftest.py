"""Fixtures of the integration tests: a loop whose training is scripted at the Launcher
seam (the real LocalLauncher runs in the pipeline and end-to-end tests)."""

from __future__ import annotations

import pytest
from PIL import Image

from loop.core import Loop
from tests.conftest import make_settings
from tests.helpers.scripted import ScriptedLauncher


@pytest.fixture
def loop_with(tmp_path):
    def build(outcomes, **overrides) -> tuple[Loop, ScriptedLauncher]:
        folders = tmp_path / "folders"
        for label in ("a", "b"):
            (folders / label).mkdir(parents=True)
            for i in range(5):
                Image.new("L", (8, 8), 30 * i + (100 if label == "b" else 0)).save(folders / label / f"{i}.png")
        launcher = ScriptedLauncher(list(outcomes))
        loop = Loop(make_settings(tmp_path / "home", tmp_path / "ws", **overrides), launcher=launcher)
        loop.init(folder=folders, seed_per_class=2, test_fraction=0.2)
        return loop, launcher
    return build
