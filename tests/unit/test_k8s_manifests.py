"""Every manifest in k8s/, rendered per overlay, validated against the Kubernetes 1.37
OpenAPI schemas (kubernetes-validate, strict: unknown fields are errors), plus the
properties the deployment relies on."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from tests.helpers.kustomize import build

K8S = Path(__file__).resolve().parents[2] / "k8s"
VERSION = "1.37.0"
OVERLAYS = ["base", "overlays/local", "overlays/gpu"]


def rendered(which: str) -> dict[tuple[str, str], dict]:
    return {(o["kind"], o["metadata"]["name"]): o for o in build(K8S / which)}


@pytest.mark.parametrize("which", OVERLAYS)
def test_every_object_is_valid_kubernetes(which):
    objects = rendered(which)
    assert len(objects) >= 12
    for key, obj in objects.items():
        try:
            kubernetes_validate.validate(obj, VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{which}: {key}: {exc.message} at {list(exc.path)}")


def test_the_training_job_template_is_valid_and_asks_for_a_gpu():
    job = yaml.safe_load((K8S / "base" / "training-job.yaml").read_text())
    kubernetes_validate.validate(job, VERSION, strict=True)
    spec = job["spec"]
    assert spec["backoffLimit"] >= 0 and spec["ttlSecondsAfterFinished"] > 0 and spec["activeDeadlineSeconds"] > 0
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["nodeSelector"] and pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["envFrom"] == [{"secretRef": {"name": "labelloop-storage"}}]


@pytest.mark.parametrize("which", OVERLAYS)
def test_scheduler_is_a_single_replica_replaced_with_recreate(which):
    scheduler = rendered(which)[("Deployment", "labelloop-scheduler")]
    assert scheduler["spec"]["replicas"] == 1 and scheduler["spec"]["strategy"]["type"] == "Recreate"
    assert scheduler["spec"]["template"]["spec"]["serviceAccountName"] == "labelloop-scheduler"


def test_rbac_grants_only_what_the_launcher_uses():
    objects = rendered("base")
    rules = objects[("Role", "labelloop-training-launcher")]["rules"]
    granted = {(g, r): set(rule["verbs"]) for rule in rules for g in rule["apiGroups"] for r in rule["resources"]}
    assert granted == {
        ("batch", "jobs"): {"create", "get", "list", "watch", "delete"},
        ("", "pods"): {"get", "list"},
        ("", "pods/log"): {"get", "list"},
    }
    binding = objects[("RoleBinding", "labelloop-training-launcher")]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "labelloop-scheduler"}]
    assert not any(k[0] in {"ClusterRole", "ClusterRoleBinding"} for k in objects)


def test_serving_probes_and_autoscaling():
    objects = rendered("overlays/gpu")
    serving = objects[("Deployment", "labelloop-serving")]["spec"]["template"]["spec"]["containers"][0]
    assert serving["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert serving["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert serving["resources"]["requests"] and serving["resources"]["limits"]
    hpa = objects[("HorizontalPodAutoscaler", "labelloop-serving")]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "labelloop-serving" and hpa["spec"]["minReplicas"] == 3


def _secret_refs(obj: dict) -> set[str]:
    names: set[str] = set()

    def walk(node):
        if isinstance(node, dict):
            if "secretKeyRef" in node:
                names.add(node["secretKeyRef"]["name"])
            if "secretRef" in node:
                names.add(node["secretRef"]["name"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(obj)
    return names


def test_secrets_are_references_never_inline_values():
    for obj in rendered("base").values():
        if obj["kind"] in {"Deployment", "StatefulSet"}:
            for container in obj["spec"]["template"]["spec"]["containers"]:
                for env in container.get("env", []):
                    flag = env.get("value") in {"true", "false"}  # e.g. ..._ENABLE_LEGACY_API_TOKEN
                    if not flag and env["name"].endswith(("PASSWORD", "TOKEN", "SECRET", "API_KEY")):
                        assert "valueFrom" in env and "value" not in env, (obj["metadata"]["name"], env["name"])
        assert obj["kind"] != "Secret", "the base ships no Secret: overlays generate or reference them"


def test_local_overlay_generates_every_secret_and_configmap_it_references():
    objects = rendered("overlays/local")
    secrets = {name for kind, name in objects if kind == "Secret"}
    for obj in objects.values():
        assert _secret_refs(obj) <= secrets, obj["metadata"]["name"]
    config = objects[("ConfigMap", "labelloop-config")]["data"]
    assert config["LABELLOOP_K8S_GPUS"] == "0" and config["LABELLOOP_LAUNCHER"] == "kubernetes"
    assert objects[("Deployment", "labelloop-serving")]["spec"]["template"]["spec"]["containers"][0]["image"] \
        == "labelloop-serving:dev"


def test_gpu_overlay_runs_label_studio_on_postgres():
    objects = rendered("overlays/gpu")
    assert ("StatefulSet", "label-studio-db") in objects
    env = {e["name"]: e for e in
           objects[("Deployment", "label-studio")]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["DJANGO_DB"]["value"] == "default" and env["POSTGRE_HOST"]["value"] == "label-studio-db"
    assert "valueFrom" in env["POSTGRE_PASSWORD"]
    assert objects[("ConfigMap", "labelloop-config")]["data"]["LABELLOOP_K8S_GPUS"] == "1"
