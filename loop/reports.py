"""The model-change report of a training run (`labelloop report RUN`, written after every
run): what the new model changes against the model that served when it was judged, on the
same evaluation images, and what changed in the data and the params in between. Like a CML
comment on a pull request, but written by the loop itself.

Kept with the run (`<home>/runs/<run>/report/`): `report.json` (everything, for tools),
`report.md` (for people) and the confusion matrices as PNGs. Both models are loaded from the
model store and predict here, so the comparison does not depend on the service.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from kernel.errors import NoModelError, WorkspaceError
from kernel.layout import JUDGED_FILE, LABELS_DIR, TEST_IMAGES_DIR
from loop.context import LoopContext
from loop.state import RunRecord
from loop.workspace import Workspace
from pipelines.images import InputSpec, decode_image
from pipelines.labels import SUSPECTS_FILE, labels_by_image, parse_suspects, read_shard, shard_paths, suspect_states
from serving.inference import LoadedModel

__all__ = ["GATE_FILE", "ReportFiles", "write_gate_record", "write_report"]

log = logging.getLogger(__name__)

#: What the gate compared a run with, written into the run's folder when it judges it.
GATE_FILE = "gate.json"
REPORT_DIR = "report"


@dataclass(frozen=True)
class ReportFiles:
    markdown: Path
    json: Path
    pictures: list[Path]


def write_gate_record(run_dir: Path, serving_tag: str | None, serving_data_commit: str | None,
                      serving_run_id: str | None) -> None:
    """The model serving while the gate judged this run (the report compares with it)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / GATE_FILE).write_text(json.dumps(
        {"serving_tag": serving_tag, "serving_data_commit": serving_data_commit,
         "serving_run_id": serving_run_id}, indent=2) + "\n")


def write_report(ctx: LoopContext, run: RunRecord) -> ReportFiles:
    """Write (or rewrite) the report of a finished run; `WorkspaceError` when the run left
    nothing to report on (it failed before training, or its folder is gone)."""
    ws = ctx.require_workspace()
    run_dir = ctx.settings.runs_dir / run.run_id
    if run.model_tag is None:
        raise WorkspaceError(f"run {run.run_id} produced no model ({run.status}: {run.reason}): nothing to report")
    gate = json.loads((run_dir / GATE_FILE).read_text()) if (run_dir / GATE_FILE).exists() else {}
    serving_tag, serving_commit = gate.get("serving_tag"), gate.get("serving_data_commit")
    candidate = _load(ctx, run.model_tag)
    classes = candidate.classes
    report: dict = {
        "run": {"run_id": run.run_id, "status": run.status, "reason": run.reason, "trigger": run.trigger,
                "data_commit": run.data_commit, "model_tag": run.model_tag, "judged_by": run.judged_by,
                "n_judged": run.n_judged, "started_at": run.started_at, "finished_at": run.finished_at},
        "serving_at_gate": {"model_tag": serving_tag, "data_commit": serving_commit, "run_id": gate.get("serving_run_id")},
        "classes": classes,
    }
    pictures: list[Path] = []
    out = run_dir / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    judged = _judged(run_dir)
    if run.judged_by == "cv":
        report["evaluation"] = {"note": "judged by cross-validation on the training labels (out-of-fold scores "
                                        "in metrics.json): no evaluation set shared with the serving model yet"}
    elif not judged:
        report["evaluation"] = {"note": f"the images that judged the run are not here ({run_dir / 'repo'}: "
                                        "it trained elsewhere, or its folder was removed)"}
    else:
        names = sorted(judged)
        paths = [ws.root / TEST_IMAGES_DIR / n if run.judged_by == "test" else ws.image_path(n) for n in names]
        truth = [judged[n] for n in names]
        new = _predict(candidate, paths)
        report["evaluation"] = {"set": run.judged_by, "images": len(names),
                                "candidate": _scores(classes, truth, new)}
        pictures.append(_confusion_png(out / "confusion.png", classes, truth, new, f"{run.model_tag} (this run)"))
        if serving_tag and serving_tag != run.model_tag:
            try:
                old = _predict(_load(ctx, serving_tag), paths)
            except NoModelError as exc:
                report["evaluation"]["serving"] = {"note": str(exc)}
            else:
                report["evaluation"]["serving"] = _scores(classes, truth, old)
                report["evaluation"]["changes"] = _changes(truth, old, new)
                pictures.append(_confusion_png(out / "confusion-serving.png", classes, truth, old,
                                               f"{serving_tag} (serving at the gate)"))
    report["data"] = _data_delta(ws, serving_commit, run.data_commit, classes)
    report["label_quality"] = _suspects_at(ws, run.data_commit)
    report["params"] = _params_diff(ws, serving_commit, run.data_commit)
    json_path = out / "report.json"
    json_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    md_path = out / "report.md"
    md_path.write_text(_markdown(report, [p.name for p in pictures]))
    return ReportFiles(md_path, json_path, pictures)


