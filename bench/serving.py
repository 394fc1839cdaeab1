"""Serving benchmark: a minimal reference server, the service's modes and shapes, side by side in one run.

    python -m bench.serving [--seconds 8] [--out bench/results/serving.json] [--no-backbone]
    python -m bench.serving --model backbone [--seconds 8] [--out bench/results/serving_backbone.json]

Trains (once, cached under bench/.work) the digits model through the real pipeline, then
serves that one model four ways, one after the other (never two at once: they would share
the CPUs): the reference (`bench/reference_server.py`: Starlette on uvicorn, one process,
the same model, preprocessing, multipart request and JSON answer; the practical floor of
per-request cost in Python here); the real service in its default shape (one process
holding the model) with `LABELLOOP_SERVING_BATCHING=true` and `false`; and the real service
in the model-workers shape (a front and one model worker behind BentoML's hop, batching on:
the shape every deployment had before issue 12.3). Each is driven with 1, 16, 64 and 256
concurrent closed-loop clients sending one image per `/classify` request. The default
shape with batching on also answers Label Studio `/predict` with one task per request at
1, 16 and 64 clients (compared with label-studio-ml-backend's figures quoted in issue 12)
and one `/predict` of 100 tasks (data-URI images, so it measures the service, not a file
server). Both batched shapes get one more run at 64 clients under py-spy (`profile`:
before = model workers, after = one process; not counted in the figures). Then the
forward pass alone in a fresh process: images/s of pure inference, what the modes'
images/s served are set against. Last, the backbone model's run (`--model backbone`
below) for its target, unless `--no-backbone`.

The load generator runs on the same machine and competes for its cores: the ratios are the
point, the absolute numbers are this machine's. Every failed request (an answer other than
200, a dropped connection, a `/predict` answer without a prediction) is counted beside the
throughput: `errors` and `error_kinds` per run, `errors` per mode, `errors_total` over all
runs. Each run also says where the CPU went (`cpu_ms_per_request` per process role, read
from /proc) and how much CPU other processes on the machine took meanwhile
(`foreign_cpu_s`: noise from anything else running).

`--model backbone` (issue 15): instead of the digits model, a MobileNetV3Small at 96x96
RGB, centre-cropped, frozen, trained (once, cached under bench/.work/backbone_serving)
through the real loop on generated colour images (`tests/helpers/colour_images`), from a
weights file the benchmark makes (random init: these machines cannot download ImageNet
weights; speed does not depend on the weights' values). The real service with batching on
and off, 64 clients, one colour PNG of about 100 px per `/classify` request: here the
forward pass dominates, so batching should pay; the ratio is `batched_over_unbatched`.
Writes bench/results/serving_backbone.json.

`--capture` (issue 17): production capture's cost on latency. The real service (batching
on) three ways, started side by side and measured in turns at 1, 16 and 64 clients (three
rounds, the order reversed every other round, so a machine that gets busier meanwhile
weighs on every mode alike): capture off (the default: drift monitoring on), capture on, and both
off (what the drift monitor costs). Every request sends an image no request sent before
(the workspace's digits, copies with a corner pixel nudged), so the writer really writes;
its own digits model (trained once, cached under bench/.work/capture: it has a drift
reference, so the drift monitor works). "On" is the worst case: every answered image is
chosen (confidence window [0, 1]) and no cap stops the writer, so each request hands its
image to the background writer, which hashes it, checks the store and writes a file. p50
and p99 side by side, errors beside them, and what the writer did (the service's capture
counters); written into the `capture` key of
bench/results/serving.json (the rest of the file is kept).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import aiohttp
import httpx
from PIL import Image

from kernel.settings import Settings
from loop.core import Loop
from loop.stack import ServiceServer, free_port
from loop.workspace import Cursor
from pipelines.labels import LabelEvent
from serving import PromotionRecord, read_promotion

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench" / ".work" / "serving"
CONCURRENCY = (1, 16, 64, 256)
PREDICT_CONCURRENCY = (1, 16, 64)
#: label-studio-ml-backend (its scaffold: one gunicorn worker, 8 threads, a vectorized
#: `predict`, the same Keras model), single-task `/predict` requests/s at 1/16/64 clients
#: with zero errors, measured on this machine and quoted in issue 12 (not re-run here).
LS_ML_BACKEND_PREDICT_RPS = {1: 84, 16: 137, 64: 117}

#: `--model backbone`: its own folder (not under WORK: `_worker_pids` finds a service by it).
BACKBONE_WORK = ROOT / "bench" / ".work" / "backbone_serving"
BACKBONE_SIZE, BACKBONE_CLIENTS = 96, 64
BACKBONE_IMAGES, BACKBONE_LABELS_PER_CLASS = 150, 20
#: Issue 12's goal for the backbone (its `targets_of` entry): batching pays at least this much.
BACKBONE_TARGET_RATIO = 4.0


def trained_model(work: Path = WORK) -> tuple[Settings, PromotionRecord]:
    settings = Settings.load(home=work / "home", workspace=work / "workspace")
    record = read_promotion(settings.promotion_file)
    if record is None:
        print("training the digits model once (cached in bench/.work) ...", flush=True)
        loop = Loop(settings)
        if not (settings.workspace / ".dvc").exists():
            loop.init(starter="digits")
        run = loop.train(trigger="bench", rescore=False)
        assert run is not None and run.status == "promoted", run
        record = read_promotion(settings.promotion_file)
    return settings, record


def trained_backbone_model() -> tuple[Settings, PromotionRecord, Path]:
    """A frozen MobileNetV3Small (96 px, weights from a file made here) trained and promoted by
    the real loop on generated colour photos, as tests/e2e/test_photos.py does; cached in
    bench/.work/backbone_serving. Returns the settings, the promotion and the photos folder."""
    from tests.helpers.colour_images import PATTERNS, write_colour_images

    settings = Settings.load(home=BACKBONE_WORK / "home", workspace=BACKBONE_WORK / "workspace")
    photos = BACKBONE_WORK / "photos"
    record = read_promotion(settings.promotion_file)
    if record is None:
        import shutil

        from pipelines.models import build_backbone, resolve_weights
        from pipelines.params import Params

        print("training the backbone model once (cached in bench/.work/backbone_serving) ...", flush=True)
        shutil.rmtree(BACKBONE_WORK, ignore_errors=True)  # a half-built one from a failed run
        truth = write_colour_images(photos, BACKBONE_IMAGES, seed=15, sides=(70, 120))
        weights = BACKBONE_WORK / "mobilenet_v3_small_96.weights.h5"
        params = Params(data={"classes": list(PATTERNS), "image_size": BACKBONE_SIZE, "channels": 3},
                        model={"kind": "backbone", "backbone": "MobileNetV3Small", "weights": "none"})
        build_backbone(params, resolve_weights("none")).save_weights(str(weights))
        loop = Loop(settings)
        report = loop.init_from_images(photos, list(PATTERNS), model="backbone", image_size=BACKBONE_SIZE,
                                       weights=str(weights))
        print(f"  {report.model}", flush=True)
        # Labels for some pool images of each class, as a collect would commit them.
        pool = {name: truth[row.source] for name, row in loop.workspace.pool_index().items() if row.split == "pool"}
        chosen = [name for pattern in PATTERNS
                  for name in sorted(n for n, p in pool.items() if p == pattern)[:BACKBONE_LABELS_PER_CLASS]]
        stamp = "2026-01-01T00:00:00.000000Z"
        events = [LabelEvent(image=name, label=pool[name], task_id=i, annotation_id=i, annotator="bench",
                             annotation_updated_at=stamp) for i, name in enumerate(chosen, 1)]
        loop.workspace.commit_labels(events, Cursor(batch=1, updated_at=stamp))
        run = loop.train(trigger="bench", rescore=False)
        assert run is not None and run.status == "promoted", run
        record = read_promotion(settings.promotion_file)
    return settings, record, photos


def request_photo(photos: Path, side: int = 100) -> Path:
    """The generated PNG whose size is nearest `side` x `side` (the request body)."""
    def distance(path: Path) -> int:
        with Image.open(path) as image:
            return abs(image.width - side) + abs(image.height - side)
    return min(sorted(photos.rglob("*.png")), key=distance)


# --- load -----------------------------------------------------------------------------------
#: One request: (path, body, headers) made fresh per request (an aiohttp form is single-use).
Request = Callable[[], tuple[str, object, dict]]
#: Checks a 200 answer's body: None when it is what was asked, else the error kind.
Check = Callable[[bytes], str | None]


def classify_request(image: bytes | list[bytes]) -> Request:
    """One image per request: always the same one, or each of a list in turn."""
    images = [image] if isinstance(image, bytes) else image
    turn = iter(range(10**12))

    def make() -> tuple[str, object, dict]:
        form = aiohttp.FormData()
        form.add_field("images", images[next(turn) % len(images)], filename="d.png", content_type="image/png")
        return "/classify", form, {}
    return make


def predict_request(image: bytes) -> tuple[Request, Check]:
    """Label Studio's `/predict` with one task (a data-URI image), as Label Studio sends it
    when an annotator opens a task; an answer without a prediction for it is an error."""
    uri = "data:image/png;base64," + base64.b64encode(image).decode()
    task_id = iter(range(10**9))

    def make() -> tuple[str, object, dict]:
        body = json.dumps({"tasks": [{"id": next(task_id), "data": {"image": uri}}]}).encode()
        return "/predict", body, {"Content-Type": "application/json"}

    def check(body: bytes) -> str | None:
        try:
            results = json.loads(body)["results"]
        except (ValueError, KeyError, TypeError):
            return "bad answer"
        return None if len(results) == 1 and results[0].get("result") else "empty prediction"
    return make, check


async def _load(url: str, request: Request, clients: int, seconds: float, check: Check | None = None) -> dict:
    """`clients` closed-loop clients, one request each at a time, for `seconds`. aiohttp, not
    httpx: the load generator shares the 2 cores with the server, so it must be lean."""
    latencies: list[float] = []
    errors: Counter[str] = Counter()  # by HTTP status, exception type or check
    deadline = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(url, connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as http:

        async def client() -> None:
            while time.perf_counter() < deadline:
                path, body, headers = request()
                started = time.perf_counter()
                try:
                    async with http.post(path, data=body, headers=headers) as r:
                        content = await r.read()
                        failure = f"HTTP {r.status}" if r.status != 200 else (check(content) if check else None)
                except (aiohttp.ClientError, asyncio.TimeoutError) as exc:  # a dropped connection is an error too
                    failure = type(exc).__name__
                if failure is None:
                    latencies.append(time.perf_counter() - started)
                else:
                    errors[failure] += 1

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "clients": clients,
        "requests": len(latencies),
        "errors": sum(errors.values()),
        "error_kinds": dict(errors),
        "throughput_rps": round(len(latencies) / elapsed, 1),
        "p50_ms": round(1000 * latencies[len(latencies) // 2], 2) if latencies else None,
        "p99_ms": round(1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))], 2) if latencies else None,
    }


# --- where the CPU went -----------------------------------------------------------------------
def _worker_pids(work: Path = WORK) -> dict[str, list[int]]:
    """The service's processes by role, from their command lines (Linux /proc); `work`:
    the benchmark's folder, in their environment (their home is under it)."""
    roles: dict[str, list[int]] = {"front": [], "classifier": []}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
            if b"_bentoml_impl.worker.service" not in args or str(work).encode() not in (proc / "environ").read_bytes():
                continue
        except OSError:
            continue
        name = args[args.index(b"--service-name") + 1].decode() if b"--service-name" in args else ""
        roles["classifier" if name.endswith("classifier") else "front"].append(int(proc.name))
    return roles


