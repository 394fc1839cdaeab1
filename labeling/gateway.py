"""The only module that talks to Label Studio (through label-studio-sdk).

It returns labelloop's own dataclasses, so nothing else depends on the SDK's types.
It holds the calls the product makes; what a person does in the UI (take the next task,
label, relabel, skip) is `labeling.simulated.SimulatedAnnotator`, for the demo and tests.

Failures are translated here, once: a transport error (connection refused or reset, a
timeout) or a 502/503/504 is retried on reads, never on writes (a re-sent write could be
applied twice); Label Studio's refusals and exhausted retries become `LabelStudioError`
naming the URL, the call and the status. Anything else is a bug and surfaces unchanged.
Facts about the open-source 1.23 server this relies on are in shared/reference:
`tasks.list(only_annotated=...)` is ignored (we filter instead), bulk annotation
create 404s, the project's `model_version` must equal the predictions' version for
uncertainty sampling to work.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

import httpx
from label_studio_sdk import LabelStudio
from label_studio_sdk.core.api_error import ApiError
from label_studio_sdk.label_interface import LabelInterface
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from kernel.errors import BadInputError, LabelStudioError

__all__ = [
    "Annotation",
    "Task",
    "TaskPrediction",
    "LabelStudioGateway",
    "label_config",
    "classes_from_config",
    "IMAGE_FIELD",
    "NAME_FIELD",
    "CHOICE_TAG",
    "IMAGE_TAG",
    "READ_ATTEMPTS",
    "RETRY_STATUSES",
    "S3StorageCredentials",
]

log = logging.getLogger(__name__)

IMAGE_FIELD = "image"  # task data key holding the image URL
NAME_FIELD = "labelloop_image"  # task data key holding the workspace image name
#: Where tasks made before an adopted project's own data could hold a "name" kept it: read
#: only from a task whose data is labelloop's own ({image, name}), never written.
LEGACY_NAME_FIELD = "name"
CHOICE_TAG = "choice"
IMAGE_TAG = "image"
PAGE_SIZE = 500
# Label Studio 1.23's prediction import recomputes the counters of EVERY task in the
# project after each request (its legacy import path), so the cost is requests x project
# size: 10,000 predictions took 53 s in chunks of 1,000 and 12-17 s in one request.
PREDICTION_IMPORT_CHUNK = 10_000
TASK_IMPORT_CHUNK = 1000
#: Answers worth another try: a proxy or load balancer in front of a Label Studio that is
#: restarting or overloaded. Any other status is Label Studio's considered answer.
RETRY_STATUSES = frozenset({502, 503, 504})
#: How often a read is tried while it fails transiently (writes are tried once).
READ_ATTEMPTS = 5

T = TypeVar("T")


@dataclass(frozen=True)
class Annotation:
    id: int
    task_id: int
    label: str | None
    was_cancelled: bool
    updated_at: str
    completed_by: str


@dataclass(frozen=True)
class Task:
    id: int
    image_name: str
    image_url: str
    updated_at: str
    annotations: tuple[Annotation, ...] = ()


@dataclass(frozen=True)
class TaskPrediction:
    task_id: int
    label: str | None  # None: a queue position only, no pre-label (cold start, review)
    score: float
    model_version: str


def label_config(classes: Sequence[str]) -> str:
    choices = "\n    ".join(f'<Choice value="{c}"/>' for c in classes)
    return (
        "<View>\n"
        f'  <Image name="{IMAGE_TAG}" value="${IMAGE_FIELD}" zoom="true"/>\n'
        f'  <Choices name="{CHOICE_TAG}" toName="{IMAGE_TAG}" choice="single-radio" required="true">\n'
        f"    {choices}\n"
        "  </Choices>\n"
        "</View>"
    )


def _choices_control(config: str):
    """The config's Choices control (parsed by the SDK, not by hand): the generated
    config's by name, else the first."""
    controls = [c for c in LabelInterface(config).controls if c.tag.lower() == "choices"]
    if not controls:
        raise LabelStudioError("the labeling config has no <Choices> control")
    return {c.name: c for c in controls}.get(CHOICE_TAG, controls[0])


def classes_from_config(config: str) -> list[str]:
    """The choices of the config's Choices control."""
    return list(_choices_control(config).labels)


