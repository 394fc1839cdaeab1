"""Training runs and the promotion gate: the retrain policy, one run at a time (a lease in
the state database), resuming interrupted runs, and promotion only if not worse."""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timezone

import httpx

from kernel.errors import LabelloopError, ServiceUnavailableError, TrainingBusyError
from loop.context import LoopContext
from loop.launchers import Launcher, TrainingRequest, TrainingResult
from loop.state import RunRecord
from loop.promotions import Promotions
from loop.reports import write_gate_record
from pipelines.params import Params
from serving import PredictionClient, PromotionRecord, read_promotion

__all__ = ["TrainingRuns", "TRAINING_LEASE", "LEASE_TTL_S", "missing_for_first_model"]

log = logging.getLogger(__name__)

#: One training at a time, across processes and restarts: a lease in the state DB that
#: its holder renews while training; a crashed holder's lease runs out after LEASE_TTL_S.
TRAINING_LEASE = "training"
LEASE_TTL_S = 60.0
JUDGED_BY = {"test": "your test set", "eval": "the evaluation set", "cv": "cross-validation"}


class _Heartbeat:
    """Calls `renew` every `interval_s` in a daemon thread until stopped."""

    def __init__(self, renew: Callable[[], object], interval_s: float):
        self._stop = threading.Event()

        def beat() -> None:
            while not self._stop.wait(interval_s):
                try:
                    renew()
                except Exception:  # a missed beat is retried; the TTL covers two more
                    log.exception("could not renew the training lease")

        self._thread = threading.Thread(target=beat, name="lease-heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()


def missing_for_first_model(params: Params, train: dict[str, str]) -> list[str]:
    """What the cold start still needs: "class 'bird': 0 of 2 labels" for every class with
    fewer than `train.min_per_class` training labels (evaluation labels do not count)."""
    counts = Counter(train.values())
    need = params.train.min_per_class
    return [f"class {c!r}: {counts[c]} of {need} labels" for c in params.data.classes if counts[c] < need]


class TrainingRuns:
    def __init__(self, ctx: LoopContext, launcher: Launcher, promotions: Promotions):
        self.ctx = ctx
        self.launcher = launcher
        self.promotions = promotions
        self._training = threading.Lock()
        #: This process's identity as a lease holder (host, process, instance).
        self._owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"

    def labels_pending_training(self) -> int:
        """Label events collected after the data of the last finished run (failed ones too:
        a failed run is retried when new labels arrive or on request, not in a hot loop)."""
        last = self.ctx.state.last_finished_run()
        return self.ctx.workspace.labels_in_batches_after(last.label_batch if last else 0)

    def missing_for_first_model(self) -> list[str]:
        ws = self.ctx.workspace
        return missing_for_first_model(ws.params(), ws.label_splits().train)

    def request(self, reason: str = "requested") -> None:
        """Queue a training run (START_TRAINING, a schedule, a person): the retrain job starts it."""
        self.ctx.state.set_marks(training_requested=True)
        log.info("training requested (%s)", reason)

    def due(self) -> str | None:
        """Why a run is due now (the retrain policy), or None."""
        state = self.ctx.state
        if state.marks().training_requested:
            return "requested"
        if read_promotion(self.ctx.settings.promotion_file) is None and not state.runs(1):
            return None if self.missing_for_first_model() else "first model"
        pending = self.labels_pending_training()
        if pending >= self.ctx.settings.retrain_min_new_labels:
            return f"{pending} new labels"
        return None

    def run(self, *, trigger: str) -> RunRecord:
        """One training run on the workspace HEAD (or the interrupted run it resumes);
        promote if not worse than the serving model. Raises TrainingBusyError while another
        run holds the lease."""
        ctx = self.ctx
        ws = ctx.require_workspace()
        if not self._training.acquire(blocking=False):
            raise TrainingBusyError("a training run is already in progress in this process; "
                                    "`labelloop status` shows it")
        holder = ctx.state.acquire_lease(TRAINING_LEASE, self._owner, LEASE_TTL_S)
        if holder is not None:
            self._training.release()
            raise TrainingBusyError(f"a training run is already in progress (lease held by {holder}); "
                                    "wait for it, `labelloop status` shows it")
        heartbeat = _Heartbeat(lambda: ctx.state.acquire_lease(TRAINING_LEASE, self._owner, LEASE_TTL_S),
                               LEASE_TTL_S / 3)
        try:
            ctx.state.set_marks(training_requested=False)
            run_id, commit = self._start_or_resume(trigger)
            result = self.launcher.run(TrainingRequest(run_id, str(ws.root), commit))
            if not result.succeeded:
                ctx.state.finish_run(run_id, "failed", result.error or "unknown error")
                log.error("training run %s failed: %s", run_id, result.error)
                return ctx.state.run(run_id)
            self._gate(run_id, commit, result)
        finally:
            heartbeat.stop()
            ctx.state.release_lease(TRAINING_LEASE, self._owner)
            self._training.release()
        return ctx.state.run(run_id)

    def _start_or_resume(self, trigger: str) -> tuple[str, str]:
        ctx = self.ctx
        interrupted = [r for r in ctx.state.runs(100) if r.status == "running"]
        if interrupted and getattr(self.launcher, "resumable", False):
            # We hold the lease, so nobody runs these: a scheduler died while its Job kept
            # going. Same run id: the launcher adopts the Job instead of starting a new one.
            run = interrupted[0]
            for other in interrupted[1:]:
                ctx.state.finish_run(other.run_id, "failed", "interrupted (scheduler stopped)")
            log.info("resuming interrupted run %s", run.run_id)
            return run.run_id, run.data_commit
        ctx.state.fail_interrupted_runs()
        with ctx.workspace_lock:
            ctx.push_if_needed()
            commit, batch = ctx.workspace.head(), ctx.workspace.cursor().batch
        run_id = f"{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{commit[:7]}-{secrets.token_hex(2)}"
        ctx.state.start_run(run_id, commit, batch, trigger)
        return run_id, commit

    def _gate(self, run_id: str, commit: str, result: TrainingResult) -> None:
        """Promote only if not worse than the serving model, judged on the same set."""
        ctx = self.ctx
        serving = read_promotion(ctx.settings.promotion_file)
        write_gate_record(ctx.settings.runs_dir / run_id, serving.tag if serving else None,
                          serving.data_commit if serving else None, serving.run_id if serving else None)
        judged_by = result.judged_by or "test"
        n_judged = len(result.judged_on) if result.judged_on is not None else (result.metrics or {}).get("n_test")
        scored = {"model_tag": result.model_tag, "accuracy": result.accuracy, "n_labels": result.n_labels,
                  "judged_by": judged_by, "n_judged": n_judged}
        on = f"{JUDGED_BY[judged_by]}, {n_judged} labels"
        if serving is not None and judged_by == "cv" and (result.n_labels or 0) >= (serving.n_labels or 0):
            # Cross-validation scores of different label sets do not compare (actively chosen
            # labels are the hard cases, and there are few): before the evaluation set can
            # judge, a model trained on more labels replaces the one trained on fewer.
            reason = (f"cross-validation accuracy {result.accuracy:.4f} on {n_judged} labels; not comparable with "
                      f"the serving model's ({serving.n_labels} labels): promoted for more training labels "
                      "until the evaluation set can judge")
        elif serving is not None:
            baseline, how = self._serving_accuracy(serving, result)
            if result.accuracy < baseline:
                reason = f"accuracy {result.accuracy:.4f} < serving {baseline:.4f} ({on}; serving {how})"
                ctx.state.finish_run(run_id, "rejected", reason, **scored)
                log.info("run %s rejected: %s", run_id, reason)
                return
            reason = f"accuracy {result.accuracy:.4f} >= serving {baseline:.4f} ({on}; serving {how})"
        else:
            reason = f"first model (accuracy {result.accuracy:.4f}, {on})"
        if ctx.settings.promotion_mode == "manual":
            reason += f"; approved: promote it with `labelloop promote {run_id}`"
            ctx.state.finish_run(run_id, "approved", reason, **scored)
            log.info("run %s approved (%s)", run_id, reason)
            return
        self.promotions.promote(PromotionRecord(
            tag=result.model_tag, accuracy=result.accuracy, data_commit=commit,
            n_labels=result.n_labels, run_id=run_id, judged_by=judged_by, n_judged=n_judged,
        ), by="gate", reason=reason)
        ctx.state.finish_run(run_id, "promoted", reason, **scored)

    def _serving_accuracy(self, serving: PromotionRecord, result: TrainingResult) -> tuple[float, str]:
        """The serving model's accuracy on the images that judged the candidate. The
        evaluation sample grows between runs, so the serving model is re-judged on the
        candidate's labels through the service; the test set is fixed and cross-validation
        has nothing to re-judge, so their recorded accuracy compares."""
        if result.judged_by != "eval" or not result.judged_on:
            return serving.accuracy, f"as recorded ({JUDGED_BY.get(serving.judged_by, serving.judged_by)})"
        ws = self.ctx.workspace
        client = PredictionClient.for_settings(self.ctx.settings.serving)
        try:
            if client.serving_version() != serving.tag:
                raise ServiceUnavailableError(f"the service does not serve {serving.tag}")
            names = sorted(result.judged_on)
            predictions = client.classify_files([ws.image_path(n) for n in names])
        except (LabelloopError, httpx.HTTPError, OSError) as exc:
            log.warning("could not re-judge the serving model on the evaluation set (%s); "
                        "comparing with its recorded accuracy", exc)
            return serving.accuracy, f"as recorded: not re-judged ({exc})"
        finally:
            client.close()
        right = sum(p.label == result.judged_on[n] for n, p in zip(names, predictions, strict=True))
        return round(right / len(names), 6), "re-judged on the same images"
