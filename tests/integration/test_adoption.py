"""Adopting an existing Label Studio project (`labelloop init --from-project ID`), against the
REAL Label Studio server of the session and the session's S3 API (moto's server) behind one of
its cloud storages: 200 tasks whose images live in every place Label Studio keeps them
(uploads, local files, data URIs, s3:// objects resolved by Label Studio to presigned URLs),
some unreachable or not images, 40 annotations made through the API. The annotations become
labels through the ordinary collect, once; the evaluation set is drawn among unlabeled images
only."""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import httpx
import pytest

from kernel.errors import ConfigError
from labeling import LabelStudioGateway
from labeling.gateway import TaskPrediction, NAME_FIELD
from loop.core import Loop
from loop.stack import free_port
from pipelines.pool import in_eval_sample
from tests.conftest import make_settings
from tests.helpers.colour_images import PATTERNS, write_colour_images
from tests.helpers.s3 import S3_ENV

CONFIG = f"""<View>
  <Image name="picture" value="$photo" zoom="true"/>
  <Choices name="kind" toName="picture" choice="single">
    {"".join(f'<Choice value="{p}"/>' for p in PATTERNS)}
  </Choices>
</View>"""
BUCKET = f"adopted-{secrets.token_hex(3)}"  # the S3 server is the session's
N_UPLOADS, N_LOCAL, N_DATA, N_S3 = 50, 50, 50, 30  # distinct images: 180
EVAL_SEED, EVAL_FRACTION = 0, 0.1  # params.yaml's defaults


def _result(label: str) -> list[dict]:
    return [{"from_name": "kind", "to_name": "picture", "type": "choices", "value": {"choices": [label]}}]


def _data_uri(content: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(content).decode()}"


@dataclass
class Project:
    """A project as a team has it, with the test's own record of what each task shows."""

    id: int
    content: dict[int, bytes] = field(default_factory=dict)  # task id -> the image bytes it shows
    truth: dict[int, str] = field(default_factory=dict)  # task id -> its pattern
    annotated: dict[int, str] = field(default_factory=dict)  # task id -> the label given
    bad: set[int] = field(default_factory=set)  # tasks whose image cannot be had
    notes: dict[int, int] = field(default_factory=dict)  # task id -> a number in its data


def _settings(label_studio, files_root: Path, tmp_path: Path, name: str):
    """The workspace OUTSIDE Label Studio's document root: adoption needs no local-file storage."""
    return make_settings(tmp_path / "home", tmp_path / "ws", label_studio_url=label_studio.url,
                         label_studio_api_key=label_studio.token, label_studio_files_root=files_root,
                         project_title=f"labelloop-{name}")


def _create_project(gateway: LabelStudioGateway, config: str = CONFIG) -> int:
    project = gateway._client.projects.create(title=f"team project {secrets.token_hex(3)}", label_config=config)
    return int(project.id)


