"""Every manifest in k8s/, rendered per overlay by kustomize itself (`kubectl kustomize`),
validated against the Kubernetes 1.37 OpenAPI schemas (kubernetes-validate, strict: unknown
fields are errors), plus the properties the deployment relies on: among them that the git
URL training pods get is what the scheduler's git daemon serves, and that only training
pods can reach that daemon."""

from __future__ import annotations

import os
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from kernel.settings import Settings
from loop.launchers import KubernetesLauncher, TrainingRequest
from tests.helpers.k8s import K8S, Manifests, container, git_transport

VERSION = "1.37.0"
OVERLAYS = ["base", "overlays/local", "overlays/gpu"]


def rendered(which: str) -> Manifests:
    return Manifests(which)


@pytest.mark.parametrize("which", OVERLAYS)
def test_every_object_is_valid_kubernetes(which):
    m = rendered(which)
    assert len(m.objects) >= 12 and len(m.keys()) == len(m.objects)
    for obj in m.objects:
        try:
            kubernetes_validate.validate(obj, VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{which}: {obj['kind']}/{obj['metadata']['name']}: {exc.message} at {list(exc.path)}")


def test_the_training_job_template_is_valid_and_asks_for_a_gpu():
    job = yaml.safe_load((K8S / "base" / "training-job.yaml").read_text())
    kubernetes_validate.validate(job, VERSION, strict=True)
    spec = job["spec"]
    assert spec["backoffLimit"] >= 0 and spec["ttlSecondsAfterFinished"] > 0 and spec["activeDeadlineSeconds"] > 0
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["nodeSelector"] and pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    (container_,) = pod["containers"]
    assert container_["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container_["envFrom"] == [{"secretRef": {"name": "labelloop-storage"}}]
    shipped = rendered("base").get("ConfigMap", "labelloop-training-job")["data"]["training-job.yaml"]
    assert yaml.safe_load(shipped) == job  # the scheduler gets exactly this file


@pytest.mark.parametrize("which", OVERLAYS)
def test_scheduler_is_a_single_replica_replaced_with_recreate(which):
    scheduler = rendered(which).get("Deployment", "labelloop-scheduler")
    assert scheduler["spec"]["replicas"] == 1 and scheduler["spec"]["strategy"]["type"] == "Recreate"
    assert scheduler["spec"]["template"]["spec"]["serviceAccountName"] == "labelloop-scheduler"


def test_rbac_grants_only_what_the_launcher_uses():
    m = rendered("base")
    rules = m.get("Role", "labelloop-training-launcher")["rules"]
    granted = {(g, r): set(rule["verbs"]) for rule in rules for g in rule["apiGroups"] for r in rule["resources"]}
    assert granted == {
        ("batch", "jobs"): {"create", "get", "list", "watch", "delete"},
        ("", "pods"): {"get", "list"},
        ("", "pods/log"): {"get", "list"},
    }
    binding = m.get("RoleBinding", "labelloop-training-launcher")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "labelloop-scheduler", "namespace": "labelloop"}]
    assert not any(kind in {"ClusterRole", "ClusterRoleBinding"} for kind, _ in m.keys())


