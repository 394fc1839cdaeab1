from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import pytest

from kernel.errors import LabelStudioError, ServiceUnavailableError, TrainingBusyError, TrainingError
from loop import cli
from loop.core import CollectResult, Loop


@pytest.fixture
def loop_cls():
    with mock.patch.object(cli, "Loop", autospec=True) as patched:
        yield patched


def test_collect_calls_loop_collect_once(loop_cls):
    loop_cls.return_value.collect.return_value = CollectResult(3, 2, 1, "abcdef1234", 4)
    assert cli.main(["collect"]) == 0
    loop_cls.return_value.collect.assert_called_once_with(full=False)


def test_collect_full_flag(loop_cls):
    loop_cls.return_value.collect.return_value = CollectResult(0, 0, 0, None, 4)
    assert cli.main(["collect", "--full"]) == 0
    loop_cls.return_value.collect.assert_called_once_with(full=True)


def test_labelloop_errors_become_exit_codes(loop_cls, capsys):
    loop_cls.return_value.collect.side_effect = LabelStudioError("Label Studio at x is unreachable")
    assert cli.main(["collect"]) == LabelStudioError.exit_code
    assert "unreachable" in capsys.readouterr().err


def test_train_busy_is_its_own_exit_code(loop_cls, capsys):
    loop_cls.return_value.train.side_effect = TrainingBusyError("a training run is already in progress")
    assert cli.main(["train"]) == TrainingBusyError.exit_code == 9
    loop_cls.return_value.train.assert_called_once_with(trigger="cli", rescore=False)
    assert "already in progress" in capsys.readouterr().err


def test_a_failed_run_exits_with_the_training_code_and_names_the_log(loop_cls, capsys, monkeypatch):
    from loop.state import RunRecord

    loop_cls.return_value.train.return_value = RunRecord(
        "r2", "failed", "dvc repro exited 1", "cli", "abc", 1, None, None, None, "t0", "t1")
    monkeypatch.setattr(cli, "_settings", lambda **_: SimpleNamespace(runs_dir=Path("/home/runs")))
    assert cli.main(["train"]) == TrainingError.exit_code
    err = capsys.readouterr().err
    assert "run r2 failed: dvc repro exited 1" in err and "/home/runs/r2/job.log" in err
    loop_cls.return_value.rescore.assert_not_called()


@pytest.mark.parametrize("argv", [["--bogus"], ["collect", "--nope"], ["no-such-command"]])
def test_usage_errors_exit_2_with_clicks_message_and_no_traceback(argv, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "Usage:" in err and "Traceback" not in err


def test_version():
    from importlib.metadata import version

    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "loop.cli", "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == f"labelloop {version('labelloop')}"


def test_rescore_with_the_service_down_exits_non_zero_naming_its_url(tmp_path, capsys, monkeypatch):
    """The real Loop and the real client: nothing listens on the service URL."""
    import socket

    from loop.core import Loop
    from tests.conftest import make_settings

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    settings = make_settings(tmp_path / "home", tmp_path / "ws", service_url=f"http://127.0.0.1:{port}")
    Loop(settings).init(starter="digits")
    from serving import PromotionRecord, write_promotion

    write_promotion(settings.promotion_file, PromotionRecord(
        tag="labelloop-classifier:x", accuracy=0.9, data_commit="abc", n_labels=20, run_id="r"))
    monkeypatch.setattr(cli, "_settings", lambda **_: settings)
    assert cli.main(["rescore"]) == ServiceUnavailableError.exit_code
    err = capsys.readouterr().err
    assert f"127.0.0.1:{port}" in err and "not reachable" in err and "Traceback" not in err


def test_os_errors_become_a_message_not_a_traceback(loop_cls, capsys):
    loop_cls.return_value.collect.side_effect = OSError(28, "No space left on device")
    assert cli.main(["collect"]) == cli.OS_ERROR_EXIT
    err = capsys.readouterr().err
    assert "No space left" in err and "disk space" in err and "Traceback" not in err


def test_train_promoted_then_rescores_the_pool_with_that_model(loop_cls):
    from loop.state import RunRecord

    loop_cls.return_value.train.return_value = RunRecord(
        "r1", "promoted", "first model", "cli", "abc", 1, 20, "m:1", 0.9, "t0", "t1")
    assert cli.main(["train"]) == 0
    args, kwargs = loop_cls.return_value.rescore.call_args
    assert args == ("m:1",) and callable(kwargs["progress"])


def test_loop_signature_matches_what_cli_calls():
    # autospec above would not catch a renamed keyword if the CLI and Loop drifted together
    assert "full" in Loop.collect.__code__.co_varnames


def test_rollback_to_a_version_that_does_not_exist_is_exit_5_and_says_what_to_do(loop_cls, capsys):
    from kernel.errors import NoModelError

    loop_cls.return_value.rollback.side_effect = NoModelError("v9 was never promoted here; `labelloop status` lists ...")
    assert cli.main(["rollback", "v9", "--reason", "bad"]) == NoModelError.exit_code == 5
    loop_cls.return_value.rollback.assert_called_once_with("v9", reason="bad")
    assert "never promoted" in capsys.readouterr().err


def test_promote_names_the_run(loop_cls, capsys):
    from serving import PromotionRecord

    loop_cls.return_value.promote.return_value = PromotionRecord(
        tag="m:abc", accuracy=0.9, data_commit="c", n_labels=10, run_id="r7")
    assert cli.main(["promote", "r7"]) == 0
    loop_cls.return_value.promote.assert_called_once_with("r7", reason="")
    assert "m:abc serves now (run r7" in capsys.readouterr().out
