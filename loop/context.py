"""What every part of the loop shares: settings, the workspace, the state database, the
Label Studio gateway (built on first use), the crash points and the workspace lock."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from filelock import FileLock

from kernel.errors import ConfigError, WorkspaceError
from kernel.settings import Settings
from labeling import LabelStudioGateway
from loop.faults import FaultPoints
from loop.state import StateStore
from loop.workspace import Workspace

__all__ = ["LoopContext"]


class LoopContext:
    def __init__(self, settings: Settings, *, gateway: LabelStudioGateway | None = None):
        self.settings = settings
        self.checkpoint = FaultPoints(settings.fault_kill_at)
        self.workspace = Workspace(settings.workspace, checkpoint=self.checkpoint)
        self.state = StateStore(settings.state_db)
        #: Held while the workspace's git + DVC state changes (collect, the data commit a
        #: training run starts from), across processes.
        self.workspace_lock = FileLock(str(settings.home / "workspace.lock"))
        self._gateway = gateway

    @property
    def gateway(self) -> LabelStudioGateway:
        if self._gateway is None:
            ls = self.settings.label_studio
            if ls.token is None:
                raise ConfigError(
                    f"no Label Studio token for {ls.url}: set LABELLOOP_LABEL_STUDIO_API_KEY "
                    "(a legacy token or a personal access token), or start Label Studio with `labelloop up`"
                )
            self._gateway = LabelStudioGateway(ls.url, ls.token.get_secret_value())
        return self._gateway

    @gateway.setter
    def gateway(self, gateway: LabelStudioGateway) -> None:
        self._gateway = gateway

    def require_workspace(self) -> Workspace:
        if not self.workspace.exists():
            raise WorkspaceError(
                f"no workspace at {self.workspace.root}: run `labelloop init {self.workspace.root}`"
            )
        return self.workspace

    def project_id(self) -> int:
        """The Label Studio project (found or created from the classes once, then cached)."""
        cached = self.state.marks().project_id
        if cached is not None:
            return cached
        project = self.gateway.ensure_project(self.settings.project_title, self.workspace.classes())
        self.state.set_marks(project_id=project)
        return project

    def push_if_needed(self, new_outputs: Sequence[Path] | None = None) -> None:
        """`dvc push` of HEAD unless the state says it is in the remote already. With
        `new_outputs` (the `.dvc` files HEAD added) and its parent pushed, only those: a
        push of every output costs the whole dataset (DVC checks each file)."""
        head = self.workspace.head()
        pushed = self.state.marks().pushed_commit
        if pushed == head:
            return
        if new_outputs and pushed != self.workspace.git("rev-parse", "HEAD~1"):
            new_outputs = None  # older commits are not pushed either: push everything
        self.checkpoint("push:begin")
        self.workspace.push(new_outputs)
        self.checkpoint("push:pushed")
        self.state.set_marks(pushed_commit=head)
        self.checkpoint("push:recorded")
