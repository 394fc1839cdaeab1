"""`KubernetesLauncher`: one training run = one `batch/v1` Job on a GPU node.

Same interface as `LocalLauncher` (`run(request) -> TrainingResult`, never raises for a
failed run). The Job comes from the template `k8s/base/training-job.yaml` (GPU limits,
nodeSelector, tolerations, backoffLimit, ttlSecondsAfterFinished, credentials from Secrets
by reference); the launcher fills in what belongs to the run: name and labels from the run
id, the image, the data commit to train on, `activeDeadlineSeconds`. Pods clone the
workspace from `LABELLOOP_K8S_GIT_SOURCE` (in the manifests: the `labelloop-config`
ConfigMap's ``git://labelloop-scheduler:9418/workspace``, served by the scheduler's
`git daemon` sidecar) and push their run's branch back to it.

- Idempotent: the Job name derives from the run id; a 409 on create means the Job already
  exists (a restarted scheduler) and is watched, never created twice.
- Watches the Job to completion; API errors (5xx, connection reset) are retried with
  backoff, a watch that expired (410 Gone) is resumed from a fresh read.
- Keeps the pod logs in the run directory, deletes the Job on timeout, and reads the
  trained model's result from shared storage (`pipelines.artifacts`), where the pod put it.
"""

from __future__ import annotations

import copy
import logging
import re
import time
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes import watch as k8s_watch
from kubernetes.client.exceptions import ApiException
from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_exponential
from urllib3.exceptions import HTTPError as Urllib3Error

from kernel.errors import ConfigError
from kernel.settings import KubernetesSettings
from loop.launchers.base import TrainingRequest, TrainingResult, result_from_record
from pipelines.artifacts import ArtifactStore

__all__ = ["KubernetesLauncher", "job_name", "DEFAULT_TEMPLATE", "RUN_ID_LABEL"]

log = logging.getLogger(__name__)

DEFAULT_TEMPLATE = Path(__file__).resolve().parents[2] / "k8s" / "base" / "training-job.yaml"
RUN_ID_LABEL = "labelloop.dev/run-id"
CONTAINER = "train"


def job_name(run_id: str) -> str:
    """A DNS-1123 name (lowercase alphanumerics and '-', at most 63) for the run's Job."""
    slug = re.sub(r"[^a-z0-9-]+", "-", run_id.lower()).strip("-")
    return f"labelloop-train-{slug}"[:63].rstrip("-")


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, ApiException):
        return exc.status is None or exc.status == 0 or exc.status >= 500 or exc.status == 429
    return isinstance(exc, (Urllib3Error, ConnectionError, TimeoutError))


