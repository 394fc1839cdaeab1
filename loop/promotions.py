"""Which model serves: every change of it goes through here, recorded in a history.

- the gate promotes a run that is not worse (`promotion_mode: auto`), or marks it
  `approved` for a person to promote (`manual`);
- `labelloop promote RUN` promotes a run's model (an approved one, or a rejected one on
  purpose: the reason is recorded);
- `labelloop rollback [VERSION]` restores an earlier model (by default the one before the
  current) exactly as it was promoted.

One file lock makes each change read the serving model, write the promotion record the
service watches and append the history entry together, so a promote and a rollback at the
same moment leave the record and the history agreeing (one of them wins, both are listed
in the order they happened). The service hot-swaps to whatever the record names."""

from __future__ import annotations

import getpass
import logging
import socket
from pathlib import Path

from filelock import FileLock

from kernel.errors import NoModelError
from kernel.settings import Settings
from loop.state import PromotionEvent, RunRecord, StateStore
from serving import PromotionRecord, read_promotion, write_promotion

__all__ = ["Promotions", "current_user"]

log = logging.getLogger(__name__)


def current_user() -> str:
    """Who ran a command, for the history."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


class Promotions:
    def __init__(self, settings: Settings, state: StateStore):
        self.settings = settings
        self.state = state
        self._lock = FileLock(str(settings.home / "promotion.lock"))

    def serving(self) -> PromotionRecord | None:
        return read_promotion(self.settings.promotion_file)

    def history(self, limit: int = 20) -> list[PromotionEvent]:
        return self.state.promotions(limit)

    def promote(self, record: PromotionRecord, *, by: str, reason: str, action: str = "promote") -> PromotionRecord | None:
        """Make `record` the serving model; returns the one it replaced."""
        with self._lock:
            before = self.serving()
            write_promotion(self.settings.promotion_file, record)
            self.state.record_promotion(action, record.tag, before.tag if before else None, record.run_id, by,
                                        reason, record.model_dump_json())
        log.info("%s %s (was %s) by %s: %s", action, record.tag, before.tag if before else "none", by, reason)
        return before

    def promote_run(self, run: RunRecord, *, by: str, reason: str = "") -> PromotionRecord:
        """A person promotes a run's model (`labelloop promote RUN`)."""
        if run.status in ("running", "failed") or not run.model_tag or run.accuracy is None:
            raise NoModelError(f"run {run.run_id} is {run.status} and has no model to promote; "
                               "`labelloop status` lists the runs")
        self.require_model(run.model_tag)
        serving = self.serving()
        if serving is not None and serving.tag == run.model_tag:
            raise NoModelError(f"{run.model_tag} (run {run.run_id}) is already serving")
        record = PromotionRecord(tag=run.model_tag, accuracy=run.accuracy, data_commit=run.data_commit,
                                 n_labels=run.n_labels or 0, run_id=run.run_id,
                                 judged_by=run.judged_by or "test", n_judged=run.n_judged)
        why = reason or (f"run {run.status} by the gate ({run.reason})" if run.status != "approved" else run.reason)
        self.promote(record, by=by, reason=why)
        self.state.finish_run(run.run_id, "promoted", f"promoted by {by}: {why}", model_tag=run.model_tag,
                              accuracy=run.accuracy, n_labels=run.n_labels, judged_by=run.judged_by,
                              n_judged=run.n_judged)
        return record

    def rollback(self, version: str | None = None, *, by: str, reason: str = "") -> PromotionRecord:
        """Restore an earlier model as it was promoted: `version` (a tag, or the version part
        of one), else the model that served before the current one."""
        with self._lock:
            serving = self.serving()
            if serving is None:
                raise NoModelError("no model is serving, so there is nothing to roll back")
            history = self.history(1000)  # newest first
            if version is None:
                earlier = [e for e in history if e.tag != serving.tag]
                if not earlier:
                    raise NoModelError(f"{serving.tag} is the only model ever promoted here: nothing to roll back to")
                target = earlier[0]
            else:
                # The newest record of that tag: it is what was promoted last under it.
                matches = [e for e in history if e.tag == version or e.tag.split(":")[-1] == version]
                if not matches:
                    raise NoModelError(f"{version} was never promoted here; `labelloop status` lists the "
                                       "promotion history (rollback restores one of those)")
                target = matches[0]
            if target.tag == serving.tag:
                raise NoModelError(f"{target.tag} is already serving")
            self.require_model(target.tag)
            record = PromotionRecord.model_validate_json(target.record)
            write_promotion(self.settings.promotion_file, record)
            why = reason or f"rolled back from {serving.tag}"
            self.state.record_promotion("rollback", record.tag, serving.tag, record.run_id, by, why,
                                        record.model_dump_json())
        log.info("rollback to %s (was %s) by %s: %s", record.tag, serving.tag, by, why)
        return record

    def require_model(self, tag: str) -> None:
        """The model must still exist where the service loads it from."""
        if self.settings.artifacts_url:
            from pipelines.artifacts import ArtifactStore

            exists = ArtifactStore(self.settings.artifacts_url).has_model(tag)
        else:
            name, _, version = tag.partition(":")
            exists = (Path(self.settings.bentoml_home) / "models" / name / version).is_dir()
        if not exists:
            raise NoModelError(f"model {tag} is no longer in the model store ({self.settings.artifacts_url or self.settings.bentoml_home}); "
                               "nothing was changed")