def test_serving_probes_and_autoscaling():
    m = rendered("overlays/gpu")
    serving = m.get("Deployment", "labelloop-serving")["spec"]["template"]["spec"]["containers"][0]
    assert serving["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert serving["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert serving["resources"]["requests"] and serving["resources"]["limits"]
    hpa = m.get("HorizontalPodAutoscaler", "labelloop-serving")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "labelloop-serving" and hpa["spec"]["minReplicas"] == 3


def _refs(obj: dict) -> set[tuple[str, str]]:
    """(kind, exact name) of every ConfigMap and Secret an object refers to."""
    refs: set[tuple[str, str]] = set()

    def walk(node):
        if isinstance(node, dict):
            for key, kind in (("secretKeyRef", "Secret"), ("secretRef", "Secret"),
                              ("configMapKeyRef", "ConfigMap"), ("configMapRef", "ConfigMap"),
                              ("configMap", "ConfigMap")):
                if isinstance(node.get(key), dict) and "name" in node[key]:
                    refs.add((kind, node[key]["name"]))
            if isinstance(node.get("secret"), dict) and "secretName" in node["secret"]:
                refs.add(("Secret", node["secret"]["secretName"]))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(obj)
    return refs


def test_secrets_are_references_never_inline_values():
    for obj in rendered("base").objects:
        if obj["kind"] in {"Deployment", "StatefulSet"}:
            for container_ in obj["spec"]["template"]["spec"]["containers"]:
                for env in container_.get("env", []):
                    flag = env.get("value") in {"true", "false"}  # e.g. ..._ENABLE_LEGACY_API_TOKEN
                    if not flag and env["name"].endswith(("PASSWORD", "TOKEN", "SECRET", "API_KEY")):
                        assert "valueFrom" in env and "value" not in env, (obj["metadata"]["name"], env["name"])
        assert obj["kind"] != "Secret", "the base ships no Secret: overlays generate or reference them"


@pytest.mark.parametrize("which", OVERLAYS)
def test_everything_lands_in_the_labelloop_namespace(which):
    """An overlay's own resources, generators and components do not inherit the base's
    namespace; without their own they would land in the default namespace."""
    for obj in rendered(which).objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == "labelloop", (obj["kind"], obj["metadata"]["name"])


@pytest.mark.parametrize("which", OVERLAYS)
def test_generated_configmaps_are_hashed_and_every_reference_follows_the_hash(which):
    m = rendered(which)
    for name in ("labelloop-config", "labelloop-training-job", "labelloop-git-hooks"):
        assert m.get("ConfigMap", name)["metadata"]["name"] != name  # a content hash: changes roll pods
    for obj in m.objects:
        for kind, name in _refs(obj):
            if kind == "ConfigMap":
                assert (kind, name) in m.keys(), (obj["metadata"]["name"], name)


def test_local_overlay_generates_every_secret_and_configmap_it_references():
    m = rendered("overlays/local")
    for obj in m.objects:
        assert _refs(obj) <= m.keys(), obj["metadata"]["name"]
    # The training Job is created at run time from a template kustomize does not rewrite:
    # the Secret it names must exist under exactly that name.
    template = yaml.safe_load(m.get("ConfigMap", "labelloop-training-job")["data"]["training-job.yaml"])
    assert _refs(template) == {("Secret", "labelloop-storage")} and ("Secret", "labelloop-storage") in m.keys()
    config = m.get("ConfigMap", "labelloop-config")["data"]
    assert config["LABELLOOP_K8S_GPUS"] == "0" and config["LABELLOOP_LAUNCHER"] == "kubernetes"
    assert m.get("Deployment", "labelloop-serving")["spec"]["template"]["spec"]["containers"][0]["image"] \
        == "labelloop-serving:dev"


def test_gpu_overlay_runs_label_studio_on_postgres():
    m = rendered("overlays/gpu")
    assert m.has("StatefulSet", "label-studio-db")
    env = {e["name"]: e for e in
           m.get("Deployment", "label-studio")["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["DJANGO_DB"]["value"] == "default" and env["POSTGRE_HOST"]["value"] == "label-studio-db"
    assert "valueFrom" in env["POSTGRE_PASSWORD"]
    assert m.get("ConfigMap", "labelloop-config")["data"]["LABELLOOP_K8S_GPUS"] == "1"
    # Real Secrets, created out of band: referenced by their plain names.
    assert {name for kind, name in _refs(m.get("Deployment", "labelloop-scheduler")) if kind == "Secret"} \
        == {"labelloop-secrets", "labelloop-storage"}


# --- the git transport: scheduler (git daemon) <- training pods ---------------------------


@pytest.mark.parametrize("which", OVERLAYS)
def test_the_git_source_is_what_the_scheduler_git_daemon_serves(which):
    t = git_transport(rendered(which))
    url = urlsplit(t.url)
    assert url.scheme == "git", f"git daemon speaks git://, the manifests hand pods {t.url}"
    # The host is the scheduler's Service, on the port the daemon listens on.
    assert url.hostname == t.service["metadata"]["name"]
    (service_port,) = t.service["spec"]["ports"]
    assert url.port == service_port["port"] == 9418 and service_port["targetPort"] == "git"
    assert f"--port={t.container_port}" in t.command and t.container_port == 9418
    # git daemon maps /<path> to <base-path>/<path>: that is the one directory it serves,
    # and the scheduler's workspace.
    command = t.command[t.command.index("daemon") + 1:]
    (base,) = [a.split("=", 1)[1] for a in command if a.startswith("--base-path=")]
    served = [a for a in command if not a.startswith("-")]
    assert served == [base.rstrip("/") + url.path] == [t.workspace]
    assert "persistentVolumeClaim" in t.volumes[base]  # the scheduler's own data volume
    assert "--enable=receive-pack" in command and "--export-all" in command


@pytest.mark.parametrize("which", OVERLAYS)
def test_the_git_daemon_refuses_pushes_outside_the_run_branches(which):
    t = git_transport(rendered(which))
    volume = t.volumes[t.hooks_dir]
    assert t.command[:3] == ["git", "-c", f"core.hooksPath={t.hooks_dir}"]  # applies to receive-pack too
    assert volume["configMap"]["defaultMode"] & 0o111 and volume["configMap"]["defaultMode"] & 0o222 == 0
    hook = t.hooks["pre-receive"]
    assert hook == (K8S / "base" / "git-hooks" / "pre-receive").read_text()
    assert hook.startswith("#!/bin/sh") and "refs/heads/labelloop/runs/" in hook


@pytest.mark.parametrize("which", OVERLAYS)
def test_only_training_pods_reach_the_git_daemon(which):
    m = rendered(which)
    t = git_transport(m)
    policies = [o for o in m.objects if o["kind"] == "NetworkPolicy"]
    (policy,) = [p for p in policies if p["metadata"]["name"] == "labelloop-scheduler-git"]
    spec = policy["spec"]
    scheduler_labels = m.get("Deployment", "labelloop-scheduler")["spec"]["template"]["metadata"]["labels"]
    assert spec["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "labelloop-scheduler"}}
    assert spec["podSelector"]["matchLabels"].items() <= scheduler_labels.items()
    assert spec["policyTypes"] == ["Ingress"]
    (rule,) = spec["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": t.container_port}]
    # Same namespace only (no namespaceSelector, no ipBlock), training pods only.
    assert rule["from"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "labelloop-training"}}}]
    allowed = rule["from"][0]["podSelector"]["matchLabels"].items()
    template = yaml.safe_load(m.get("ConfigMap", "labelloop-training-job")["data"]["training-job.yaml"])
    assert allowed <= template["spec"]["template"]["metadata"]["labels"].items()
    for obj in m.objects:  # no other pod of the deployment matches
        if obj["kind"] in {"Deployment", "StatefulSet"}:
            assert not allowed <= obj["spec"]["template"]["metadata"]["labels"].items(), obj["metadata"]["name"]


