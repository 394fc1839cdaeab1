"""`Loop`: the one entry point the CLI, the scheduler and the demo call. It owns no logic:
each method hands the work to the part with that one job.

init/add  `loop.provision`: images -> one data commit per import batch -> Label Studio tasks
          (`loop.adoption`: an existing Label Studio project's tasks -> the pool)
collect   `Collection`: Label Studio annotations -> label shard -> one git commit -> dvc push
train     `TrainingRuns`: data commit -> launcher (dvc repro) -> evaluation gate -> promotion
rescore   `QueueKeeper`: promoted model -> pool predictions -> Label Studio's queue order
status    `status_report`
report    `loop.reports`: what a run's model changes against the serving one
production `loop.monitoring`: captured client images -> the pool; drift -> a training run
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from kernel.errors import ConfigError, LabelloopError, NoModelError, TrainingBusyError
from kernel.settings import Settings
from labeling import LabelStudioGateway
from loop.adoption import AdoptionReport, adopt_project
from loop.collection import Collection, CollectResult
from loop.context import LoopContext
from loop.creation import ModelKind
from loop.launchers import Launcher, make_launcher
from loop.imports import ImportReport
from loop.monitoring import ProductionMonitor, ProductionTick
from loop.promotions import Promotions, current_user
from loop.provision import add_images, connect_project, create_workspace, create_workspace_from_images
from loop.queue import Progress, QueueKeeper
from loop.reports import ReportFiles, write_report
from loop.s3images import is_s3_url
from loop.state import RunRecord, StateStore
from loop.status import LoopStatus, status_report
from loop.training import TRAINING_LEASE, TrainingRuns
from loop.workspace import Workspace
from pipelines.params import EvalParams
from pipelines.strategies import get_strategy
from serving import PromotionRecord

__all__ = ["Loop", "CollectResult", "LoopStatus"]

log = logging.getLogger(__name__)


class Loop:
    def __init__(
        self, settings: Settings, *, gateway: LabelStudioGateway | None = None, launcher: Launcher | None = None,
    ):
        self.settings = settings
        self.context = LoopContext(settings, gateway=gateway)
        self.state: StateStore = self.context.state
        self.promotions = Promotions(settings, self.state)
        self.training = TrainingRuns(self.context, launcher or make_launcher(settings), self.promotions)
        self.queue = QueueKeeper(self.context, get_strategy(settings.query_strategy))
        self.collection = Collection(self.context, on_training_requested=self.training.request)
        self.production = ProductionMonitor(self.context, self.queue, self.training)
        #: Files (objects) of the watched folder (prefix) already imported, with the
        #: (size, mtime) (ETag) they had.
        self._watched: dict[str, tuple] = {}

    @property
    def workspace(self) -> Workspace:  # replaced by `init`
        return self.context.workspace

    @property
    def gateway(self) -> LabelStudioGateway:  # built on first use
        return self.context.gateway

    # --- commands -----------------------------------------------------------------------
    def init(self, *, starter: str | None = "digits", folder: Path | None = None,
             seed_per_class: int = 2, test_fraction: float = 0.25) -> Workspace:
        self.context.workspace = create_workspace(
            self.settings, starter=starter, folder=folder, seed_per_class=seed_per_class, test_fraction=test_fraction)
        self.state.set_marks(pushed_commit=self.context.workspace.head())  # creation pushes
        return self.context.workspace

    def init_from_images(
        self, folder: Path | str, classes: Sequence[str], *, labels_csv: Path | None = None,
        labels_from_folders: bool = False, image_size: int | None = None, evaluation: EvalParams | None = None,
        model: ModelKind = "auto", weights: str | None = None, progress: Progress | None = None,
    ) -> ImportReport:
        """A workspace from a folder (or an s3:// prefix) of unlabeled images (`labelloop init --images`)."""
        self.context.workspace, report = create_workspace_from_images(
            self.settings, folder, classes, labels_csv=labels_csv, labels_from_folders=labels_from_folders,
            image_size=image_size, evaluation=evaluation, model=model, weights=weights, progress=progress)
        self.state.set_marks(pushed_commit=report.commit)  # creation pushes
        return report

    def init_from_project(self, project_id: int, *, image_size: int | None = None, model: ModelKind = "auto",
                          weights: str | None = None, progress: Progress | None = None) -> AdoptionReport:
        """A workspace from an existing Label Studio project (`labelloop init --from-project`):
        its images become the pool, its annotations the first labels (at the next collect)."""
        self.context.workspace, report = adopt_project(self.context, project_id, image_size=image_size,
                                                       model=model, weights=weights, progress=progress)
        return report

    def add(self, folder: Path | str, *, labels_csv: Path | None = None, labels_from_folders: bool = False,
            progress: Progress | None = None) -> ImportReport:
        """New images -> one data commit -> Label Studio tasks -> scored into the queue."""
        return add_images(self.context, self.queue, folder, labels_csv=labels_csv,
                          labels_from_folders=labels_from_folders, progress=progress)

    def sync_watched_folder(self) -> ImportReport | None:
        """The scheduler's `watch` job (a folder or an s3:// prefix): files (objects) already
        seen unchanged by this process are not read again, so a sync costs the new ones (the
        first sync after a start reads all)."""
        watched = self.settings.watch_folder
        if watched is None:
            return None
        folder: Path | str = watched if is_s3_url(watched) else Path(watched)
        if isinstance(folder, Path) and not folder.is_dir():
            raise ConfigError(f"the watched folder {folder} (LABELLOOP_WATCH_FOLDER) is not a directory")
        report = add_images(self.context, self.queue, folder, seen=self._watched)
        if report.commit:
            log.info("watched folder %s: %s", folder, report.summary)
        return report

    def connect(self) -> int:
        return connect_project(self.context, self.queue)

    def watch_production(self) -> ProductionTick:
        """The scheduler's `production` job: captured client images join the pool; drift may
        queue a training run."""
        return self.production.tick()

    def import_captures(self) -> ImportReport | None:
        """Captured client images -> one data commit -> tasks tagged `source: production`."""
        return self.production.import_captures()

    def collect(self, *, full: bool = False) -> CollectResult:
        """Collect (one commit, pushed), then re-queue disagreements for review, and move the
        evaluation tasks to the end of the queue once the set is large enough."""
        result = self.collection.collect(full=full)
        self.queue.requeue_disagreements()
        if result.commit:
            self.queue.settle_evaluation()
        return result

    def process_events(self) -> bool:
        return self.collection.process_events()

    def train(self, *, trigger: str = "manual", rescore: bool = True, progress: Progress | None = None) -> RunRecord:
        """One training run, promoted if not worse; then (`rescore`) the pool is re-scored with
        the new model. A promoted model whose re-score fails stays promoted: the failure is
        recorded for `status` and the next promotion (or `labelloop rescore`) re-scores."""
        run = self.training.run(trigger=trigger)
        self._report(run)
        if rescore and run.status == "promoted":
            try:
                self.queue.rescore(run.model_tag, progress=progress)
            except LabelloopError as exc:
                log.warning("promoted, but the pool was not re-scored: %s", exc)
                self.state.set_job_error("rescore", str(exc))
        return run

    def report(self, run_id: str) -> ReportFiles:
        """The model-change report of a run (written again from what the run left)."""
        run = self.state.run_or_none(run_id)
        if run is None:
            raise NoModelError(f"no training run {run_id!r}; `labelloop status` lists the runs")
        return write_report(self.context, run)

    def _report(self, run: RunRecord) -> None:
        """Every run that produced a model gets its report; a report that cannot be written
        is logged, never a failed run (the run and its model stand)."""
        if run.model_tag is None:
            return
        try:
            files = write_report(self.context, run)
            log.info("run %s: report %s", run.run_id, files.markdown)
        except (LabelloopError, OSError, ValueError) as exc:
            log.warning("run %s: no report (%s)", run.run_id, exc)

    def retrain_if_due(self) -> RunRecord | None:
        """The retrain policy (enough new labels, a request, no model yet); None if not due
        or another run holds the training lease."""
        self.context.require_workspace()
        trigger = self.training.due()
        if trigger is None:
            return None
        try:
            return self.train(trigger=trigger)
        except TrainingBusyError as exc:
            log.info("%s", exc)
            return None

    def promote(self, run_id: str, *, reason: str = "") -> PromotionRecord:
        """A person promotes a run's model; the pool is re-scored with it."""
        run = self.state.run_or_none(run_id)
        if run is None:
            raise NoModelError(f"no training run {run_id!r}; `labelloop status` lists the runs")
        record = self.promotions.promote_run(run, by=current_user(), reason=reason)
        self._rescore_after_change(record.tag)
        return record

    def rollback(self, version: str | None = None, *, reason: str = "") -> PromotionRecord:
        """Restore an earlier model (default: the one before); the queue follows it again."""
        record = self.promotions.rollback(version, by=current_user(), reason=reason)
        self._rescore_after_change(record.tag)
        return record

    def _rescore_after_change(self, tag: str) -> None:
        if self.state.marks().project_id is None:
            return  # not connected yet: `connect` queues with whatever serves then
        try:
            self.queue.rescore(tag)
        except LabelloopError as exc:
            log.warning("%s serves, but the pool was not re-scored: %s", tag, exc)
            self.state.set_job_error("rescore", str(exc))

    def request_training(self, reason: str = "requested") -> None:
        self.training.request(reason)

    def rescore(self, tag: str | None = None, *, progress: Progress | None = None) -> int:
        return self.queue.rescore(tag, progress=progress)

    def cold_start(self) -> int:
        return self.queue.cold_start()

    def requeue_disagreements(self) -> list[int]:
        return self.queue.requeue_disagreements()

    def status(self) -> LoopStatus:
        lease = self.state.lease_holder(TRAINING_LEASE)
        return status_report(self.context, labels_pending_training=self.training.labels_pending_training(),
                             training_in_progress=lease[0] if lease else None)
