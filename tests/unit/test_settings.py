from pydantic import SecretStr

from kernel.settings import Settings


def test_env_prefix_and_yaml_file(tmp_path, monkeypatch):
    (tmp_path / "labelloop.yaml").write_text("retrain_min_new_labels: 7\nproject_title: from-yaml\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LABELLOOP_PROJECT_TITLE", "from-env")
    settings = Settings.load()
    assert settings.retrain_min_new_labels == 7  # yaml
    assert settings.project_title == "from-env"  # env beats yaml
    assert settings.home == (tmp_path / ".labelloop").resolve()  # made absolute once


def test_secrets_never_show_in_repr_but_reach_child_processes(tmp_path):
    settings = Settings.load(home=tmp_path, label_studio_api_key=SecretStr("s3cr3t-token"))
    assert "s3cr3t-token" not in repr(settings)
    env = settings.child_env()
    assert env["LABELLOOP_LABEL_STUDIO_API_KEY"] == "s3cr3t-token"
    assert env["BENTOML_HOME"] == str(tmp_path / "bentoml")
    assert settings.remote_url == str(tmp_path / "dvc-remote")


def test_token_of_the_managed_label_studio_is_found_without_configuration(tmp_path):
    settings = Settings.load(home=tmp_path)
    assert settings.label_studio_token() is None
    settings.label_studio_token_file.parent.mkdir(parents=True)
    settings.label_studio_token_file.write_text("managed-token\n")
    assert settings.label_studio_token() == "managed-token"
    configured = Settings.load(home=tmp_path, label_studio_api_key=SecretStr("configured"))
    assert configured.label_studio_token() == "configured"


def test_an_invalid_value_is_a_config_error_naming_its_variable(tmp_path, monkeypatch):
    import pytest

    from kernel.errors import ConfigError

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LABELLOOP_SERVICE_PORT", "abc")
    with pytest.raises(ConfigError, match=r"LABELLOOP_SERVICE_PORT='abc': .*integer.*labelloop.yaml"):
        Settings.load()


def test_the_serving_topology_is_one_process_unless_several_workers_or_a_gpu(tmp_path, monkeypatch):
    import kernel.settings as settings_module

    monkeypatch.setattr(settings_module, "gpu_visible", lambda: False)
    assert Settings.load(home=tmp_path).serving.one_process
    assert not Settings.load(home=tmp_path, serving_workers=2).serving.one_process
    assert not Settings.load(home=tmp_path, serving_topology="model_workers").serving.one_process
    # Asked for explicitly, one process it is, whatever the worker count says.
    assert Settings.load(home=tmp_path, serving_workers=2, serving_topology="one_process").serving.one_process
    monkeypatch.setattr(settings_module, "gpu_visible", lambda: True)
    assert not Settings.load(home=tmp_path).serving.one_process


def test_a_gpu_is_visible_only_when_its_device_exists_and_cuda_does_not_hide_it(monkeypatch):
    from pathlib import Path

    from kernel.settings import gpu_visible

    exists = Path("/dev/nvidia0").exists()
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert gpu_visible() == exists
    for hidden in ("", "-1"):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", hidden)
        assert not gpu_visible()
