"""The loop's own state (runs, counters) in SQLite, safe to read while the scheduler writes."""

from __future__ import annotations

import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

__all__ = ["RunRecord", "StateStore", "utcnow"]

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
    finished_at TEXT
);
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tasks (task_id INTEGER PRIMARY KEY, image TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS leases (
    name TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    expires_at REAL NOT NULL       -- unix time; a crashed owner's lease simply runs out
);
"""


def utcnow() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


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


class StateStore:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        with self._db() as db:
            db.executescript(SCHEMA)

    @contextmanager
    def _db(self):
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

    def get(self, key: str) -> str | None:
        with self._db() as db:
            row = db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def put(self, key: str, value: str) -> None:
        with self._db() as db:
            db.execute("INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)", (key, value))

    def set_tasks(self, tasks: dict[int, str]) -> None:
        """The Label Studio task of every pool image (replaces what was there)."""
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            db.execute("DELETE FROM tasks")
            db.executemany("INSERT INTO tasks (task_id, image) VALUES (?, ?)", sorted(tasks.items()))

    def tasks(self) -> dict[int, str]:
        with self._db() as db:
            return dict(db.execute("SELECT task_id, image FROM tasks").fetchall())

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
    ) -> None:
        with self._db() as db:
            db.execute(
                "UPDATE runs SET status = ?, reason = ?, model_tag = ?, accuracy = ?, n_labels = ?, "
                "finished_at = ? WHERE run_id = ?",
                (status, reason, model_tag, accuracy, n_labels, utcnow(), run_id),
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

    def last_finished_run(self) -> RunRecord | None:
        return next((r for r in self.runs(100) if r.status != "running"), None)

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

    def fail_interrupted_runs(self) -> int:
        """Runs left 'running' by a killed scheduler: mark failed so a new one can start."""
        with self._db() as db:
            cur = db.execute(
                "UPDATE runs SET status = 'failed', reason = 'interrupted (scheduler stopped)', "
                "finished_at = ? WHERE status = 'running'",
                (utcnow(),),
            )
            return cur.rowcount