def _cpu_s(pids: list[int]) -> float:
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime + stime
        except OSError:
            pass
    return total / ticks


def _machine_busy_s() -> float:
    """CPU seconds the whole machine has spent busy (all processes), from /proc/stat."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, Path("/proc/stat").read_text().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _profiled_load(url: str, request: Request, clients: int, seconds: float, pids: dict[str, list[int]],
                   check: Check | None = None) -> dict:
    """The load run plus where the CPU went: ms of CPU per request in each process role, and
    the CPU seconds other processes took meanwhile (`foreign_cpu_s`: a noisy run)."""
    before = {role: _cpu_s(p) for role, p in pids.items()}
    own, machine = time.process_time(), _machine_busy_s()
    run = asyncio.run(_load(url, request, clients, seconds, check))
    spent = {role: _cpu_s(p) - before[role] for role, p in pids.items()}
    spent["load_generator"] = time.process_time() - own
    n = max(run["requests"] + run["errors"], 1)
    run["cpu_ms_per_request"] = {role: round(1000 * cpu / n, 2) for role, cpu in spent.items()}
    run["foreign_cpu_s"] = round(max(_machine_busy_s() - machine - sum(spent.values()), 0.0), 1)
    return run


def _print_run(mode: str, run: dict) -> None:
    cpu = ", ".join(f"{role} {ms}" for role, ms in run["cpu_ms_per_request"].items())
    p50, p99 = run["p50_ms"] or float("nan"), run["p99_ms"] or float("nan")
    print(f"  {mode:<14} clients={run['clients']:>3}: {run['throughput_rps']:>7.1f} req/s  p50 {p50:>7.2f} ms"
          f"  p99 {p99:>7.2f} ms  ({run['requests']} ok, {run['errors']} errors {run['error_kinds'] or ''})"
          f"  CPU ms/request: {cpu}; other processes {run['foreign_cpu_s']} s", flush=True)


# --- where the CPU went, by function (py-spy) --------------------------------------------------
PROFILE_CLIENTS, PROFILE_RATE_HZ = 64, 100
#: Leaf frames' libraries, grouped under what they do for a request.
LIBRARY_ROLES = {
    "tensorflow": "model (tensorflow/keras)", "keras": "model (tensorflow/keras)", "numpy": "numpy",
    "PIL": "image decode (PIL)", "multipart": "multipart parsing", "python_multipart": "multipart parsing",
    "starlette": "HTTP framework (starlette/fastapi)", "fastapi": "HTTP framework (starlette/fastapi)",
    "uvicorn": "HTTP server (uvicorn/h11/httptools)", "h11": "HTTP server (uvicorn/h11/httptools)",
    "httptools": "HTTP server (uvicorn/h11/httptools)", "aiohttp": "the hop (aiohttp, pickle)",
    "pickle": "the hop (aiohttp, pickle)", "pydantic": "pydantic", "pydantic_core": "pydantic",
    "bentoml": "bentoml", "_bentoml_impl": "bentoml", "_bentoml_sdk": "bentoml",
    "asyncio": "asyncio", "serving": "labelloop serving", "pipelines": "labelloop pipelines",
    "logging": "logging", "prometheus_client": "metrics (prometheus)", "opentelemetry": "tracing (opentelemetry)",
    "tempfile": "multipart parsing", "json": "json", "threading": "threads (handoffs)",
    "concurrent": "threads (handoffs)", "queue": "threads (handoffs)", "selectors": "asyncio",
}


def _library(frame: str) -> str:
    """`function (/full/path/to/module.py:line)` -> what the module's top-level package does."""
    path = frame.rpartition(" (")[2].rstrip(")").rsplit(":", 1)[0]
    parts = Path(path).parts
    if "site-packages" in parts:
        package = parts[parts.index("site-packages") + 1]
    elif path.startswith(str(ROOT)):
        package = Path(path).relative_to(ROOT).parts[0]
    else:  # the standard library (.../lib/python3.11/<module or package>), or frozen
        lib = next((i for i, p in enumerate(parts) if p.startswith("python3")), None)
        package = parts[lib + 1] if lib is not None and lib + 1 < len(parts) else path
    package = package.removesuffix(".py")
    return LIBRARY_ROLES.get(package, package or "?")


