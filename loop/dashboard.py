"""The dashboard: one server-rendered page of how the loop is doing (issue 17, item 5).

What it shows comes from `Loop.status()` (the numbers `labelloop status --json` prints),
the promotion history (the serving model's changes and the learning curve: one point per
promotion, accuracy against the labels the model trained on), the runs' reports
(`<home>/runs/<run>/report/`, served under `/runs/<run>/report/`), and two probes: the
service's `/health` and Label Studio's `/health/`. Whatever fails (no workspace, no model,
Label Studio or the service down) becomes a line on the page, never a failed page.

Served by `labelloop up`, `schedule` and `dashboard` on `LABELLOOP_DASHBOARD_PORT` (host:
`LABELLOOP_SERVICE_HOST`) by a uvicorn in a daemon thread, behind the API's credentials:
the API key (as `Authorization: Bearer`, or as the password of HTTP basic auth with any
user name, so that a browser can log in) and the ML-backend basic auth user/password.
With neither configured it is open, like the API. `write_snapshot` writes the same page as
one self-contained file (the demo's `<home>/dashboard.html`).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hmac
import io
import logging
import os
import re
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from rich.text import Text

from kernel.errors import ConfigError, LabelloopError
from kernel.settings import Settings
from loop.monitoring import production_lines
from loop.quality import quality_lines
from loop.state import PromotionEvent
from loop.status import LoopStatus
from serving import PredictionClient, PromotionRecord

if TYPE_CHECKING:
    from loop.core import Loop

__all__ = [
    "DashboardServer", "DashboardView", "authorized", "create_app", "flatten", "gather", "learning_curve_svg",
    "render_page", "write_snapshot",
]

log = logging.getLogger(__name__)

PORT_SETTING = "LABELLOOP_DASHBOARD_PORT"
#: The served page reloads itself this often (the snapshot does not).
REFRESH_S = 30
#: Probes answer fast or count as down: a page waits for them.
PROBE_TIMEOUT_S = 2.0
REPORT_DIR = "report"  # loop.reports writes <home>/runs/<run>/report/
CONFUSION_PNG = "confusion.png"
#: Run ids are `<UTC time>-<commit>-<hex>` (loop.training); anything else is not a run folder.
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
#: What the report routes serve, by suffix (nothing else in a report folder is served).
_MEDIA_TYPES = {".png": "image/png", ".json": "application/json", ".md": "text/markdown; charset=utf-8"}


# --- what the page shows ---------------------------------------------------------------------
@dataclass(frozen=True)
class DashboardView:
    """Everything one page shows, gathered once per request."""

    generated_at: str
    workspace: str
    label_studio_url: str
    service_url: str
    status: LoopStatus | None  # None: the status could not be read (the reason is in problems)
    history: list[PromotionEvent] = field(default_factory=list)  # newest first, all of it
    service_health: dict | None = None  # the service's /health answer; None: not reachable
    label_studio_up: bool = False
    problems: list[str] = field(default_factory=list)
    reports: dict[str, bool] = field(default_factory=dict)  # run id -> its report exists
    confusion_png: Path | None = None  # the serving model's run's confusion matrix


def gather(loop: Loop) -> DashboardView:
    """The view of the loop now; every failure is a problem line."""
    settings: Settings = loop.settings
    problems: list[str] = []
    status: LoopStatus | None = None
    history: list[PromotionEvent] = []
    try:
        status = loop.status()
        history = loop.state.promotions(10_000)
    except (LabelloopError, OSError, ValueError, sqlite3.Error) as exc:
        # A missing workspace, a corrupt state or a collect mid-commit: the page says so.
        problems.append(f"the loop's status cannot be read: {exc}")
    try:
        health = _service_health(settings)
    except ValueError as exc:  # credentials httpx cannot send (a header must be ASCII)
        health = None
        problems.append(f"the service cannot be asked with the configured credentials: {exc}")
    if health is None:
        problems.append(f"the service is not reachable at {settings.resolved_service_url}: nothing is classified "
                        "and the queue is not re-scored until it answers (`labelloop up` starts it)")
    label_studio_up = _label_studio_up(settings.label_studio_url)
    if not label_studio_up:
        problems.append(f"Label Studio is not reachable at {settings.label_studio_url}: annotators cannot label "
                        "and nothing is collected until it answers")
    reports: dict[str, bool] = {}
    confusion = None
    if status is not None:
        problems += [f"{job} failed: {error}" for job, error in sorted(status.errors.items())]
        if status.unpushed_commit:
            problems.append(f"data commit {status.unpushed_commit[:10]} is not in the DVC remote yet (it was "
                            "unreachable); the next collect pushes it")
        if status.image_fetch_failures:
            total = sum(status.image_fetch_failures.values())
            problems.append(f"{total} task images the service could not fetch or use since it started "
                            f"({_pairs(status.image_fetch_failures)}); its log names each cause")
        shown = [r.run_id for r in status.runs] + ([status.serving.run_id] if status.serving else [])
        reports = {run_id: _report_file(settings, run_id, "report.md") is not None for run_id in shown}
        if status.serving is not None:
            confusion = _report_file(settings, status.serving.run_id, CONFUSION_PNG)
    return DashboardView(
        generated_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        workspace=str(settings.workspace), label_studio_url=settings.label_studio_url,
        service_url=settings.resolved_service_url, status=status, history=history, service_health=health,
        label_studio_up=label_studio_up, problems=problems, reports=reports, confusion_png=confusion,
    )


def _service_health(settings: Settings) -> dict | None:
    client = PredictionClient.for_settings(settings.serving, timeout_s=PROBE_TIMEOUT_S)
    try:
        return client.health()
    finally:
        client.close()


def _label_studio_up(url: str) -> bool:
    """Label Studio's own health route (no token needed), as `loop.stack` waits on it."""
    try:
        return httpx.get(f"{url.rstrip('/')}/health/", timeout=PROBE_TIMEOUT_S).status_code == 200
    except httpx.HTTPError:
        return False


