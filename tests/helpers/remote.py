"""What was PUSHED, read back without trusting anything local to the workspace."""

from __future__ import annotations

import subprocess
from pathlib import Path

from pipelines.labels import LabelEvent, read_events


def labels_from_remote(workspace_root: Path, scratch: Path) -> list[LabelEvent]:
    """A fresh clone, a fresh cache, `dvc pull` from the remote: the label events pushed."""
    from dvc.repo import Repo

    clone = scratch / "verify"
    subprocess.run(["git", "clone", "-q", str(workspace_root), str(clone)], check=True)
    with Repo(str(clone)) as repo:
        with repo.config.edit("local") as conf:
            conf["core"]["site_cache_dir"] = str(scratch / "verify-site")
            conf["cache"]["dir"] = str(scratch / "verify-cache")
        repo.pull(targets=[str(clone / "data/labels")], recursive=True)
    return read_events(clone / "data/labels")
