"""The KubernetesLauncher against kmock's Kubernetes API emulator (real HTTP, the official
client): success (the pod's command really runs and hands the model over through shared
storage), failure, deadline exceeded, 5xx retries, conflict, an expired watch, and the
loop's own timeout. The test plays the cluster: it sees the Job appear, creates its pod,
serves the pod log and sets the Job's status."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time

import kmock as kmocklib
import pytest
from kubernetes import client as k8s

from loop.launchers import KubernetesLauncher, TrainingRequest
from loop.launchers.kubernetes import CONTAINER, RUN_ID_LABEL, job_name
from pipelines.artifacts import ArtifactStore
from tests.conftest import make_settings

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(600)]

NS = "labelloop"
JOBS = "batch/v1/jobs"
JOBS_PATH = f"/apis/batch/v1/namespaces/{NS}/jobs"


def status_error(code: int, reason: str, message: str) -> dict:
    return {"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
            "code": code, "reason": reason, "message": message}


def fail_next(kmock, method: str, path: str, code: int) -> None:
    """Only the next request to method+path fails (views count every request ever seen)."""
    view = kmock[method, path]
    n = len(view)
    view[n:n + 1] << code << status_error(code, "InternalError", "injected failure")


def cluster(kmock) -> k8s.BatchV1Api:
    """The official client, as the test-as-cluster uses it to act on the emulator."""
    return k8s.BatchV1Api(k8s.ApiClient(k8s.Configuration(host=str(kmock.url).rstrip("/"))))


def condition(kind: str, reason: str = "", message: str = "") -> dict:
    return {"status": {"conditions": [{"type": kind, "status": "True", "reason": reason, "message": message}]}}


@pytest.fixture
def launcher_for(kmock, tmp_path):
    kmock.resources.load_bundled()  # lists of kinds nothing was stored for yet answer []

    def build(**overrides) -> KubernetesLauncher:
        values = dict(artifacts_url=str(tmp_path / "shared"), k8s_git_source="/srv/workspace.git",
                      k8s_api_url=str(kmock.url).rstrip("/"), k8s_namespace=NS,
                      k8s_training_image="registry.example/labelloop-training:test", training_timeout_s=600.0)
        values.update(overrides)
        settings = make_settings(tmp_path / "home", tmp_path / "ws", **values)
        launcher = KubernetesLauncher(settings.kubernetes, runs_dir=settings.runs_dir)
        launcher.api_retry_s = 10.0
        launcher.watch_window_s = 1
        return launcher

    return build


def stored_jobs(kmock) -> list:
    """The Job objects the emulator holds (deleted ones included)."""
    return [obj for key, obj in kmock.objects.items() if str(key[0]) == JOBS or "jobs" in str(key[0])]


async def job_created(kmock, name: str, timeout_s: float = 30.0):
    deadline = time.monotonic() + timeout_s
    while not any(o.raw["metadata"]["name"] == name for o in stored_jobs(kmock)):
        assert time.monotonic() < deadline, f"Job {name} was never created"
        await asyncio.sleep(0.05)
    return kmock.objects[JOBS, NS, name]


def add_pod(kmock, run_id: str, log_text: str) -> None:
    pod = f"{job_name(run_id)}-x7k2p"
    kmock.objects["v1/pods", NS, pod] = {
        "apiVersion": "v1", "kind": "Pod", "status": {"phase": "Succeeded"},
        "metadata": {"name": pod, "namespace": NS, "labels": {RUN_ID_LABEL: run_id, "job-name": job_name(run_id)}},
        "spec": {"containers": [{"name": CONTAINER, "image": "x"}]}}
    kmock[f"get /api/v1/namespaces/{NS}/pods/{pod}/log"] << {"Content-Type": "text/plain"} << log_text.encode()


def fake_result(launcher: KubernetesLauncher, run_id: str, tag: str = "labelloop-classifier:fake") -> None:
    ArtifactStore(launcher.config.artifacts_url).write_json(ArtifactStore.result_path(run_id), {
        "run_id": run_id, "data_commit": "c0ffee", "model_tag": tag, "accuracy": 0.93,
        "n_labels": 50, "metrics": {"accuracy": 0.93}, "seconds": 1.0})


async def test_the_job_from_the_template_is_what_a_gpu_cluster_needs(kmock, launcher_for):
    import kubernetes_validate

    launcher = launcher_for()
    run = asyncio.create_task(asyncio.to_thread(launcher.run, TrainingRequest("run-spec", "/ws", "abc123")))
    job = await job_created(kmock, job_name("run-spec"))
    kmock.objects[JOBS, NS, job_name("run-spec")].patch(condition("Failed", "BackoffLimitExceeded"))
    await run
    body = kmock["post", JOBS_PATH][0].data
    kubernetes_validate.validate(body, "1.37.0", strict=True)
    assert body["metadata"]["labels"][RUN_ID_LABEL] == "run-spec"
    spec = body["spec"]
    assert spec["activeDeadlineSeconds"] == 600 and spec["backoffLimit"] >= 0 and spec["ttlSecondsAfterFinished"] > 0
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "registry.example/labelloop-training:test"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["tolerations"] and pod["nodeSelector"]
    assert container["args"][container["args"].index("--commit") + 1] == "abc123"
    assert container["args"][container["args"].index("--publish") + 1] == launcher.config.artifacts_url
    assert container["envFrom"] == [{"secretRef": {"name": "labelloop-storage"}}]  # credentials by reference
    assert "AWS_SECRET_ACCESS_KEY" not in json.dumps(body)
    assert job is not None


async def test_success_runs_the_pods_command_and_hands_the_model_over(kmock, launcher_for, trained, tmp_path):
    """The pod's command (`python -m pipelines.job ...` from the Job spec) really runs, with
    its own BentoML store; the model reaches the loop and a fresh 'serving pod' only
    through shared storage."""
    loop, _ = trained
    ws = loop.settings.workspace
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ws, capture_output=True, text=True,
                            check=True).stdout.strip()
    launcher = launcher_for(k8s_git_source=str(ws))
    run_id = "run-ok"
    run = asyncio.create_task(asyncio.to_thread(launcher.run, TrainingRequest(run_id, str(ws), commit)))
    await job_created(kmock, job_name(run_id))
    args = kmock["post", JOBS_PATH][0].data["spec"]["template"]["spec"]["containers"][0]["args"]
    args[args.index("--workdir") + 1] = str(tmp_path / "pod-work")
    pod_env = {**loop.settings.child_env(), "BENTOML_HOME": str(tmp_path / "pod-bentoml")}
    pod_env["PATH"] = f"{os.path.dirname(sys.executable)}{os.pathsep}{pod_env['PATH']}"
    pod = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "pipelines.job", *args],
                                  env=pod_env, capture_output=True, text=True, timeout=500)
    assert pod.returncode == 0, pod.stdout[-2000:] + pod.stderr[-2000:]
    add_pod(kmock, run_id, pod.stdout)
    kmock.objects[JOBS, NS, job_name(run_id)].patch(condition("Complete"))
    result = await run
    assert result.succeeded, result.error
    assert result.model_tag and 0.5 < result.accuracy <= 1.0
    assert "[job] done" in result.log_path.read_text()  # the pod log kept with the run
    # A serving replica elsewhere: empty model store, only the artifacts URL.
    replica = {**loop.settings.child_env(), "BENTOML_HOME": str(tmp_path / "replica-bentoml")}
    code = ("from pipelines.artifacts import ArtifactStore; from serving.inference import load_model;"
            f"s = ArtifactStore({launcher.config.artifacts_url!r}); s.ensure_local_model({result.model_tag!r});"
            f"m = load_model({result.model_tag!r}); print(m.tag, len(m.classes))")
    loaded = await asyncio.to_thread(subprocess.run, [sys.executable, "-c", code], env=replica,
                                     capture_output=True, text=True, timeout=300)
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    assert loaded.stdout.split()[-2:] == [result.model_tag, "10"]


async def test_failure_keeps_the_pod_log_and_promotes_nothing(kmock, launcher_for):
    launcher = launcher_for()
    run = asyncio.create_task(asyncio.to_thread(launcher.run, TrainingRequest("run-bad", "/ws", "abc")))
    await job_created(kmock, job_name("run-bad"))
    add_pod(kmock, "run-bad", "[job] dvc repro\nTraceback ...\nValueError: no labels\n")
    kmock.objects[JOBS, NS, job_name("run-bad")].patch(
        condition("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit"))
    result = await run
    assert not result.succeeded and result.model_tag is None
    assert "BackoffLimitExceeded" in result.error
    assert "ValueError: no labels" in result.log_path.read_text()


async def test_deadline_exceeded_is_a_timeout_and_the_job_is_deleted(kmock, launcher_for):
    launcher = launcher_for()
    run = asyncio.create_task(asyncio.to_thread(launcher.run, TrainingRequest("run-slow", "/ws", "abc")))
    await job_created(kmock, job_name("run-slow"))
    kmock.objects[JOBS, NS, job_name("run-slow")].patch(
        condition("Failed", "DeadlineExceeded", "Job was active longer than specified deadline"))
    result = await run
    assert not result.succeeded and "DeadlineExceeded" in result.error
    assert kmock.objects[JOBS, NS, job_name("run-slow")].deleted
    assert kmock["delete", f"{JOBS_PATH}/{job_name('run-slow')}"][0].params == {"propagationPolicy": "Background"}


async def test_the_loops_own_timeout_deletes_a_job_that_never_reports(kmock, launcher_for):
    launcher = launcher_for(training_timeout_s=1.0)
    launcher.grace_s = 1.0
    result = await asyncio.to_thread(launcher.run, TrainingRequest("run-stuck", "/ws", "abc"))
    assert not result.succeeded and "no result after" in result.error
    assert kmock.objects[JOBS, NS, job_name("run-stuck")].deleted


async def test_5xx_on_create_and_read_are_retried_without_a_second_job(kmock, launcher_for):
    launcher = launcher_for()
    name = job_name("run-flaky")
    fail_next(kmock, "post", JOBS_PATH, 503)  # the emulator stores the Job anyway: retry -> 409
    fail_next(kmock, "get", f"{JOBS_PATH}/{name}/status", 500)
    fake_result(launcher, "run-flaky")
    run = asyncio.create_task(asyncio.to_thread(launcher.run, TrainingRequest("run-flaky", "/ws", "abc")))
    await job_created(kmock, name)
    await asyncio.sleep(0.5)
    await asyncio.to_thread(cluster(kmock).patch_namespaced_job_status, name, NS, condition("Complete"))
    result = await run
    assert result.succeeded and result.model_tag == "labelloop-classifier:fake", result.error
    statuses = [r for r in kmock["post", JOBS_PATH]]
    assert len(statuses) == 2  # the 503, then the retry that found the Job (409)
    assert len([o for o in stored_jobs(kmock) if not o.deleted]) == 1


async def test_a_restarted_scheduler_adopts_the_existing_job(kmock, launcher_for):
    """Same run id twice: the second launcher (after a restart) gets 409 and watches the
    Job the first one created; no second Job."""
    launcher = launcher_for()
    job = launcher.build_job(TrainingRequest("run-again", "/ws", "abc"))
    await asyncio.to_thread(cluster(kmock).create_namespaced_job, NS, job)
    fake_result(launcher, "run-again")
    kmock.objects[JOBS, NS, job_name("run-again")].patch(condition("Complete"))
    result = await asyncio.to_thread(launcher.run, TrainingRequest("run-again", "/ws", "abc"))
    assert result.succeeded
    assert len(kmock["post", JOBS_PATH]) == 2  # ours and the launcher's (answered 409)
    assert len(stored_jobs(kmock)) == 1


async def test_an_expired_watch_is_resumed(kmock, launcher_for):
    launcher = launcher_for()
    launcher.watch_window_s = 30  # without resuming, the test would wait out this window
    gone = {"type": "ERROR", "object": status_error(410, "Expired", "too old resource version: 1 (2)")}
    kmock["get", JOBS_PATH, kmocklib.params(watch="true")][:1] << (gone,)
    fake_result(launcher, "run-410")
    run = asyncio.create_task(asyncio.to_thread(launcher.run, TrainingRequest("run-410", "/ws", "abc")))
    await job_created(kmock, job_name("run-410"))
    while len(kmock["get", JOBS_PATH, kmocklib.params(watch="true")]) < 2:  # the 410, then a new watch
        await asyncio.sleep(0.05)
    await asyncio.to_thread(cluster(kmock).patch_namespaced_job_status, job_name("run-410"), NS, condition("Complete"))
    started = time.monotonic()
    result = await run
    assert result.succeeded, result.error
    assert time.monotonic() - started < 25  # the MODIFIED event arrived on the resumed watch