def _report_file(settings: Settings, run_id: str, name: str) -> Path | None:
    """A file of a run's report folder, or None (no such run, report or file; a name that
    would leave the folder)."""
    if not _RUN_ID.match(run_id) or "/" in name or name.startswith(".") or Path(name).suffix not in _MEDIA_TYPES:
        return None
    path = settings.runs_dir / run_id / REPORT_DIR / name
    return path if path.is_file() else None


def _pairs(counts: Mapping[str, object]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))


def flatten(value: object, prefix: str = "") -> list[tuple[str, str]]:
    """Rows (key, value) of any nested dict/list/dataclass/pydantic value: nested keys joined
    with dots, so a section shows whatever its producer puts in it."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    elif hasattr(value, "model_dump"):
        value = value.model_dump()
    if isinstance(value, Mapping):
        if not value:
            return [(prefix, "-")] if prefix else []
        rows: list[tuple[str, str]] = []
        for key, item in value.items():
            rows += flatten(item, f"{prefix}.{key}" if prefix else str(key))
        return rows
    if isinstance(value, (list, tuple, set)):
        items = list(value)
        if any(isinstance(i, Mapping) or dataclasses.is_dataclass(i) for i in items):
            rows = []
            for i, item in enumerate(items):
                rows += flatten(item, f"{prefix}[{i}]")
            return rows or [(prefix, "-")]
        return [(prefix, ", ".join(_scalar(i) for i in items) or "-")]
    return [(prefix, _scalar(value))]


def _scalar(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


# --- the learning curve ------------------------------------------------------------------------
@dataclass(frozen=True)
class CurvePoint:
    labels: int
    accuracy: float
    judged_by: str
    action: str  # promote | rollback
    version: str


def curve_points(history: list[PromotionEvent]) -> list[CurvePoint]:
    """One point per change of the serving model, oldest first."""
    points = []
    for event in reversed(history):
        record = PromotionRecord.model_validate_json(event.record)
        points.append(CurvePoint(record.n_labels, record.accuracy, record.judged_by, event.action,
                                 record.tag.split(":")[-1]))
    return points


def learning_curve_svg(history: list[PromotionEvent]) -> str | None:
    """The loop's learning curve as inline SVG (matplotlib's object API: no pyplot state, so
    it draws safely in the server's threads); None before the first promotion."""
    points = curve_points(history)
    if not points:
        return None
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(5.2, 3.4), dpi=100)
    ax = fig.add_subplot()
    ax.plot([p.labels for p in points], [p.accuracy for p in points], color="#9aa5b1", linewidth=1, zorder=1)
    # Accuracies judged on different sets (cross-validation, the evaluation set, a test set)
    # are not the same measurement: each set has its own marker.
    for judged, marker in (("cv", "s"), ("eval", "o"), ("test", "D")):
        chosen = [p for p in points if p.judged_by == judged and p.action != "rollback"]
        if chosen:
            ax.scatter([p.labels for p in chosen], [p.accuracy for p in chosen], marker=marker, zorder=2,
                       label={"cv": "cross-validation", "eval": "evaluation set", "test": "test set"}[judged])
    rolled = [p for p in points if p.action == "rollback"]
    if rolled:
        ax.scatter([p.labels for p in rolled], [p.accuracy for p in rolled], marker="x", color="#c62828",
                   zorder=3, label="rollback")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # labels are counted
    ax.set_xlabel("training labels of the model")
    ax.set_ylabel("accuracy when promoted")
    low = min(p.accuracy for p in points)
    ax.set_ylim(max(0.0, low - 0.05), 1.0)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    out = io.StringIO()
    fig.savefig(out, format="svg")
    text = out.getvalue()
    return text[text.index("<svg"):]  # inline: without the XML prolog and doctype