def _short(frame: str) -> str:
    """`function (module.py)`: no line number, no directories."""
    name, _, where = frame.partition(" (")
    return f"{name} ({Path(where.rstrip(')').rsplit(':', 1)[0]).name})"


def profile_summary(raw: Path, top: int = 12) -> dict:
    """py-spy's raw (collapsed) stacks -> where the process was busy: the share of samples by
    the library of the running (leaf) frame, and the functions most often running."""
    samples, by_library, running = 0, Counter(), Counter()
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n, leaf = int(count), stack.split(";")[-1]
        samples += n
        by_library[_library(leaf)] += n
        running[_short(leaf)] += n
    share = lambda c: {k: round(v / samples, 3) for k, v in c.most_common(top)} if samples else {}  # noqa: E731
    return {"samples": samples, "by_library": share(by_library), "running": share(running)}


def _py_spy_run(url: str, request: Request, clients: int, seconds: float, pids: dict[str, list[int]],
                out: Path) -> dict:
    """A load run with py-spy sampling each service process at 100 Hz, only the thread holding
    the interpreter lock (`--gil`): where the Python-level CPU goes. py-spy's idle detection
    does not work on these VMs (threads blocked in `Condition.wait` counted as running), and
    the forward pass itself runs outside the lock (its CPU is in `cpu_ms_per_request`)."""
    out.mkdir(parents=True, exist_ok=True)
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if spy is None:
        return {"error": "py-spy is not installed (it is in the bench extra: make bench installs it)"}
    recorders = {}
    for role, role_pids in pids.items():
        for i, pid in enumerate(role_pids):
            name = role if i == 0 else f"{role}-{i}"
            recorders[name] = (out / f"{name}.txt", subprocess.Popen(
                [spy, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", str(PROFILE_RATE_HZ), "--gil", "--full-filenames",
                 "--format", "raw", "--output", str(out / f"{name}.txt")],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    time.sleep(0.5)  # attached before the load starts
    run = asyncio.run(_load(url, request, clients, seconds))
    processes = {}
    for name, (path, proc) in recorders.items():
        _, err = proc.communicate(timeout=60)
        if path.exists():
            summary = profile_summary(path)
            # The share of the run's wall time some thread of it held the interpreter lock.
            processes[name] = {"gil_held_share": round(summary["samples"] / (PROFILE_RATE_HZ * int(seconds)), 3),
                               **summary}
        else:
            processes[name] = {"error": err.decode(errors="replace").strip()[-300:]}
    return {"clients": clients, "seconds": seconds, "throughput_rps_while_profiled": run["throughput_rps"],
            "errors": run["errors"], "processes": processes}


# --- the modes --------------------------------------------------------------------------------
def _predict_100(url: str, image: bytes, repeats: int = 5) -> dict:
    uri = "data:image/png;base64," + base64.b64encode(image).decode()
    tasks = [{"id": i, "data": {"image": uri}} for i in range(100)]
    times, errors = [], 0
    for _ in range(repeats):
        started = time.perf_counter()
        try:
            r = httpx.post(f"{url}/predict", json={"tasks": tasks}, timeout=120)
            ok = r.status_code == 200 and len(r.json()["results"]) == 100
        except httpx.HTTPError:
            ok = False
        if ok:
            times.append(time.perf_counter() - started)
        else:
            errors += 1
    return {"tasks": 100, "repeats": repeats, "errors": errors,
            "median_s": round(statistics.median(times), 3) if times else None,
            "max_s": round(max(times), 3) if times else None}


def _classify_levels(mode: str, url: str, image: bytes | list[bytes], seconds: float, pids: dict[str, list[int]],
                     levels: tuple[int, ...] = CONCURRENCY) -> list[dict]:
    request = classify_request(image)  # one for all levels: a list of images goes on where it stopped
    asyncio.run(_load(url, request, 16, 2.0))  # warm-up: graph tracing, connections
    runs = []
    for clients in levels:
        runs.append(_profiled_load(url, request, clients, seconds, pids))
        _print_run(mode, runs[-1])
    return runs


def measure_reference(settings: Settings, tag: str, image: bytes, seconds: float) -> dict:
    port = free_port()
    log = WORK / "reference.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "bench.reference_server", "--tag", tag, "--port", str(port),
             "--strategy", settings.serving.query_strategy],
            env=settings.child_env(), cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"the reference server exited ({server.returncode}); see {log}")
            try:
                if httpx.get(f"{url}/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the reference server did not start in 180 s; see {log}")
            time.sleep(0.5)
        runs = _classify_levels("reference", url, image, seconds, {"reference": [server.pid]})
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    return {"mode": "reference", "errors": sum(r["errors"] for r in runs), "runs": runs}


