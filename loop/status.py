"""`labelloop status`: one report of the workspace, labels, serving model, runs and errors."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field

from loop.context import LoopContext
from loop.monitoring import production_status
from loop.quality import label_quality_report
from loop.state import PromotionEvent, RunRecord
from loop.training import missing_for_first_model
from pipelines.labels import held_back, labels_by_image
from pipelines.params import Params
from pipelines.prepare import LabelSplits
from serving import PredictionClient, PromotionRecord, read_promotion

__all__ = ["LoopStatus", "EvaluationProgress", "status_report"]


@dataclass(frozen=True)
class EvaluationProgress:
    """The evaluation sample annotators label (absent when a labeled test set judges)."""

    images: int  # reserved for evaluation
    labels: int  # labeled so far
    min_labels: int
    per_class: dict[str, int]
    min_per_class: int
    ready: bool  # large enough: it judges the runs (before: cross-validation)

    @property
    def missing(self) -> list[str]:
        short = [f"class {c!r}: {n} of {self.min_per_class}" for c, n in self.per_class.items() if n < self.min_per_class]
        total = [] if self.labels >= self.min_labels else [f"{self.labels} of {self.min_labels} labels"]
        return total + short


def _evaluation(ws, params: Params, splits: LabelSplits) -> EvaluationProgress | None:
    images = ws.eval_images()
    if not images or splits.test:
        return None
    counts = Counter(splits.evaluation.values())
    return EvaluationProgress(
        images=len(images), labels=len(splits.evaluation),
        per_class={c: counts[c] for c in params.data.classes}, min_per_class=params.evaluation.min_per_class,
        min_labels=min(params.evaluation.min_labels, len(images)),
        ready=splits.eval_ready,
    )


def status_report(ctx: LoopContext, *, labels_pending_training: int, training_in_progress: str | None) -> LoopStatus:
    ws = ctx.require_workspace()
    params, splits = ws.params(), ws.label_splits()
    serving = read_promotion(ctx.settings.promotion_file)
    state = ctx.state
    marks = state.marks()
    events, policy = ws.events(), params.data.label_policy
    head = ws.head()
    service = PredictionClient.for_settings(ctx.settings.serving)
    try:
        service_version, fetch_failures = service.serving_version(), service.image_fetch_failures()
        production = service.production_metrics()
    finally:
        service.close()
    return LoopStatus(
        workspace=str(ws.root),
        data_commit=head,
        label_batch=ws.cursor().batch,
        labels=len(labels_by_image(events, policy)),
        pool_images=len(ws.pool_images()),  # the pool index: what annotators label (eval sample included)
        training_labels=len(splits.train),
        evaluation=_evaluation(ws, params, splits),
        missing_for_first_model=missing_for_first_model(params, splits.train) if serving is None else [],
        labels_pending_training=labels_pending_training,
        serving=serving,
        service_version=service_version,
        image_fetch_failures=fetch_failures or {},
        runs=state.runs(10),
        promotions=state.promotions(10),
        last_collect=marks.last_collect,
        last_collect_commit=marks.last_collect_commit,
        unpushed_commit=None if marks.pushed_commit == head else head,
        training_in_progress=training_in_progress,
        training_requested=marks.training_requested,
        pending_deletions=len(state.pending_deletions()),
        held_back_for_review=held_back(events, policy),
        requeued_for_review=sorted(state.review_queue()),
        queue_version=marks.queue_version,
        next_jobs=state.next_runs(),
        errors=state.job_errors(),
        production=asdict(production_status(ctx.settings, ws, production)),
        label_quality=asdict(label_quality_report(ctx, events, params)),
    )


@dataclass(frozen=True)
class LoopStatus:
    """What `labelloop status` shows (and `--json` prints field by field)."""

    workspace: str
    data_commit: str
    label_batch: int
    labels: int
    labels_pending_training: int
    serving: PromotionRecord | None
    service_version: str | None
    runs: list[RunRecord]
    last_collect: str | None
    last_collect_commit: str | None = None
    unpushed_commit: str | None = None  # a data commit not yet in the DVC remote (an outage)
    training_in_progress: str | None = None  # the lease holder
    training_requested: bool = False
    pending_deletions: int = 0
    held_back_for_review: list[str] = field(default_factory=list)  # annotators disagree (majority tie)
    requeued_for_review: list[int] = field(default_factory=list)  # task ids back in the queue
    queue_version: str | None = None  # the model version Label Studio's queue follows
    next_jobs: dict[str, str | None] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)  # job -> its last failure, until it succeeds
    # Label Studio task images the service could not fetch or use since it started, by reason.
    image_fetch_failures: dict[str, int] = field(default_factory=dict)
    training_labels: int = 0  # labels the model trains on (the evaluation sample's are not)
    evaluation: EvaluationProgress | None = None
    promotions: list[PromotionEvent] = field(default_factory=list)  # changes of the serving model, newest first
    # No model yet: what the first one still needs ("class 'bird': 0 of 2 labels").
    missing_for_first_model: list[str] = field(default_factory=list)
    # Production capture and drift (issue 17: loop/monitoring.py fills it; None: not known).
    production: dict | None = None
    # Label quality (issue 18: `loop.quality.LabelQuality` as a dict): suspects, agreement,
    # class balance, the stopping signal. None: not computed yet.
    label_quality: dict | None = None
    # Pool and queue progress for the dashboard: images in the pool, labeled, unlabeled.
    pool_images: int = 0
