"""The dashboard (issue 17, item 5) in a real headless browser (Debian's chromium; `make test`
installs it): served by `labelloop dashboard` for the trained, promoted digits workspace with
the real Label Studio up and the service down, behind the API's credentials; then a
workspace with no model, with Label Studio and the service both down, served by the
in-process server `labelloop up` runs. Screenshots go to test-output/ (or $TEST_OUTPUT_DIR)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import httpx
import lxml.html
import pytest

from kernel.errors import ConfigError
from loop.core import Loop
from loop.dashboard import DashboardServer, flatten, write_snapshot
from loop.stack import free_port
from tests.conftest import REPO, make_settings

OUTPUT = Path(os.environ.get("TEST_OUTPUT_DIR") or REPO / "test-output")
CLI = Path(sys.executable).parent / "labelloop"
API_KEY = "dashboard-key-1"
BACKEND_USER, BACKEND_PASSWORD = "backend", "backend-password"


def chromium(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    """Headless chromium (its DOM or screenshot after 3 s of virtual time)."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    assert binary, "chromium is not installed: `make test` installs it (apt-get install chromium)"
    return subprocess.run(
        [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--disable-background-networking", "--no-first-run", f"--user-data-dir={tmp / 'chromium'}",
         "--virtual-time-budget=3000", *args], capture_output=True, text=True, timeout=120)


def browse(url: str, tmp: Path, screenshot: Path | None = None) -> lxml.html.HtmlElement:
    """The page as the browser renders it; with `screenshot`, a picture of it saved there."""
    dom = chromium(tmp, "--dump-dom", url)
    assert dom.returncode == 0 and dom.stdout.strip(), dom.stderr[-2000:]
    if screenshot is not None:
        OUTPUT.mkdir(parents=True, exist_ok=True)
        shot = chromium(tmp, f"--screenshot={screenshot}", "--window-size=1280,2600", url)
        assert shot.returncode == 0 and screenshot.stat().st_size > 10_000, shot.stderr[-2000:]
    return lxml.html.fromstring(dom.stdout)


def text(page: lxml.html.HtmlElement, element_id: str) -> str:
    return " ".join(page.get_element_by_id(element_id).text_content().split())


def section(page: lxml.html.HtmlElement, element_id: str) -> list[tuple[str, str]] | str:
    """A key/value section's rows, or its text when it has none."""
    element = page.get_element_by_id(element_id)
    rows = [(tr[0].text_content(), tr[1].text_content()) for tr in element.iterfind(".//tr")]
    return rows or " ".join(element.text_content().split()).split(":")[0]


