"""The model-change report of a training run (issue 17, item 3): real training runs through
the DVC pipeline; the report's numbers are checked against what the runs recorded."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from PIL import Image

from loop.core import Loop
from loop.starter import digits_truth
from loop.workspace import Cursor
from pipelines.labels import LabelEvent
from tests.conftest import make_settings

NEW_LABELS = 15


def test_each_run_reports_what_its_model_changes_against_the_serving_one(tmp_path):
    settings = make_settings(tmp_path / "home", tmp_path / "ws")
    loop = Loop(settings)
    loop.init(starter="digits")
    first = loop.train(trigger="test", rescore=False)
    assert first.status == "promoted", first
    first_report = json.loads((settings.runs_dir / first.run_id / "report" / "report.json").read_text())
    assert first_report["serving_at_gate"]["model_tag"] is None  # the first model: nothing to compare
    assert first_report["evaluation"]["candidate"]["accuracy"] == round(first.accuracy, 4)
    assert first_report["data"]["labels_before"] == 0 and first_report["data"]["labels_now"] == 20

    # New labels, then a second run: the report compares it with the first model.
    truth = digits_truth()
    ws = loop.workspace
    labeled = {e.image for e in ws.events()}
    new = [n for n in ws.pool_images() if n not in labeled and n not in ws.eval_images()][:NEW_LABELS]
    ws.commit_labels([LabelEvent(image=n, label=truth[n], task_id=i, annotation_id=1000 + i, annotator="test",
                                 annotation_updated_at="2026-01-01T00:00:00.000000Z") for i, n in enumerate(new)],
                     Cursor(batch=1, updated_at="2026-01-01T00:00:00.000000Z"))
    second = loop.train(trigger="test", rescore=False)
    assert second.model_tag and second.status in ("promoted", "rejected"), second

    cli = Path(sys.executable).parent / "labelloop"
    shown = subprocess.run([str(cli), "report", second.run_id], env=settings.child_env(), capture_output=True,
                           text=True, timeout=300)
    assert shown.returncode == 0, shown.stderr[-2000:]
    folder = settings.runs_dir / second.run_id / "report"
    assert f"report: {folder / 'report.md'}" in shown.stdout.replace("\n", "")
    report = json.loads((folder / "report.json").read_text())

    assert report["serving_at_gate"]["model_tag"] == first.model_tag
    assert report["run"]["status"] == second.status and report["run"]["reason"] == second.reason
    evaluation = report["evaluation"]
    assert evaluation["set"] == "test" and evaluation["images"] == second.n_judged
    # Both models re-predicted here on the same test images give the accuracies the runs recorded.
    assert evaluation["candidate"]["accuracy"] == round(second.accuracy, 4)
    assert evaluation["serving"]["accuracy"] == round(first.accuracy, 4)
    changes = evaluation["changes"]
    assert changes["changed"] == changes["fixed"] + changes["broken"] + changes["still_wrong"]
    right_before = first.accuracy * evaluation["images"]
    assert round(right_before + changes["fixed"] - changes["broken"]) == round(second.accuracy * evaluation["images"])
    assert sum(t["count"] for t in changes["transitions"]) <= changes["changed"]
    data = report["data"]
    assert (data["labels_before"], data["labels_now"], data["added"], data["changed"], data["deleted"]) == (
        20, 20 + NEW_LABELS, NEW_LABELS, 0, 0)
    for label in set(truth[n] for n in new):
        assert data["per_class"][label]["added"] == sum(truth[n] == label for n in new)
    assert report["params"] == {}  # same params.yaml at both data commits
    for picture in ("confusion.png", "confusion-serving.png"):
        with Image.open(folder / picture) as image:
            assert image.format == "PNG" and image.width >= 300
    markdown = (folder / "report.md").read_text()
    assert f"Compared with:** {first.model_tag}" in markdown and "predictions changed" in markdown
    assert "![confusion.png](confusion.png)" in markdown
