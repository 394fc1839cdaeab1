"""Settings choose the training launcher; the Kubernetes one says what it is missing."""

from __future__ import annotations

import pytest
import yaml

from loop.kubernetes import KubernetesLauncher, job_name
from tests.conftest import make_settings


def test_settings_choose_the_launcher(tmp_path):
    from loop.errors import ConfigError
    from loop.launcher import LocalLauncher, make_launcher

    assert isinstance(make_launcher(make_settings(tmp_path / "h", tmp_path / "w")), LocalLauncher)
    with pytest.raises(ConfigError, match="LABELLOOP_ARTIFACTS_URL"):
        make_launcher(make_settings(tmp_path / "h", tmp_path / "w", launcher="kubernetes"))
    k = make_launcher(make_settings(tmp_path / "h", tmp_path / "w", launcher="kubernetes",
                                    artifacts_url=str(tmp_path / "a"), k8s_git_source="/g",
                                    k8s_api_url="http://127.0.0.1:1"))
    assert isinstance(k, KubernetesLauncher)
    assert yaml.safe_load(k.template and yaml.safe_dump(k.template))["kind"] == "Job"


def test_job_names_are_valid_dns_labels():
    name = job_name("20261127-210455-AbC1234_x/y" + "z" * 80)
    assert len(name) <= 63 and name == name.lower() and name[0].isalnum() and name[-1].isalnum()
    assert set(name) <= set("abcdefghijklmnopqrstuvwxyz0123456789-")