def _build_project(gateway: LabelStudioGateway, token: str, files_root: Path, s3_endpoint: str,
                   tmp_path: Path) -> Project:
    client = gateway._client
    project = Project(_create_project(gateway))
    photos = write_colour_images(tmp_path / "photos", N_UPLOADS + N_LOCAL + N_DATA + N_S3, seed=11)
    images = [(Path(path), pattern) for path, pattern in photos.items()]
    uploads = images[:N_UPLOADS]
    local = images[N_UPLOADS:N_UPLOADS + N_LOCAL]
    inline = images[N_UPLOADS + N_LOCAL:N_UPLOADS + N_LOCAL + N_DATA]
    in_s3 = images[N_UPLOADS + N_LOCAL + N_DATA:]
    auth = {"Authorization": f"Token {token}"}

    # Uploads: one multipart request, as the import dialog sends them.
    response = httpx.post(f"{gateway.url}/api/projects/{project.id}/import", headers=auth, timeout=60, files=[
        (f"file{i}", (f"up-{i:03d}{path.suffix}", path.read_bytes())) for i, (path, _) in enumerate(uploads)])
    assert response.status_code == 201, response.text
    upload_task = {}  # upload index -> its task
    for task in gateway.project_tasks(project.id):
        i = int(task.data["photo"].rsplit("up-", 1)[1][:3])
        upload_task[i] = task.id
        project.content[task.id], project.truth[task.id] = uploads[i][0].read_bytes(), uploads[i][1]
    assert len(upload_task) == N_UPLOADS

    # Local files under the document root (with the storage Label Studio needs to serve them).
    folder = files_root / f"team-{project.id}"
    folder.mkdir(parents=True)
    gateway.ensure_local_storage(project.id, folder)
    rel = folder.relative_to(files_root)
    for path, _ in local:
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "notes.txt").write_text("not an image")

    keys = {"aws_access_key_id": S3_ENV["AWS_ACCESS_KEY_ID"], "aws_secret_access_key": S3_ENV["AWS_SECRET_ACCESS_KEY"],
            "region_name": S3_ENV["AWS_DEFAULT_REGION"]}
    bucket = boto3.client("s3", endpoint_url=s3_endpoint, **keys)
    bucket.create_bucket(Bucket=BUCKET)
    for path, _ in in_s3:
        bucket.put_object(Bucket=BUCKET, Key=f"shots/{path.name}", Body=path.read_bytes())
    client.import_storage.s3.create(project=project.id, bucket=BUCKET, presign=True, use_blob_urls=True,
                                    s3endpoint=s3_endpoint, **keys)

    # (data, content or None for a bad one, pattern) of every task imported as JSON.
    rows: list[tuple[dict, bytes | None, str]] = []
    rows += [({"photo": f"/data/local-files/?d={rel}/{path.name}", "note": i, "name": f"IMG_{i:04d}.JPG"},
              path.read_bytes(), pattern)
             for i, (path, pattern) in enumerate(local)]
    rows += [({"photo": _data_uri(path.read_bytes())}, path.read_bytes(), pattern) for path, pattern in inline]
    rows += [({"photo": f"s3://{BUCKET}/shots/{path.name}"}, path.read_bytes(), pattern) for path, pattern in in_s3]
    distinct = len(rows)
    # The same picture twice: unlabeled copies of annotated uploads, annotated copies of
    # unlabeled local files (annotated first: such content is never drawn for evaluation).
    rows += [({"photo": _data_uri(path.read_bytes())}, path.read_bytes(), pattern) for path, pattern in uploads[:3]]
    copies_of_local = range(len(rows), len(rows) + 3)
    rows += [({"photo": _data_uri(path.read_bytes())}, path.read_bytes(), pattern) for path, pattern in local[:3]]
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    corrupt = local[5][0].read_bytes()[:40]
    missing_upload = len(rows)
    rows += [({"photo": url}, None, "flat") for url in [
        "/data/upload/999/missing.png", f"/data/upload/{project.id}/missing-1.png",
        f"/data/upload/{project.id}/missing-2.png",
        f"/data/local-files/?d={rel}/missing-1.png", f"/data/local-files/?d={rel}/missing-2.png",
        f"/data/local-files/?d={rel}/notes.txt",
        f"s3://{BUCKET}/shots/missing-1.png", f"s3://{BUCKET}/shots/missing-2.png",
        f"{closed}/one.png", f"{closed}/two.png",
        _data_uri(b"hello", "text/plain"), _data_uri(corrupt), "", "/api/version",
    ]]
    assert N_UPLOADS + len(rows) == 200

    # 30 annotations imported with their tasks: the copies of local files, tasks whose image
    # the evaluation draw would pick (so that leaving them out of it is tested, not left to
    # chance), then every 5th task; never the originals of the copies.
    eval_like = [i for i in range(3, distinct)
                 if in_eval_sample(hashlib.sha256(rows[i][1]).hexdigest(), EVAL_FRACTION, EVAL_SEED)]
    assert len(eval_like) >= 5
    chosen = list(copies_of_local) + eval_like[:8]
    chosen += [i for i in range(3, distinct, 5) if i not in chosen][:30 - len(chosen)]
    skipped = next(i for i in range(3, distinct) if i not in chosen)
    tasks = []
    for i, (data, _, pattern) in enumerate(rows):
        task: dict = {"data": data}
        if i in chosen:
            task["annotations"] = [{"result": _result(pattern), "lead_time": 1.0}]
        tasks.append(task)
    tasks[missing_upload]["annotations"] = [{"result": _result("vertical")}]  # a bad task's: never collected
    tasks[skipped]["annotations"] = [{"result": [], "was_cancelled": True}]  # "Skip": not a label
    answer = client.projects.import_tasks(id=project.id, request=tasks, return_task_ids=True)
    ids = [int(t) for t in answer.task_ids]
    assert len(ids) == len(rows)
    for i, (task_id, (data, content, pattern)) in enumerate(zip(ids, rows, strict=True)):
        if content is None:
            project.bad.add(task_id)
        else:
            project.content[task_id], project.truth[task_id] = content, pattern
        if "note" in data:
            project.notes[task_id] = data["note"]
        if i in chosen:
            project.annotated[task_id] = pattern

    # 10 more through the annotation API, as annotators save them: the first uploads.
    for i in range(10):
        task_id = upload_task[i]
        client.annotations.create(id=task_id, result=_result(project.truth[task_id]), lead_time=1.0)
        project.annotated[task_id] = project.truth[task_id]
    assert len(project.content) + len(project.bad) == 200 and len(project.annotated) == 40
    return project


