"""The loop's own state in SQLite (safe to read while the scheduler writes), typed.

Tables: `runs` (training runs), `promotions` (every change of the serving model), `marks`
(one row of typed scalar state, `LoopMarks`), `tasks` (the Label Studio task of every pool image), `pending_deletions` (annotation ids a
webhook reported deleted, until a collect handles them), `review_queue` (tasks re-queued
for one more annotator), `jobs` (scheduler jobs: next run, last error), `leases`,
`pool_predictions` (the serving model's predicted class of every pool image at the last
re-score) and `prediction_stability` (how much those changed from one model to the next:
the stopping signal of `loop.quality`).
A database written by an earlier version (a `kv` table of string keys) is migrated on open.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from pathlib import Path

__all__ = ["LoopMarks", "RunRecord", "PromotionEvent", "StabilityRecord", "StateStore", "utcnow"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    status TEXT NOT NULL,          -- running | promoted | rejected | failed
    reason TEXT NOT NULL DEFAULT '',
    trigger TEXT NOT NULL DEFAULT '',
    data_commit TEXT NOT NULL,
    label_batch INTEGER NOT NULL,
    n_labels INTEGER,
    model_tag TEXT,
    accuracy REAL,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    judged_by TEXT,                -- test | eval | cv: the set whose accuracy the gate used
    n_judged INTEGER               -- how many labels that set held
);
CREATE TABLE IF NOT EXISTS marks (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    project_id INTEGER,
    last_collect TEXT,
    last_full_collect TEXT,
    last_collect_commit TEXT,
    pushed_commit TEXT,
    training_requested INTEGER NOT NULL DEFAULT 0,
    queue_version TEXT,
    eval_interleaved INTEGER NOT NULL DEFAULT 0,
    queue_view INTEGER,
    rescored_version TEXT,
    rescored_tasks INTEGER,
    quality_checked_batch INTEGER,
    pool_predictions_version TEXT
);
INSERT OR IGNORE INTO marks (id) VALUES (1);
CREATE TABLE IF NOT EXISTS tasks (task_id INTEGER PRIMARY KEY, image TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS pending_deletions (annotation_id INTEGER PRIMARY KEY);
CREATE TABLE IF NOT EXISTS review_queue (
    task_id INTEGER PRIMARY KEY,
    annotators INTEGER NOT NULL    -- how many annotators Label Studio was asked to serve it to
);
CREATE TABLE IF NOT EXISTS jobs (
    job TEXT PRIMARY KEY,          -- collect | retrain | cron | rescore
    next_run TEXT,
    error TEXT                     -- the last failure, NULL once the job succeeds again
);
CREATE TABLE IF NOT EXISTS promotions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    action TEXT NOT NULL,          -- promote | rollback
    tag TEXT NOT NULL,             -- the model serving after it
    from_tag TEXT,                 -- the model serving before it
    run_id TEXT,
    by TEXT NOT NULL,              -- "gate" or the user (user@host)
    reason TEXT NOT NULL DEFAULT '',
    record TEXT NOT NULL           -- the promotion record written (JSON): what a rollback restores
);
CREATE TABLE IF NOT EXISTS pool_predictions (
    image TEXT PRIMARY KEY,
    label TEXT NOT NULL            -- predicted by marks.pool_predictions_version
);
CREATE TABLE IF NOT EXISTS prediction_stability (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    version TEXT NOT NULL,         -- the model re-scoring the pool now
    previous TEXT NOT NULL,        -- the model that scored it before
    images INTEGER NOT NULL,       -- pool images both predicted
    changed INTEGER NOT NULL,      -- of those, predicted differently
    kappa REAL                     -- Cohen's kappa of the two models' predictions (NULL: undefined)
);
CREATE TABLE IF NOT EXISTS leases (
    name TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    expires_at REAL NOT NULL       -- unix time; a crashed owner's lease simply runs out
);
"""


def utcnow() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class LoopMarks:
    """The loop's scalar state (one row of `marks`)."""

    project_id: int | None = None
    last_collect: str | None = None  # when a collect last ran (UTC ISO)
    last_full_collect: str | None = None
    last_collect_commit: str | None = None  # the newest data commit a collect made
    pushed_commit: str | None = None  # the newest data commit known to be in the DVC remote
    training_requested: bool = False  # START_TRAINING, a schedule or a person queued a run
    queue_version: str | None = None  # the model version Label Studio's queue follows
    eval_interleaved: bool = False  # evaluation tasks sit among the pool's (the set is not ready)
    queue_view: int | None = None  # the Data Manager tab "labelloop queue"
    rescored_version: str | None = None  # the model the pool was last re-scored with
    rescored_tasks: int | None = None
    quality_checked_batch: int | None = None  # labels of batches up to this one were checked for suspects
    pool_predictions_version: str | None = None  # the model whose predictions `pool_predictions` holds