@pytest.fixture(scope="module")
def served(trained, label_studio, tmp_path_factory):
    """`labelloop dashboard` (a real process, its own uvicorn) over the trained workspace."""
    loop, run = trained
    tmp = tmp_path_factory.mktemp("dashboard")
    settings = make_settings(loop.settings.home, loop.settings.workspace, dashboard_port=free_port(),
                             label_studio_url=label_studio.url, label_studio_api_key=label_studio.token,
                             serving_api_key=API_KEY, serving_basic_auth_user=BACKEND_USER,
                             serving_basic_auth_password=BACKEND_PASSWORD)  # service_port: nothing listens
    url = f"http://127.0.0.1:{settings.dashboard_port}"
    with (tmp / "dashboard.log").open("wb") as log:
        process = subprocess.Popen([str(CLI), "dashboard"], env=settings.child_env(), cwd=tmp, stdout=log,
                                   stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, (tmp / "dashboard.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "labelloop dashboard did not start"
            try:
                answer = httpx.get(url, timeout=2)
            except httpx.HTTPError:
                time.sleep(0.2)
                continue
            assert answer.status_code == 401, answer.text  # up, and asking for credentials
            break
        yield settings, url, run, tmp
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0, (tmp / "dashboard.log").read_text()[-3000:]


def test_the_page_shows_what_status_json_gives(served, trained):
    settings, url, run, tmp = served
    loop, _ = trained
    shown = subprocess.run([str(CLI), "status", "--json"], env=settings.child_env(), cwd=tmp,
                           capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr[-2000:]
    status = json.loads(shown.stdout)
    assert status["pool_images"] == len(loop.workspace.pool_images()) > 0
    assert status["serving"]["tag"] == run.model_tag and status["runs"]

    # Basic auth in the URL, as a person logs in: any user name, the API key as the password.
    login = url.replace("http://", f"http://anyone:{quote(API_KEY, safe='')}@")
    page = browse(f"{login}/", tmp, screenshot=OUTPUT / "dashboard.png")
    assert text(page, "stat-labels") == str(status["labels"])
    assert text(page, "stat-training-labels") == str(status["training_labels"])
    assert text(page, "stat-evaluation-labels") == str(status["labels"] - status["training_labels"])
    assert text(page, "stat-pool-images") == str(status["pool_images"])
    assert text(page, "stat-pending") == str(status["labels_pending_training"])
    assert text(page, "stat-serving-tag") == status["serving"]["tag"]
    assert text(page, "stat-serving-accuracy") == f"{status['serving']['accuracy']:.4f}"
    for r in status["runs"]:
        row = page.get_element_by_id(f"run-{r['run_id']}")
        assert r["status"] in row.text_content() and f"{r['accuracy']:.4f}" in row.text_content()
    history = text(page, "history")
    assert all(p["tag"].split(":")[-1] in history for p in status["promotions"])
    assert page.get_element_by_id("learning-curve").find(".//{*}svg") is not None  # one point: the promotion
    # Label Studio answers, the service does not (nothing listens on its port): both said.
    assert text(page, "stat-label-studio") == "reachable"
    assert text(page, "stat-service") == "not reachable"
    assert "the service is not reachable" in text(page, "problems")
    assert "Label Studio" not in text(page, "problems")
    # What other parts report (capture and drift, label quality) is shown as they report it.
    assert section(page, "production") == (flatten(status["production"]) if status["production"] else "Not enabled")
    assert section(page, "label-quality") == (flatten(status["label_quality"]) if status["label_quality"]
                                              else "Not computed yet.")

    # The confusion matrix and the run's report are served beside the page, behind the same auth.
    auth = httpx.BasicAuth("anyone", API_KEY)
    image = httpx.get(f"{url}/{page.get_element_by_id('confusion').get('src')}", auth=auth)
    assert image.status_code == 200 and image.content.startswith(b"\x89PNG")
    (link,) = page.get_element_by_id(f"run-{run.run_id}").iterfind(".//a")
    report = browse(f"{login}/{link.get('href')}", tmp)
    assert "Evaluation" in report.text_content() and run.model_tag in report.text_content()
    for img in report.iterfind(".//img"):  # relative links resolve to the report's pictures
        assert httpx.get(f"{url}/{link.get('href')}{img.get('src')}", auth=auth).status_code == 200

    # The snapshot the demo writes: one file, pictures inline, report links relative to it.
    written = write_snapshot(Loop(settings), tmp / "elsewhere" / "dashboard.html")
    snapshot = lxml.html.fromstring(written.read_text())
    assert text(snapshot, "stat-labels") == str(status["labels"])
    assert snapshot.get_element_by_id("confusion").get("src").startswith("data:image/png;base64,")
    (href,) = [a.get("href") for a in snapshot.get_element_by_id(f"run-{run.run_id}").iterfind(".//a")]
    assert (written.parent / href).resolve() == settings.runs_dir / run.run_id / "report" / "report.md"


def test_the_page_needs_the_api_credentials(served, trained):
    settings, url, run, tmp = served
    refused = httpx.get(f"{url}/")
    assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Basic")
    assert "credentials" in refused.json()["error"] and API_KEY not in refused.text
    # A browser without credentials is asked for them (a headless one has no login box to show).
    refused_in_browser = chromium(tmp, "--dump-dom", f"{url}/")
    assert "ERR_INVALID_AUTH_CREDENTIALS" in refused_in_browser.stderr and "Training runs" not in refused_in_browser.stdout
    for auth, expected in [
        ({"Authorization": f"Bearer {API_KEY}"}, 200),
        ({"Authorization": "Bearer wrong"}, 401),
        (httpx.BasicAuth("whoever", API_KEY), 200),
        (httpx.BasicAuth(BACKEND_USER, BACKEND_PASSWORD), 200),
        (httpx.BasicAuth(BACKEND_USER, "wrong"), 401),
        (httpx.BasicAuth("someone-else", BACKEND_PASSWORD), 401),
        ({"Authorization": "Basic not-base64!"}, 401),
    ]:
        kwargs = {"headers": auth} if isinstance(auth, dict) else {"auth": auth}
        assert httpx.get(f"{url}/", **kwargs).status_code == expected, auth
    picture = f"{url}/runs/{run.run_id}/report/confusion.png"
    assert httpx.get(picture).status_code == 401
    key = {"Authorization": f"Bearer {API_KEY}"}
    assert httpx.get(picture, headers=key).status_code == 200
    # Only the report's own files: nothing else of the home (the run's job log, the state).
    assert (settings.runs_dir / run.run_id / "job.log").exists()
    for path in (f"runs/{run.run_id}/report/..%2Fjob.log", f"runs/{run.run_id}/job.log", "runs/..%2F/report/state.db",
                 "state.db", f"runs/{run.run_id}/report/.hidden.png", "runs/no-such-run/report/"):
        assert httpx.get(f"{url}/{path}", headers=key).status_code == 404, path


def test_no_model_and_label_studio_down_still_render(loop_with, tmp_path):
    """A workspace with no run yet, Label Studio and the service not running, no credentials
    configured (open, like the API): served by the in-process server `up` and `schedule` run."""
    loop, _ = loop_with([], label_studio_url=f"http://127.0.0.1:{free_port()}", dashboard_port=free_port())
    status = loop.status()
    with DashboardServer(loop) as server:
        assert httpx.get(f"{server.url}/").status_code == 200  # no credentials configured: open
        page = browse(f"{server.url}/", tmp_path, screenshot=OUTPUT / "dashboard-no-model.png")
        with pytest.raises(ConfigError, match="LABELLOOP_DASHBOARD_PORT"):
            DashboardServer(loop).start()  # the port is taken: an error naming the setting
    assert text(page, "stat-serving-tag").startswith("No model yet")
    assert text(page, "stat-label-studio") == "not reachable"
    assert text(page, "stat-service") == "not reachable"
    problems = text(page, "problems")
    assert f"Label Studio is not reachable at {loop.settings.label_studio_url}" in problems
    assert "the service is not reachable" in problems
    assert text(page, "runs") == "No training runs yet."
    assert text(page, "history") == "No promotion or rollback yet."
    assert text(page, "learning-curve").startswith("No promotion yet")
    assert text(page, "confusion").startswith("No confusion matrix: no model yet")
    assert text(page, "stat-labels") == str(status.labels) and text(page, "stat-pool-images") == str(status.pool_images)
    assert status.pool_images == len(loop.workspace.pool_images()) > 0