def test_adopting_a_project_collects_its_annotations_once_and_keeps_evaluation_unlabeled(
        label_studio, files_root, tmp_path, s3_server):
    settings = _settings(label_studio, files_root, tmp_path, "adopt")
    loop = Loop(settings)
    gateway = loop.gateway
    project = _build_project(gateway, label_studio.token, files_root, s3_server.url, tmp_path)

    ws, report = _adopt(loop, project.id)

    # Every task showing an image is adopted; each bad one is listed with its reason.
    assert set(report.unadopted) == project.bad and all(report.unadopted.values())
    assert set(report.named) == set(project.content)
    assert report.imports.added == N_UPLOADS + N_LOCAL + N_DATA + N_S3 and report.imports.duplicates == 6
    assert len(report.imports.skipped) == len(project.bad)
    listed = " ".join(str(s.source) for s in report.imports.skipped)
    assert all(f"project {project.id} task {task} (" in listed for task in project.bad)
    # One name per content, the workspace holding exactly the bytes the task shows.
    for task_id, name in report.named.items():
        assert hashlib.sha256(ws.image_path(name).read_bytes()).digest() == hashlib.sha256(
            project.content[task_id]).digest()
    by_content = {}
    for task_id, name in report.named.items():
        assert by_content.setdefault(project.content[task_id], name) == name

    # Label Studio: adopted tasks carry their image's name, the rest of their data unchanged;
    # the others are left alone.
    stored = {t.id: t.data for t in gateway.project_tasks(project.id)}
    assert len(stored) == 200
    assert {t: d.get(NAME_FIELD) for t, d in stored.items() if t in report.named} == report.named
    assert all(NAME_FIELD not in stored[t] for t in project.bad)
    assert all(stored[t]["note"] == n and isinstance(stored[t]["note"], int) for t, n in project.notes.items())
    assert all(stored[t]["name"].startswith("IMG_") for t in project.notes)  # the user's own "name" is kept
    assert loop.state.tasks() == report.named
    marks = loop.state.marks()
    assert marks.project_id == project.id and marks.pushed_commit == ws.head() == report.commit

    # The ordinary collect turns Label Studio's annotations into labels, each exactly once.
    first = loop.collect()
    events = ws.events()
    assert first.upserts == len(events) == 40
    annotations = {a.id: (t.id, a.label) for t in gateway.tasks_updated_since(project.id, None)
                   if t.id in report.named for a in t.annotations if not a.was_cancelled}
    assert {e.annotation_id: (e.task_id, e.label) for e in events} == annotations
    assert {e.task_id: e.label for e in events} == project.annotated
    assert all(e.image == report.named[e.task_id] for e in events)
    assert Counter(e.annotation_id for e in events).most_common(1)[0][1] == 1
    second = loop.collect()
    assert second.events == 0 and len(ws.events()) == 40

    # The evaluation set: unlabeled images only, including no copy of an annotated one.
    evaluation = ws.eval_images()
    labeled = {report.named[t] for t in project.annotated}
    assert evaluation and not evaluation & labeled
    would_draw = {name for name in labeled if in_eval_sample(ws.pool_index()[name].sha256, EVAL_FRACTION, EVAL_SEED)}
    assert would_draw  # the draw would have picked some of them: leaving them out was decided
    assert report.annotated == 40 and report.imports.evaluation == len(evaluation)

    # `connect` keeps the adopted project: no project by title, no new tasks, no storage of its
    # own; it finishes naming tasks when the adoption was cut short before naming them all.
    unnamed = sorted(report.named)[:2]
    for task_id in unnamed:
        gateway._client.tasks.update(id=str(task_id), data={k: v for k, v in stored[task_id].items()
                                                              if k != NAME_FIELD})
    assert loop.connect() == project.id
    assert {t.id: t.data.get(NAME_FIELD) for t in gateway.project_tasks(project.id) if t.id in unnamed} == {
        t: report.named[t] for t in unnamed}
    assert gateway.find_project(settings.project_title) is None
    assert sum(1 for _ in gateway.project_tasks(project.id)) == 200
    assert len(list(gateway._client.import_storage.local.list(project=project.id))) == 1
    assert loop.state.tasks() == report.named

    # Pre-labels name the project's own control and image (not the generated config's).
    task_id = next(iter(report.named))
    label = next(iter(project.annotated.values()))
    assert gateway.push_predictions(project.id, [TaskPrediction(task_id, label, 0.4, "adopted-v1")]) == 1
    (stored_prediction,) = gateway._client.predictions.list(task=task_id)
    assert [(r["from_name"], r["to_name"]) for r in stored_prediction.result] == [("kind", "picture")]


