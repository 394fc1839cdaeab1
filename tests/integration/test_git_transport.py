"""The git transport between the scheduler and training pods, for real: a `git daemon`
started with the command of the scheduler's `git` sidecar as kustomize renders it (mount
paths mapped to temp directories, the port to a free one on 127.0.0.1), the hooks from the
rendered ConfigMap, serving a real git+DVC workspace. The training job (`python -m
pipelines.job`, with the arguments the KubernetesLauncher puts in the Job) clones it from the
manifests' `git://` URL at the data commit, runs `dvc repro` of a one-line stage and pushes
its run branch back; every other push is refused."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import yaml

from loop.launchers import KubernetesLauncher, TrainingRequest
from loop.stack import free_port
from tests.conftest import make_settings
from tests.helpers.k8s import Manifests, git_transport

pytestmark = pytest.mark.timeout(180)

STAGE = ("mkdir -p build && n=$(wc -l < data/labels.csv) && printf '{\"accuracy\": 0.5}' > metrics.json"
         " && printf '{\"tag\": \"fake-model:%s\", \"n_labels\": %s}' \"$n\" \"$n\" > build/registered.json")


def git(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"git {' '.join(args)}: {proc.stderr}")
    return proc


def make_workspace(root: Path, remote: Path) -> tuple[str, str]:
    """A git+DVC workspace with a one-stage pipeline: (data commit, later head of main)."""
    from dvc.repo import Repo

    root.mkdir(parents=True)
    git(root, "init", "-q", "-b", "main")
    git(root, "config", "user.name", "test")
    git(root, "config", "user.email", "test@localhost")
    Repo.init(str(root))
    with Repo(str(root)) as repo, repo.config.edit("repo") as conf:
        conf["core"]["remote"] = "local"
        conf["remote"]["local"] = {"url": str(remote)}
    (root / "dvc.yaml").write_text(yaml.safe_dump(
        {"stages": {"train": {"cmd": STAGE, "deps": ["data/labels.csv"]}}}))
    (root / "data").mkdir()
    (root / "data" / "labels.csv").write_text("a.png,0\nb.png,1\nc.png,2\n")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "data: 3 labels")
    data_commit = git(root, "rev-parse", "HEAD").stdout.strip()
    (root / "data" / "labels.csv").write_text("a.png,0\nb.png,1\nc.png,2\nd.png,3\n")
    git(root, "commit", "-q", "-am", "data: 4 labels")
    return data_commit, git(root, "rev-parse", "HEAD").stdout.strip()


@dataclass
class Served:
    url: str  # the manifests' git source, host:port pointed at the local daemon
    workspace: Path
    data_commit: str
    head: str


@pytest.fixture
def served(tmp_path):
    t = git_transport(Manifests("base"))
    # The sidecar's filesystem, here: each mount path becomes a temp directory.
    (data_mount,) = [path for path, volume in t.volumes.items() if "persistentVolumeClaim" in volume]
    mounts = {data_mount: tmp_path / "data", t.hooks_dir: tmp_path / "hooks"}

    def here(value: str) -> str:
        for mount in sorted(mounts, key=len, reverse=True):
            if value == mount or value.startswith(mount.rstrip("/") + "/"):
                return str(mounts[mount]) + value[len(mount.rstrip("/")):]
        return value

    mode = t.volumes[t.hooks_dir]["configMap"]["defaultMode"]
    mounts[t.hooks_dir].mkdir()
    for name, text in t.hooks.items():
        (mounts[t.hooks_dir] / name).write_text(text)
        (mounts[t.hooks_dir] / name).chmod(mode)
    workspace = Path(here(t.workspace))
    data_commit, head = make_workspace(workspace, tmp_path / "dvc-remote")

    port = free_port()
    command = []
    for arg in t.command:
        if arg.startswith("--port="):
            arg = f"--port={port}"
        elif "=" in arg:
            key, value = arg.split("=", 1)
            arg = f"{key}={here(value)}"
        else:
            arg = here(arg)
        command.append(arg)
    command.insert(command.index("daemon") + 1, "--listen=127.0.0.1")
    log = (tmp_path / "git-daemon.log").open("w")
    daemon = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while True:
            assert daemon.poll() is None, (tmp_path / "git-daemon.log").read_text()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "git daemon did not listen"
                time.sleep(0.05)
        url = urlsplit(t.url)
        yield Served(urlunsplit((url.scheme, f"127.0.0.1:{port}", url.path, "", "")), workspace, data_commit, head)
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)  # the daemon and the children it forked
        daemon.wait(timeout=10)
        log.close()


def test_a_training_job_clones_from_the_git_daemon_and_pushes_only_its_run_branch(served, tmp_path):
    settings = make_settings(tmp_path / "home", served.workspace, launcher="kubernetes",
                             artifacts_url=str(tmp_path / "shared"), k8s_git_source=served.url,
                             k8s_api_url="http://127.0.0.1:1")  # the API is never contacted
    launcher = KubernetesLauncher(settings.kubernetes, runs_dir=settings.runs_dir)
    job = launcher.build_job(TrainingRequest("x", str(served.workspace), served.data_commit))
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--source") + 1] == served.url
    args[args.index("--workdir") + 1] = str(tmp_path / "pod-work")
    del args[args.index("--publish"):args.index("--publish") + 2]  # no model here to export
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABELLOOP_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    pod = subprocess.run([sys.executable, "-m", "pipelines.job", *args], env=env, capture_output=True,
                         text=True, timeout=120, check=False)
    assert pod.returncode == 0, pod.stdout[-3000:] + pod.stderr[-3000:]
    assert f"[job] clone {served.url} at {served.data_commit[:10]}" in pod.stdout
    result = json.loads((tmp_path / "pod-work" / "result.json").read_text())
    assert result["n_labels"] == 3 and result["data_commit"] == served.data_commit  # trained at the data commit

    # The job's push to labelloop/runs/x was accepted: the run's commit sits on the data commit.
    ws = served.workspace
    assert git(ws, "rev-parse", "labelloop/runs/x^").stdout.strip() == served.data_commit
    assert git(ws, "show", "labelloop/runs/x:dvc.lock").stdout.strip()

    clone = tmp_path / "pod-work" / "repo"
    git(clone, "fetch", "-q", "origin", "main")
    git(clone, "checkout", "-q", "FETCH_HEAD")
    git(clone, "commit", "-q", "--allow-empty", "-m", "a fast-forward of main")
    for refspec in ("HEAD:refs/heads/main", "HEAD:refs/heads/feature", "HEAD:refs/tags/v1",
                    ":refs/heads/labelloop/runs/x", "HEAD:refs/heads/labelloop/runs-evil"):
        push = git(clone, "push", "origin", refspec, check=False)
        assert push.returncode != 0, refspec
        assert "pre-receive hook declined" in push.stderr and "labelloop:" in push.stderr, push.stderr
    git(clone, "push", "-q", "origin", "HEAD:refs/heads/labelloop/runs/y")  # another run branch: fine

    assert git(ws, "rev-parse", "main").stdout.strip() == served.head
    refs = set(git(ws, "for-each-ref", "--format=%(refname)").stdout.split())
    assert refs == {"refs/heads/main", "refs/heads/labelloop/runs/x", "refs/heads/labelloop/runs/y"}