# --- models ------------------------------------------------------------------------------
def _load(ctx: LoopContext, tag: str) -> LoadedModel:
    """A model from the store as the register stage left it (read directly: no BentoML
    import in the loop), as the serving core holds it."""
    import keras

    name, _, version = tag.partition(":")
    stored = Path(ctx.settings.bentoml_home) / "models" / name / version
    if not (stored / "model.keras").exists():
        raise NoModelError(f"model {tag} is no longer in the model store {ctx.settings.bentoml_home}")
    meta = yaml.safe_load((stored / "model.yaml").read_text())["metadata"]
    return LoadedModel(tag=tag, classes=[str(c) for c in meta["classes"]], image_size=int(meta["image_size"]),
                       keras_model=keras.saving.load_model(stored / "model.keras"), metadata=meta,
                       spec=InputSpec.from_metadata(meta))


def _predict(model: LoadedModel, paths: list[Path], batch: int = 256) -> list[str]:
    """The serving core's forward pass (`LoadedModel.predict`), a batch of files at a time."""
    labels: list[str] = []
    for start in range(0, len(paths), batch):
        probabilities, _ = model.predict([decode_image(p) for p in paths[start : start + batch]])
        labels += [model.classes[i] for i in probabilities.argmax(axis=1)]
    return labels


def _judged(run_dir: Path) -> dict[str, str]:
    """{image: label} the evaluate stage judged the run on (`pipelines.evaluate`)."""
    path = run_dir / "repo" / JUDGED_FILE
    return dict(json.loads(path.read_text()).get("labels") or {}) if path.exists() else {}


# --- comparisons ---------------------------------------------------------------------------
def _scores(classes: list[str], truth: list[str], predicted: list[str]) -> dict:
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    precision, recall, f1, support = precision_recall_fscore_support(
        truth, predicted, labels=classes, zero_division=0)
    return {
        "accuracy": round(float(accuracy_score(truth, predicted)), 4),
        "per_class": {c: {"precision": round(float(p), 4), "recall": round(float(r), 4), "f1": round(float(f), 4),
                          "support": int(s)} for c, p, r, f, s in zip(classes, precision, recall, f1, support)},
    }


def _changes(truth: list[str], old: list[str], new: list[str]) -> dict:
    """How many evaluation predictions changed, and which way."""
    changed = [(t, o, n) for t, o, n in zip(truth, old, new, strict=True) if o != n]
    return {
        "changed": len(changed),
        "fixed": sum(o != t and n == t for t, o, n in changed),  # wrong before, right now
        "broken": sum(o == t and n != t for t, o, n in changed),  # right before, wrong now
        "still_wrong": sum(o != t and n != t for t, o, n in changed),
        "transitions": [{"from": o, "to": n, "count": c}
                        for (o, n), c in Counter((o, n) for _, o, n in changed).most_common(10)],
    }


