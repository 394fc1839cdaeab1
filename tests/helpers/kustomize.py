"""Render a kustomization the way `kustomize build` does, for the subset k8s/ uses.

No kustomize binary can be installed on these machines, so the tests render the overlays
themselves: resources and components (recursively), namespace, labels, configMapGenerator /
secretGenerator (literals, files, envs; `behavior: merge`), strategic-merge patches (maps
merged, lists of named items merged by name), image overrides. Anything else in a
kustomization is an error here, so the manifests cannot silently use a feature the
renderer ignores. Generated names get no hash suffix (references stay as written).
"""

from __future__ import annotations

import base64
import copy
from pathlib import Path
from typing import Any

import yaml

SUPPORTED = {"apiVersion", "kind", "namespace", "labels", "resources", "components",
             "configMapGenerator", "secretGenerator", "patches", "images"}


def _load_all(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _merge(base: Any, patch: Any) -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            out[key] = _merge(base[key], value) if key in base else copy.deepcopy(value)
        return out
    if isinstance(base, list) and isinstance(patch, list) and all(
            isinstance(i, dict) and "name" in i for i in base + patch):
        out = [copy.deepcopy(i) for i in base]
        for item in patch:
            match = next((i for i, b in enumerate(out) if b["name"] == item["name"]), None)
            if match is None:
                out.append(copy.deepcopy(item))
            else:
                out[match] = _merge(out[match], item)
        return out
    return copy.deepcopy(patch)


def _generated(kind: str, spec: dict, folder: Path) -> dict:
    data: dict[str, str] = {}
    for literal in spec.get("literals", []):
        key, _, value = literal.partition("=")
        data[key] = value
    for name in spec.get("files", []):
        data[Path(name).name] = (folder / name).read_text()
    for env in spec.get("envs", []):
        for line in (folder / env).read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                key, _, value = line.partition("=")
                data[key] = value
    obj = {"apiVersion": "v1", "kind": kind, "metadata": {"name": spec["name"]}}
    if kind == "Secret":
        obj["type"] = "Opaque"
        obj["data"] = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
    else:
        obj["data"] = data
    return obj


def _key(obj: dict) -> tuple[str, str]:
    return obj["kind"], obj["metadata"]["name"]


def _apply(folder: Path, objects: list[dict]) -> list[dict]:
    spec = yaml.safe_load((folder / "kustomization.yaml").read_text())
    unknown = set(spec) - SUPPORTED
    assert not unknown, f"{folder}: kustomization uses {unknown}, which this renderer does not support"
    for resource in spec.get("resources", []):
        target = folder / resource
        objects += build(target) if target.is_dir() else _load_all(target)
    for component in spec.get("components", []):
        objects = _apply(folder / component, objects)
    for kind, key in (("ConfigMap", "configMapGenerator"), ("Secret", "secretGenerator")):
        for gen in spec.get(key, []):
            new = _generated(kind, gen, folder)
            existing = [o for o in objects if _key(o) == _key(new)]
            if gen.get("behavior") == "merge":
                assert existing, f"{folder}: {kind} {gen['name']} to merge does not exist"
                existing[0]["data"].update(new["data"])
            else:
                assert not existing, f"{folder}: {kind} {gen['name']} generated twice"
                objects.append(new)
    for patch in spec.get("patches", []):
        for doc in _load_all(folder / patch["path"]):
            index = next((i for i, o in enumerate(objects) if _key(o) == _key(doc)), None)
            assert index is not None, f"{folder}: patch {patch['path']} targets missing {_key(doc)}"
            objects[index] = _merge(objects[index], doc)
    for image in spec.get("images", []):
        for obj in objects:
            pod = obj.get("spec", {}).get("template", {}).get("spec", {})
            for container in pod.get("containers", []):
                name, _, tag = container["image"].partition(":")
                if name == image["name"]:
                    container["image"] = f"{image.get('newName', name)}:{image.get('newTag', tag)}"
    if namespace := spec.get("namespace"):
        for obj in objects:
            if obj["kind"] != "Namespace":
                obj["metadata"]["namespace"] = namespace
    for label in spec.get("labels", []):
        for obj in objects:
            obj["metadata"].setdefault("labels", {}).update(label["pairs"])
    return objects


def build(folder: Path) -> list[dict]:
    return _apply(folder, [])