def measure(settings: Settings, batching: bool, image: bytes, seconds: float, *, work: Path = WORK,
            levels: tuple[int, ...] = CONCURRENCY, predict_too: bool = True, topology: str = "one_process",
            profile: bool = False) -> dict:
    """The real service (`bentoml serve`) on the promoted model with batching on or off, in
    `topology` (`one_process`, the default; `model_workers`: a front and one model worker
    behind BentoML's hop, the shape before issue 12.3): /classify at each of `levels` clients;
    with batching on and `predict_too`, Label Studio's /predict too; `profile`: one more run
    at 64 clients under py-spy (not counted in the figures)."""
    home = work / f"serve-{topology}-{'batched' if batching else 'unbatched'}"
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "bentoml").exists():
        (home / "bentoml").symlink_to(settings.bentoml_home)
    (home / "promotion.json").write_text(settings.promotion_file.read_text())
    serve = settings.model_copy(update={"home": home, "service_port": free_port(), "serving_batching": batching,
                                        "serving_topology": topology, "serving_workers": 1})
    server = ServiceServer(serve).start(timeout_s=240)
    mode = f"batching {'on' if batching else 'off'}" + ("" if topology == "one_process" else f", {topology}")
    profiled = None
    try:
        while httpx.get(f"{server.url}/readyz").status_code != 200:
            time.sleep(0.5)
        pids = _worker_pids(work)
        runs = _classify_levels(mode, server.url, image, seconds, pids, levels)
        if profile:
            profiled = _py_spy_run(server.url, classify_request(image), PROFILE_CLIENTS, seconds, pids,
                                   home / "py-spy")
            print(f"  {mode}: py-spy at {PROFILE_CLIENTS} clients: " + "; ".join(
                f"{role} {', '.join(f'{k} {v:.0%}' for k, v in list(p['by_library'].items())[:5])}"
                for role, p in profiled["processes"].items()), flush=True)
        predict_runs, predict = [], None
        if batching and predict_too:  # /predict is one unbatched forward pass per request: the mode doesn't matter
            make, check = predict_request(image)
            asyncio.run(_load(server.url, make, 16, 2.0, check))  # warm-up
            for clients in PREDICT_CONCURRENCY:
                predict_runs.append(_profiled_load(server.url, make, clients, seconds, pids, check))
                _print_run("/predict x1", predict_runs[-1])
            predict = _predict_100(server.url, image)
    finally:
        server.stop()
    errors = (sum(r["errors"] for r in runs + predict_runs) + (predict["errors"] if predict else 0)
              + (profiled or {}).get("errors", 0))
    return {"mode": mode, "batching": batching, "topology": topology, "errors": errors, "runs": runs,
            "predict_single_task": predict_runs or None, "predict_100": predict, "profile": profiled}


