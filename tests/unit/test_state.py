"""The loop's state database: typed marks, pending deletions, the review queue, job errors,
and the migration of a database written with string keys (`kv`) by an earlier version."""

import sqlite3

import pytest

from loop.state import LoopMarks, StateStore


def test_marks_are_typed_and_start_empty(tmp_path):
    state = StateStore(tmp_path / "state.db")
    assert state.marks() == LoopMarks()
    state.set_marks(project_id=3, training_requested=True, queue_version="m:1", queue_view=12)
    marks = StateStore(tmp_path / "state.db").marks()  # a second process sees the same
    assert (marks.project_id, marks.training_requested, marks.queue_version, marks.queue_view) == (3, True, "m:1", 12)
    state.set_marks(training_requested=False)
    assert state.marks().training_requested is False and state.marks().project_id == 3


def test_an_unknown_mark_is_a_bug_not_a_new_key(tmp_path):
    with pytest.raises(TypeError, match="not a loop mark"):
        StateStore(tmp_path / "state.db").set_marks(projectid=3)


def test_pending_deletions_review_queue_and_job_errors(tmp_path):
    state = StateStore(tmp_path / "state.db")
    state.add_pending_deletions([17, 18])
    state.add_pending_deletions([18, 19])  # a webhook replayed after a crash: no duplicate
    state.forget_deletions({17})
    assert state.pending_deletions() == {18, 19}
    state.set_review_queue({7: 3, 8: 3})
    state.set_review_queue({8: 3})
    assert state.review_queue() == {8: 3}
    state.set_next_run("collect", "2026-01-01T00:00:30+00:00")
    state.set_job_error("collect", "Label Studio unreachable")
    state.set_job_error("rescore", "service down")
    assert state.job_errors() == {"collect": "Label Studio unreachable", "rescore": "service down"}
    state.set_job_error("rescore", None)  # it succeeded again: the error is gone from status
    assert state.job_errors() == {"collect": "Label Studio unreachable"}
    assert state.next_runs() == {"collect": "2026-01-01T00:00:30+00:00"}


def test_a_database_with_string_keys_is_migrated_once(tmp_path):
    path = tmp_path / "state.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE kv (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        db.executemany("INSERT INTO kv VALUES (?, ?)", [
            ("project_id", "4"), ("pushed_commit", "abc"), ("training_requested", "1"),
            ("deleted_annotations", "[5, 6]"), ("review_queue", '{"9": 3}'),
            ("rescored", "labelloop-classifier:v1 120"), ("queue_view", "2"),
            ("error:collect", "boom"), ("error:retrain", ""), ("schedule", "{}"),
        ])
    state = StateStore(path)
    marks = state.marks()
    assert (marks.project_id, marks.pushed_commit, marks.training_requested, marks.queue_view) == (4, "abc", True, 2)
    assert (marks.rescored_version, marks.rescored_tasks) == ("labelloop-classifier:v1", 120)
    assert state.pending_deletions() == {5, 6} and state.review_queue() == {9: 3}
    assert state.job_errors() == {"collect": "boom"}
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT name FROM sqlite_master WHERE name = 'kv'").fetchone() is None
    assert StateStore(path).marks() == marks  # opening again changes nothing