@pytest.mark.parametrize("which", ["overlays/local", "overlays/gpu"])
def test_the_launcher_configured_by_the_manifests_builds_jobs_that_match_them(which, tmp_path, monkeypatch):
    """The scheduler's settings come from the rendered ConfigMap; the Job its launcher
    builds clones from the manifests' git URL and carries the label the NetworkPolicy admits."""
    m = rendered(which)
    t = git_transport(m)
    for name in [n for n in os.environ if n.startswith("LABELLOOP_")]:
        monkeypatch.delenv(name)
    for name, value in m.get("ConfigMap", "labelloop-config")["data"].items():
        monkeypatch.setenv(name, value)
    template = tmp_path / "training-job.yaml"
    template.write_text(m.get("ConfigMap", "labelloop-training-job")["data"]["training-job.yaml"])
    monkeypatch.setenv("LABELLOOP_K8S_JOB_TEMPLATE", str(template))
    monkeypatch.setenv("LABELLOOP_K8S_API_URL", "http://127.0.0.1:1")  # never contacted
    monkeypatch.setenv("LABELLOOP_CONFIG", str(tmp_path / "none.yaml"))
    settings = Settings.load()
    launcher = KubernetesLauncher(settings.kubernetes, runs_dir=tmp_path / "runs")
    job = launcher.build_job(TrainingRequest("run-1", "/ignored", "abc123"))
    args = container({"spec": job["spec"]}, "train")["args"]
    assert args[args.index("--source") + 1] == t.url
    (policy,) = [o for o in m.objects if o["kind"] == "NetworkPolicy"]
    allowed = policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"].items()
    assert allowed <= job["spec"]["template"]["metadata"]["labels"].items()
    assert job["metadata"]["namespace"] == policy["metadata"]["namespace"]
    env = container({"spec": job["spec"]}, "train")["env"]
    assert [e["value"] for e in env if e["name"] == "KERAS_BACKEND"] == ["jax"]  # the GPU image's backend, once


# --- images in S3 (issue 14) ----------------------------------------------------------------


def _buckets(url: str) -> str:
    return urlsplit(url).netloc


@pytest.mark.parametrize("which", OVERLAYS)
def test_images_dvc_remote_and_artifacts_all_live_in_s3(which):
    config = rendered(which).get("ConfigMap", "labelloop-config")["data"]
    for key in ("LABELLOOP_WATCH_FOLDER", "LABELLOOP_DVC_REMOTE", "LABELLOOP_ARTIFACTS_URL"):
        assert config[key].startswith("s3://"), key
    settings = Settings.load(watch_folder=config["LABELLOOP_WATCH_FOLDER"])
    assert settings.watch_folder == config["LABELLOOP_WATCH_FOLDER"]  # a URL, not a folded path


def test_local_overlay_wires_minio_the_same_way():
    m = rendered("overlays/local")
    config = m.get("ConfigMap", "labelloop-config")["data"]
    job = m.get("Job", "minio-buckets")["spec"]["template"]["spec"]["containers"][0]
    script = " ".join(job["args"])
    for key in ("LABELLOOP_WATCH_FOLDER", "LABELLOOP_DVC_REMOTE", "LABELLOOP_ARTIFACTS_URL"):
        assert f"local/{_buckets(config[key])}" in script, key  # every bucket the config names exists
    assert job["envFrom"] == [{"secretRef": {"name": "labelloop-storage"}}]
    assert config["LABELLOOP_S3_PRESIGN"] == "false"  # browsers cannot reach minio:9000: LS proxies
    label_studio = m.get("Deployment", "label-studio")["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "SSRF_PROTECTION_ENABLED", "value": "false"} in label_studio["env"]
    assert "AWS_ENDPOINT_URL" in m.get("Secret", "labelloop-storage")["data"]  # boto's usual place: DVC, labelloop and LS's storage agree
    gpu = rendered("overlays/gpu").get("Deployment", "label-studio")["spec"]["template"]["spec"]["containers"][0]
    assert all(e["name"] != "SSRF_PROTECTION_ENABLED" for e in gpu["env"])  # real S3: protection stays on