def _label_of(result: list[dict[str, Any]]) -> str | None:
    for item in result or []:
        if item.get("type") == "choices":
            choices = item.get("value", {}).get("choices") or []
            if choices:
                return str(choices[0])
    return None


def _choice_result(label: str, names: tuple[str, str] = (CHOICE_TAG, IMAGE_TAG)) -> list[dict[str, Any]]:
    """A prediction's or annotation's result; `names`: the config's (Choices name, its
    toName), the generated config's by default (an adopted project has its own)."""
    return [{"from_name": names[0], "to_name": names[1], "type": "choices", "value": {"choices": [label]}}]


def choice_names(config: str) -> tuple[str, str]:
    """(name, toName) of the config's Choices control."""
    control = _choices_control(config)
    return control.name, (control.to_name or [IMAGE_TAG])[0]


def _queue_score(score: float) -> float:
    """Label Studio silently DROPS a prediction whose score is outside [0, 1] (its import
    validation), so float noise such as -1e-16 from an entropy must not reach it."""
    value = float(score)
    if not math.isfinite(value) or not -1e-6 <= value <= 1 + 1e-6:
        raise BadInputError(f"a queue score must be within [0, 1], got {score!r}")
    return min(max(value, 0.0), 1.0)


def _iso(value: Any) -> str:
    """One timestamp format for cursors and annotation versions: UTC, microseconds, 'Z'.
    Label Studio's JSON drops the fraction when it is zero ('2026-11-28T00:50:09Z', from
    Python's isoformat), so strings are normalised too: versions compare as strings."""
    if isinstance(value, str) and value:
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return value
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return str(value or "")


_LEGACY_KEYS = {IMAGE_FIELD, LEGACY_NAME_FIELD}


def _task(raw: dict[str, Any]) -> Task:
    data = raw.get("data") or {}
    annotations = tuple(
        Annotation(
            id=int(a["id"]),
            task_id=int(raw["id"]),
            label=_label_of(a.get("result") or []),
            was_cancelled=bool(a.get("was_cancelled")),
            updated_at=_iso(a.get("updated_at") or a.get("created_at")),
            completed_by=str(a.get("completed_by") or ""),
        )
        for a in raw.get("annotations") or []
    )
    return Task(
        id=int(raw["id"]),
        image_name=str(data.get(NAME_FIELD) or (data.get(LEGACY_NAME_FIELD) if set(data) <= _LEGACY_KEYS else "")
                       or ""),
        image_url=str(data.get(IMAGE_FIELD, "")),
        updated_at=_iso(raw.get("updated_at")),
        annotations=annotations,
    )


def _transient(exc: BaseException) -> bool:
    """Worth another try, decided by type: the request did not get through or no answer
    came back (httpx's transport errors, timeouts included), or a gateway said so."""
    if isinstance(exc, httpx.TransportError):
        return True
    return isinstance(exc, ApiError) and exc.status_code in RETRY_STATUSES


def _body(exc: ApiError) -> str:
    text = exc.body if isinstance(exc.body, str) else json.dumps(exc.body, default=str)
    return text if len(text) <= 300 else text[:300] + "..."


@dataclass(frozen=True)
class S3StorageCredentials:
    """What Label Studio's S3 storage needs to read a bucket and presign URLs; `repr` hides
    the secrets (they go to Label Studio, never to a log)."""

    access_key_id: str | None
    secret_access_key: str | None
    session_token: str | None
    region: str | None
    endpoint_url: str | None  # an S3-compatible server; None: AWS

    def __repr__(self) -> str:
        return f"S3StorageCredentials(endpoint_url={self.endpoint_url!r}, region={self.region!r}, keys=<hidden>)"


#: The Data Manager tab labelloop keeps ordered by prediction score.
QUEUE_VIEW_TITLE = "labelloop queue"


