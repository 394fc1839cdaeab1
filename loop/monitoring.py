"""Production capture and drift, the loop's side (the service's side: `serving.capture`,
`serving.drift`).

- Captured client images join the pool through the same path as `labelloop add`
  (`loop.provision.add_found_images`: one data commit per import, pushed, Label Studio
  tasks tagged `source: production`, queued by the serving model), then leave the capture
  store. Each is consumed once: a crash after the commit leaves them in the store, and the
  next import finds them in the pool already (deduplicated by content) and only removes
  them (finishing the task import the crash cut short).
- While the service reports drift and `LABELLOOP_DRIFT_RETRAIN` is on, a training run is
  queued as soon as any label arrived since the last run, at most once per serving model
  (the new model gets a new drift window; a run the gate rejects is not retried by drift).
- The `production` section of `labelloop status`.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from kernel.settings import Settings
from loop.context import LoopContext
from loop.imports import ImportReport
from loop.ingest import FoundImage, SkippedFile, scan_images
from loop.provision import PRODUCTION_ORIGIN, add_found_images
from loop.queue import QueueKeeper
from loop.training import TrainingRuns
from loop.workspace import Workspace
from serving import PredictionClient, read_promotion
from serving.capture import CaptureStore
from serving.client import ProductionMetrics

__all__ = ["ProductionMonitor", "ProductionStatus", "ProductionTick", "production_lines", "production_status"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProductionStatus:
    """`labelloop status`'s production section (`LoopStatus.production`, as a dict)."""

    capture_enabled: bool
    capture_store: str
    waiting: int | None  # captured images in the store, not imported yet (None: the store cannot be read)
    imported: int  # captured images in the pool (their tasks carry `source: production`)
    service_reachable: bool
    # Since the service started, by reason (its /metrics).
    captured: dict[str, int] = field(default_factory=dict)  # low_confidence, sample, drift_sample
    skipped: dict[str, int] = field(default_factory=dict)  # duplicate, hour_cap, day_cap, total_cap, format
    failed: dict[str, int] = field(default_factory=dict)  # queue_full, no_space, unwritable
    drift_enabled: bool = True
    drift_reference_images: int | None = None  # None: no verdict known (service down, no model yet)
    drift_window: int = 0  # client images the last check compared
    drift_min_samples: int = 0
    drift_detected: bool = False
    drift_p_values: dict[str, float] = field(default_factory=dict)  # classes, confidence, embedding
    drift_scores: dict[str, float] = field(default_factory=dict)
    drift_retrain: bool = False


@dataclass(frozen=True)
class ProductionTick:
    """What one run of the scheduler's `production` job did."""

    imported: ImportReport | None = None  # None: nothing captured, or capture is off
    training_requested: bool = False


def production_status(settings: Settings, ws: Workspace, metrics: ProductionMetrics | None) -> ProductionStatus:
    store = CaptureStore(settings.capture_dir)
    try:
        waiting: int | None = len(store.names())
    except OSError as exc:
        log.warning("cannot read the capture store %s: %s", store.location, exc)
        waiting = None
    imported = sum(row.source.startswith(PRODUCTION_ORIGIN) for row in ws.pool_index().values())
    known = metrics or ProductionMetrics()
    return ProductionStatus(
        capture_enabled=settings.capture_enabled, capture_store=str(store.location), waiting=waiting,
        imported=imported, service_reachable=metrics is not None,
        captured=known.captured, skipped=known.skipped, failed=known.failed,
        drift_enabled=settings.drift_enabled, drift_reference_images=known.drift_reference_images,
        drift_window=known.drift_window, drift_min_samples=min(settings.drift_min_samples, settings.drift_window),
        drift_detected=known.drift_detected, drift_p_values=known.drift_p_values, drift_scores=known.drift_scores,
        drift_retrain=settings.drift_retrain,
    )


def _by_reason(counts: dict[str, int]) -> str:
    return ", ".join(f"{reason} {n}" for reason, n in sorted(counts.items()))