#: `--capture`: its own model (trained once by the current pipeline, so it has a drift reference).
CAPTURE_WORK = ROOT / "bench" / ".work" / "capture"
CAPTURE_CLIENTS = (1, 16, 64)
#: Different images, more than a run sends (3 modes x 3 loads x 3 rounds, ~200 req/s at most here): none repeats.
CAPTURE_IMAGES = 40_000
#: Capture "on" in its worst case: every answered image chosen, no cap reached.
CAPTURE_ON = {"capture_enabled": True, "capture_min_confidence": 0.0, "capture_max_confidence": 1.0,
              "capture_max_per_hour": 10**9, "capture_max_per_day": 10**9, "capture_max_pending": 10**9}
#: The modes, one after the other: the default (capture off, drift monitoring on), capture on,
#: and neither (what the drift monitor itself costs).
CAPTURE_MODES = {"off": {}, "on": CAPTURE_ON, "drift_off": {"drift_enabled": False}}


def measure_capture(settings: Settings, images: list[bytes], seconds: float, repeats: int = 3) -> dict:
    """The real service (batching on) in each of `CAPTURE_MODES`, all three started, then
    measured in turns at each load (`repeats` rounds, the order reversed every other round,
    so a machine that gets busier or quieter meanwhile weighs on every mode alike); each
    request one of `images` in turn (none repeats)."""
    from serving.client import PredictionClient

    servers: dict[str, tuple[Settings, ServiceServer]] = {}
    runs: dict[str, list[dict]] = {mode: [] for mode in CAPTURE_MODES}
    counters: dict = {}
    drift_reference = None
    request = classify_request(images)  # shared: every request of every mode sends a new image
    try:
        for mode, overrides in CAPTURE_MODES.items():
            home = CAPTURE_WORK / f"mode-{mode}"
            shutil.rmtree(home, ignore_errors=True)
            # The model store is shared, BentoML's home is not: it holds the Prometheus
            # multiprocess files, which each starting server wipes.
            (home / "bentoml").mkdir(parents=True)
            (home / "bentoml" / "models").symlink_to(settings.bentoml_home / "models")
            (home / "promotion.json").write_text(settings.promotion_file.read_text())
            update = {"home": home, "service_port": free_port(), "serving_batching": True, "capture_enabled": False,
                      "drift_enabled": True}
            serve = settings.model_copy(update={**update, **overrides})
            servers[mode] = (serve, ServiceServer(serve).start(timeout_s=240))
        for mode, (serve, server) in servers.items():
            while httpx.get(f"{server.url}/readyz").status_code != 200:
                time.sleep(0.5)
            asyncio.run(_load(server.url, request, 16, 2.0))  # warm-up: graph tracing, connections
        pids = {mode: _worker_pids(serve.home) for mode, (serve, _) in servers.items()}
        for clients in CAPTURE_CLIENTS:
            for round_ in range(repeats):
                order = list(CAPTURE_MODES) if round_ % 2 == 0 else list(reversed(CAPTURE_MODES))
                for mode in order:
                    run = _profiled_load(servers[mode][1].url, request, clients, seconds, pids[mode])
                    runs[mode].append(run)
                    _print_run(f"capture {mode}", run)
        time.sleep(2.0)  # the writer finishes what it was handed; the last drift checks are published
        for mode, (serve, _) in servers.items():
            client = PredictionClient.for_settings(serve.serving)
            metrics = client.production_metrics()
            client.close()
            if mode == "on" and metrics:
                counters = {"captured": metrics.captured, "skipped": metrics.skipped, "failed": metrics.failed,
                            "files_written": len(list((serve.home / "capture").glob("*.png")))}
            if mode == "off" and metrics:
                drift_reference = metrics.drift_reference_images
    finally:
        for _, server in servers.values():
            server.stop()
    rows = []
    for clients in CAPTURE_CLIENTS:
        row: dict = {"clients": clients}
        for mode in CAPTURE_MODES:
            mine = [r for r in runs[mode] if r["clients"] == clients]
            row[mode] = {
                "throughput_rps": round(statistics.mean(r["throughput_rps"] for r in mine), 1),
                "errors": sum(r["errors"] for r in mine),
                "p50_ms": round(statistics.mean(r["p50_ms"] for r in mine), 2) if all(r["p50_ms"] for r in mine) else None,
                "p99_ms": round(statistics.mean(r["p99_ms"] for r in mine), 2) if all(r["p99_ms"] for r in mine) else None,
                "cpu_ms_per_request": {role: round(statistics.mean(r["cpu_ms_per_request"][role] for r in mine), 2)
                                       for role in mine[0]["cpu_ms_per_request"]},
                "foreign_cpu_s": [r["foreign_cpu_s"] for r in mine],
            }
        rows.append(row)
    at16 = _at(rows, 16)
    return {
        "what": "the real service, batching on: capture off (the default: drift monitoring on), capture on (every "
                "answered image chosen, no cap: the worst case) and both off; one different image per /classify "
                f"request; each load {repeats} rounds, modes in turns; p50/p99/req/s are means over the rounds",
        "seconds_per_level": seconds, "rounds": repeats, "images": len(images),
        "clients": 16, "p50_ms_off": at16["off"]["p50_ms"], "p50_ms_on": at16["on"]["p50_ms"],
        "p99_ms_off": at16["off"]["p99_ms"], "p99_ms_on": at16["on"]["p99_ms"],
        "errors_off": sum(r["off"]["errors"] for r in rows), "errors_on": sum(r["on"]["errors"] for r in rows),
        "p50_on_over_off": _ratio(at16["on"]["p50_ms"], at16["off"]["p50_ms"]),
        "p50_ms_drift_off": at16["drift_off"]["p50_ms"], "p99_ms_drift_off": at16["drift_off"]["p99_ms"],
        "errors_drift_off": sum(r["drift_off"]["errors"] for r in rows),
        "drift_reference_images": drift_reference, "rows": rows, "writer": counters, "runs": runs,
    }