def _events_at(ws: Workspace, commit: str) -> list:
    """The label events the workspace held at a commit: the label shards tracked then (shards
    are immutable once committed, so today's files are that commit's)."""
    listed = ws.git("ls-tree", "--name-only", commit, f"{LABELS_DIR}/").split()
    tracked = {Path(p).name.removesuffix(".dvc") for p in listed if p.endswith(".csv.dvc")}
    return [e for path in shard_paths(ws.root / LABELS_DIR) if path.name in tracked for e in read_shard(path)]


def _labels_at(ws: Workspace, commit: str | None) -> dict[str, str]:
    return labels_by_image(_events_at(ws, commit)) if commit else {}


def _suspects_at(ws: Workspace, commit: str) -> dict:
    """The suspect labels as the run's data commit decided them: held out of its training
    (open), and reviewed by then (confirmed, relabeled, unresolved)."""
    try:
        listed = ws.git("ls-tree", "--name-only", commit, f"{LABELS_DIR}/").split()
        if f"{LABELS_DIR}/{SUSPECTS_FILE}" not in listed:
            return {"suspects": 0, "held_out": [], "by_state": {}}
        suspects = parse_suspects(ws.git("show", f"{commit}:{LABELS_DIR}/{SUSPECTS_FILE}").splitlines())
        policy = yaml.safe_load(ws.git("show", f"{commit}:params.yaml"))["data"].get("label_policy", "latest")
        states = suspect_states(_events_at(ws, commit), suspects, policy)
    except (WorkspaceError, OSError, KeyError, TypeError) as exc:
        return {"note": f"suspect labels not readable here: {exc}"}
    held = [{"image": s.image, "label": s.label, "annotator": s.annotator, "reason": s.reason}
            for s in suspects if s.hold and states.get(s.image) == "open"]
    return {"suspects": len(suspects), "held_out": held, "by_state": dict(Counter(states.values()))}


def _data_delta(ws: Workspace, before_commit: str | None, commit: str, classes: list[str]) -> dict:
    try:
        before, after = _labels_at(ws, before_commit), _labels_at(ws, commit)
    except (WorkspaceError, OSError) as exc:
        return {"note": f"label history not readable here: {exc}"}
    per_class: dict[str, Counter] = {c: Counter() for c in classes}

    def count(label: str, what: str) -> None:
        per_class.setdefault(label, Counter())[what] += 1

    for image, label in after.items():
        if image not in before:
            count(label, "added")
        elif before[image] != label:
            count(label, "changed_to")
            count(before[image], "changed_from")
    for image, label in before.items():
        if image not in after:
            count(label, "deleted")
    kinds = ("added", "changed_to", "changed_from", "deleted")
    per_class = {c: {k: counts[k] for k in kinds} for c, counts in per_class.items()}
    return {"since": before_commit, "labels_before": len(before), "labels_now": len(after),
            "added": sum(v["added"] for v in per_class.values()),
            "changed": sum(v["changed_to"] for v in per_class.values()),
            "deleted": sum(v["deleted"] for v in per_class.values()), "per_class": per_class}


def _params_diff(ws, before_commit: str | None, commit: str) -> dict:
    def flat(commit_: str | None) -> dict[str, object]:
        if not commit_:
            return {}
        try:
            tree = yaml.safe_load(ws.git("show", f"{commit_}:params.yaml")) or {}
        except WorkspaceError:
            return {}
        out: dict[str, object] = {}

        def walk(prefix: str, node: object) -> None:
            if isinstance(node, dict):
                for key, value in node.items():
                    walk(f"{prefix}.{key}" if prefix else str(key), value)
            else:
                out[prefix] = node
        walk("", tree)
        return out

    before, after = flat(before_commit), flat(commit)
    return {key: {"before": before.get(key), "now": after.get(key)}
            for key in sorted(before.keys() | after.keys()) if before.get(key) != after.get(key)} if before else {}