class LabelStudioGateway:
    """The product's calls to one Label Studio server.

    `http_client` replaces the SDK's httpx client (tests pass one with a mock transport);
    `retry_wait_s` scales the exponential wait between read attempts."""

    def __init__(
        self,
        url: str,
        api_key: str | None,
        *,
        timeout_s: float = 100.0,
        retry_wait_s: float = 0.5,
        http_client: httpx.Client | None = None,
    ):
        if not api_key:
            raise LabelStudioError(
                "no Label Studio API key: set LABELLOOP_LABEL_STUDIO_API_KEY "
                "(a legacy token or a personal access token)"
            )
        self.url = url.rstrip("/")
        # Retries off: the SDK would re-send non-idempotent actions; we retry deliberately.
        self._client = LabelStudio(
            base_url=self.url, api_key=api_key, timeout=timeout_s, max_retries=0, httpx_client=http_client,
        )
        self._wait = wait_exponential(multiplier=retry_wait_s, max=8)
        self._names: dict[int, tuple[str, str]] = {}  # project -> its Choices (name, toName)

    # --- the one place SDK calls are made, retried and translated ----------------------
    def _call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """A write (or any action), tried once: a re-sent write could be applied twice."""
        return self._attempt(what, 1, fn, *args, **kwargs)

    def _read(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """A read, tried up to READ_ATTEMPTS times while it fails transiently."""
        return self._attempt(what, READ_ATTEMPTS, fn, *args, **kwargs)

    def _attempt(self, what: str, attempts: int, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        def before_sleep(state: RetryCallState) -> None:
            log.warning("cannot %s (attempt %d of %d: %s); retrying", what, state.attempt_number, attempts,
                        state.outcome.exception() if state.outcome else "?")

        retrying = Retrying(retry=retry_if_exception(_transient), stop=stop_after_attempt(attempts),
                            wait=self._wait, before_sleep=before_sleep, reraise=True)
        tried = f" (tried {attempts} times)" if attempts > 1 else ""
        try:
            return retrying(fn, *args, **kwargs)
        except httpx.TransportError as exc:
            raise LabelStudioError(
                f"cannot {what}: Label Studio at {self.url} is unreachable{tried} "
                f"({type(exc).__name__}: {exc}); check that it is running and that "
                "LABELLOOP_LABEL_STUDIO_URL points to it"
            ) from exc
        except ApiError as exc:
            raise LabelStudioError(self._refusal(what, exc, tried)) from exc

    def _refusal(self, what: str, exc: ApiError, tried: str) -> str:
        status = exc.status_code
        said = f"Label Studio at {self.url} answered HTTP {status} to {what}{tried}: {_body(exc)}"
        if status in (401, 403):
            return (f"{said}; check LABELLOOP_LABEL_STUDIO_API_KEY (a legacy token needs "
                    "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true on the server; a personal access "
                    "token works as is)")
        if status is not None and status >= 500:
            return f"{said}; Label Studio failed: see its log (the next run tries again)"
        return f"{said}; Label Studio refused the request"

    def _get(self, path: str) -> Any:
        """GET an endpoint the SDK has no method for (e.g. /next/); None on 404.
        Auth is the SDK client's (legacy or personal access token)."""
        def call() -> Any:
            response = self._client._client_wrapper.httpx_client.request(path, method="GET")
            if response.status_code == 404:
                return None
            if response.status_code >= 400:
                raise ApiError(status_code=response.status_code, body=response.text, headers=dict(response.headers))
            return response.json() if response.content else None
        return self._read(f"GET {path}", call)

    # --- projects ------------------------------------------------------------------
    def find_project(self, title: str) -> int | None:
        projects = self._read("list projects", lambda: list(self._client.projects.list(title=title)))
        for project in projects:
            if project.title == title:
                return int(project.id)
        return None

    def ensure_project(self, title: str, classes: Sequence[str]) -> int:
        """Find the project by title or create it with a config generated from the classes."""
        found = self.find_project(title)
        if found is not None:
            return found
        project = self._call(
            "create the project",
            self._client.projects.create,
            title=title,
            label_config=label_config(classes),
            description="Managed by labelloop: labels flow into a DVC-tracked dataset.",
            show_skip_button=True,
            maximum_annotations=1,
        )
        log.info("created Label Studio project %s (id %s)", title, project.id)
        return int(project.id)

    def ensure_local_storage(self, project_id: int, path: Path) -> None:
        """Local-file serving needs a storage covering the folder, else the images 404."""
        storages = self._read(
            "list local storages", self._client.import_storage.local.list, project=project_id
        )
        if any(Path(s.path or "") == path for s in storages):
            return
        self._call(
            "create the local storage",
            self._client.import_storage.local.create,
            project=project_id,
            path=str(path),
            title="labelloop images",
            use_blob_urls=True,
        )

    def ensure_s3_storage(self, project_id: int, bucket: str, credentials: S3StorageCredentials, *,
                          presign: bool = True) -> None:
        """An S3 source storage over the bucket, so Label Studio resolves the tasks' s3:// URLs
        at `/tasks/<id>/resolve/` (for the browser and the ML backend alike): a redirect to a
        presigned URL, or with `presign=False` the bytes proxied by Label Studio (for S3 the
        browsers cannot reach). Never synced: labelloop imports the tasks itself.
        `credentials`: access key, secret, session token, region, endpoint; never logged."""
        storages = self._read("list S3 storages", self._client.import_storage.s3.list, project=project_id)
        if any(s.bucket == bucket for s in storages):
            return
        self._call(
            "create the S3 storage",
            self._client.import_storage.s3.create,
            project=project_id,
            bucket=bucket,
            title=f"labelloop s3://{bucket}",
            presign=presign,
            use_blob_urls=True,
            recursive_scan=True,
            **{key: value for key, value in {
                "aws_access_key_id": credentials.access_key_id,
                "aws_secret_access_key": credentials.secret_access_key,
                "aws_session_token": credentials.session_token,
                "region_name": credentials.region,
                "s3endpoint": credentials.endpoint_url,
            }.items() if value},
        )
        log.info("project %s: S3 storage over bucket %s", project_id, bucket)

    # --- tasks ---------------------------------------------------------------------
    def _tasks(
        self, project_id: int, filters: list[dict[str, Any]] | None, *, with_annotations: bool = True,
    ) -> list[Task]:
        """`with_annotations=False` asks for task rows only: no annotations and no
        predictions, a fraction of the payload on a scored pool."""
        query = json.dumps({"filters": {"conjunction": "and", "items": filters}}) if filters else None

        def pages() -> list[dict[str, Any]]:  # the pager fetches page after page as it is read
            return [t.model_dump() for t in self._client.tasks.list(
                project=project_id, query=query, fields="all" if with_annotations else "task_only",
                page_size=PAGE_SIZE,
            )]
        return [_task(raw) for raw in self._read("list tasks", pages)]

    def task_images(self, project_id: int) -> dict[int, str]:
        """Every task's id and image name (task rows only: no annotations, no predictions)."""
        # Unnamed tasks (an adopted project's task whose image could not be had) are no pool image.
        return {t.id: t.image_name for t in self._tasks(project_id, None, with_annotations=False) if t.image_name}

    def tasks_updated_since(self, project_id: int, since: str | None) -> list[Task]:
        """Annotated tasks updated at or after `since` (every annotated task if None).

        Tasks whose last annotation was deleted have no annotations left and are not
        listed: fetch those by id (`tasks_by_id`)."""
        items: list[dict[str, Any]] = [
            {"filter": "filter:tasks:total_annotations", "operator": "greater",
             "type": "Number", "value": 0}
        ]
        if since:
            items.append(
                {"filter": "filter:tasks:updated_at", "operator": "greater_or_equal",
                 "type": "Datetime", "value": since}
            )
        return self._tasks(project_id, items)

    def tasks_by_id(self, task_ids: Iterable[int]) -> list[Task]:
        tasks = []
        for task_id in task_ids:
            raw = self._get(f"api/tasks/{task_id}/")
            if raw is not None:  # None: the task itself is gone
                tasks.append(_task(raw))
        return tasks

    def import_images(self, project_id: int, names: Iterable[str], urls: Mapping[str, str],
                      extra: Mapping[str, Mapping[str, str]] | None = None) -> dict[int, str]:
        """Import images as tasks (`urls[name]`: where Label Studio shows it from), skipping
        names already imported; `extra[name]`: more task data (`source: production`, which
        annotators and the Data Manager filter on). Returns every task of the project:
        {task id: image name}."""
        extra = extra or {}
        tasks = self.task_images(project_id)
        existing = set(tasks.values())
        new = [n for n in names if n not in existing]
        for start in range(0, len(new), TASK_IMPORT_CHUNK):
            chunk = new[start : start + TASK_IMPORT_CHUNK]
            response = self._call(
                "import tasks",
                self._client.projects.import_tasks,
                id=project_id,
                request=[{**extra.get(n, {}), IMAGE_FIELD: urls[n], NAME_FIELD: n} for n in chunk],
                return_task_ids=True,
            )
            ids = getattr(response, "task_ids", None)
            if ids is None or len(ids) != len(chunk):
                return self.task_images(project_id)  # an edition that does not say: ask
            tasks.update(zip(map(int, ids), chunk, strict=True))
        return tasks

    # --- predictions and queue -------------------------------------------------------
    def _choice_names(self, project_id: int) -> tuple[str, str]:
        """The project's (Choices name, toName), read once per gateway: pre-labels must
        name the project's own control (an adopted project's config is not generated)."""
        if project_id not in self._names:
            config = self._read("read the project's labeling config", self._client.projects.get, id=project_id)
            self._names[project_id] = choice_names(config.label_config or "")
        return self._names[project_id]

    def push_predictions(self, project_id: int, predictions: Sequence[TaskPrediction]) -> int:
        if not predictions:
            return 0
        names = self._choice_names(project_id)
        payload = [
            {
                "task": p.task_id,
                "model_version": p.model_version,
                "score": _queue_score(p.score),
                "result": _choice_result(p.label, names) if p.label is not None else [],
            }
            for p in predictions
        ]
        for start in range(0, len(payload), PREDICTION_IMPORT_CHUNK):
            self._call(
                "import predictions",
                self._client.projects.import_predictions,
                id=project_id,
                request=payload[start : start + PREDICTION_IMPORT_CHUNK],
            )
        return len(payload)

    def delete_task_predictions(self, project_id: int, task_ids: Sequence[int]) -> None:
        """Remove every prediction of these tasks, in one Data Manager action. Label Studio
        keeps each prediction it is sent and serves a task by its LOWEST score of the
        project's model version, so positions re-pushed under a version the tasks already
        hold must replace the old ones, not join them."""
        if not task_ids:
            return
        from label_studio_sdk.actions.types import PrepareParamsRequestRequestSelectedItemsIncluded

        self._call(
            "delete stale predictions", self._client.actions.create,
            id="delete_tasks_predictions", project=project_id,
            selected_items=PrepareParamsRequestRequestSelectedItemsIncluded(all_=False, included=list(task_ids)),
        )

    def align_queue(self, project_id: int, model_version: str, *, skip_queue: str = "REQUEUE_FOR_OTHERS") -> None:
        """Serve the lowest prediction score first, from predictions of this model version;
        skipped tasks go back to the queue as `skip_queue` says (Label Studio's project
        setting: REQUEUE_FOR_OTHERS, REQUEUE_FOR_ME or IGNORE_SKIPPED)."""
        self._call(
            "set the project's queue order",
            self._client.projects.update,
            id=project_id,
            model_version=model_version,
            sampling="Uncertainty sampling",
            skip_queue=skip_queue,
        )

    def requeue_for_review(self, task_id: int, annotators: int) -> None:
        """Serve this labeled task again, to someone who has not labeled it: Label Studio
        counts a task done once `overlap` distinct annotators labeled it, so raising the
        task's overlap to `annotators` puts it back into the queue."""
        self._call("re-queue a task for review", self._client.tasks.update, id=str(task_id),
                   overlap=annotators, is_labeled=False)

    def ensure_queue_view(self, project_id: int, title: str = QUEUE_VIEW_TITLE) -> int:
        """A Data Manager tab with the unlabeled tasks ordered by prediction score (most
        useful first), for "Label Tasks As Displayed" and for people looking at the queue."""
        for view in self._read("list Data Manager tabs", self._client.views.list, project=project_id):
            data = view.data if isinstance(view.data, dict) else (view.data.dict() if view.data else {})
            if data.get("title") == title:
                return int(view.id)
        view = self._call(
            "create the queue tab", self._client.views.create, project=project_id,
            data={
                "title": title,
                "ordering": ["tasks:predictions_score"],
                "filters": {"conjunction": "and", "items": [
                    {"filter": "filter:tasks:total_annotations", "operator": "equal", "type": "Number", "value": 0},
                ]},
            },
        )
        return int(view.id)

    def connect_ml_backend(
        self,
        project_id: int,
        url: str,
        title: str,
        *,
        basic_auth: tuple[str, str] | None = None,
        webhook_headers: dict[str, str] | None = None,
    ) -> int:
        """Connect the labelloop service as ML backend (Label Studio validates it: /health,
        /setup). With `basic_auth`, Label Studio sends it on every backend call; Label Studio
        sends none on the webhook it registers for the backend, so `webhook_headers` (the
        shared secret) are set on that webhook."""
        auth = (
            {"auth_method": "BASIC_AUTH", "basic_auth_user": basic_auth[0], "basic_auth_pass": basic_auth[1]}
            if basic_auth else {}
        )
        backends = self._read("list ML backends", self._client.ml.list, project=project_id)
        existing = [b for b in backends if (b.url or "").rstrip("/") == url.rstrip("/")]
        if existing:
            backend_id = int(existing[0].id)
            if auth:
                self._call("update the ML backend", self._client.ml.update, id=backend_id,
                           project=project_id, **auth)
        else:
            backend = self._call(
                "connect the ML backend", self._client.ml.create,
                project=project_id, url=url, title=title, is_interactive=False, **auth,
            )
            backend_id = int(backend.id)
        if webhook_headers:
            hook_url = f"{url.rstrip('/')}/webhook"
            hooks = self._read("list webhooks", self._client.webhooks.list, project=str(project_id))
            for hook in hooks:
                if (hook.url or "").rstrip("/") == hook_url:
                    self._call("set the webhook headers", self._client.webhooks.update,
                               id=hook.id, url=hook.url, headers=webhook_headers)
        return backend_id

    # --- adopting an existing project (`labelloop init --from-project`) -----------------
    def project_summary(self, project_id: int) -> ProjectSummary | None:
        """The project's title, labeling config and task count; None when there is no such
        project (or the token's user cannot see it)."""
        raw = self._get(f"api/projects/{int(project_id)}/")
        if raw is None:
            return None
        return ProjectSummary(id=int(raw["id"]), title=str(raw.get("title") or ""),
                              label_config=str(raw.get("label_config") or ""),
                              tasks=int(raw.get("task_number") or 0))

    def project_tasks(self, project_id: int, *, annotated: bool | None = None) -> Iterable[ProjectTask]:
        """The project's tasks in id order, page by page (one page in memory at a time), with
        their data exactly as stored (`resolve_uri=false`: a cloud URI stays `s3://...`; the
        SDK's models would turn numbers in `data` into strings). `annotated`: only tasks with
        (True) or without (False) a non-cancelled annotation; None: all."""
        from urllib.parse import urlencode

        params: dict[str, Any] = {"project": int(project_id), "fields": "task_only", "resolve_uri": "false",
                                  "page_size": PAGE_SIZE}
        if annotated is not None:
            params["query"] = json.dumps({"filters": {"conjunction": "and", "items": [
                {"filter": "filter:tasks:total_annotations", "operator": "greater" if annotated else "equal",
                 "type": "Number", "value": 0}]}})
        page, seen = 1, 0
        while True:
            raw = self._get(f"api/tasks/?{urlencode({**params, 'page': page})}")
            rows = (raw or {}).get("tasks") or []  # None: past the last page (Label Studio answers 404)
            for row in rows:
                yield ProjectTask(id=int(row["id"]), data=dict(row.get("data") or {}),
                                  annotations=int(row.get("total_annotations") or 0))
            seen += len(rows)
            if not rows or seen >= int((raw or {}).get("total") or 0):
                return
            page += 1

    def set_task_name(self, task_id: int, data: Mapping[str, Any], name: str) -> None:
        """Stamp a task with the workspace image it shows (`data[NAME_FIELD]`, what the
        collector maps annotations by), keeping the rest of its data: Label Studio replaces
        a task's data as a whole on update."""
        self._call("name a task", self._client.tasks.update, id=str(task_id), data={**data, NAME_FIELD: name})


@dataclass(frozen=True)
class ProjectSummary:
    id: int
    title: str
    label_config: str
    tasks: int  # how many tasks the project holds


@dataclass(frozen=True)
class ProjectTask:
    """A task as stored in Label Studio, for adopting a project."""

    id: int
    data: dict[str, Any]
    annotations: int  # non-cancelled annotations (Label Studio's `total_annotations`)