def _distinct_pngs(paths: list[Path], n: int) -> list[bytes]:
    """`n` different PNGs from the workspace's digits (each copy after the first has its
    corner pixel nudged), so that every request of a run hands the writer a new image."""
    import io

    out = []
    for i in range(n):
        with Image.open(paths[i % len(paths)]) as image:
            copy = image.convert("L")
        if i >= len(paths):
            copy.putpixel((0, 0), (copy.getpixel((0, 0)) + i // len(paths)) % 256)
        buf = io.BytesIO()
        copy.save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def main_capture(seconds: float, out: Path) -> None:
    """`--capture`: capture off vs on, into the `capture` key of `out` (the rest of it kept)."""
    started = time.perf_counter()
    settings, record = trained_model(CAPTURE_WORK)
    images = _distinct_pngs(sorted((settings.workspace / "data" / "images").rglob("*.png")), CAPTURE_IMAGES)
    load_before = os.getloadavg()
    print(f"model {record.tag}; capture off vs on; {seconds:.0f} s per level; {len(images)} images in turn; "
          f"load average {load_before[0]:.2f}", flush=True)
    capture = measure_capture(settings, images, seconds)
    capture["loadavg_1m_before"] = round(load_before[0], 2)
    capture["seconds_this_run"] = round(time.perf_counter() - started, 1)
    result = json.loads(out.read_text()) if out.exists() else {}
    result["capture"] = capture
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print("\ncapture off | on | off, drift monitor off: req/s · errors (p50 / p99 ms)")
    for r in capture["rows"]:
        cells = [f"{r[m]['throughput_rps']:.0f} · {r[m]['errors']} ({r[m]['p50_ms']} / {r[m]['p99_ms']})"
                 for m in CAPTURE_MODES]
        print(f"  {r['clients']:>3} clients: " + " | ".join(cells))
    print(f"writer: {capture['writer']}")
    print(f"wrote the capture key of {out.relative_to(ROOT)} ({capture['seconds_this_run']:.0f} s)")


MODEL_TIMING = """
import json, time, numpy as np
from serving.inference import load_model
model = load_model({tag!r})
channels = model.spec.channels if model.spec else 1
out = {{}}
for n in (1, 64):
    x = np.random.default_rng(0).random((n, model.image_size, model.image_size, channels), dtype=np.float32)
    for _ in range(5):
        model.keras_model.predict_on_batch(x)
    started = time.perf_counter()
    for _ in range(50):
        model.keras_model.predict_on_batch(x)
    out[n] = round(1000 * (time.perf_counter() - started) / 50, 2)
print(json.dumps(out))
"""


def model_forward_ms(settings: Settings, tag: str) -> dict:
    """The forward pass alone (what batching amortises), in a fresh process."""
    done = subprocess.run([sys.executable, "-c", MODEL_TIMING.format(tag=tag)], env=settings.child_env(),
                          capture_output=True, text=True, check=True, cwd=ROOT)
    timing = json.loads(done.stdout.strip().splitlines()[-1])
    return {"batch_1_ms": timing["1"], "batch_64_ms": timing["64"],
            "images_per_s_batch_1": round(1000 / timing["1"]), "images_per_s_batch_64": round(64_000 / timing["64"])}


# --- the report -------------------------------------------------------------------------------
def _at(runs: list[dict], clients: int) -> dict:
    return next(r for r in runs if r["clients"] == clients)


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def side_by_side(reference: dict, batched: dict, unbatched: dict, forward: dict, model_workers: dict) -> list[dict]:
    """Every mode at every load, plus images/s served against pure inference (one image per
    request, so images/s = requests/s; the best pure inference is the batch of 64)."""
    rows = []
    for clients in CONCURRENCY:
        row: dict = {"clients": clients}
        for name, mode in (("reference", reference), ("batched", batched), ("unbatched", unbatched),
                           ("model_workers_batched", model_workers)):
            run = _at(mode["runs"], clients)
            row[name] = {k: run[k] for k in ("throughput_rps", "errors", "p50_ms", "p99_ms")}
            row[name]["of_pure_inference"] = round(run["throughput_rps"] / forward["images_per_s_batch_64"], 4)
        row["batched_over_reference"] = _ratio(row["batched"]["throughput_rps"], row["reference"]["throughput_rps"])
        row["unbatched_over_reference"] = _ratio(row["unbatched"]["throughput_rps"], row["reference"]["throughput_rps"])
        row["batched_over_unbatched"] = _ratio(row["batched"]["throughput_rps"], row["unbatched"]["throughput_rps"])
        row["model_workers_over_reference"] = _ratio(row["model_workers_batched"]["throughput_rps"],
                                                     row["reference"]["throughput_rps"])
        rows.append(row)
    return rows


def targets_of(rows: list[dict], batched: dict, unbatched: dict, backbone: dict | None) -> dict:
    """Issue 12's goals, each {"target", "reached", "met"}: `reached` is the measured value
    (the default configuration: one process, batching on), other modes beside it."""
    at16, at64 = _at(rows, 16), _at(rows, 64)
    service_errors = batched["errors"] + unbatched["errors"]
    p99_worse = [r["clients"] for r in rows
                 if r["batched"]["p99_ms"] is None or r["unbatched"]["p99_ms"] is None
                 or r["batched"]["p99_ms"] > r["unbatched"]["p99_ms"]]
    predict = {r["clients"]: r for r in batched["predict_single_task"]}
    predict_ratios = {c: _ratio(predict[c]["throughput_rps"], rps) for c, rps in LS_ML_BACKEND_PREDICT_RPS.items()}
    predict_errors = sum(r["errors"] for r in predict.values())
    worst_predict = min(v or 0 for v in predict_ratios.values())
    p100 = batched["predict_100"]["median_s"]
    return {
        "throughput_vs_reference_at_64_clients": {
            "target": ">= 0.7", "reached": at64["batched_over_reference"],
            "met": (at64["batched_over_reference"] or 0) >= 0.7, "batching_off": at64["unbatched_over_reference"]},
        "single_image_p99_ms_at_16_clients": {
            "target": "<= 100", "reached": at16["batched"]["p99_ms"],
            "met": at16["batched"]["p99_ms"] is not None and at16["batched"]["p99_ms"] <= 100,
            "batching_off": at16["unbatched"]["p99_ms"], "reference": at16["reference"]["p99_ms"]},
        "batched_over_unbatched_backbone_at_64_clients": (
            {**backbone["target"], "what": "the backbone run of this benchmark (serving_backbone.json)"}
            if backbone else {"target": f">= {BACKBONE_TARGET_RATIO:g}", "reached": None, "met": None,
                              "why": "not run (--no-backbone)"}),
        "zero_errors_service": {
            "target": "0 at 1/16/64/256 clients, batching on and off, and /predict", "reached": service_errors,
            "met": service_errors == 0},
        "batching_p99_never_worse": {
            "target": "batched p99 <= unbatched p99 at every load", "reached": {"worse_at_clients": p99_worse},
            "met": not p99_worse},
        "predict_single_task_vs_label_studio_ml_backend": {
            "target": ">= 2 at 1/16/64 clients, zero errors", "reached": worst_predict,
            "met": worst_predict >= 2 and predict_errors == 0,
            "ratio_per_clients": predict_ratios, "errors": predict_errors,
            "label_studio_ml_backend_rps": LS_ML_BACKEND_PREDICT_RPS},
        "predict_100_tasks_s": {"target": "<= 0.13", "reached": p100, "met": p100 is not None and p100 <= 0.13},
    }


def main_backbone(seconds: float, out: Path) -> dict:
    """`--model backbone`: batching on and off at 64 clients, the ratio of their throughputs."""
    started = time.perf_counter()
    settings, record, photos = trained_backbone_model()
    photo = request_photo(photos)
    image = photo.read_bytes()
    with Image.open(photo) as shown:
        size = shown.size
    load_before = os.getloadavg()
    print(f"model {record.tag}; {seconds:.0f} s at {BACKBONE_CLIENTS} clients; one {size[0]}x{size[1]} colour PNG "
          f"({len(image)} bytes) per request; load average {load_before[0]:.2f}", flush=True)
    levels = (BACKBONE_CLIENTS,)
    batched = measure(settings, True, image, seconds, work=BACKBONE_WORK, levels=levels, predict_too=False)
    unbatched = measure(settings, False, image, seconds, work=BACKBONE_WORK, levels=levels, predict_too=False)
    forward = model_forward_ms(settings, record.tag)
    print(f"model forward pass alone: {forward['batch_1_ms']} ms for 1 image, {forward['batch_64_ms']} ms for 64"
          f" ({forward['images_per_s_batch_64']} images/s)", flush=True)
    on, off = _at(batched["runs"], BACKBONE_CLIENTS), _at(unbatched["runs"], BACKBONE_CLIENTS)
    ratio = _ratio(on["throughput_rps"], off["throughput_rps"])
    errors_total = batched["errors"] + unbatched["errors"]
    result = {
        "model": record.tag, "clients": BACKBONE_CLIENTS, "seconds_per_level": seconds,
        "batched_rps": on["throughput_rps"], "unbatched_rps": off["throughput_rps"], "batched_over_unbatched": ratio,
        "batched_p50_ms": on["p50_ms"], "batched_p99_ms": on["p99_ms"],
        "unbatched_p50_ms": off["p50_ms"], "unbatched_p99_ms": off["p99_ms"],
        "errors_total": errors_total,
        "target": {"what": "issue 12's batched_over_unbatched_backbone_at_64_clients",
                   "target": f">= {BACKBONE_TARGET_RATIO:g}", "reached": ratio,
                   "met": ratio is not None and ratio >= BACKBONE_TARGET_RATIO and errors_total == 0},
        "model_forward": forward,
        "of_pure_inference": {"batched": _ratio(on["throughput_rps"], forward["images_per_s_batch_64"]),
                              "unbatched": _ratio(off["throughput_rps"], forward["images_per_s_batch_64"])},
        "request": {"endpoint": "/classify", "images_per_request": 1, "format": "PNG", "mode": "RGB",
                    "width": size[0], "height": size[1], "bytes": len(image)},
        "config": {"backbone": "MobileNetV3Small", "image_size": BACKBONE_SIZE, "resize": "center_crop",
                   "fine_tune_layers": 0, "pool_images": BACKBONE_IMAGES,
                   "labels": BACKBONE_LABELS_PER_CLASS * 3, "max_batch_size": settings.serving_max_batch_size,
                   "max_latency_ms": settings.serving_max_latency_ms},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "loadavg_1m_before": round(load_before[0], 2), "loadavg_1m_after": round(os.getloadavg()[0], 2)},
        "note": ("backbone weights: a file made by this benchmark (MobileNetV3Small, random init): these machines "
                 "cannot download ImageNet weights; the forward pass costs the same whatever the weights' values. "
                 "The load generator shares the CPUs with the service: ratios are the point."),
        "batched": batched, "unbatched": unbatched,
        "seconds_this_run": round(time.perf_counter() - started, 1),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{BACKBONE_CLIENTS} clients, req/s (p50 / p99 ms): batching on {on['throughput_rps']} "
          f"({on['p50_ms']} / {on['p99_ms']}), off {off['throughput_rps']} ({off['p50_ms']} / {off['p99_ms']}); "
          f"on/off {ratio} (target >= {BACKBONE_TARGET_RATIO:g}: {'met' if result['target']['met'] else 'NOT met'})")
    print(f"errors: {errors_total} (batching on {batched['errors']}, off {unbatched['errors']})")
    print(f"wrote {out.relative_to(ROOT)} ({result['seconds_this_run']:.0f} s)")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="load duration per concurrency level")
    parser.add_argument("--model", choices=("digits", "backbone"), default="digits",
                        help="digits: the full comparison (serving.json); backbone: MobileNetV3Small, batching on "
                             "and off at 64 clients (serving_backbone.json)")
    parser.add_argument("--out", type=Path, default=None,
                        help="default bench/results/serving.json (digits), serving_backbone.json (backbone)")
    parser.add_argument("--no-backbone", action="store_true",
                        help="skip the backbone model's run (its target is then not measured)")
    parser.add_argument("--capture", action="store_true",
                        help="only production capture's cost: capture off vs on (into serving.json's `capture` key)")
    args = parser.parse_args()
    if args.capture:
        main_capture(args.seconds, (args.out or ROOT / "bench" / "results" / "serving.json").resolve())
        return
    if args.model == "backbone":
        main_backbone(args.seconds, (args.out or ROOT / "bench" / "results" / "serving_backbone.json").resolve())
        return
    args.out = args.out or ROOT / "bench" / "results" / "serving.json"
    settings, record = trained_model()
    ws_images = sorted((settings.workspace / "data" / "images").glob("*.png"))
    image = ws_images[0].read_bytes()
    load_before = os.getloadavg()
    print(f"model {record.tag}; {args.seconds:.0f} s per level; one image per request; "
          f"load average {load_before[0]:.2f}", flush=True)
    reference = measure_reference(settings, record.tag, image, args.seconds)
    batched = measure(settings, True, image, args.seconds, profile=True)
    unbatched = measure(settings, False, image, args.seconds)
    model_workers = measure(settings, True, image, args.seconds, topology="model_workers", predict_too=False,
                            profile=True)
    forward = model_forward_ms(settings, record.tag)
    print(f"model forward pass alone: {forward['batch_1_ms']} ms for 1 image, {forward['batch_64_ms']} ms for 64"
          f" ({forward['images_per_s_batch_64']} images/s)", flush=True)
    backbone = None if args.no_backbone else main_backbone(10.0, ROOT / "bench" / "results" / "serving_backbone.json")
    rows = side_by_side(reference, batched, unbatched, forward, model_workers)
    targets = targets_of(rows, batched, unbatched, backbone)
    modes = (reference, batched, unbatched, model_workers)
    result = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "loadavg_1m_before": round(load_before[0], 2), "loadavg_1m_after": round(os.getloadavg()[0], 2)},
        "model": record.tag, "seconds_per_level": args.seconds,
        "errors_total": sum(m["errors"] for m in modes) + (backbone["errors_total"] if backbone else 0),
        "model_forward": forward, "side_by_side": rows, "targets": targets,
        # Issue 12.3's before/after: the same load (64 clients, batching on) under py-spy.
        "profile": {"before_model_workers": model_workers["profile"], "after_one_process": batched["profile"]},
        "reference": reference, "batched": batched, "unbatched": unbatched, "model_workers_batched": model_workers,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print("\nreq/s · errors (p50 / p99 ms)        reference | batching on | batching off | model workers, batched")
    for r in rows:
        cells = [f"{r[m]['throughput_rps']:.0f} · {r[m]['errors']} ({r[m]['p50_ms']} / {r[m]['p99_ms']})"
                 for m in ("reference", "batched", "unbatched", "model_workers_batched")]
        print(f"  {r['clients']:>3} clients: " + " | ".join(cells))
    print("Label Studio /predict, one task: " + ", ".join(
        f"{c} clients x{v}" for c, v in targets["predict_single_task_vs_label_studio_ml_backend"]["ratio_per_clients"].items())
        + " of label-studio-ml-backend")
    print(f"Label Studio /predict of 100 tasks: {batched['predict_100']['median_s']} s (median of 5)")
    print(f"errors: {result['errors_total']} in all runs (reference {reference['errors']}, "
          f"batching on {batched['errors']}, off {unbatched['errors']}, model workers {model_workers['errors']}"
          f"{', backbone ' + str(backbone['errors_total']) if backbone else ''})")
    for name, t in targets.items():
        verdict = "not measured" if t["met"] is None else "met" if t["met"] else "NOT met"
        print(f"  target {name}: {t['target']}, reached {t['reached']} ({verdict})")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