# --- the page ----------------------------------------------------------------------------------
_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
{% if refresh %}<meta http-equiv="refresh" content="{{ refresh }}">{% endif %}
<title>labelloop dashboard</title>
<style>
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #1f2933; max-width: 80rem; }
h1 { margin-bottom: 0.2rem; } h2 { border-bottom: 1px solid #d9e2ec; padding-bottom: 0.2rem; margin-top: 1.6rem; }
table { border-collapse: collapse; margin: 0.4rem 0; } td, th { border: 1px solid #d9e2ec; padding: 0.25rem 0.6rem; text-align: left; }
th { background: #f0f4f8; } .muted { color: #627d98; } .ok { color: #2e7d32; } .bad { color: #c62828; }
.summary { margin: .25rem 0; }
.problems li { color: #c62828; margin: 0.2rem 0; } .grid { display: flex; flex-wrap: wrap; gap: 2rem; } .grid > div { max-width: 36rem; }
img { max-width: 100%; border: 1px solid #d9e2ec; } code { background: #f0f4f8; padding: 0 0.2rem; }
</style></head>
<body>
<h1>labelloop</h1>
<p class="muted">Workspace <code>{{ v.workspace }}</code>{% if st %} @ <code>{{ st.data_commit[:10] }}</code>{% endif %}
 &middot; page of {{ v.generated_at }}{% if refresh %} (reloads every {{ refresh }} s){% else %} (a snapshot){% endif %}
 &middot; <a href="{{ v.label_studio_url }}">Label Studio</a> &middot; <a href="{{ v.service_url }}">service</a></p>

<h2>Problems</h2>
{% if v.problems %}<ul class="problems" id="problems">{% for p in v.problems %}<li>{{ p }}</li>{% endfor %}</ul>
{% else %}<p class="ok" id="problems">No problems: Label Studio and the service answer, every job succeeded.</p>{% endif %}
<table>
<tr><th>Label Studio</th><td id="stat-label-studio" class="{{ 'ok' if v.label_studio_up else 'bad' }}">{{ 'reachable' if v.label_studio_up else 'not reachable' }}</td></tr>
<tr><th>Service</th><td id="stat-service" class="{{ 'ok' if health else 'bad' }}">{% if not health %}not reachable{% elif health.model_version %}serves {{ health.model_version }}{% else %}reachable, no model loaded{% endif %}</td></tr>
</table>

{% if st %}
<h2>Serving model</h2>
{% if st.serving %}
<table>
<tr><th>Model</th><td id="stat-serving-tag">{{ st.serving.tag }}</td></tr>
<tr><th>Accuracy</th><td id="stat-serving-accuracy">{{ '%.4f' % st.serving.accuracy }}</td></tr>
<tr><th>Judged by</th><td>{{ judged_names.get(st.serving.judged_by, st.serving.judged_by) }}{% if st.serving.n_judged is not none %} ({{ st.serving.n_judged }} labels){% endif %}</td></tr>
<tr><th>Trained on</th><td>{{ st.serving.n_labels }} labels, data {{ st.serving.data_commit[:10] }}</td></tr>
<tr><th>Run</th><td>{{ link_run(st.serving.run_id) }}</td></tr>
<tr><th>Promoted</th><td>{{ st.serving.promoted_at }}</td></tr>
</table>
{% else %}
<p id="stat-serving-tag" class="bad">No model yet.{% if st.missing_for_first_model %} The first one waits for labels: {{ st.missing_for_first_model | join('; ') }}.{% else %} It has the labels it needs: the next training run makes it.{% endif %}</p>
{% endif %}

<h3>History</h3>
{% if v.history %}
<table id="history"><tr><th>when</th><th>change</th><th>model</th><th>from</th><th>by</th><th>why</th></tr>
{% for e in v.history[:20] %}<tr><td>{{ e.at }}</td><td>{{ e.action }}</td><td>{{ e.tag.split(':')[-1] }}</td>
<td>{{ (e.from_tag or '-').split(':')[-1] }}</td><td>{{ e.by }}</td><td>{{ e.reason }}</td></tr>{% endfor %}
</table>
{% else %}<p class="muted" id="history">No promotion or rollback yet.</p>{% endif %}

<div class="grid">
<div><h2>Learning curve</h2>
{% if curve %}<div id="learning-curve">{{ curve | safe }}</div>
<p class="muted">One point per change of the serving model: its accuracy when promoted against the labels it trained on.</p>
{% else %}<p class="muted" id="learning-curve">No promotion yet: the curve starts with the first model.</p>{% endif %}
</div>
<div><h2>Confusion matrix</h2>
{% if confusion_src %}<img id="confusion" src="{{ confusion_src }}" alt="confusion matrix of the serving model" width="440">
<p class="muted">The serving model on the images that judged its run (its run's report).</p>
{% else %}<p class="muted" id="confusion">No confusion matrix: {{ 'no model yet' if not st.serving else 'its run was judged by cross-validation, or its report is missing' }}.</p>{% endif %}
</div>
</div>

<h2>Labeling and queue</h2>
<table>
<tr><th>Pool images</th><td id="stat-pool-images">{{ st.pool_images }}</td></tr>
<tr><th>Labels</th><td id="stat-labels">{{ st.labels }}</td></tr>
<tr><th>Training labels</th><td id="stat-training-labels">{{ st.training_labels }}</td></tr>
<tr><th>Evaluation labels</th><td id="stat-evaluation-labels">{{ st.labels - st.training_labels }}</td></tr>
<tr><th>Evaluation set</th><td id="stat-evaluation-set">{% if st.evaluation %}{{ st.evaluation.labels }} of {{ st.evaluation.images }} images labeled; {% if st.evaluation.ready %}it judges the runs{% else %}still needs {{ st.evaluation.missing | join('; ') }} (until then cross-validation judges){% endif %}{% else %}a labeled test set judges the runs{% endif %}</td></tr>
<tr><th>Labels since the last training</th><td id="stat-pending">{{ st.labels_pending_training }}</td></tr>
<tr><th>Held back for review</th><td id="stat-held-back">{{ st.held_back_for_review | length }}{% if st.held_back_for_review %}: {{ st.held_back_for_review[:10] | join(', ') }}{% endif %}</td></tr>
<tr><th>Re-queued for review</th><td id="stat-requeued">{{ st.requeued_for_review | length }}{% if st.requeued_for_review %} tasks: {{ st.requeued_for_review[:10] | join(', ') }}{% endif %}</td></tr>
<tr><th>Queue order</th><td>{{ st.queue_version or '-' }}</td></tr>
<tr><th>Pending deletions</th><td>{{ st.pending_deletions }}</td></tr>
<tr><th>Last collect</th><td>{{ st.last_collect or 'never' }}{% if st.last_collect_commit %} &rarr; {{ st.last_collect_commit[:10] }}{% endif %} (label batch {{ st.label_batch }})</td></tr>
<tr><th>Training</th><td id="stat-training">{% if st.training_in_progress %}running ({{ st.training_in_progress }}){% elif st.training_requested %}queued{% else %}idle{% endif %}</td></tr>
<tr><th>Next jobs</th><td>{% for job, when in st.next_jobs | dictsort %}{{ job }} {{ when or '-' }}{% if not loop.last %}, {% endif %}{% else %}-{% endfor %}</td></tr>
</table>

<h2>Training runs</h2>
{% if st.runs %}
<table id="runs"><tr><th>run</th><th>status</th><th>trigger</th><th>labels</th><th>accuracy</th><th>judged by</th><th>reason</th><th>report</th></tr>
{% for r in st.runs %}<tr id="run-{{ r.run_id }}"><td>{{ r.run_id }}</td><td>{{ r.status }}</td><td>{{ r.trigger }}</td>
<td>{{ r.n_labels if r.n_labels is not none else '-' }}</td><td>{{ '%.4f' % r.accuracy if r.accuracy is not none else '-' }}</td>
<td>{% if r.judged_by %}{{ r.judged_by }} ({{ r.n_judged }}){% else %}-{% endif %}</td><td>{{ r.reason }}</td>
<td>{% if v.reports.get(r.run_id) %}<a href="{{ report_href(r.run_id) }}">report</a>{% else %}-{% endif %}</td></tr>{% endfor %}
</table>
{% else %}<p class="muted" id="runs">No training runs yet.</p>{% endif %}

<h2>Capture and drift</h2>
{% for line in production_lines %}<p class="summary">{{ line }}</p>{% endfor %}
{% if production_rows %}<table id="production">{% for k, val in production_rows %}<tr><th>{{ k }}</th><td>{{ val }}</td></tr>{% endfor %}</table>
{% else %}<p class="muted" id="production">Not enabled: production inputs are not captured and drift is not measured.</p>{% endif %}

<h2>Label quality</h2>
{% for line in quality_lines %}<p class="summary">{{ line }}</p>{% endfor %}
{% if quality_rows %}<table id="label-quality">{% for k, val in quality_rows %}<tr><th>{{ k }}</th><td>{{ val }}</td></tr>{% endfor %}</table>
{% else %}<p class="muted" id="label-quality">Not computed yet.</p>{% endif %}
{% endif %}
</body></html>
"""

_JUDGED = {"cv": "cross-validation", "eval": "the evaluation set", "test": "the test set"}


def render_page(view: DashboardView, *, snapshot: bool = False, runs_href: str = "runs") -> str:
    """The page. Served: links to the report routes, the confusion matrix by URL, reloading
    itself. Snapshot: links to the report files (`runs_href`: the runs folder as seen from
    the file), pictures inline, no reloading."""
    from jinja2 import Environment, StrictUndefined
    from markupsafe import Markup, escape

    st = view.status

    def report_href(run_id: str) -> str:
        return f"{runs_href}/{run_id}/{REPORT_DIR}/report.md" if snapshot else f"runs/{run_id}/{REPORT_DIR}/"

    def link_run(run_id: str) -> Markup:
        if view.reports.get(run_id):
            return Markup('<a href="{}">{}</a>').format(report_href(run_id), run_id)
        return escape(run_id)

    confusion_src = None
    if view.confusion_png is not None and st is not None and st.serving is not None:
        if snapshot:
            confusion_src = "data:image/png;base64," + base64.b64encode(view.confusion_png.read_bytes()).decode()
        else:
            confusion_src = f"runs/{st.serving.run_id}/{REPORT_DIR}/{CONFUSION_PNG}"
    env = Environment(autoescape=True, undefined=StrictUndefined)
    return env.from_string(_PAGE).render(
        v=view, st=st, health=view.service_health, refresh=None if snapshot else REFRESH_S,
        curve=learning_curve_svg(view.history), confusion_src=confusion_src, judged_names=_JUDGED,
        report_href=report_href, link_run=link_run,
        production_rows=flatten(st.production) if st is not None and st.production is not None else [],
        quality_rows=flatten(st.label_quality) if st is not None and st.label_quality is not None else [],
        # The sentences `labelloop status` prints, above the tables of every number.
        production_lines=_sentences(production_lines, st.production if st is not None else None),
        quality_lines=_sentences(quality_lines, st.label_quality if st is not None else None),
    )


def _sentences(lines: Callable[[dict | None], list[str]], section: dict | None) -> list[str]:
    """A section's `labelloop status` lines as plain text (rich markup removed). A section of
    another shape (an older home) gets none: its table below still shows every value."""
    try:
        return [Text.from_markup(line).plain.strip() for line in lines(section)]
    except (KeyError, TypeError, ValueError):
        log.warning("dashboard: the status section does not have the expected shape", exc_info=True)
        return []


def write_snapshot(loop: Loop, path: Path | None = None) -> Path:
    """The page as one file (default `<home>/dashboard.html`): pictures inline, report links
    relative to the file, so it opens from disk after the processes are gone."""
    path = (path or loop.settings.home / "dashboard.html").resolve()
    page = render_page(gather(loop), snapshot=True, runs_href=os.path.relpath(loop.settings.runs_dir, path.parent))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


def _report_html(run_id: str, markdown: str) -> str:
    """A run's report.md as a page; its pictures are relative links, served beside it."""
    from markdown_it import MarkdownIt
    from markupsafe import escape

    # html off: the report quotes reasons and class names, which must stay text.
    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>run {escape(run_id)}</title>'
            "<style>body{font-family:system-ui,sans-serif;margin:1.5rem;max-width:70rem}table{border-collapse:"
            "collapse}td,th{border:1px solid #d9e2ec;padding:.2rem .5rem}img{max-width:48%}</style></head><body>"
            f'<p><a href="../../../">&larr; dashboard</a> &middot; <a href="report.json">report.json</a></p>'
            f"{body}</body></html>")


# --- auth --------------------------------------------------------------------------------------
def authorized(authorization: str | None, *, api_key: str | None, basic: tuple[str, str] | None) -> bool:
    """The API's credentials: open when none is configured; else the API key as a bearer
    token or as a basic-auth password (any user name: a browser's login box), or the
    ML-backend's basic-auth user and password. Compared in constant time."""
    if api_key is None and basic is None:
        return True
    scheme, _, credentials = (authorization or "").partition(" ")
    scheme, credentials = scheme.lower(), credentials.strip()
    if scheme == "bearer":
        return api_key is not None and _same(credentials, api_key)
    if scheme != "basic":
        return False
    try:
        # UTF-8, as browsers send it and as the service's guard compares it.
        user, sep, password = base64.b64decode(credentials, validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return False
    if not sep:
        return False
    if api_key is not None and _same(password, api_key):
        return True
    # `&`, not `and`: both compared, so the time taken does not tell whether the user matched.
    return basic is not None and _same(user, basic[0]) & _same(password, basic[1])


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


# --- the app and its server ----------------------------------------------------------------------
def create_app(loop: Loop) -> FastAPI:
    """The dashboard's ASGI app for `loop`."""
    settings: Settings = loop.settings
    serving = settings.serving
    api_key = serving.api_key.get_secret_value() if serving.api_key is not None else None
    basic = serving.basic_auth

    def require_credentials(request: Request) -> None:
        if not authorized(request.headers.get("authorization"), api_key=api_key, basic=basic):
            # Basic first: a browser shows its login box for it (user: anything, password: the API key).
            raise HTTPException(401, "the dashboard needs the API's credentials: Authorization: Bearer <api key>, "
                                     "or basic auth with the API key as the password",
                                headers={"WWW-Authenticate": 'Basic realm="labelloop dashboard"'})

    app = FastAPI(title="labelloop dashboard", docs_url=None, redoc_url=None, openapi_url=None,
                  dependencies=[Depends(require_credentials)])

    @app.exception_handler(HTTPException)
    async def _error(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    # Sync routes: FastAPI runs them in its thread pool, so the probes' waits block no one.
    @app.get("/", response_class=HTMLResponse)
    def page() -> HTMLResponse:
        return HTMLResponse(render_page(gather(loop)), headers={"cache-control": "no-store"})

    @app.get("/runs/{run_id}/report/", response_class=HTMLResponse)
    def report_page(run_id: str) -> HTMLResponse:
        path = _report_file(settings, run_id, "report.md")
        if path is None:
            raise HTTPException(404, f"run {run_id} has no report (`labelloop status` lists the runs)")
        return HTMLResponse(_report_html(run_id, path.read_text(encoding="utf-8")))

    @app.get("/runs/{run_id}/report/{name}")
    def report_file(run_id: str, name: str) -> FileResponse:
        path = _report_file(settings, run_id, name)
        if path is None:
            raise HTTPException(404, f"no file {name!r} in the report of run {run_id}")
        return FileResponse(path, media_type=_MEDIA_TYPES[path.suffix])

    return app


class DashboardServer:
    """The dashboard served by uvicorn in a daemon thread of the process that runs the loop
    (`up`, `schedule`, `dashboard`): it ends with that process."""

    def __init__(self, loop: Loop, *, host: str | None = None, port: int | None = None):
        settings: Settings = loop.settings
        self.loop = loop
        self.host = host or settings.service_host
        self.port = settings.dashboard_port if port is None else port
        self._server = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @classmethod
    def for_loop(cls, loop: Loop) -> "DashboardServer | None":
        """The configured dashboard, or None when LABELLOOP_DASHBOARD_PORT is 0 (off)."""
        return cls(loop) if loop.settings.dashboard_port else None

    def start(self, timeout_s: float = 30.0) -> "DashboardServer":
        import uvicorn

        from loop.stack import require_free_port

        if not self.port:
            raise ConfigError(f"the dashboard is off ({PORT_SETTING}=0): set {PORT_SETTING} to a port")
        require_free_port(self.host, self.port, PORT_SETTING)
        sock = socket.create_server((self.host, self.port))
        config = uvicorn.Config(create_app(self.loop), log_config=None, access_log=False, log_level="warning",
                                lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, name="dashboard",
                                        daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                sock.close()
                raise LabelloopError(f"the dashboard did not start on {self.url}; the log above says why")
            time.sleep(0.05)
        log.info("dashboard at %s", self.url)
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout_s)

    def __enter__(self) -> "DashboardServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
