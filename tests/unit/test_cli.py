from unittest import mock

import pytest

from loop import cli
from loop.core import CollectResult, Loop
from loop.errors import LabelStudioError


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


def test_train_busy_is_exit_1(loop_cls):
    loop_cls.return_value.train.return_value = None
    assert cli.main(["train"]) == 1
    loop_cls.return_value.train.assert_called_once_with(trigger="cli", rescore=False)


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
