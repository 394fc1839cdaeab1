"""The APScheduler jobs. Each job is a bound `Loop` method; the glue here only wires
them (max_instances=1, coalesce, misfire grace), backs off a failing job, and records
failures and the schedule for `labelloop status`.

Every way to ask for training goes through one queue: the label-count policy, a
`START_TRAINING` webhook and the optional cron schedule only mark a run as due; the one
`retrain` job starts it (and the training lease keeps it to one at a time)."""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta, timezone

from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED, JobExecutionEvent
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
    now = datetime.now(timezone.utc)
    intervals = {"collect": settings.collect_interval_s, "retrain": settings.retrain_interval_s,
                 "events": EVENTS_POLL_S}
    scheduler.add_job(loop.collect, "interval", seconds=settings.collect_interval_s,
                      id="collect", name="collect annotations", next_run_time=now)
    scheduler.add_job(loop.retrain_if_due, "interval", seconds=settings.retrain_interval_s,
                      id="retrain", name="retrain if due")

    def on_events() -> None:
        # Annotation webhooks pull the next collect forward instead of waiting an interval.
        if loop.process_events():
            scheduler.modify_job("collect", next_run_time=datetime.now(timezone.utc))

    scheduler.add_job(on_events, "interval", seconds=EVENTS_POLL_S, id="events",
                      name="webhook events")
    if settings.retrain_cron:
        try:
            trigger = CronTrigger.from_crontab(settings.retrain_cron, timezone="UTC")
        except ValueError as exc:
            raise ConfigError(f"LABELLOOP_RETRAIN_CRON {settings.retrain_cron!r} is not a crontab: {exc}") from exc
        scheduler.add_job(loop.request_training, trigger, id="cron", name="scheduled training",
                          kwargs={"reason": "schedule"})

    failures: dict[str, int] = {}

    def record_schedule() -> None:
        loop.state.put("schedule", json.dumps({
            job.id: job.next_run_time.isoformat(timespec="seconds") if job.next_run_time else None
            for job in scheduler.get_jobs()
        }))

    def on_job_event(event: JobExecutionEvent) -> None:
        key = f"error:{event.job_id}"
        if event.exception is not None:
            failures[event.job_id] = failures.get(event.job_id, 0) + 1
            log.error("job %s failed (%d in a row): %s", event.job_id, failures[event.job_id], event.exception)
            loop.state.put(key, f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M:%S} {event.exception}")
            interval = intervals.get(event.job_id)
            if interval:  # back off: 2x, 4x, ... the interval, at most job_backoff_max_s
                delay = min(interval * 2 ** failures[event.job_id], settings.job_backoff_max_s)
                scheduler.modify_job(event.job_id, next_run_time=datetime.now(timezone.utc) + timedelta(seconds=delay))
        else:
            failures.pop(event.job_id, None)
            if loop.state.get(key):
                loop.state.put(key, "")
        if event.job_id != "events" or event.exception is not None:
            record_schedule()

    scheduler.add_listener(on_job_event, EVENT_JOB_ERROR | EVENT_JOB_EXECUTED)
    return scheduler