def production_lines(production: dict | None) -> list[str]:
    """`labelloop status`'s lines (rich markup) for its production section (`ProductionStatus`
    as a dict, as `LoopStatus.production` holds it)."""
    if not production:
        return []
    p = ProductionStatus(**production)
    lines = []
    if p.capture_enabled or p.captured or p.imported:
        kept = sum(p.captured.values())
        since = (f"{kept} kept since the service started" + (f" ({_by_reason(p.captured)})" if kept else "")
                 if p.service_reachable else "service not reachable")
        skipped = f", {sum(p.skipped.values())} not kept ({_by_reason(p.skipped)})" if p.skipped else ""
        waiting = "cannot be read" if p.waiting is None else f"{p.waiting} waiting"
        lines.append(f"capture        {'on' if p.capture_enabled else 'off'}: {since}{skipped}; {waiting} in "
                     f"{p.capture_store}; {p.imported} imported into the pool (tasks with source: production)")
    if p.failed:
        lines.append(f"[yellow]capture failed {sum(p.failed.values())} client images not kept ({_by_reason(p.failed)}); "
                     "every request was answered: free space or fix LABELLOOP_CAPTURE_URL (the service log says "
                     "why)[/]")
    if not p.drift_enabled or p.drift_reference_images is None:
        return lines
    if p.drift_reference_images == 0:
        lines.append("drift          not judged: the serving model has no reference (registered before drift "
                     "references existed); the next training run makes one")
    elif p.drift_window < p.drift_min_samples:
        lines.append(f"drift          no verdict yet: {p.drift_window} of {p.drift_min_samples} client images")
    else:
        tests = ", ".join(f"{t} p={p.drift_p_values.get(t, 1.0):.2g} (score {p.drift_scores.get(t, 0.0):.2f})"
                          for t in sorted(p.drift_p_values))
        if p.drift_detected:
            action = ("; a training run is queued once new labels arrive" if p.drift_retrain
                      else "; label the captured images (LABELLOOP_DRIFT_RETRAIN=true also queues a run)")
            lines.append(f"[red]drift          DETECTED over the last {p.drift_window} client images: {tests}{action}[/]")
        else:
            lines.append(f"drift          none over the last {p.drift_window} client images: {tests}")
    return lines


class ProductionMonitor:
    def __init__(self, ctx: LoopContext, queue: QueueKeeper, training: TrainingRuns):
        self.ctx = ctx
        self.queue = queue
        self.training = training
        self.store = CaptureStore(ctx.settings.capture_dir)
        #: The serving model a drift-queued run was requested for (one request per model).
        self._requested_for: str | None = None

    def tick(self) -> ProductionTick:
        """The scheduler's `production` job: import what was captured, act on drift."""
        settings = self.ctx.settings
        imported = self.import_captures() if settings.capture_enabled else None
        return ProductionTick(imported=imported, training_requested=self.retrain_on_drift())

    def import_captures(self) -> ImportReport | None:
        """Captured images -> one data commit -> tasks (`source: production`) -> queued;
        then they leave the store. None when nothing was waiting."""
        ws = self.ctx.require_workspace()
        names = self.store.names()[: self.ctx.settings.capture_import_max]
        if not names:
            return None
        self.ctx.settings.home.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="capture-", dir=self.ctx.settings.home) as tmp:
            folder = Path(tmp)
            for name in names:  # a local copy: the store may be a bucket, and the service keeps writing to it
                (folder / name).write_bytes(self.store.read(name))
            report = add_found_images(self.ctx, self.queue, _from_production(scan_images(folder, classes=ws.classes())))
        # Consumed: in the pushed commit (or already in the pool), tasks imported.
        self.store.remove(names)
        for skipped in report.skipped:
            log.warning("captured image %s not imported: %s", Path(str(skipped.source)).name, skipped.reason)
        log.info("captured images: %s%s", report.summary,
                 f"; commit {report.commit[:10]}, {report.tasks_imported} tasks" if report.commit else "")
        return report

    def retrain_on_drift(self) -> bool:
        """Queue a training run while the service reports drift (`LABELLOOP_DRIFT_RETRAIN`),
        as soon as any label arrived since the last run, once per serving model."""
        settings = self.ctx.settings
        if not settings.drift_retrain:
            return False
        serving = read_promotion(settings.promotion_file)
        if serving is None or serving.tag == self._requested_for:
            return False
        client = PredictionClient.for_settings(settings.serving)
        try:
            metrics = client.production_metrics()
        finally:
            client.close()
        if metrics is None or not metrics.drift_detected:
            return False
        pending = self.training.labels_pending_training()
        if pending < 1:
            return False
        self.training.request(f"drift detected on {serving.tag} ({pending} new labels)")
        self._requested_for = serving.tag
        return True


def _from_production(found: Iterator[FoundImage | SkippedFile]) -> Iterator[FoundImage | SkippedFile]:
    """Captured images, recorded in the pool shard as `production:<capture file>`."""
    for item in found:
        yield replace(item, origin=f"{PRODUCTION_ORIGIN}{item.source.name}") if isinstance(item, FoundImage) else item