def _adopt(loop: Loop, project_id: int):
    """`labelloop init --from-project` as the CLI runs it, returning the workspace too."""
    report = loop.init_from_project(project_id)
    return loop.workspace, report


def test_a_project_that_is_not_image_classification_is_refused_naming_it(label_studio, files_root, tmp_path):
    settings = _settings(label_studio, files_root, tmp_path, "not-images")
    loop = Loop(settings)
    text = ('<View><Text name="text" value="$text"/><Choices name="sentiment" toName="text">'
            '<Choice value="good"/><Choice value="bad"/></Choices></View>')
    project = _create_project(loop.gateway, text)
    loop.gateway._client.projects.import_tasks(id=project, request=[{"text": "fine"}])
    with pytest.raises(ConfigError, match=rf"project {project} .*not an image-classification project"):
        _adopt(loop, project)
    assert not settings.workspace.exists()


def test_a_project_without_tasks_or_that_does_not_exist_is_refused(label_studio, files_root, tmp_path):
    settings = _settings(label_studio, files_root, tmp_path, "empty")
    loop = Loop(settings)
    empty = _create_project(loop.gateway)
    with pytest.raises(ConfigError, match=rf"project {empty} .*has no tasks.*init --images"):
        _adopt(loop, empty)
    with pytest.raises(ConfigError, match="no project 987654"):
        _adopt(loop, 987654)
    assert not settings.workspace.exists()

