"""A training job: what a local process or a Kubernetes pod runs for one training run.

    python -m pipelines.job --run-id <id> --source <git url/path> --commit <data commit>
                            --workdir <dir> [--publish <shared storage URL>]

Clones the workspace at the data commit, `dvc pull`s its data, `dvc repro`s the
pipeline, `dvc push`es the outputs, pushes the run's lock file to the branch
``labelloop/runs/<run id>`` of the source, and writes ``result.json`` into the workdir;
with ``--publish`` also exports the model and the result to shared storage
(`pipelines.artifacts`), which is how a Kubernetes pod hands them back.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from kernel.layout import JUDGED_FILE, METRICS_FILE, REGISTERED_FILE

__all__ = ["JobResult", "run_job", "RESULT_FILE"]


#: Written into the run directory (or shared storage) for the launcher to read.
RESULT_FILE = "result.json"


def _git(cwd: Path, *args: str) -> str:
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout.strip()


@dataclass(frozen=True)
class JobResult:
    """What a training job hands back to the loop (`result.json`)."""

    run_id: str
    data_commit: str
    model_tag: str
    accuracy: float
    n_labels: int
    metrics: dict
    seconds: float
    #: The labels that judged the run (image -> label) and which set they were: the loop
    #: judges the serving model on the same images before it compares.
    judged_by: str = "test"
    judged_on: dict[str, str] | None = None


def _step(message: str) -> None:
    print(f"[job] {message}", flush=True)


def run_job(
    run_id: str, source: str, commit: str, workdir: Path, cache_dir: Path | None = None,
    publish: str | None = None,
) -> JobResult:
    from dvc.repo import Repo

    started = time.perf_counter()
    repo_dir = workdir / "repo"
    _step(f"clone {source} at {commit[:10]}")
    subprocess.run(["git", "clone", "-q", source, str(repo_dir)], check=True)
    _git(repo_dir, "checkout", "-q", commit)
    _git(repo_dir, "config", "user.name", "labelloop-training")
    _git(repo_dir, "config", "user.email", "labelloop@localhost")
    with Repo(str(repo_dir)) as repo:
        with repo.config.edit("local") as conf:
            conf["core"]["site_cache_dir"] = str(repo_dir / ".dvc" / "tmp" / "site-cache")
            if cache_dir is not None:
                conf["cache"]["dir"] = str(cache_dir)
                # A shared local cache: link the data instead of copying thousands of files.
                conf["cache"]["type"] = "hardlink,copy"
    _step("dvc pull")
    with Repo(str(repo_dir)) as repo:
        repo.pull(allow_missing=True)
    _step("dvc repro")
    os.chdir(repo_dir)  # DVC resolves stage files against the working directory
    with Repo(str(repo_dir)) as repo:
        repo.reproduce()
    _step("dvc push")
    with Repo(str(repo_dir)) as repo:
        repo.push()
    registered = json.loads((repo_dir / REGISTERED_FILE).read_text())
    metrics = json.loads((repo_dir / METRICS_FILE).read_text())
    # A workspace whose pipeline predates the judged labels judged on its test set.
    judged_path = repo_dir / JUDGED_FILE
    judged = json.loads(judged_path.read_text()) if judged_path.exists() else {"judged_by": "test", "labels": None}
    _git(repo_dir, "add", "-A")
    _git(repo_dir, "commit", "-q", "--allow-empty", "-m",
         f"train: run {run_id}: {registered['tag']} accuracy {metrics['accuracy']:.4f}")
    _git(repo_dir, "push", "-q", "origin", f"HEAD:refs/heads/labelloop/runs/{run_id}")
    result = JobResult(
        run_id=run_id,
        data_commit=commit,
        model_tag=registered["tag"],
        accuracy=float(metrics["accuracy"]),
        n_labels=int(registered["n_labels"]),
        metrics=metrics,
        seconds=round(time.perf_counter() - started, 2),
        judged_by=judged["judged_by"],
        judged_on=judged["labels"],
    )
    if publish:
        # Another pod promotes and serves it: the model and the result go to shared storage.
        from pipelines.artifacts import ArtifactStore

        store = ArtifactStore(publish)
        _step(f"publish {result.model_tag} to {store.export_model(result.model_tag)}")
        store.write_json(ArtifactStore.result_path(run_id), asdict(result))
    (workdir / RESULT_FILE).write_text(json.dumps(asdict(result), indent=2) + "\n")
    _step(f"done: {result.model_tag} accuracy {result.accuracy:.4f} in {result.seconds}s")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-id", required=True)
    parser.add_argument("--source", required=True)
    parser.add_argument("--commit", required=True)
    parser.add_argument("--workdir", required=True, type=Path)
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--publish", default=None, help="shared storage URL for the model and result")
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    try:
        run_job(args.run_id, args.source, args.commit, args.workdir, args.cache_dir, args.publish)
    except Exception as exc:
        print(f"[job] FAILED: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
