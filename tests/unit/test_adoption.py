"""Adoption's pieces that need no server: tasks without a workspace image are not collected,
what the fetcher is asked for and what the report may say about a task's URL, and how the
gateway lists a project's tasks."""

from __future__ import annotations

import base64
import json
import logging
from urllib.parse import parse_qs, urlsplit

import httpx

from labeling import Annotation, LabelStudioGateway, Task
from labeling.gateway import ProjectTask
from loop.adoption import AdoptionReport, _fetch_url, _url_name
from serving.fetch import redact_url
from loop.collection import annotation_events
from loop.imports import ImportReport


def _task(tid: int, name: str, *labels: str, cancelled: bool = False) -> Task:
    annotations = tuple(Annotation(id=tid * 10 + i, task_id=tid, label=label, was_cancelled=cancelled,
                                   updated_at="2026-01-01T00:00:00.000000Z", completed_by="7")
                        for i, label in enumerate(labels))
    return Task(id=tid, image_name=name, image_url="", updated_at="2026-01-01T00:00:00.000000Z",
                annotations=annotations)


def test_tasks_without_a_workspace_image_give_no_label_events_and_one_warning(caplog):
    tasks = [_task(1, "a.png", "cat"), _task(2, "", "dog"), _task(3, "", "cat", "dog"),
             _task(4, "", "cat", cancelled=True)]
    with caplog.at_level(logging.WARNING, logger="loop.collection"):
        events = annotation_events(tasks, {}, {}, {"cat", "dog"})
    assert [(e.task_id, e.image, e.label) for e in events] == [(1, "a.png", "cat")]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith("2 annotated task(s)")  # the cancelled one is no label
    # A name that is not a pool image (a user's own "name" on a task labelloop left alone) is no label either.
    assert annotation_events([_task(5, "IMG_0001.jpg", "cat"), _task(6, "a.png", "dog")], {}, {},
                             {"cat", "dog"}, {"a.png"})[0].task_id == 6


def test_a_task_is_read_by_labelloops_own_key_and_a_users_name_is_not_taken_for_an_image():
    from labeling.gateway import _task as parse

    assert parse({"id": 1, "data": {"image": "u", "labelloop_image": "ab.png", "name": "x"}}).image_name == "ab.png"
    assert parse({"id": 2, "data": {"image": "u", "name": "ab.png"}}).image_name == "ab.png"  # made before the key
    assert parse({"id": 3, "data": {"photo": "u", "name": "IMG_1.jpg"}}).image_name == ""  # a user's own field


def test_a_cloud_uri_is_fetched_through_label_studios_resolver_for_its_task():
    uri = "s3://bucket/some dir/x.jpeg"
    url = _fetch_url(ProjectTask(id=12, data={"img": uri}, annotations=0), "img")
    assert url == f"/tasks/12/resolve/?fileuri={base64.urlsafe_b64encode(uri.encode()).decode()}"
    assert _url_name(uri).endswith("x.jpeg")  # the extension comes from the task's own URI
    for value in ["/data/upload/3/abc-x.png", "https://example.com/a.png?sig=1", "data:image/png;base64,AAAA"]:
        assert _fetch_url(ProjectTask(id=1, data={"img": value}, annotations=0), "img") == value
    assert _fetch_url(ProjectTask(id=1, data={"img": 5}, annotations=0), "img") is None
    assert _fetch_url(ProjectTask(id=1, data={"other": "/x.png"}, annotations=0), "img") is None


def test_names_for_the_stored_copy_and_what_a_report_may_show():
    assert _url_name("/data/local-files/?d=team/photos/a%20b.JPG") == "team/photos/a b.JPG"
    assert _url_name("https://cdn.example.com/p/q.webp?X-Amz-Signature=s") == "/p/q.webp"
    assert _url_name("data:image/png;base64,AAAA") == ""
    assert redact_url("https://bucket.s3.amazonaws.com/k.png?X-Amz-Signature=secret") == \
        "https://bucket.s3.amazonaws.com/k.png?..."
    assert redact_url("data:image/png;base64," + "A" * 1000) == "data:image/png;base64,..."
    assert redact_url("/data/local-files/?d=team/a.png") == "/data/local-files/?d=team/a.png"


def test_the_report_says_what_became_of_the_tasks():
    report = AdoptionReport(project_id=3, title="birds", imports=ImportReport(added=2, commit="abc"), tasks=3,
                            annotated=1, named={1: "a.png", 2: "b.png"}, unadopted={3: "HTTP 404"})
    assert report.commit == "abc"
    assert report.summary.startswith("project 3 (birds): 2 of 3 tasks adopted (1 annotated")
    assert "1 left alone" in report.summary


def test_project_tasks_reads_page_after_page_with_the_data_as_stored():
    """Offline: a scripted Label Studio with 3 tasks, 2 to a page (the gateway's page size is
    larger; `total` is what ends the listing, and a page past the end answers 404)."""
    rows = [{"id": i, "data": {"img": f"/data/upload/1/{i}.png", "n": i}, "total_annotations": i % 2}
            for i in (1, 2, 3)]
    asked: list[dict] = []

    def answer(request: httpx.Request) -> httpx.Response:
        query = {k: v[-1] for k, v in parse_qs(urlsplit(str(request.url)).query).items()}
        asked.append(query)
        page = int(query["page"])
        chunk = rows[(page - 1) * 2:page * 2]
        if not chunk:
            return httpx.Response(404, json={"detail": "Invalid page."})
        return httpx.Response(200, json={"total": len(rows), "tasks": chunk})

    client = httpx.Client(transport=httpx.MockTransport(answer))
    gateway = LabelStudioGateway("http://label-studio.test", "token", retry_wait_s=0, http_client=client)
    tasks = list(gateway.project_tasks(7, annotated=True))
    assert [(t.id, t.data["n"], t.annotations) for t in tasks] == [(1, 1, 1), (2, 2, 0), (3, 3, 1)]
    assert [q["page"] for q in asked] == ["1", "2"]  # stops at `total`, not at a 404
    assert asked[0]["project"] == "7" and asked[0]["resolve_uri"] == "false" and asked[0]["fields"] == "task_only"
    assert json.loads(asked[0]["query"])["filters"]["items"][0]["operator"] == "greater"
