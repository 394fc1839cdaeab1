"""Settings choose the training launcher; the Kubernetes one says what it is missing."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from kernel.errors import ConfigError
from loop.launchers import KubernetesLauncher, LocalLauncher, make_launcher
from loop.launchers.kubernetes import job_name
from tests.conftest import make_settings


def test_settings_choose_the_launcher(tmp_path):
    assert isinstance(make_launcher(make_settings(tmp_path / "h", tmp_path / "w")), LocalLauncher)
    with pytest.raises(ConfigError, match="LABELLOOP_ARTIFACTS_URL"):
        make_launcher(make_settings(tmp_path / "h", tmp_path / "w", launcher="kubernetes"))
    with pytest.raises(ConfigError, match="LABELLOOP_K8S_GIT_SOURCE"):
        make_launcher(make_settings(tmp_path / "h", tmp_path / "w", launcher="kubernetes",
                                    artifacts_url=str(tmp_path / "a"), k8s_api_url="http://127.0.0.1:1"))
    settings = make_settings(tmp_path / "h", tmp_path / "w", launcher="kubernetes",
                             artifacts_url=str(tmp_path / "a"), k8s_git_source="/g",
                             k8s_api_url="http://127.0.0.1:1")
    k = make_launcher(settings)
    assert isinstance(k, KubernetesLauncher)
    assert yaml.safe_load(k.template and yaml.safe_dump(k.template))["kind"] == "Job"
    assert k.config == settings.kubernetes and k.runs_dir == settings.runs_dir


def test_the_package_exports_its_api_and_loads_the_kubernetes_client_lazily():
    import loop.launchers

    assert sorted(loop.launchers.__all__) == sorted(
        ["Launcher", "TrainingRequest", "TrainingResult", "LocalLauncher", "KubernetesLauncher", "make_launcher"])
    code = ("import sys, loop.launchers; from loop.launchers import make_launcher, TrainingRequest, Launcher;"
            "print('kubernetes' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_job_names_are_valid_dns_labels():
    name = job_name("20261127-210455-AbC1234_x/y" + "z" * 80)
    assert len(name) <= 63 and name == name.lower() and name[0].isalnum() and name[-1].isalnum()
    assert set(name) <= set("abcdefghijklmnopqrstuvwxyz0123456789-")