class KubernetesLauncher:
    #: A restarted scheduler re-attaches to the Job of an interrupted run (same run id).
    resumable = True

    def __init__(self, config: KubernetesSettings, runs_dir: Path, api_client: k8s.ApiClient | None = None):
        """`config` is `settings.kubernetes`; `runs_dir` is where each run's record (the
        pod logs) is kept."""
        if not config.artifacts_url:
            raise ConfigError(
                "the kubernetes launcher needs shared storage for the trained model: "
                "set LABELLOOP_ARTIFACTS_URL (s3://bucket/labelloop or a shared volume)"
            )
        if not config.git_source:
            raise ConfigError(
                "the kubernetes launcher needs the git URL training pods clone the workspace "
                "from: set LABELLOOP_K8S_GIT_SOURCE"
            )
        self.config = config
        self.runs_dir = runs_dir
        self.namespace = config.namespace
        self._api_client = api_client or self._connect(config.api_url)
        self.batch = k8s.BatchV1Api(self._api_client)
        self.core = k8s.CoreV1Api(self._api_client)
        template_path = config.job_template or DEFAULT_TEMPLATE
        try:
            self.template = yaml.safe_load(Path(template_path).read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read the training Job template {template_path}: {exc}") from exc
        self.store = ArtifactStore(config.artifacts_url)
        #: Retry budget for API calls that fail transiently (5xx, resets).
        self.api_retry_s = 60.0
        #: Longest single watch request; the watch is re-opened (and the Job re-read) after
        #: it, so a missed event costs at most this long.
        self.watch_window_s = 60
        #: After activeDeadlineSeconds, how long the loop still waits for the Job to report.
        self.grace_s = 120.0

    @staticmethod
    def _connect(api_url: str) -> k8s.ApiClient:
        if api_url:
            configuration = k8s.Configuration()
            configuration.host = api_url
            return k8s.ApiClient(configuration)
        try:
            k8s_config.load_incluster_config()
        except k8s_config.ConfigException:
            try:
                k8s_config.load_kube_config()
            except Exception as exc:
                raise ConfigError(
                    "no Kubernetes configuration: not in a cluster, no kubeconfig, "
                    "and LABELLOOP_K8S_API_URL is not set"
                ) from exc
        return k8s.ApiClient()

    def _api(self, what: str, fn, *args, **kwargs):
        """One API call, retried on transient failures for up to `api_retry_s`."""
        for attempt in Retrying(
            retry=retry_if_exception(_transient),
            stop=stop_after_delay(self.api_retry_s),
            wait=wait_exponential(multiplier=0.2, max=5),
            reraise=True,
            before_sleep=lambda state: log.warning(
                "%s failed (%s); retrying", what, state.outcome.exception() if state.outcome else "?"
            ),
        ):
            with attempt:
                return fn(*args, **kwargs)
        raise AssertionError("unreachable")

    # --- the Job -------------------------------------------------------------------------
    def build_job(self, request: TrainingRequest) -> dict[str, Any]:
        job = copy.deepcopy(self.template)
        name = job_name(request.run_id)
        meta = job.setdefault("metadata", {})
        meta["name"] = name
        meta["namespace"] = self.namespace
        meta.setdefault("labels", {})[RUN_ID_LABEL] = request.run_id
        spec = job["spec"]
        spec["activeDeadlineSeconds"] = int(self.config.training_timeout_s)
        pod = spec["template"]
        pod.setdefault("metadata", {}).setdefault("labels", {})[RUN_ID_LABEL] = request.run_id
        container = next(c for c in pod["spec"]["containers"] if c["name"] == CONTAINER)
        container["image"] = self.config.training_image
        container["args"] = [
            "--run-id", request.run_id,
            "--source", self.config.git_source,
            "--commit", request.data_commit,
            "--workdir", "/work/run",
            "--publish", self.config.artifacts_url,
        ]
        environment = [e for e in container.get("env", []) if e.get("name") != "KERAS_BACKEND"]
        container["env"] = [*environment, {"name": "KERAS_BACKEND", "value": self.config.keras_backend}]
        resources = container.setdefault("resources", {})
        if self.config.gpus > 0:
            resources.setdefault("limits", {})["nvidia.com/gpu"] = str(self.config.gpus)
        else:  # a CPU-only cluster: no GPU limit, no GPU node placement
            resources.get("limits", {}).pop("nvidia.com/gpu", None)
            pod["spec"].pop("nodeSelector", None)
            pod["spec"].pop("tolerations", None)
        return job

    def run(self, request: TrainingRequest) -> TrainingResult:
        workdir = self.runs_dir / request.run_id
        workdir.mkdir(parents=True, exist_ok=True)
        log_path = workdir / "job.log"
        name = job_name(request.run_id)
        try:
            self._create(request)
            outcome, reason = self._wait(name, request.run_id)
        except ApiException as exc:
            log_path.write_text(f"Kubernetes API error: {exc.status} {exc.reason}\n")
            return TrainingResult(request.run_id, False, error=f"Kubernetes API: {exc.status} {exc.reason}",
                                  log_path=log_path)
        except Exception as exc:  # the API server unreachable past the retry budget
            log_path.write_text(f"Kubernetes API unreachable: {exc}\n")
            return TrainingResult(request.run_id, False, error=f"Kubernetes API unreachable: {exc}",
                                  log_path=log_path)
        self._keep_logs(request.run_id, log_path)
        if outcome == "timeout":
            self._delete(name)
            return TrainingResult(request.run_id, False, error=reason, log_path=log_path)
        if outcome == "failed":
            return TrainingResult(request.run_id, False, error=f"training Job failed: {reason}", log_path=log_path)
        data = self.store.read_json(ArtifactStore.result_path(request.run_id))
        if data is None:
            return TrainingResult(request.run_id, False, log_path=log_path,
                                  error=f"the Job succeeded but left no result in {self.store.url}")
        return result_from_record(request.run_id, data, log_path)

    def _create(self, request: TrainingRequest) -> None:
        body = self.build_job(request)
        try:
            self._api("create the training Job", self.batch.create_namespaced_job, self.namespace, body)
            log.info("created Job %s for run %s", body["metadata"]["name"], request.run_id)
        except ApiException as exc:
            if exc.status != 409:
                raise
            # The same run id already has its Job (a scheduler restarted mid-run): watch it.
            log.info("Job %s exists already; watching it", body["metadata"]["name"])

    def _wait(self, name: str, run_id: str) -> tuple[str, str]:
        """("succeeded" | "failed" | "timeout", reason). The loop's own deadline is the
        Job's activeDeadlineSeconds plus a grace period for the pod to report."""
        deadline = time.monotonic() + self.config.training_timeout_s + self.grace_s
        selector = f"{RUN_ID_LABEL}={run_id}"
        while True:
            job = self._api("read the training Job", self.batch.read_namespaced_job_status, name, self.namespace)
            state = _job_state(job)
            if state:
                return state
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "timeout", f"no result after {self.config.training_timeout_s:.0f}s; Job deleted"
            watcher = k8s_watch.Watch()
            try:
                for event in watcher.stream(
                    self.batch.list_namespaced_job, self.namespace, label_selector=selector,
                    resource_version=job.metadata.resource_version,
                    timeout_seconds=int(min(self.watch_window_s, max(1, remaining))),
                    # A server that does not honour timeoutSeconds must not hang the loop.
                    _request_timeout=min(self.watch_window_s, max(1, remaining)) * 1.5 + 1,
                ):
                    obj = event["object"]
                    if obj.metadata.name == name and (state := _job_state(obj)):
                        watcher.stop()
                        return state
            except ApiException as exc:
                if exc.status == 410:  # the watch's resourceVersion expired: read again, re-watch
                    log.info("watch of %s expired (410 Gone); resuming", name)
                elif not _transient(exc):
                    raise
                else:
                    log.warning("watching %s failed (%s); resuming", name, exc.status)
                    time.sleep(1)
            except (Urllib3Error, ConnectionError, TimeoutError) as exc:
                log.warning("watching %s failed (%s); resuming", name, exc)
                time.sleep(1)

    def _keep_logs(self, run_id: str, log_path: Path) -> None:
        """Every pod's log, kept with the run record (the Job and its pods expire)."""
        parts = []
        try:
            pods = self._api("list the training pods", self.core.list_namespaced_pod, self.namespace,
                             label_selector=f"{RUN_ID_LABEL}={run_id}")
            for pod in pods.items:
                text = self._api("read a pod log", self.core.read_namespaced_pod_log, pod.metadata.name,
                                 self.namespace, container=CONTAINER)
                parts.append(f"=== pod {pod.metadata.name} ===\n{text}")
        except Exception as exc:  # logs are for people; their absence must not fail the run
            parts.append(f"(pod logs unavailable: {exc})")
        log_path.write_text("\n".join(parts) + "\n")

    def _delete(self, name: str) -> None:
        try:
            self._api("delete the training Job", self.batch.delete_namespaced_job, name, self.namespace,
                      propagation_policy="Background")
        except ApiException as exc:
            if exc.status != 404:
                log.warning("could not delete Job %s: %s", name, exc.reason)


def _job_state(job: Any) -> tuple[str, str] | None:
    status = job.status
    for condition in (status.conditions or []) if status else []:
        if condition.status != "True":
            continue
        if condition.type == "Complete":
            return "succeeded", "complete"
        if condition.type == "Failed":
            reason = condition.reason or "Failed"
            if reason == "DeadlineExceeded":
                return "timeout", f"DeadlineExceeded: {condition.message or 'activeDeadlineSeconds reached'}"
            return "failed", f"{reason}: {condition.message or ''}".strip(": ")
    return None
