"""The APScheduler jobs. Each job is a bound `Loop` method behind one small guard that
backs off after failures and records errors and the expected next runs for
`labelloop status`.

Jobs never call back into the scheduler (get_jobs, modify_job): `shutdown(wait=True)`
holds the job-store lock while it waits for running jobs, and an event listener runs under
the executor's lock while the scheduler thread holds the job-store lock — either way a job
touching the scheduler can deadlock it. So annotation webhooks do not reschedule the
collect job; the collect job ticks every EVENTS_POLL_S and collects when an event arrived
or `collect_interval_s` has passed.

Every way to ask for training goes through one queue: the label-count policy, a
`START_TRAINING` webhook and the optional cron schedule only mark a run as due; the one
`retrain` job starts it (and the training lease keeps it to one at a time).

With `watch_folder` set, a `watch` job adds the folder's new images to the pool (one data
commit per sync that found any), imports them as tasks and queues them.

With `capture_enabled` (or `drift_retrain`), a `production` job imports the client images
the service captured (one data commit per run that found any) and, while the service
reports drift, may queue a training run."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger

from loop.core import Loop
from kernel.errors import ConfigError

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
    cron = None
    if settings.retrain_cron:
        try:
            cron = CronTrigger.from_crontab(settings.retrain_cron, timezone="UTC")
        except ValueError as exc:
            raise ConfigError(f"LABELLOOP_RETRAIN_CRON {settings.retrain_cron!r} is not a crontab: {exc}") from exc

    def record(job_id: str, next_run: datetime | None) -> None:
        when = max(filter(None, [next_run, resume_at.get(job_id)]), default=None)
        loop.state.set_next_run(job_id, when.isoformat(timespec="seconds") if when else None)

    def guarded(job_id: str, fn: Callable[[], object], interval_s: float, next_run: Callable[[datetime], datetime | None]):
        def run() -> None:
            now = datetime.now(timezone.utc)
            if job_id in resume_at and now < resume_at[job_id]:
                return  # backing off after failures
            try:
                fn()
            except Exception as exc:
                failures[job_id] = failures.get(job_id, 0) + 1
                delay = min(interval_s * 2 ** failures[job_id], settings.job_backoff_max_s)
                resume_at[job_id] = now + timedelta(seconds=delay)
                log.error("job %s failed (%d in a row; retrying in %.0fs): %s",
                          job_id, failures[job_id], delay, exc)
                loop.state.set_job_error(job_id, f"{now:%Y-%m-%d %H:%M:%S} {exc} "
                                                 f"(failed {failures[job_id]}x; retrying in {delay:.0f}s)")
            else:
                if failures.pop(job_id, None) is not None:
                    loop.state.set_job_error(job_id, None)
                resume_at.pop(job_id, None)
            record(job_id, next_run(datetime.now(timezone.utc)))

        return run

    last_collect: list[datetime | None] = [None]

    def collect_tick() -> None:
        # Webhook events (annotations changed, START_TRAINING) are drained every tick; the
        # collect itself runs on an annotation event or when the interval has passed.
        changed = loop.process_events()
        now = datetime.now(timezone.utc)
        due = last_collect[0] is None or (now - last_collect[0]).total_seconds() >= settings.collect_interval_s
        if changed or due:
            last_collect[0] = now
            loop.collect()

    def next_collect(now: datetime) -> datetime:
        return (last_collect[0] or now) + timedelta(seconds=settings.collect_interval_s)

    now = datetime.now(timezone.utc)
    scheduler.add_job(guarded("collect", collect_tick, settings.collect_interval_s, next_collect),
                      "interval", seconds=EVENTS_POLL_S, id="collect", name="collect annotations",
                      next_run_time=now)
    scheduler.add_job(guarded("retrain", loop.retrain_if_due, settings.retrain_interval_s,
                              lambda t: t + timedelta(seconds=settings.retrain_interval_s)),
                      "interval", seconds=settings.retrain_interval_s, id="retrain", name="retrain if due")
    if settings.watch_folder is not None:
        scheduler.add_job(guarded("watch", loop.sync_watched_folder, settings.watch_interval_s,
                                  lambda t: t + timedelta(seconds=settings.watch_interval_s)),
                          "interval", seconds=settings.watch_interval_s, id="watch", name="sync the watched folder",
                          next_run_time=now)
        record("watch", now)
    if settings.capture_enabled or settings.drift_retrain:
        every = settings.capture_import_interval_s
        scheduler.add_job(guarded("production", loop.watch_production, every, lambda t: t + timedelta(seconds=every)),
                          "interval", seconds=every, id="production", name="import captured images, act on drift")
        record("production", now + timedelta(seconds=every))
    if cron is not None:
        scheduler.add_job(guarded("cron", lambda: loop.request_training("schedule"), 60.0,
                                  lambda t: cron.get_next_fire_time(None, t)),
                          cron, id="cron", name="scheduled training")
        record("cron", cron.get_next_fire_time(None, now))
    record("collect", now)
    record("retrain", now + timedelta(seconds=settings.retrain_interval_s))
    return scheduler
