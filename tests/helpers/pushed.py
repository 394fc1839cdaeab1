"""What a data commit PUSHED: a fresh clone of the workspace at that commit, a fresh DVC
cache, `dvc pull` from the remote; nothing local to the workspace is trusted."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

__all__ = ["pull_from_remote"]


def pull_from_remote(workspace_root: Path, scratch: Path, commit: str, target: str) -> dict[str, str]:
    """{file name: sha256} of the DVC output `target` (e.g. data/images/add-000001) as the
    remote holds it for `commit`."""
    from dvc.repo import Repo

    clone = scratch / f"pulled-{commit[:10]}"
    subprocess.run(["git", "clone", "-q", str(workspace_root), str(clone)], check=True)
    subprocess.run(["git", "checkout", "-q", commit], cwd=clone, check=True)
    with Repo(str(clone)) as repo:
        with repo.config.edit("local") as conf:
            conf["core"]["site_cache_dir"] = str(scratch / f"pulled-{commit[:10]}-site")
            conf["cache"]["dir"] = str(scratch / f"pulled-{commit[:10]}-cache")
        repo.pull(targets=[str(clone / target)])
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((clone / target).rglob("*")) if p.is_file()}