_MARKS = tuple(f.name for f in fields(LoopMarks))


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    status: str
    reason: str
    trigger: str
    data_commit: str
    label_batch: int
    n_labels: int | None
    model_tag: str | None
    accuracy: float | None
    started_at: str
    finished_at: str | None
    judged_by: str | None = None  # test | eval | cv (pipelines.prepare)
    n_judged: int | None = None  # labels in the set that judged it


@dataclass(frozen=True)
class StabilityRecord:
    """How the pool's predicted classes changed between two successive serving models."""

    at: str
    version: str
    previous: str
    images: int
    changed: int
    kappa: float | None


@dataclass(frozen=True)
class PromotionEvent:
    """One change of the serving model (`promotions` table), newest first from `promotions()`."""

    id: int
    at: str
    action: str
    tag: str
    from_tag: str | None
    run_id: str | None
    by: str
    reason: str
    record: str


class StateStore:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        with self._db() as db:
            db.executescript(SCHEMA)
            _migrate_kv(db)
            _add_missing_columns(db, "runs", {"judged_by": "TEXT", "n_judged": "INTEGER"})
            _add_missing_columns(db, "marks", {"eval_interleaved": "INTEGER NOT NULL DEFAULT 0",
                                               "quality_checked_batch": "INTEGER", "pool_predictions_version": "TEXT"})

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            # Autocommit, except where a method opens its own transaction (BEGIN IMMEDIATE).
            yield db
            if db.in_transaction:
                db.commit()
        except BaseException:
            if db.in_transaction:
                db.rollback()
            raise
        finally:
            db.close()

    # --- marks ----------------------------------------------------------------------------
    def marks(self) -> LoopMarks:
        with self._db() as db:
            row = db.execute(f"SELECT {', '.join(_MARKS)} FROM marks WHERE id = 1").fetchone()
        values = dict(zip(_MARKS, row))
        for flag in ("training_requested", "eval_interleaved"):
            values[flag] = bool(values[flag])
        return LoopMarks(**values)

    def set_marks(self, **changes: object) -> None:
        """Update some marks (names and types of `LoopMarks`; an unknown name is a bug)."""
        unknown = set(changes) - set(_MARKS)
        if unknown:
            raise TypeError(f"not a loop mark: {sorted(unknown)}")
        if changes:
            with self._db() as db:
                db.execute(f"UPDATE marks SET {', '.join(f'{k} = ?' for k in changes)} WHERE id = 1",
                           tuple(changes.values()))

    # --- the pool's tasks -------------------------------------------------------------------
    def set_tasks(self, tasks: dict[int, str]) -> None:
        """The Label Studio task of every pool image (replaces what was there)."""
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            db.execute("DELETE FROM tasks")
            db.executemany("INSERT INTO tasks (task_id, image) VALUES (?, ?)", sorted(tasks.items()))

    def tasks(self) -> dict[int, str]:
        with self._db() as db:
            return dict(db.execute("SELECT task_id, image FROM tasks").fetchall())

    # --- deletions a webhook reported, until a collect handles them ---------------------------
    def add_pending_deletions(self, annotation_ids: Iterable[int]) -> None:
        with self._db() as db:
            db.executemany("INSERT OR IGNORE INTO pending_deletions (annotation_id) VALUES (?)",
                           [(int(a),) for a in annotation_ids])

    def pending_deletions(self) -> set[int]:
        with self._db() as db:
            return {row[0] for row in db.execute("SELECT annotation_id FROM pending_deletions")}

    def forget_deletions(self, handled: Iterable[int]) -> None:
        """Only what a collect handled: a deletion that arrived meanwhile stays pending."""
        with self._db() as db:
            db.executemany("DELETE FROM pending_deletions WHERE annotation_id = ?", [(int(a),) for a in handled])

    # --- tasks re-queued for review -----------------------------------------------------------
    def review_queue(self) -> dict[int, int]:
        """Task id -> the number of annotators Label Studio was asked to serve it to."""
        with self._db() as db:
            return dict(db.execute("SELECT task_id, annotators FROM review_queue").fetchall())

    def set_review_queue(self, asked: dict[int, int]) -> None:
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            db.execute("DELETE FROM review_queue")
            db.executemany("INSERT INTO review_queue (task_id, annotators) VALUES (?, ?)", sorted(asked.items()))

    # --- the pool's predictions and their stability (the stopping signal) ----------------------
    def pool_predictions(self) -> tuple[str | None, dict[str, str]]:
        """(model version, {image: predicted class}) of the last re-score by a model."""
        with self._db() as db:
            version = db.execute("SELECT pool_predictions_version FROM marks WHERE id = 1").fetchone()[0]
            return version, dict(db.execute("SELECT image, label FROM pool_predictions").fetchall())

    def replace_pool_predictions(self, version: str, predictions: dict[str, str],
                                 stability: StabilityRecord | None = None) -> None:
        """The new model's predictions replace the old ones, with how they changed (one transaction)."""
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            db.execute("DELETE FROM pool_predictions")
            db.executemany("INSERT INTO pool_predictions (image, label) VALUES (?, ?)", sorted(predictions.items()))
            db.execute("UPDATE marks SET pool_predictions_version = ? WHERE id = 1", (version,))
            if stability is not None:
                db.execute("INSERT INTO prediction_stability (at, version, previous, images, changed, kappa) "
                           "VALUES (?, ?, ?, ?, ?, ?)", (stability.at, stability.version, stability.previous,
                                                         stability.images, stability.changed, stability.kappa))

    def stability(self, limit: int = 10) -> list[StabilityRecord]:
        """The latest model-to-model changes of the pool's predictions, newest first."""
        with self._db() as db:
            rows = db.execute(f"SELECT {', '.join(StabilityRecord.__dataclass_fields__)} FROM prediction_stability "
                              "ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        return [StabilityRecord(*row) for row in rows]

    # --- scheduler jobs ---------------------------------------------------------------------
    def set_next_run(self, job: str, when: str | None) -> None:
        with self._db() as db:
            db.execute("INSERT INTO jobs (job, next_run) VALUES (?, ?) ON CONFLICT (job) "
                       "DO UPDATE SET next_run = excluded.next_run", (job, when))

    def set_job_error(self, job: str, error: str | None) -> None:
        with self._db() as db:
            db.execute("INSERT INTO jobs (job, error) VALUES (?, ?) ON CONFLICT (job) "
                       "DO UPDATE SET error = excluded.error", (job, error))

    def job_errors(self) -> dict[str, str]:
        with self._db() as db:
            return dict(db.execute("SELECT job, error FROM jobs WHERE error IS NOT NULL ORDER BY job"))

    def next_runs(self) -> dict[str, str | None]:
        with self._db() as db:
            return dict(db.execute("SELECT job, next_run FROM jobs WHERE next_run IS NOT NULL ORDER BY job"))

    # --- training runs ----------------------------------------------------------------------
    def start_run(self, run_id: str, data_commit: str, label_batch: int, trigger: str) -> None:
        with self._db() as db:
            db.execute(
                "INSERT INTO runs (run_id, status, trigger, data_commit, label_batch, started_at) "
                "VALUES (?, 'running', ?, ?, ?, ?)",
                (run_id, trigger, data_commit, label_batch, utcnow()),
            )

    def finish_run(
        self, run_id: str, status: str, reason: str, *,
        model_tag: str | None = None, accuracy: float | None = None, n_labels: int | None = None,
        judged_by: str | None = None, n_judged: int | None = None,
    ) -> None:
        with self._db() as db:
            db.execute(
                "UPDATE runs SET status = ?, reason = ?, model_tag = ?, accuracy = ?, n_labels = ?, "
                "judged_by = ?, n_judged = ?, finished_at = ? WHERE run_id = ?",
                (status, reason, model_tag, accuracy, n_labels, judged_by, n_judged, utcnow(), run_id),
            )

    def runs(self, limit: int = 20) -> list[RunRecord]:
        with self._db() as db:
            rows = db.execute(
                f"SELECT {', '.join(RunRecord.__dataclass_fields__)} FROM runs "
                "ORDER BY started_at DESC, rowid DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [RunRecord(*row) for row in rows]

    def run(self, run_id: str) -> RunRecord:
        with self._db() as db:
            row = db.execute(
                f"SELECT {', '.join(RunRecord.__dataclass_fields__)} FROM runs WHERE run_id = ?",
                (run_id,),
            ).fetchone()
        if row is None:
            raise KeyError(run_id)
        return RunRecord(*row)

    def run_or_none(self, run_id: str) -> RunRecord | None:
        try:
            return self.run(run_id)
        except KeyError:
            return None

    def last_finished_run(self) -> RunRecord | None:
        return next((r for r in self.runs(100) if r.status != "running"), None)

    def fail_interrupted_runs(self) -> int:
        """Runs left 'running' by a killed scheduler: mark failed so a new one can start."""
        with self._db() as db:
            cur = db.execute(
                "UPDATE runs SET status = 'failed', reason = 'interrupted (scheduler stopped)', "
                "finished_at = ? WHERE status = 'running'",
                (utcnow(),),
            )
            return cur.rowcount

    # --- promotion history ------------------------------------------------------------------
    def record_promotion(self, action: str, tag: str, from_tag: str | None, run_id: str | None, by: str,
                         reason: str, record: str) -> None:
        with self._db() as db:
            db.execute("INSERT INTO promotions (at, action, tag, from_tag, run_id, by, reason, record) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (utcnow(), action, tag, from_tag, run_id, by, reason, record))

    def promotions(self, limit: int = 20) -> list[PromotionEvent]:
        with self._db() as db:
            rows = db.execute(f"SELECT {', '.join(PromotionEvent.__dataclass_fields__)} FROM promotions "
                              "ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        return [PromotionEvent(*row) for row in rows]

    # --- leases: one holder at a time, across threads, processes and restarts ----------
    def acquire_lease(self, name: str, owner: str, ttl_s: float) -> str | None:
        """Take (or renew) the lease; None on success, else the current holder."""
        now = time.time()
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")  # no other writer between the read and the write
            row = db.execute("SELECT owner, expires_at FROM leases WHERE name = ?", (name,)).fetchone()
            if row is not None and row[0] != owner and row[1] > now:
                return row[0]
            db.execute("INSERT OR REPLACE INTO leases (name, owner, expires_at) VALUES (?, ?, ?)",
                       (name, owner, now + ttl_s))
        return None

    def release_lease(self, name: str, owner: str) -> None:
        with self._db() as db:
            db.execute("DELETE FROM leases WHERE name = ? AND owner = ?", (name, owner))

    def lease_holder(self, name: str) -> tuple[str, float] | None:
        """(owner, seconds left) of a live lease."""
        with self._db() as db:
            row = db.execute("SELECT owner, expires_at FROM leases WHERE name = ?", (name,)).fetchone()
        if row is None or row[1] <= time.time():
            return None
        return row[0], row[1] - time.time()


def _add_missing_columns(db: sqlite3.Connection, table: str, columns: dict[str, str]) -> None:
    """Columns a later version added (CREATE TABLE IF NOT EXISTS keeps an old table as is)."""
    have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
    for name, kind in columns.items():
        if name not in have:
            db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")


def _migrate_kv(db: sqlite3.Connection) -> None:
    """An earlier version kept the marks as string keys in `kv`: move them into the typed
    tables once (in one transaction), then drop `kv`."""
    if db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'kv'").fetchone() is None:
        return
    kv = dict(db.execute("SELECT key, value FROM kv").fetchall())
    marks: dict[str, object] = {}
    for name in ("last_collect", "last_full_collect", "last_collect_commit", "pushed_commit", "queue_version"):
        if kv.get(name):
            marks[name] = kv[name]
    for name in ("project_id", "queue_view"):
        if kv.get(name):
            marks[name] = int(kv[name])
    marks["training_requested"] = int(kv.get("training_requested") == "1")
    if kv.get("rescored"):
        version, _, count = kv["rescored"].rpartition(" ")
        marks.update(rescored_version=version, rescored_tasks=int(count))
    db.execute("BEGIN IMMEDIATE")
    db.execute(f"UPDATE marks SET {', '.join(f'{k} = ?' for k in marks)} WHERE id = 1", tuple(marks.values()))
    db.executemany("INSERT OR IGNORE INTO pending_deletions (annotation_id) VALUES (?)",
                   [(int(a),) for a in json.loads(kv.get("deleted_annotations") or "[]")])
    db.executemany("INSERT OR REPLACE INTO review_queue (task_id, annotators) VALUES (?, ?)",
                   [(int(t), int(n)) for t, n in json.loads(kv.get("review_queue") or "{}").items()])
    for key, value in kv.items():
        if key.startswith("error:") and value:
            db.execute("INSERT OR REPLACE INTO jobs (job, error) VALUES (?, ?)", (key[len("error:"):], value))
    db.execute("DROP TABLE kv")
    db.execute("COMMIT")
