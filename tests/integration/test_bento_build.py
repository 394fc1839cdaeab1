"""The serving image's build file works: `bentoml build` packs the service (what
`bentoml containerize` turns into the image the Kubernetes manifests run)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def test_bentoml_build_packs_the_service(tmp_path):
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml"), "BENTOML_DO_NOT_TRACK": "true",
           "LABELLOOP_HOME": str(tmp_path / "home")}
    bentoml = Path(sys.executable).parent / "bentoml"
    done = subprocess.run([str(bentoml), "build", "--output", "tag"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    bentos = list((tmp_path / "bentoml" / "bentos" / "labelloop").glob("*/bento.yaml"))
    assert len(bentos) == 1
    bento = yaml.safe_load(bentos[0].read_text())
    assert bento["service"] == "serving.service:Labelloop"
    # Built with the defaults (one CPU worker): one process holds the model.
    assert {s["name"] for s in bento["services"]} == {"labelloop"}
    src = bentos[0].parent / "src"
    assert (src / "serving" / "service.py").exists() and (src / "pipelines" / "train.py").exists()
    assert (src / "k8s" / "base" / "training-job.yaml").exists()
    assert not (src / "tests").exists()
    requirements = (bentos[0].parent / "env" / "python" / "requirements.txt").read_text()
    assert "bentoml==" in requirements and "tensorflow-cpu==" in requirements


def test_the_topology_is_chosen_by_configuration_when_the_service_loads(tmp_path):
    """The same code serves either shape: the settings of the serving process decide (the
    Kubernetes manifests set LABELLOOP_SERVING_WORKERS=2, which brings the model workers)."""
    code = "import serving.service as s; print(sorted(s.Labelloop.all_services()))"
    graphs = {}
    for name, extra in {"default": {}, "two_workers": {"LABELLOOP_SERVING_WORKERS": "2"},
                        "forced": {"LABELLOOP_SERVING_TOPOLOGY": "model_workers"}}.items():
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("LABELLOOP_SERVING_")}
        env = {**inherited, "LABELLOOP_HOME": str(tmp_path / "home"), "BENTOML_HOME": str(tmp_path / "bentoml"),
               "BENTOML_DO_NOT_TRACK": "true", **extra}
        done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        graphs[name] = done.stdout.strip().splitlines()[-1]
    assert graphs["default"] == "['labelloop']"
    assert graphs["two_workers"] == graphs["forced"] == "['labelloop', 'labelloop-classifier']"