# --- output --------------------------------------------------------------------------------
def _confusion_png(path: Path, classes: list[str], truth: list[str], predicted: list[str], title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import confusion_matrix

    matrix = confusion_matrix(truth, predicted, labels=classes)
    size = max(4.0, 0.5 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("labeled")
    ax.set_title(title, fontsize=9)
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(j, i, str(value), ha="center", va="center", fontsize=8,
                color="white" if value > matrix.max() / 2 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _markdown(report: dict, pictures: list[str]) -> str:
    run, serving, evaluation = report["run"], report["serving_at_gate"], report["evaluation"]
    lines = [f"# Run {run['run_id']}: {run['status']}", "",
             f"- **Decision:** {run['status']}: {run['reason']}",
             f"- **Model:** {run['model_tag']} on data {run['data_commit'][:10]} (trigger: {run['trigger']})",
             f"- **Compared with:** {serving['model_tag'] or 'no model (first one)'}"
             + (f" on data {serving['data_commit'][:10]}" if serving.get("data_commit") else ""), ""]
    lines += ["## Evaluation", ""]
    if "candidate" not in evaluation:
        lines += [evaluation["note"], ""]
    else:
        old = evaluation.get("serving", {})
        lines += [f"On the same {evaluation['images']} {evaluation['set']} images:", "",
                  "| class | precision | recall | F1 | serving F1 | support |", "|---|---|---|---|---|---|"]
        for c, s in evaluation["candidate"]["per_class"].items():
            was = old.get("per_class", {}).get(c, {}).get("f1")
            lines.append(f"| {c} | {s['precision']:.3f} | {s['recall']:.3f} | {s['f1']:.3f} | "
                         f"{'' if was is None else f'{was:.3f}'} | {s['support']} |")
        was = old.get("accuracy")
        lines += ["", f"Accuracy **{evaluation['candidate']['accuracy']:.4f}**"
                  + (f" (serving model: {was:.4f})" if was is not None else ""), ""]
        if changes := evaluation.get("changes"):
            lines += [f"{changes['changed']} predictions changed: {changes['fixed']} fixed, {changes['broken']} "
                      f"broken, {changes['still_wrong']} wrong either way. Most common (the serving model's "
                      "prediction → this run's):", ""]
            lines += [f"- {t['from']} → {t['to']}: {t['count']}" for t in changes["transitions"]]
            lines.append("")
        elif old.get("note"):
            lines += [f"Serving model not compared: {old['note']}", ""]
        lines += [f"![{name}]({name})" for name in pictures] + [""]
    data = report["data"]
    lines += ["## Data since the serving model", ""]
    if "note" in data:
        lines += [data["note"], ""]
    else:
        lines += [f"{data['labels_before']} → {data['labels_now']} labels: {data['added']} added, "
                  f"{data['changed']} changed, {data['deleted']} deleted.", "",
                  "| class | added | changed to | changed from | deleted |", "|---|---|---|---|---|"]
        lines += [f"| {c} | {v['added']} | {v['changed_to']} | {v['changed_from']} | {v['deleted']} |"
                  for c, v in data["per_class"].items() if any(v.values())]
        lines.append("")
    quality = report.get("label_quality", {})
    lines += ["## Suspect labels", ""]
    if "note" in quality:
        lines += [quality["note"], ""]
    elif not quality.get("suspects"):
        lines += ["None at this data commit.", ""]
    else:
        states = ", ".join(f"{n} {state}" for state, n in sorted(quality["by_state"].items()))
        held = quality["held_out"]
        lines += [f"{quality['suspects']} suspect labels at this data commit ({states}); {len(held)} held out of "
                  "this run's training" + (":" if held else "."), ""]
        lines += [f"- `{h['image']}` labeled {h['label']!r}: {h['reason']}" for h in held[:20]]
        lines += [f"- and {len(held) - 20} more (report.json)"] if len(held) > 20 else []
        lines.append("")
    lines += ["## Params", ""]
    lines += ([f"- `{key}`: {d['before']} → {d['now']}" for key, d in report["params"].items()]
              or ["No change."]) + [""]
    return "\n".join(lines)
