"""The APScheduler jobs. Each job is a bound `Loop` method behind one small guard that
backs off after failures and records errors and the schedule for `labelloop status`.

The guard runs inside the job itself (the executor's worker thread), never in an
APScheduler event listener: a listener runs while the executor holds its lock, and
touching the scheduler there (get_jobs, modify_job) deadlocks against the scheduler
thread, which holds the job-store lock while it submits jobs to that executor.

Every way to ask for training goes through one queue: the label-count policy, a
`START_TRAINING` webhook and the optional cron schedule only mark a run as due; the one
`retrain` job starts it (and the training lease keeps it to one at a time)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger

from loop.core import Loop
from loop.errors import ConfigError

__all__ = ["build_scheduler", "EVENTS_POLL_S"]

log = logging.getLogger(__name__)

EVENTS_POLL_S = 2.0


def build_scheduler(loop: Loop) -> BackgroundScheduler:
    settings = loop.settings
    scheduler = BackgroundScheduler(
        job_defaults={"max_instances": 1, "coalesce": True, "misfire_grace_time": 60},
        timezone="UTC",
    )
    failures: dict[str, int] = {}
    resume_at: dict[str, datetime] = {}

    def record_schedule() -> None:
        schedule = {}
        for job in scheduler.get_jobs():
            upcoming = [t for t in (getattr(job, "next_run_time", None), resume_at.get(job.id)) if t]
            schedule[job.id] = max(upcoming).isoformat(timespec="seconds") if upcoming else None
        loop.state.put("schedule", json.dumps(schedule))

    def guarded(job_id: str, fn: Callable[[], object], interval_s: float | None) -> Callable[[], None]:
        def run() -> None:
            now = datetime.now(timezone.utc)
            if job_id in resume_at and now < resume_at[job_id]:
                return  # backing off after failures
            try:
                fn()
            except Exception as exc:
                failures[job_id] = failures.get(job_id, 0) + 1
                delay = min((interval_s or 0) * 2 ** failures[job_id], settings.job_backoff_max_s)
                resume_at[job_id] = now + timedelta(seconds=delay)
                log.error("job %s failed (%d in a row; retrying in %.0fs): %s",
                          job_id, failures[job_id], delay, exc)
                loop.state.put(f"error:{job_id}", f"{now:%Y-%m-%d %H:%M:%S} {exc} "
                                                 f"(failed {failures[job_id]}x; retrying in {delay:.0f}s)")
            else:
                if failures.pop(job_id, None) is not None:
                    loop.state.put(f"error:{job_id}", "")
                resume_at.pop(job_id, None)
            if job_id != "events" or job_id in failures:
                record_schedule()

        return run

    now = datetime.now(timezone.utc)
    scheduler.add_job(guarded("collect", loop.collect, settings.collect_interval_s), "interval",
                      seconds=settings.collect_interval_s, id="collect", name="collect annotations",
                      next_run_time=now)
    scheduler.add_job(guarded("retrain", loop.retrain_if_due, settings.retrain_interval_s), "interval",
                      seconds=settings.retrain_interval_s, id="retrain", name="retrain if due")

    def on_events() -> None:
        # Annotation webhooks pull the next collect forward instead of waiting an interval
        # (safe here: a job's own thread, not an event listener).
        if loop.process_events():
            scheduler.modify_job("collect", next_run_time=datetime.now(timezone.utc))

    scheduler.add_job(guarded("events", on_events, EVENTS_POLL_S), "interval", seconds=EVENTS_POLL_S,
                      id="events", name="webhook events")
    if settings.retrain_cron:
        try:
            trigger = CronTrigger.from_crontab(settings.retrain_cron, timezone="UTC")
        except ValueError as exc:
            raise ConfigError(f"LABELLOOP_RETRAIN_CRON {settings.retrain_cron!r} is not a crontab: {exc}") from exc
        scheduler.add_job(guarded("cron", lambda: loop.request_training("schedule"), None), trigger,
                          id="cron", name="scheduled training")
    return scheduler
