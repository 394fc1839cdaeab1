"""The APScheduler jobs. Each job is a bound `Loop` method; the glue here only wires
them (max_instances=1, coalesce, misfire grace) and records failures for `status`."""

from __future__ import annotations

import logging
from datetime import datetime, timezone

from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED, JobExecutionEvent
from apscheduler.schedulers.background import BackgroundScheduler

from loop.core import Loop

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

    def on_job_event(event: JobExecutionEvent) -> None:
        key = f"error:{event.job_id}"
        if event.exception is not None:
            log.error("job %s failed: %s", event.job_id, event.exception)
            loop.state.put(key, f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M:%S} {event.exception}")
        elif loop.state.get(key):
            loop.state.put(key, "")

    scheduler.add_listener(on_job_event, EVENT_JOB_ERROR | EVENT_JOB_EXECUTED)
    return scheduler
