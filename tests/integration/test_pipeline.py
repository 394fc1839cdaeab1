import csv
import json

import yaml


def test_pipeline_stages_produce_metrics_plots_and_a_registered_model(trained):
    loop, run = trained
    settings = loop.settings
    repo = settings.runs_dir / run.run_id / "repo"
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert set(lock["stages"]) == {"prepare", "train", "evaluate", "register"}

    metrics = json.loads((repo / "metrics.json").read_text())
    assert 0.5 < metrics["accuracy"] <= 1.0
    assert set(metrics["f1"]) == {str(d) for d in range(10)}
    assert metrics["n_train"] == 20 and metrics["n_test"] > 400

    with (repo / "plots/confusion.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == metrics["n_test"] and set(rows[0]) == {"actual", "predicted"}

    name, version = run.model_tag.split(":")
    stored = settings.bentoml_home / "models" / name / version
    assert (stored / "model.keras").stat().st_size > 0
    meta = yaml.safe_load((stored / "model.yaml").read_text())["metadata"]
    assert meta["data_commit"] == run.data_commit == loop.workspace.head()
    assert meta["n_labels"] == 20
    assert meta["metrics"]["accuracy"] == metrics["accuracy"] == run.accuracy
    assert meta["params"]["train"]["epochs"] >= 1
    # the run's lock file is pushed back to the workspace for lineage
    assert run.run_id in loop.workspace.git("branch", "--list", "labelloop/runs/*")


def test_status_reports_the_promoted_model(trained):
    loop, run = trained
    status = loop.status()
    assert status.serving.tag == run.model_tag
    assert status.labels == 20 and status.labels_pending_training == 0
    assert status.runs[0].status == "promoted"
