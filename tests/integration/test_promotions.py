"""Who decides which model serves: the gate (auto), a person (manual, `promote`), and
`rollback`; every change in the history, the promotion record and the history agreeing
under concurrent changes. A scripted launcher at the Launcher seam; the real training,
service and Label Studio are in tests/e2e/test_rollback.py."""

from __future__ import annotations

import threading

import pytest

from kernel.errors import LabelloopError, NoModelError
from serving import read_promotion


def _models(loop, *tags: str) -> None:
    """The models exist in the store the service loads from (as registered runs leave them)."""
    for tag in tags:
        name, version = tag.split(":")
        (loop.settings.bentoml_home / "models" / name / version).mkdir(parents=True, exist_ok=True)


def test_every_change_is_in_the_history_and_rollback_restores_the_record(loop_with):
    loop, _ = loop_with([(True, 0.80), (True, 0.85), (True, 0.90)])
    _models(loop, "m:1", "m:2", "m:3")
    runs = [loop.train(trigger="t") for _ in range(3)]
    assert [r.status for r in runs] == ["promoted"] * 3
    first_record = read_promotion(loop.settings.promotion_file)

    back = loop.rollback(reason="m:3 mislabels cats")
    assert back.tag == "m:2" and read_promotion(loop.settings.promotion_file).tag == "m:2"
    again = loop.rollback("1")  # the version part of a tag is enough
    assert again.tag == "m:1" and again.run_id == runs[0].run_id and again.accuracy == 0.80

    history = loop.status().promotions
    assert [(e.action, e.tag, e.from_tag) for e in history] == [
        ("rollback", "m:1", "m:2"), ("rollback", "m:2", "m:3"),
        ("promote", "m:3", "m:2"), ("promote", "m:2", "m:1"), ("promote", "m:1", None)]
    assert history[1].reason == "m:3 mislabels cats" and history[2].by == "gate"
    assert "@" in history[0].by  # the user who ran it
    assert first_record.tag == "m:3"


def test_a_rollback_that_cannot_happen_changes_nothing(loop_with):
    loop, _ = loop_with([(True, 0.80), (True, 0.85)])
    with pytest.raises(NoModelError, match="nothing to roll back"):
        loop.rollback()
    _models(loop, "m:1", "m:2")
    loop.train(trigger="t")
    with pytest.raises(NoModelError, match="only model ever promoted"):
        loop.rollback()
    loop.train(trigger="t")
    with pytest.raises(NoModelError, match="never promoted here"):
        loop.rollback("no-such-version")
    (loop.settings.bentoml_home / "models" / "m" / "1").rmdir()  # deleted from the store
    with pytest.raises(NoModelError, match="no longer in the model store"):
        loop.rollback()
    assert read_promotion(loop.settings.promotion_file).tag == "m:2"
    assert [e.action for e in loop.status().promotions] == ["promote", "promote"]


def test_manual_mode_approves_and_a_person_promotes(loop_with):
    loop, _ = loop_with([(True, 0.80), (True, 0.70), (False, 0.0)], promotion_mode="manual")
    _models(loop, "m:1", "m:2")
    approved = loop.train(trigger="t")
    assert approved.status == "approved" and f"labelloop promote {approved.run_id}" in approved.reason
    assert read_promotion(loop.settings.promotion_file) is None

    loop.promote(approved.run_id)
    assert read_promotion(loop.settings.promotion_file).tag == "m:1"
    assert loop.state.run(approved.run_id).status == "promoted"

    worse = loop.train(trigger="t")
    assert worse.status == "rejected"
    loop.promote(worse.run_id, reason="the evaluation set is too small to trust")  # on purpose
    assert read_promotion(loop.settings.promotion_file).tag == "m:2"
    assert loop.status().promotions[0].reason == "the evaluation set is too small to trust"

    failed = loop.train(trigger="t")
    with pytest.raises(NoModelError, match="has no model"):
        loop.promote(failed.run_id)
    with pytest.raises(NoModelError, match="no training run"):
        loop.promote("20990101-nope")
    with pytest.raises(NoModelError, match="already serving"):
        loop.promote(worse.run_id)


def test_concurrent_promote_and_rollback_leave_record_and_history_agreeing(loop_with):
    loop, _ = loop_with([(True, 0.80)] * 3, promotion_mode="manual")
    _models(loop, "m:1", "m:2", "m:3")
    runs = [loop.train(trigger="t") for _ in range(3)]
    loop.promote(runs[0].run_id)
    loop.promote(runs[1].run_id)
    errors: list[Exception] = []

    def act(fn) -> None:
        try:
            fn()
        except LabelloopError as exc:  # "already serving" when the other one won first
            errors.append(exc)

    for _ in range(5):
        threads = [threading.Thread(target=act, args=(lambda: loop.promote(runs[2].run_id),)),
                   threading.Thread(target=act, args=(lambda: loop.rollback("1"),))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        history = loop.status().promotions
        assert read_promotion(loop.settings.promotion_file).tag == history[0].tag
        for newer, older in zip(history, history[1:]):  # each change starts where the last ended
            assert newer.from_tag == older.tag
    assert all(isinstance(e, NoModelError) for e in errors)
